"""Where the walls audit keeps the blind models it trains: a per-user cache directory.

The directory is, in order of precedence:

1. the ``--cache-dir`` flag of ``walls audit`` / the ``cache_dir`` argument of
   :func:`~captum_cam_ext.walls.train_blind_model`;
2. ``$CAPTUM_CAM_EXT_CACHE_DIR/walls`` (the package's cache root, set by the environment variable);
3. ``$XDG_CACHE_HOME/captum-cam-ext/walls``;
4. ``~/.cache/captum-cam-ext/walls``.

Nothing is ever written to the current working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

__all__ = ["CACHE_ENV", "cache_dir_source", "walls_cache_dir"]

#: Environment variable naming the package's cache root (the walls use its ``walls`` folder).
CACHE_ENV = "CAPTUM_CAM_EXT_CACHE_DIR"


def walls_cache_dir(cache_dir: Union[str, Path, None] = None) -> Path:
    """The directory where blind models are cached (not created here).

    Parameters
    ----------
    cache_dir : path, optional
        An explicit directory (returned as given, ``~`` expanded).  Without it: see the module
        documentation for the environment variables and the default.

    Returns
    -------
    Path
        An absolute path.
    """
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, Path)) or str(cache_dir) == "":
            raise TypeError(f"cache_dir must be a non-empty path, got {cache_dir!r}")
        return Path(cache_dir).expanduser().absolute()
    root = os.environ.get(CACHE_ENV, "")
    if root:
        return (Path(root).expanduser() / "walls").absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return (base / "captum-cam-ext" / "walls").absolute()


def cache_dir_source(cache_dir: Union[str, Path, None] = None) -> str:
    """In words, where :func:`walls_cache_dir` took the directory from (for messages)."""
    if cache_dir is not None:
        return "--cache-dir"
    if os.environ.get(CACHE_ENV, ""):
        return f"${CACHE_ENV}"
    xdg: Optional[str] = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return "$XDG_CACHE_HOME"
    return "default ~/.cache"
