"""One writer per output folder, enforced by the operating system.

Every command that writes an output folder does so inside ``output_lock``::

    with output_lock(out, "generate"):                      # the only writer, or InputError naming the holder
        ...
    with output_lock(out, "generate", shard=Shard(0, 2)):   # one of two writers that split one job
        ...

The lock is an ``flock`` on a file in ``FOLDER/.dualanodiff/``. The kernel releases it when its holder
exits, however it exits (``kill -9`` included), so a crashed run never leaves a stale lock to clear by
hand; and a refused writer is told who holds the folder (pid, host, command, start time).

Writers that split one job (``generate --shard I/N``, the ranks of ``torchrun`` or ``accelerate launch``)
join as shards: each holds the folder lock shared and its own shard lock exclusively. Shards of one split
therefore run side by side, while a plain writer, a second copy of a shard, or a shard of a split into a
different number of parts is refused. ``Shard(0, 1)`` is a plain writer.

The lock is advisory (only writers that take it are kept out) and needs ``fcntl`` (Linux, macOS; also on
NFS, where Linux maps ``flock`` to POSIX locks). Where there is none it warns and does not lock.

The last writer to leave removes the lock files (and ``.dualanodiff/`` when nothing else is kept there), so
a finished dataset ships without them. Removing a lock file that others may have opened is safe because
every newcomer takes the admission lock first and keeps it only if, once locked, its descriptor is still
the file at that path (a file removed meanwhile is retried): the leaver removes the files while holding
the admission lock, and only when it can hold the folder exclusively (no shard of its split is still
running). A killed writer leaves its files; the next writer to finish removes them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from .errors import InputError
from .sharding import Shard

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

STATE_DIR = ".dualanodiff"  # inside each output folder: the lock files (and a writer's other bookkeeping)
_WRITER = "writer.lock"  # exclusive: a plain writer; shared: shards
_ADMIT = "admit.lock"  # held for the few milliseconds of taking the others, so two newcomers never interleave


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as recorded in its lock file."""

    pid: int
    host: str
    command: str
    started: str
    shard: str | None = None

    def describe(self) -> str:
        shard = f" as shard {self.shard}" if self.shard else ""
        return f"`{self.command}`{shard} (pid {self.pid} on {self.host}, since {self.started})"


@dataclass(frozen=True)
class OutputLock:
    """A held output lock: the folder, and the share of the work this writer does (``Shard(0, 1)``: all)."""

    folder: Path
    command: str
    shard: Shard
    holder: Holder

    @property
    def exclusive(self) -> bool:
        return self.shard.alone


_held: dict[Path, OutputLock] = {}


def held_lock(folder: str | os.PathLike) -> OutputLock | None:
    """The lock this process holds on ``folder``, if any (writers check they are inside one)."""
    return _held.get(_key(folder))


@contextmanager
def output_lock(
    folder: str | os.PathLike, command: str, *, shard: Shard | None = None
) -> Iterator[OutputLock]:
    """Hold ``folder`` (created if missing) for writing by ``command``; release it on leaving the block.

    Raises :class:`InputError` naming the holder when another process writes the folder (for a shard: when a
    plain writer, the same shard, or a shard of another split holds it), and when the folder cannot be
    created or written. Not re-entrant: a process takes one lock per folder.
    """
    folder = Path(folder)
    shard = shard or Shard()
    me = Holder(
        pid=os.getpid(),
        host=socket.gethostname(),
        command=command,
        started=datetime.now().astimezone().isoformat(timespec="seconds"),
        shard=None if shard.alone else str(shard),
    )
    key = _key(folder)
    if key in _held:
        raise InputError(
            f"{folder} is already being written by this process ({_held[key].holder.describe()})"
        )
    state = _state_dir(folder)
    if fcntl is None:
        log.warning("%s: no file locking on this platform; make sure no other process writes here", folder)
        fds: list[int] = []
    else:
        fds = _acquire(folder, state, shard, me)
    lock = OutputLock(folder=folder, command=command, shard=shard, holder=me)
    _held[key] = lock
    try:
        yield lock
    finally:
        del _held[key]
        if fds:
            _release(folder, fds)
        else:
            _remove_if_empty(state)


def _remove_if_empty(state: Path) -> None:
    """Remove the state folder and its empty subfolders; what a writer keeps there (staged masks) stays."""
    try:
        for sub in state.iterdir():
            if sub.is_dir():
                sub.rmdir()
        state.rmdir()
    except OSError:
        pass


# -- internals --------------------------------------------------------------------------------------------


def _key(folder: str | os.PathLike) -> Path:
    return Path(os.path.abspath(folder))


