"""The driver's view of tasks on a Ray cluster: queued, running (on which node), done or failed: a bar over
the tasks, one log line per event (a start, a retry after a dead worker, an end), a count per node every
minute and at the end. What runs where comes from the tasks' start notes (:mod:`.tasks`)."""

from __future__ import annotations

import logging
import time
from collections import Counter

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

NODE_LINE_EVERY_S = 60.0


class ClusterProgress:
    """Counts and log lines for ``total`` tasks named by id: queued, running per node, done, failed."""

    def __init__(self, total: int, *, noun: str = "step", show_bar: bool = True) -> None:
        self.total = total
        self.noun = noun
        self.starts: dict[str, list[str]] = {}
        self.done: dict[str, str] = {}  # id -> host
        self.failed: dict[str, str] = {}  # id -> host ("" when it never started)
        self._last_node_line = time.monotonic()
        self.bar = tqdm(total=total, desc=f"{noun}s on Ray", unit=noun, disable=not show_bar)

    # -- events ----------------------------------------------------------------------------------------
    def saw_starts(self, starts: dict[str, list[str]]) -> None:
        """Log the attempts that started since the last call (a second attempt: its worker died)."""
        for task, hosts in starts.items():
            for attempt in range(len(self.starts.get(task, [])), len(hosts)):
                if attempt == 0:
                    log.info("%s: running on %s", task, hosts[0])
                else:
                    log.warning(
                        "%s: attempt %d on %s (the worker running it died)", task, attempt + 1, hosts[attempt]
                    )
            self.starts[task] = list(hosts)
        self._refresh()
        if time.monotonic() - self._last_node_line >= NODE_LINE_EVERY_S:
            self.log_nodes()

    def finished(self, task: str, seconds: float | None) -> None:
        self.done[task] = self.host(task)
        self.bar.update(1)
        log.info("%s %s: done on %s in %.1f s", self._counts(), task, self.done[task], seconds or 0.0)
        self._refresh()

    def failed_with(self, task: str, error: str) -> None:
        self.failed[task] = self.host(task)
        self.bar.update(1)
        log.error("%s %s: failed on %s: %s", self._counts(), task, self.failed[task] or "no node", error)
        self._refresh()

    def close(self) -> None:
        self.bar.close()
        self.log_nodes()

    # -- state -----------------------------------------------------------------------------------------
    def host(self, task: str) -> str:
        hosts = self.starts.get(task)
        return hosts[-1] if hosts else ""

    def attempts(self, task: str) -> int:
        return len(self.starts.get(task, []))

    def running(self) -> dict[str, str]:
        """{task: host} of the tasks that started and have not ended."""
        return {t: h[-1] for t, h in self.starts.items() if h and t not in self.done and t not in self.failed}

    def per_node(self) -> dict[str, Counter]:
        nodes: dict[str, Counter] = {}
        for what, tasks in (("running", self.running()), ("done", self.done), ("failed", self.failed)):
            for host in tasks.values():
                if host:
                    nodes.setdefault(host, Counter())[what] += 1
        return nodes

    def log_nodes(self) -> None:
        self._last_node_line = time.monotonic()
        nodes = self.per_node()
        if nodes:
            log.info(
                "per node: %s",
                "; ".join(
                    f"{host}: {c['running']} running, {c['done']} done, {c['failed']} failed"
                    for host, c in sorted(nodes.items())
                ),
            )

    def _counts(self) -> str:
        return (
            f"[{len(self.done)}/{self.total} done, {len(self.running())} running, {len(self.failed)} failed]"
        )

    def _refresh(self) -> None:
        self.bar.set_postfix(running=len(self.running()), failed=len(self.failed), refresh=False)
