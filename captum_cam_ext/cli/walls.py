"""``captum-cam-ext walls audit ...``: forwards its arguments to :mod:`captum_cam_ext.walls`."""

from __future__ import annotations

import argparse
from typing import Any, List, Optional

from captum_cam_ext.cli._common import CliError

__all__ = ["add_parser", "forwarded_arguments", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    w = sub.add_parser("walls", help="see-through-walls audit")
    wsub = w.add_subparsers(dest="walls_command", required=True, metavar="audit")
    wa = wsub.add_parser("audit", help="train (cached) the blind model and audit every CAM", add_help=False)
    wa.add_argument("walls_args", nargs="*",
                    help="passed to python -m captum_cam_ext.walls audit (try walls audit --help)")
    return w


def forwarded_arguments(argv: List[str], start: int) -> Optional[List[str]]:
    """The arguments after ``walls audit`` when ``argv[start:]`` begins with it, else None.

    Everything after ``audit`` (options included) belongs to the walls command line, so it is
    taken out before argparse sees it.
    """
    if argv[start : start + 2] == ["walls", "audit"]:
        return argv[start + 2 :]
    return None


def run(args: argparse.Namespace) -> int:
    from captum_cam_ext.walls.__main__ import main as walls_main

    try:
        return int(walls_main(["audit", *args.walls_args]) or 0)
    except ValueError as exc:
        raise CliError(str(exc)) from None