def _state_dir(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder; give an output folder")
    state = folder / STATE_DIR
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{folder}: cannot write there ({err.strerror or err})") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: cannot write there (permission denied)")
    return state


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise InputError(f"{path}: cannot open the lock file ({err.strerror or err})") from err


def _try_lock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _write_holder(fd: int, holder: Holder) -> None:
    data = (json.dumps(asdict(holder)) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_holder(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _shard_file(state: Path, index: int) -> Path:
    return state / f"shard-{index:05d}.lock"


def _live_shards(state: Path) -> list[tuple[Path, Holder | None]]:
    """Shard lock files whose holder is alive (a file whose lock can be taken belongs to a finished shard)."""
    live = []
    for path in sorted(state.glob("shard-*.lock")):
        fd = _open(path)
        try:
            if _try_lock(fd, fcntl.LOCK_EX):
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                live.append((path, _read_holder(path)))
        finally:
            os.close(fd)
    return live


def _describe(holders: list[Holder | None]) -> str:
    named = [h.describe() for h in holders if h is not None]
    if len(named) > 3:  # a Slurm array of a hundred shards: name a few
        named = named[:3] + [f"{len(named) - 3} more"]
    return " and ".join(named) if named else "another process"


def _admitted(folder: Path) -> int:
    """The descriptor of the folder's admission lock, held: blocking, but each holder keeps it for a few
    lines only. A lock taken on a file that a leaving writer removed meanwhile is let go and taken again
    on the file now at that path, so two newcomers never both hold admission."""
    path = folder / STATE_DIR / _ADMIT
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the leaver removed the state folder between our mkdir and open
            _state_dir(folder)
            continue
        except OSError as err:
            raise InputError(f"{path}: cannot open the lock file ({err.strerror or err})") from err
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            return fd
        os.close(fd)


def _release(folder: Path, fds: list[int]) -> None:
    """Let go of the locks ``fds`` (the writer lock first); when no other writer holds the folder, remove
    the lock files and, if nothing else is kept there, the state folder."""
    state = folder / STATE_DIR
    admit = None
    try:
        admit = _admitted(folder)
        # Alone when the writer lock can be held exclusively: a plain writer holds it so already; for a
        # shard this fails while another shard of the split holds it shared (and releases our share).
        if _try_lock(fds[0], fcntl.LOCK_EX):
            for path in [*state.glob("shard-*.lock"), state / _WRITER]:
                path.unlink(missing_ok=True)
            (state / _ADMIT).unlink(missing_ok=True)  # newcomers blocked on it will retry (_admitted)
            _remove_if_empty(state)
    except (OSError, InputError) as err:  # tidying failed: the locks are still released below
        log.debug("%s: lock files left in place (%s)", folder, err)
    finally:
        for fd in reversed(fds):
            os.close(fd)  # closing the descriptor releases its flock
        if admit is not None:
            os.close(admit)


def _acquire(folder: Path, state: Path, shard: Shard, me: Holder) -> list[int]:
    """Take the folder's locks for ``me`` or raise InputError naming the holder; return the descriptors."""
    admit = _admitted(folder)
    fds: list[int] = []
    try:
        fds.append(_open(state / _WRITER))
        if shard.alone:
            if not _try_lock(fds[0], fcntl.LOCK_EX):
                shards = _live_shards(state)
                holders = [h for _, h in shards] if shards else [_read_holder(state / _WRITER)]
                raise InputError(
                    f"{folder} is being written by {_describe(holders)}; wait for it to finish or choose another "
                    "output folder (only one writer per folder)"
                )
            _write_holder(fds[0], me)
            return fds
        if not _try_lock(fds[0], fcntl.LOCK_SH):
            raise InputError(
                f"{folder} is being written by {_describe([_read_holder(state / _WRITER)])}, which does not "
                f"share it; shard {shard} waits for it to finish"
            )
        others = _live_shards(state)
        foreign = [
            h for _, h in others if h is not None and h.shard and int(h.shard.split("/")[1]) != shard.count
        ]
        if foreign:
            raise InputError(
                f"{folder} is being written by {_describe(foreign)}, a split into another number of shards; "
                f"shard {shard} would make some items twice (use the same N in every --shard I/N)"
            )
        fds.append(_open(_shard_file(state, shard.index)))
        if not _try_lock(fds[1], fcntl.LOCK_EX):
            raise InputError(
                f"{folder}: shard {shard} is already being written by "
                f"{_describe([_read_holder(_shard_file(state, shard.index))])}"
            )
        _write_holder(fds[1], me)
        return fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(admit)
