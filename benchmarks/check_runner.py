"""What keeps a one-shot measurement useful when it is cut short: a wall-clock budget, rows run one at a time in
priority order, each written to the JSON file as soon as it ends, failures recorded instead of raised.

A GPU is often lent for a few minutes to run one prepared command. If a row runs out of memory, or the command
reaches its limit, everything measured before must already be on disk, and the file must say what happened to
the rest: each row ends as ``ok``, ``error`` (with the error), ``interrupted`` (the budget ran out or the process
was terminated while it ran; what it had measured so far is kept) or ``skipped`` (with the reason).
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dualanodiff.io import write_json_atomic


class Stopped(BaseException):
    """Raised inside a row when the wall-clock budget runs out or the process is asked to terminate.

    A BaseException, like KeyboardInterrupt, so that no library's ``except Exception`` swallows it.
    """


def process_start_time() -> float:
    """When this process started (``time.time()`` scale), so that a budget counts the interpreter's start-up too."""
    try:
        import psutil  # a dependency of accelerate

        return psutil.Process().create_time()
    except Exception:  # no psutil, or no access to the process table: count from now
        return time.time()


class Budget:
    """A hard wall-clock budget, counted from the process start.

    Between rows, `why_stop` decides whether the next row starts. While a row runs (`interrupting`), an alarm at
    the deadline, or SIGTERM (what ``timeout`` and most job runners send at their limit), raises `Stopped` inside
    it, so that the row is recorded as interrupted with what it had measured, and no further row starts.
    """

    def __init__(self, seconds: float, started: float | None = None):
        self.seconds = seconds
        self.started = process_start_time() if started is None else started
        self.stop_reason: str | None = None

    def elapsed(self) -> float:
        return time.time() - self.started

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def why_stop(self) -> str | None:
        """Why no further row may start, or None."""
        if self.stop_reason is None and self.remaining() <= 0:
            self.stop_reason = f"the wall-clock budget of {self.seconds:.0f} s was spent"
        return self.stop_reason

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGTERM:
            self.stop_reason = "the process was terminated (SIGTERM)"
        else:
            self.stop_reason = f"the wall-clock budget of {self.seconds:.0f} s was spent"
        raise Stopped(self.stop_reason)

    @contextmanager
    def interrupting(self) -> Iterator[None]:
        """Let the deadline and SIGTERM interrupt the block (main thread, POSIX; elsewhere a no-op)."""
        if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGALRM, signal.SIGTERM)}
        signal.setitimer(signal.ITIMER_REAL, max(self.remaining(), 1e-3))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class ResultsFile:
    """``{"meta": ..., "results": [...]}``, rewritten atomically (temporary name, then rename) after every row."""

    def __init__(self, path: str | Path, meta: dict):
        self.path = Path(path)
        self.meta = meta
        self.rows: list[dict] = []
        self.write()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        write_json_atomic(self.path, {"meta": self.meta, "results": self.rows})


@dataclass
class Row:
    """One measurement. ``run(record)`` fills ``record`` as it goes, so a failure keeps what was measured."""

    name: str
    kind: str
    run: Callable[[dict], None]
    settings: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None  # a reason not to run it at all (e.g. switched off by an option)


def _error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) <= 600 else text[:600] + " ..."


def run_rows(
    rows: list[Row],
    budget: Budget,
    results: ResultsFile,
    after_row: Callable[[], None] = lambda: None,
    report: Callable[[dict], None] = lambda record: None,
) -> None:
    """Run ``rows`` in order within ``budget``, adding each record to ``results`` as soon as it ends."""
    for row in rows:
        record: dict[str, Any] = {"name": row.name, "kind": row.kind, **row.settings}
        stop = budget.why_stop()
        if row.skip or stop:
            record |= {"status": "skipped", "reason": row.skip or stop}
        else:
            start = time.perf_counter()
            try:
                with budget.interrupting():
                    row.run(record)
                record["status"] = "ok"
            except Stopped as err:
                record |= {"status": "interrupted", "reason": str(err)}
            except Exception as err:  # recorded, and the next row runs: one failure must not lose the others
                record |= {"status": "error", "error": _error_text(err)}
                record["traceback"] = traceback.format_exc(limit=-8).splitlines()[-24:]
            record["seconds"] = time.perf_counter() - start
            after_row()
        record["elapsed_s"] = budget.elapsed()
        results.add(record)
        report(record)


def is_out_of_memory(err: BaseException) -> bool:
    """The allocator's OOM, or a library's failure to get its workspace (cuBLAS, cuDNN report it as text)."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in text.lower() or "ALLOC_FAILED" in text)
    )


def largest_fitting(
    try_size: Callable[[int], dict],
    start: int,
    limit: int,
    tries: list[dict],
    release: Callable[[], None] = lambda: None,
) -> int:
    """The largest size in 1..``limit`` for which ``try_size`` does not run out of memory (0 if none does).

    Doubles from ``start`` until a size fails (or ``limit`` fits), then bisects between the largest size that
    fitted and the smallest that failed; assumes that what fails at one size fails at every larger one. Each try
    is appended to ``tries`` as it ends (``try_size``'s figures, or the error), so an interrupted search still
    says how far it got; ``release`` runs after each try, once the failed try's frames are gone, to free memory.
    """

    def fits(size: int) -> bool:
        try:
            stats, ok = try_size(size), True
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            stats, ok = {"error": _error_text(err).splitlines()[0]}, False
        release()
        tries.append({"batch_size": size, "fits": ok, **stats})
        return ok

    fit, fail, size = 0, None, min(start, limit)
    while fail is None:
        if not fits(size):
            fail = size
        elif size >= limit:
            return size
        else:
            fit, size = size, min(2 * size, limit)
    while fail - fit > 1:
        mid = (fit + fail) // 2
        if fits(mid):
            fit = mid
        else:
            fail = mid
    return fit
