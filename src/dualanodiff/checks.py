"""Checks of user-given values, shared by the command line and the library.

Each check returns the value (converted where that is its job) or raises :class:`InputError` with
``"<name>: <problem>"``, where ``name`` is the flag (``--lr``) or the argument of the API. The command
line gets the same checks as argparse types (:func:`int_arg`, :func:`float_arg`, :func:`name_arg`), so a
bad value stops the command while parsing, before anything is loaded or written.

Bounds that are not a matter of taste are explained where they are defined.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import InputError

MAX_SEED = 2**32 - 1  # numpy's legacy RandomState and many tools take 32-bit seeds; torch takes 64
# Sides above this are not a run anyone can finish: SD 1.5 was trained at 512 px, and at 4096 px its VAE
# decoder alone holds 4096^2 x 128 channels x 4 bytes = 8.6 GB of activations per image.
MAX_RESOLUTION = 4096
# A million pairs is a thousand times the paper's 1,000 per type; the pending list of a run is built in
# memory and every pair is three PNG files, so larger counts are sharded runs, not one folder.
MAX_PAIRS = 1_000_000
# How a pair's mask is cut from its part image (`masks.folder.build_masker`); here so the commands' --help
# does not import torch.
MASK_METHODS = ("auto", "grey", "grey-canvas", "grey-half-max", "u2net")


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            as_int = int(value)
        except (TypeError, ValueError):
            raise InputError(f"{name}: expected a whole number, got {value!r}") from None
        value = as_int
    if minimum is not None and value < minimum:
        raise InputError(f"{name}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name}: must be at most {maximum}, got {value}")
    return value


def check_float(
    value,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
) -> float:
    """``value`` as a finite float, >= ``minimum``, > ``above``, <= ``maximum`` (each when given)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{name}: must be a finite number, got {value!r}")
    if above is not None and number <= above:
        raise InputError(f"{name}: must be greater than {above:g}, got {number:g}")
    if minimum is not None and number < minimum:
        raise InputError(f"{name}: must be at least {minimum:g}, got {number:g}")
    if maximum is not None and number > maximum:
        raise InputError(f"{name}: must be at most {maximum:g}, got {number:g}")
    return number


def check_loss(value: float, where: str, lr: float, what: str = "the loss") -> float:
    """A training loss (or a model output) that must be finite: NaN or infinity means the run diverged, and
    carrying on would end in a result computed from NaN weights."""
    if not math.isfinite(value):
        raise InputError(
            f"{where}: training diverged, {what} is {value}; the learning rate (--lr {lr:g}) is likely too high"
        )
    return value


def check_seed(value, name: str = "--seed") -> int:
    return check_int(value, name, 0, MAX_SEED)


MAX_NAME_BYTES = 200  # a name becomes a folder name (255 bytes on most file systems) with room for suffixes


def check_name(value: str, name: str) -> str:
    """A name that becomes one path component (a category, an anomaly type, a method label).

    Refused: empty, ``.``/``..``, separators, NUL, leading/trailing spaces; so no name can make a
    command read or write outside the folder it was given.
    """
    if not isinstance(value, str) or not value or value != value.strip():
        raise InputError(f"{name}: expected a non-empty name without surrounding spaces, got {value!r}")
    if value in (".", "..") or any(c in value for c in ("/", "\\", "\0")):
        raise InputError(
            f"{name}: {value!r} is not a plain name (it becomes a folder name: no '/', '\\', '.' or '..')"
        )
    if len(value.encode()) > MAX_NAME_BYTES:  # file systems refuse longer folder names (a traceback before)
        raise InputError(f"{name}: {len(value.encode())} bytes long; a name is at most {MAX_NAME_BYTES}")
    return value


def check_output_dir(path: str | os.PathLike, name: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be written: an existing file, a file in
    its path, or a folder without write permission. Creates nothing (a probe file comes and goes in the
    nearest existing folder)."""
    path = Path(path)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise InputError(f"{name} {path}: {what}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".dualanodiff-write-test-"):
            pass
    except OSError as err:
        where = "" if existing == path else f" ({existing}, where it would be created)"
        raise InputError(f"{name} {path}: not writable{where}: {err.strerror or err}") from None
    return path


def check_device(device: str | None, name: str = "--device") -> str | None:
    """A torch device string that exists on this machine (``None``: let the command choose)."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"{name} {device!r}: not a torch device ({err})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"{name} {device}: no CUDA GPU is available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"{name} {device}: this machine has {count} CUDA device(s), numbered from 0")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{name} {device}: Apple MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise InputError(f"{name} {device}: unsupported device type {dev.type!r} (use cpu or cuda)")
    return device


# ---------------------------------------------------------------------------------------- argparse types


def _argtype(check: Callable[[str], object], metavar: str) -> Callable[[str], object]:
    """Wrap a check as an argparse type: argparse then prints ``argument --x: <problem>``."""

    def parse(text: str):
        try:
            return check(text)
        except InputError as err:
            raise argparse.ArgumentTypeError(str(err).split(": ", 1)[-1]) from None

    parse.__name__ = metavar
    return parse


def int_arg(minimum: int | None = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [minimum, maximum]."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise InputError(f"x: expected a whole number, got {text!r}") from None
        return check_int(value, "x", minimum, maximum)

    return _argtype(check, "int")


def float_arg(
    minimum: float | None = None, maximum: float | None = None, above: float | None = None
) -> Callable[[str], float]:
    """An argparse type: a finite number with the given bounds."""
    return _argtype(lambda text: check_float(text, "x", minimum, maximum, above), "float")


seed_arg = int_arg(0, MAX_SEED)
resolution_arg = int_arg(8, MAX_RESOLUTION)
pairs_arg = int_arg(1, MAX_PAIRS)
name_arg = _argtype(lambda text: check_name(text, "x"), "name")
