"""The ``captum-cam-ext`` parser, the entry point :func:`main` and the error policy.

Errors the user can fix print ``error: <one line with the fix>`` and exit with status 2, without a
traceback; internal errors print one line too (exit 1) unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

from captum_cam_ext.cli import bench, compare, evaluate, explain, walls
from captum_cam_ext.cli._common import CliError, one_line

__all__ = ["COMMANDS", "build_parser", "main", "run"]

#: subcommand -> function running it on the parsed arguments (returns the exit status)
COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "explain": explain.run,
    "evaluate": evaluate.run,
    "compare": compare.run,
    "walls": walls.run,
    "bench": bench.run,
}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``captum-cam-ext`` (method names read from the registry now)."""
    parser = argparse.ArgumentParser(
        prog="captum-cam-ext",
        description="Class-activation maps (Grad-CAM family, Score-CAM, Conceptor-CAM) for PyTorch "
                    "models, as Captum attributions.",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    explain.add_parser(sub)
    evaluate.add_parser(sub)
    compare.add_parser(sub)
    walls.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``captum-cam-ext``; returns the exit status (0 ok, 2 user error, 1 internal)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    i = 0  # skip the global options to find the subcommand
    while i < len(argv) and (argv[i] == "--debug" or argv[i].startswith("--threads")):
        i += 1 if (argv[i] == "--debug" or "=" in argv[i]) else 2
    forwarded = walls.forwarded_arguments(argv, i)
    if forwarded is not None:
        args = build_parser().parse_args([*argv[:i], "walls", "audit"])
        args.walls_args = forwarded
    else:
        args = build_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command line with the error policy of the module docstring."""
    try:
        if args.threads is not None:
            import torch

            torch.set_num_threads(max(1, args.threads))
        return COMMANDS[args.command](args)
    except CliError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        if args.debug:
            raise
        user = isinstance(exc, (ValueError, TypeError, OSError))
        print(f"error: {type(exc).__name__}: {one_line(exc) or type(exc).__name__} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 2 if user else 1
    except KeyboardInterrupt:  # pragma: no cover
        return 130
