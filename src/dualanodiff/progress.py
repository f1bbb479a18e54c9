"""Progress bars: every bar of dualanodiff goes through :func:`progress_bar`, so one switch
(``--no-progress``, :func:`set_progress`) silences all of them, in every command and in the steps a
command runs (the benchmark's baselines, the demo's training).

The libraries underneath have bars and messages of their own that tell a user of this tool nothing
(transformers' "Loading weights" and "Writing model shards", diffusers' deprecation notes). The command
line turns them off with :func:`quiet_libraries`; the Python API leaves them as the libraries set them.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

_enabled = True
_quiet_libraries = False


def set_progress(enabled: bool) -> None:
    """Show (True) or hide (False) every dualanodiff progress bar from now on."""
    global _enabled
    _enabled = bool(enabled)


@contextmanager
def progress_shown(enabled: bool) -> Iterator[None]:
    """Within the block, bars are shown only if ``enabled`` (and not switched off outside it)."""
    before = _enabled
    set_progress(before and enabled)
    try:
        yield
    finally:
        set_progress(before)


def progress_bar(iterable: Iterable | None = None, *, disable: bool = False, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, hidden when ``disable`` or when bars are switched off.

    Written to a file or a pipe rather than a terminal, a bar shows its first and last state only: its
    redraws are for eyes, and a log of a long run would otherwise fill with them (a default demo wrote
    173 KB of redraws to a redirected stderr)."""
    stream = kwargs.get("file") or sys.stderr
    if not _is_terminal(stream):
        kwargs.setdefault("mininterval", float("inf"))
        kwargs.setdefault("maxinterval", float("inf"))
    return tqdm(iterable, disable=disable or not _enabled, **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def quiet_libraries() -> None:
    """Turn off the library bars and warnings that say nothing to a user of the command line.

    Applies to libraries imported now and, through :func:`apply_library_quiet` (called where this
    package loads models), to those imported later; a hub download keeps its bar.
    """
    global _quiet_libraries
    _quiet_libraries = True
    # Deprecation notes are for the authors of the code calling the library, not for its users.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*(deprecated|will be removed).*", category=UserWarning)
    apply_library_quiet()


def apply_library_quiet() -> None:
    """If :func:`quiet_libraries` was called: hide the bars of transformers and diffusers (when imported)."""
    if not _quiet_libraries:
        return
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None:
            module.disable_progress_bar()
            module.set_verbosity_error()
