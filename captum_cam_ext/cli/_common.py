"""What every part of the command line shares: the user-error type and one-line messages."""

from __future__ import annotations

import re
import sys

__all__ = ["CliError", "one_line", "warn"]

# colour / cursor escape sequences (torch's weights_only message, tqdm, ...)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class CliError(Exception):
    """A user error: printed as ``error: <message>`` on one line, exit status 2."""


def one_line(text: object) -> str:
    """The first non-empty line of ``text`` without terminal escape codes ('' when empty)."""
    for line in ANSI_ESCAPE.sub("", str(text)).splitlines():
        if line.strip():
            return line.strip()
    return ""


def warn(msg: str) -> None:
    """Print ``warning: msg`` to stderr."""
    print(f"warning: {msg}", file=sys.stderr)
