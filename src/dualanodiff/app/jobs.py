"""Long work (training, generation, the localization study) as background processes whose state is on disk.

Each kind of job has a folder ``WORK/jobs/<kind>/``::

    job.json      what was asked (the library call's settings), when, and the worker's process id
    status.json   written by the worker (`worker`): running (with its stage), done (with the result),
                  failed (with the one-line error the CLI would print) or stopped
    log.txt       everything the worker printed, progress bars included

A job is a child process (``python -m dualanodiff.app.worker WORK/jobs/<kind>``) in its own session, so a
page reload, a second tab, or even a restart of the app finds it where it is: every page reads its state from
these files. Stopping sends it SIGINT (the CLI's Ctrl-C: everything written so far is kept, and the same
job started again resumes); a second stop kills it. The output folders a job writes are held by the
library's output lock, so two tabs can never write one folder at once, whatever this module does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import read_json_object, write_json_atomic

KINDS = ("train", "generate", "evaluate")
JOB_FILE, STATUS_FILE, LOG_FILE = "job.json", "status.json", "log.txt"
FINAL_STATES = ("done", "failed", "stopped")
_LOG_TAIL_BYTES = 16_384


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class JobStatus:
    """What a page shows of a job. ``state``: none, running, stopping, done, failed, stopped or lost (the
    worker is gone without saying why, e.g. killed with the machine)."""

    kind: str
    state: str = "none"
    message: str = ""
    stage: str = ""
    started: str | None = None
    finished: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    last_line: str = ""  # the worker's last line of output: its progress bar while it runs

    @property
    def running(self) -> bool:
        return self.state in ("running", "stopping")


def last_output_line(log: Path) -> str:
    """The last line a worker printed, where a progress bar's redraws (``\\r``) count as lines."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - _LOG_TAIL_BYTES))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.replace("\r", "\n").split("\n")]
    return next((line for line in reversed(lines) if line), "")


def _alive(pid: int, job_dir: Path) -> bool:
    """The worker of ``job_dir`` still runs as ``pid`` (not another process that got the number since)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.is_file():  # Linux: make sure the number still belongs to this job's worker
        try:
            return str(job_dir).encode() in cmdline.read_bytes()
        except OSError:
            return False
    return True


class Jobs:
    """Starts, stops and reads the background jobs of one workspace (one job of each kind at a time)."""

    def __init__(self, jobs_dir: str | os.PathLike, threads: int | None = None):
        self.root = Path(jobs_dir)
        self.threads = threads
        self._start_lock = threading.Lock()  # two tabs pressing Start at once: one wins, one is told
        self._procs: dict[str, subprocess.Popen] = {}

    def folder(self, kind: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        return self.root / kind

    def start(self, kind: str, params: dict[str, Any], workspace: str | os.PathLike) -> JobStatus:
        """Start a job of ``kind`` with ``params`` (read by `worker`); InputError if one is running."""
        with self._start_lock:
            self.check_idle(kind)
            folder = self.folder(kind)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / STATUS_FILE).unlink(missing_ok=True)
            job = {
                "kind": kind,
                "params": params,
                "workspace": str(Path(workspace).resolve()),
                "threads": self.threads,
                "started": now(),
            }
            write_json_atomic(folder / JOB_FILE, job)
            with open(folder / LOG_FILE, "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "dualanodiff.app.worker", str(folder)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group: a stop reaches its children too
                    env=_worker_env(),
                )
            self._procs[kind] = proc
            write_json_atomic(folder / JOB_FILE, {**job, "pid": proc.pid})
            return self.status(kind)

    def check_idle(self, kind: str) -> None:
        """InputError when a job of ``kind`` runs (started here, from another tab, or by another app)."""
        current = self.status(kind)
        if current.running:
            raise InputError(
                f"a {kind} job is already running (started {current.started}, maybe from another tab); "
                "stop it or wait for it to finish"
            )

    def stop(self, kind: str) -> JobStatus:
        """SIGINT (keeps everything written, a restart resumes); a second stop while stopping: SIGKILL."""
        status = self.status(kind)
        if not status.running:
            return status
        folder = self.folder(kind)
        job = read_json_object(folder / JOB_FILE)
        sig = signal.SIGKILL if job.get("stop_requested") else signal.SIGINT
        try:
            os.killpg(int(job["pid"]), sig)
        except ProcessLookupError:
            pass
        write_json_atomic(folder / JOB_FILE, {**job, "stop_requested": now()})
        return self.status(kind)

    def forget(self, kind: str) -> None:
        """Delete the record of the last job of ``kind`` (its page then says "Not started yet"); refused
        while it runs, since its worker still writes there."""
        with self._start_lock:
            self.check_idle(kind)
            folder = self.folder(kind)
            for name in (JOB_FILE, STATUS_FILE, LOG_FILE):
                (folder / name).unlink(missing_ok=True)
            self._procs.pop(kind, None)

    def wait(self, kind: str, timeout: float | None = None) -> JobStatus:
        """Block until the job's process ends (only for a job this object started)."""
        proc = self._procs.get(kind)
        if proc is not None:
            proc.wait(timeout)
        return self.status(kind)

    def status(self, kind: str) -> JobStatus:
        folder = self.folder(kind)
        job = read_json_object(folder / JOB_FILE)
        if not job:
            return JobStatus(kind)
        state = read_json_object(folder / STATUS_FILE)
        out = JobStatus(
            kind,
            state=state.get("state", "running"),
            message=state.get("message", ""),
            stage=state.get("stage", ""),
            started=job.get("started"),
            finished=state.get("finished"),
            params=job.get("params", {}),
            result=state.get("result"),
            last_line=last_output_line(folder / LOG_FILE),
        )
        if out.state in FINAL_STATES:
            self._reap(kind)
            return out
        if not self._running(kind, job, folder):
            out.state = "lost"
            out.message = (
                "the worker process ended without a result (killed, or out of memory; see the log). "
                "Everything written so far is kept: start it again to resume."
            )
        elif job.get("stop_requested"):
            out.state = "stopping"
        return out

    def log(self, kind: str, max_chars: int = 20_000) -> str:
        path = self.folder(kind) / LOG_FILE
        if not path.is_file():
            return ""
        text = path.read_text(encoding="utf-8", errors="replace")
        # Keep only the last redraw of each progress bar line.
        lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
        return "\n".join(lines)[-max_chars:]

    def _running(self, kind: str, job: dict, folder: Path) -> bool:
        proc = self._procs.get(kind)
        if proc is not None and proc.pid == job.get("pid"):
            return proc.poll() is None
        pid = job.get("pid")
        return isinstance(pid, int) and _alive(pid, folder)

    def _reap(self, kind: str) -> None:
        proc = self._procs.get(kind)
        if proc is not None and proc.poll() is not None:
            del self._procs[kind]


def _worker_env() -> dict[str, str]:
    """The app's environment, with this very ``dualanodiff`` first on the path (a source checkout too)."""
    import dualanodiff

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    src = str(Path(dualanodiff.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env
