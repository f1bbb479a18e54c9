"""Crash-safe file writing: everything is written to a temporary name, then renamed.

An interrupted run therefore never leaves a half-written file under its final name,
which is what lets every long command resume by looking at which files exist.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import InputError

try:
    import fcntl
except ImportError:  # Windows: appends are not serialised between processes
    fcntl = None  # type: ignore[assignment]

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


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object written by :func:`write_json_atomic` (settings), {} when the file does not exist.

    A file that is not a JSON object raises :class:`InputError` naming it, not a decoder traceback.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err}); restore it, or remove it") from err
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object of settings, got {type(value).__name__}")
    return value


def save_image_atomic(path: str | os.PathLike, image: Image.Image | np.ndarray) -> None:
    """Save a PIL image or a uint8 array (H, W) / (H, W, 3) as PNG, atomically."""
    save_images_atomic([(path, image)])


def save_images_atomic(items: Sequence[tuple[str | os.PathLike, Image.Image | np.ndarray]]) -> None:
    """Save several PNGs as one step: all are encoded to temporaries first, then renamed in the given order.

    A crash while encoding leaves none of them; the renames that follow take microseconds, so files that
    belong together (a generated pair) are never seen half-made for longer than that.
    """
    with ExitStack() as stack:
        # Entered last to first, so the contexts exit (and rename) first to last.
        tmps = [stack.enter_context(atomic_path(path)) for path, _ in reversed(items)][::-1]
        for tmp, (_, image) in zip(tmps, items):
            (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(tmp, format="PNG")


def temporary_target(name: str) -> str | None:
    """The final name of a temporary made by :func:`atomic_path` (``.<name>.<random>.tmp``), else None."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    target, _, _random = name[1 : -len(".tmp")].rpartition(".")
    return target or None


def remove_temporaries(folder: str | os.PathLike, owned: Callable[[str], bool] | None = None) -> list[Path]:
    """Remove the temporaries a killed writer left in ``folder`` (files or folders); return them.

    ``owned(final_name)`` limits it to this writer's own (a shard must not touch another shard's); call it
    only while holding the folder's output lock, or a live writer's temporary could go.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        target = temporary_target(path.name)
        if target is None or (owned is not None and not owned(target)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# -- JSON lines: appended by several processes, read by anyone ------------------------------------------


@contextmanager
def _locked_append(path: Path) -> Iterator[int]:
    """An O_APPEND descriptor of ``path`` under an exclusive flock (writers of one file take turns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _parses(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
        return True
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _cut_torn_tail(fd: int) -> bool:
    """Make the file end with a newline so the next line starts clean: a last line without one is cut off
    when it is torn (a writer killed mid-line), and completed when it is a whole record (hand-written)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return False
    end = size
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if _parses(os.pread(fd, size - end, end)):
        os.write(fd, b"\n")  # O_APPEND: at the end
    else:
        os.ftruncate(fd, end)
    return True


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk.

    Appenders take turns under an flock on the file, so concurrent writers (shards) never interleave or
    lose a line, and each first cuts off a torn last line left by a writer that was killed mid-line
    (a whole last record that only lacks its newline gets one).
    """
    data = (json_text(record, path, indent=None) + "\n").encode("utf-8")
    with _locked_append(Path(path)) as fd:
        _cut_torn_tail(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)


def repair_jsonl(path: str | os.PathLike) -> bool:
    """Cut off a torn last line (see :func:`append_jsonl`); True if the file was changed."""
    path = Path(path)
    if not path.is_file():
        return False
    with _locked_append(path) as fd:
        return _cut_torn_tail(fd)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each line of a JSON-lines file; blank lines are skipped.

    A torn last line (no newline at its end and not JSON: a writer killed mid-line, or one still writing) is
    skipped; any other line that is not JSON raises :class:`InputError` naming the file and the line, because
    skipping it would silently drop a record.
    """
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_bytes().split(b"\n")
    last = lines.pop()  # what follows the last newline: nothing, a torn line, or a record without its newline
    if last.strip() and _parses(last):
        lines.append(last)
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
            raise InputError(
                f"{path}, line {number}: not a JSON record ({reason}); fix or delete that line"
            ) from err


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The values of a JSON-lines file (see :func:`iter_jsonl`: a torn last line is skipped)."""
    return [value for _, value in iter_jsonl(path)]
