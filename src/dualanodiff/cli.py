"""`dualanodiff <command>`: a thin layer over the library.

Each command lives in `dualanodiff/commands/<name>.py` and provides ``register(subparsers)``, which adds its
parser and sets ``func`` to a function taking the parsed arguments. Every parser is an :class:`ArgumentParser`
of this module: help laid out by :class:`HelpFormatter`, errors as one line. Errors in the user's input
(:class:`InputError`, a bad option value) are printed as one line and exit with code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import re
import sys
import warnings

from . import __version__, commands
from .errors import InputError
from .progress import quiet_libraries, set_progress

# argparse takes "-1e-4" or "-inf" for an option name (it only knows "-1" and "-.5" as numbers), so
# `--lr -1e-4` failed with "expected one argument" instead of saying what is wrong with the value.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)
_DEFAULT_IN_HELP = re.compile(r"\bdefault\b", re.IGNORECASE)


class HelpFormatter(argparse.HelpFormatter):
    """One help layout for every command.

    - A description or epilog with line breaks keeps them (tables, examples); one without is wrapped.
    - An option's default is shown once, as ``(default: X)``, unless its help already says what the
      default is, and never for required options, switches, or options without a default (``None``).
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace(" (default: %(default)s)", "")  # BooleanOptionalAction adds it
        default = action.default
        hidden = default is None or default is argparse.SUPPRESS or isinstance(default, bool) or default == []
        if not action.option_strings or action.required or hidden or _DEFAULT_IN_HELP.search(text):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with :class:`HelpFormatter`, numbers like ``-1e-4`` read as values, and one-line errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def _get_value(self, action: argparse.Action, arg_string: str):
        # An empty value is never meant: `--out ""` wrote into the working directory, `--device ""` chose one.
        if arg_string == "" and action.nargs not in (0, argparse.PARSER, argparse.REMAINDER):
            name = "/".join(action.option_strings) or action.metavar or action.dest
            self.error(f"argument {name}: empty value")
        return super()._get_value(action, arg_string)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
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


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings (ours: e.g. ResNet-34 without ImageNet weights) as one line, without the source line."""
    return f"warning: {message}\n"


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("diffusers", "transformers", "accelerate", "peft", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    quiet_libraries()
    plain_warning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    set_progress(getattr(args, "progress", True))
    name = f"dualanodiff {args.command}" + (f" {args.mode}" if getattr(args, "mode", None) else "")
    try:
        result = args.func(args)
    except InputError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\n{name}: interrupted. Everything written so far is kept; run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
        print(
            f"{name}: error: out of memory ({type(err).__name__}); everything written so far is kept. Run it "
            "again with a smaller --batch-size or --resolution (or --mixed-precision bf16 on a GPU)",
            file=sys.stderr,
        )
        return 1
    finally:
        set_progress(True)
        warnings.formatwarning = plain_warning
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
