"""`dualanodiff <command>`: a thin layer over the library.

Each command lives in `dualanodiff/commands/<name>.py` and provides ``register(subparsers)``, which adds its
parser and sets ``func`` to a function taking the parsed arguments. Errors in the user's input
(:class:`InputError`) are printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import __version__, commands
from .errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualanodiff",
        description=(
            "Few-shot defect image generation with pixel-aligned masks (DualAnoDiff, CVPR 2025): learn a defect "
            "from a few images and masks, generate hundreds of new (image, anomaly part, mask) triples, and "
            "measure their worth by training a detector on them."
        ),
        epilog="Run `dualanodiff <command> --help` for the options of a command. Start with `dualanodiff demo`.",
    )
    parser.add_argument("--version", action="version", version=f"dualanodiff {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("diffusers", "transformers", "accelerate", "peft", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        result = args.func(args)
    except InputError as err:
        print(f"dualanodiff {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ndualanodiff {args.command}: interrupted. Everything written so far is kept; "
            "run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
