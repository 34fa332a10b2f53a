"""``captum-cam-ext walls audit ...``: forwards its arguments to :mod:`captum_cam_ext.walls`.

The walls command line (:func:`captum_cam_ext.walls.__main__.run_cli`) gets the program name
``captum-cam-ext walls`` (for ``--help`` and errors) and this command line's model loading
(:func:`captum_cam_ext.cli.models.load_model`), so ``walls audit --model resnet18 ... IMAGES`` and
model files work there as in ``explain``.
"""

from __future__ import annotations

import argparse
from typing import Any, List, Optional

from captum_cam_ext.cli._common import CliError

__all__ = ["add_parser", "forwarded_arguments", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    w = sub.add_parser("walls", help="see-through-walls audit")
    wsub = w.add_subparsers(dest="walls_command", required=True, metavar="audit")
    wa = wsub.add_parser("audit", help="audit every CAM behind a model's wall (a trained blind model, or "
                         "--model and --hidden-rows on your images)", add_help=False)
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
    from captum_cam_ext.cli.models import load_model
    from captum_cam_ext.walls.__main__ import run_cli

    def loader(name: str, weights: Optional[str], size: Optional[int]) -> Any:
        return load_model(name, weights, size)

    try:
        return int(run_cli(["audit", *args.walls_args], prog="captum-cam-ext walls", model_loader=loader) or 0)
    except ValueError as exc:
        raise CliError(str(exc)) from None
