"""Sphinx configuration of the captum-cam-ext documentation (``make docs``: ``sphinx -W``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "captum-cam-ext"
author = "captum-cam-ext developers"
copyright = "2026, captum-cam-ext developers"
try:
    from captum_cam_ext import __version__ as release
except Exception:  # pragma: no cover - the API pages would fail anyway
    release = "0.1.0"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list = []

# numpy-style docstrings (as Captum's)
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    # every class page shows the engine's attribute / compute / record with their parameters, but not
    # what Captum's and torch's base classes define
    "inherited-members": True,
}
# Captum's Attribution.attribute is a typed property; do not re-document torch/captum bases
autodoc_inherit_docstrings = True

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"captum-cam-ext {release}"
html_theme_options = {
    "description": "CAM methods as Captum attributions",
    "fixed_sidebar": True,
    "page_width": "1180px",
    "sidebar_width": "230px",
}


def _base_names() -> set:
    """Names that Captum's and torch's base classes define (methods, properties, typed attributes)."""
    from captum.attr._utils.attribution import (
        Attribution,
        GradientAttribution,
        LayerAttribution,
        PerturbationAttribution,
    )
    from torch import nn

    names: set = set()
    for cls in (Attribution, GradientAttribution, LayerAttribution, PerturbationAttribution, nn.Module):
        for klass in cls.__mro__:
            names |= set(vars(klass)) | set(getattr(klass, "__annotations__", {}))
    return names


def _own_names() -> set:
    """Names that a class of the package defines itself (e.g. ``attribute``): always documented."""
    import inspect

    import captum_cam_ext

    names: set = set()
    for mod_name in list(__import__("sys").modules):
        if mod_name.startswith("captum_cam_ext"):
            for _, cls in inspect.getmembers(__import__("sys").modules[mod_name], inspect.isclass):
                if cls.__module__.startswith("captum_cam_ext"):
                    names |= set(vars(cls))
    del captum_cam_ext
    return names


_FOREIGN: set = set()


def _skip_captum_and_torch_members(app, what, name, obj, skip, options):  # noqa: ANN001, ANN201
    """Inherited members are shown (every class page has the engine's attribute), except those that
    only Captum's and torch's base classes define."""
    if not _FOREIGN:
        _FOREIGN.update(_base_names() - _own_names())
    if name in _FOREIGN:
        return True
    return None


def setup(app):  # noqa: ANN001, ANN201
    app.connect("autodoc-skip-member", _skip_captum_and_torch_members)
