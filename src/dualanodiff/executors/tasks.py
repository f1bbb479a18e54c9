"""Tasks in flight on Ray, named by id, followed to their end by the driver (benchmark steps, generate shards).

Ray knows where a task runs only once it runs, so each task notes its start on a small actor, the
:class:`StartBoard`, which the driver reads while it waits: that is how it tells queued from running, counts
per node, and sees a second attempt (the worker of the first one died).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .progress import ClusterProgress
from .ray_cluster import error_text

POLL_S = 2.0  # how often the driver looks at the board while no task ends


class StartBoard:
    """A Ray actor (``ray.remote(StartBoard)``): tasks tell it where each attempt of theirs started."""

    def __init__(self) -> None:
        self._starts: dict[str, list[str]] = {}

    def started(self, task: str, host: str) -> None:
        self._starts.setdefault(task, []).append(host)

    def starts(self) -> dict[str, list[str]]:
        return self._starts


@dataclass
class Ended:
    """A task that ended: its result (with the ``node`` it ran on), or the error that ended it."""

    id: str
    result: dict[str, Any] | None = None
    error: str | None = None


class TaskGroup:
    """Submit tasks by id and wait for them; every task function takes ``(cwd, *args, board)``: the driver's
    working directory first, its :class:`StartBoard` last. Use as a context manager: leaving it by an error
    (Ctrl-C included) cancels the tasks still in flight; what they wrote stays for the rerun."""

    def __init__(self, ray: ModuleType, progress: ClusterProgress) -> None:
        self.ray = ray
        self.progress = progress
        self.board = ray.remote(num_cpus=0, max_restarts=-1)(StartBoard).remote()
        self._in_flight: dict[Any, str] = {}
        self._remote: dict[Callable, Any] = {}  # one Ray function per Python function: Ray ships each once
        self._cwd = os.getcwd()

    def __bool__(self) -> bool:
        return bool(self._in_flight)

    def __enter__(self) -> TaskGroup:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            for ref in self._in_flight:
                self.ray.cancel(ref, force=True)
        self.progress.close()

    def submit(self, task_id: str, function: Callable, options: dict[str, Any], *args: Any) -> None:
        if function not in self._remote:
            self._remote[function] = self.ray.remote(function)
        ref = self._remote[function].options(**options, name=task_id).remote(self._cwd, *args, self.board)
        self._in_flight[ref] = task_id

    def wait(self) -> list[Ended]:
        """The tasks that ended within a poll (possibly none), each logged as done or failed."""
        ready, _ = self.ray.wait(list(self._in_flight), num_returns=1, timeout=POLL_S)
        self.progress.saw_starts(self._starts())
        ended = []
        for ref in ready:
            task_id = self._in_flight.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayError as err:
                ended.append(Ended(task_id, error=error_text(err)))
                self.progress.failed_with(task_id, ended[-1].error)
            else:
                ended.append(Ended(task_id, result=result))
                self.progress.starts.setdefault(task_id, [result["node"]])  # its note may still be on its way
                self.progress.finished(task_id, result.get("seconds"))
        return ended

    def _starts(self) -> dict[str, list[str]]:
        try:
            return self.ray.get(self.board.starts.remote(), timeout=30)
        except self.ray.exceptions.RayError:  # the board's node was lost: carry on without start notes
            return self.progress.starts
