"""Crash-safe file writing: everything is written to a temporary name, then renamed.

An interrupted run therefore never leaves a half-written file under its final name,
which is what lets every long command resume by looking at which files exist.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _non_finite_at(obj: Any, where: str = "") -> str | None:
    """The key path of the first NaN or infinity in ``obj`` (``types.crack.is``), or None."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return where or "the value"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite_at(
            value, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip(".")
        )
        if found:
            return found
    return None


def json_text(obj: Any, path: str | os.PathLike, indent: int | None = 2) -> str:
    """Strict JSON of ``obj``: NaN and infinity are not JSON (`json` would write them anyway, and readers
    then fail), so they are refused with the file and the key that hold them."""
    try:
        return json.dumps(obj, indent=indent, sort_keys=True, default=str, allow_nan=False)
    except ValueError:
        at = _non_finite_at(json.loads(json.dumps(obj, sort_keys=True, default=str)))
        raise InputError(
            f"{path}: not written, {at} is NaN or infinite (an undefined result: check the settings that led to it)"
        ) from None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json_text(obj, path) + "\n")


def save_image_atomic(path: str | os.PathLike, image: Image.Image | np.ndarray) -> None:
    """Save a PIL image or a uint8 array (H, W) / (H, W, 3) as PNG, atomically."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a crash loses at most the line being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json_text(record, path, indent=None) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines file, ignoring a torn last line left by a crash."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
