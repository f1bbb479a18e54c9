"""What every export shares: its record file, the checks on ``--out``, and placing image files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..data.mvtec import GOOD
from ..errors import InputError
from ..io import read_json_object, write_json_atomic
from ..locking import STATE_DIR, output_lock

EXPORT_RECORD = "export.json"


def check_type_name(kind: str, folder: Path) -> None:
    """An anomaly type names folders and classes of the export: refuse one that cannot."""
    if not kind or kind.startswith(".") or "/" in kind or "\\" in kind or kind == GOOD:
        raise InputError(
            f"{folder}: anomaly type {kind!r} cannot name a folder of the export (give --anomaly-types)"
        )


def check_out(out: Path, fmt: str | None = None) -> None:
    """An export goes to a new or empty folder, or replaces an earlier export (of format ``fmt``, when
    given); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: a file, not a folder")
    if not out.is_dir():
        return
    if (out / EXPORT_RECORD).is_file():
        earlier = read_json_object(out / EXPORT_RECORD)  # a corrupt record is named, not overwritten blindly
        if fmt is not None and earlier.get("format", fmt) != fmt:
            raise InputError(
                f"--out {out}: an earlier export of another format ({earlier.get('format')}); choose a new folder"
            )
        return
    other = sorted(p.name for p in out.iterdir() if p.name != STATE_DIR)
    if other:
        raise InputError(
            f"--out {out}: not empty ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}) and not an "
            f"earlier export (no {EXPORT_RECORD}); choose a new folder"
        )


def check_sources_apart(out: Path, sources: Iterable[str | os.PathLike]) -> None:
    """Refuse an ``--out`` inside an input folder or holding one: a rerun would replace its own inputs."""
    target = out.resolve()
    for source in sources:
        src = Path(source).resolve()
        if target == src or target.is_relative_to(src) or src.is_relative_to(target):
            raise InputError(
                f"--out {out}: overlaps the input folder {source}; choose a folder apart from it"
            )


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows (no space, instant), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links there
        shutil.copy2(src, dst)


@contextmanager
def writing(out: Path, command: str, record: dict[str, Any], tree: Iterable[str]) -> Iterator[None]:
    """Hold ``out``'s one-writer lock, mark it as an export (``complete: false``), clear the folders an
    earlier export left (``tree``), let the caller write, then mark the record complete. An interrupted
    export is therefore recognisable, and a rerun replaces it whole."""
    with output_lock(out, command):
        write_json_atomic(out / EXPORT_RECORD, {**record, "complete": False})
        for sub in tree:
            path = out / sub
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        yield
        record["complete"] = True
        write_json_atomic(out / EXPORT_RECORD, record)
