"""``dualanodiff benchmark --executor ray``: every step of the benchmark a Ray task.

The driver (the machine running the command) holds the benchmark folder, as the local executor does, and
submits each unfinished step as a task once the steps it reads are done (``Step.needs``): the types of
all categories train side by side on as many GPUs as the cluster has, each type's generation follows its
training, and a category's quality, localization and classification follow the generation of its types.
Ray places the tasks on nodes by what they ask for (``Step.gpu``: a GPU where the cluster has GPUs, else
a CPU), reruns a task whose worker died (``--ray-retries``), and the rerun resumes inside its step as a
local rerun would (training from its checkpoint, generation from the last pair, the U-Net from its last
epoch). A task writes its step's marker itself, so the markers stay the record of what is done: a rerun
with either executor skips those steps. A step that still fails is reported with its error; the others go
on, and the steps that read it are reported as not run.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from ..benchmark import BenchmarkConfig, Step, run_step
from ..errors import InputError
from . import check_ray_options
from .progress import ClusterProgress
from .ray_cluster import (
    checked_cluster,
    enter_driver_directory,
    import_ray,
    local_inputs,
    retry_exceptions,
    task_resources,
    worker_output,
)
from .tasks import TaskGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayRunner:
    """The benchmark's steps as Ray tasks (a :class:`dualanodiff.benchmark.StepRunner`); where the steps run
    is not part of any step's key, so a folder resumes with either runner."""

    address: str | None = None  # None: $RAY_ADDRESS, else a Ray started for this run on this machine
    retries: int = 3  # times a step's task is rerun after its worker died (lost node, out of memory)
    cpus: int = 1  # CPUs each step's task asks for (and its threads)
    in_process = False

    def check(self) -> None:
        check_ray_options(self.retries, self.cpus)
        import_ray()  # installed? (fail now, with the pip command)

    def run(
        self, cfg: BenchmarkConfig, types: dict[str, list[str]], steps: list[Step], out: Path
    ) -> dict[str, dict[str, Any]]:
        """Run ``steps`` on Ray; return {step id: status}.

        A status is ``done`` (with ``seconds``, ``node``, ``attempts``), ``failed`` (with ``error``) or
        ``not run`` (with ``reason``: the failed steps it reads).
        """
        with checked_cluster(self.address, cfg.device, out, benchmark_inputs(cfg)) as cluster:
            log.info(
                "ray: device steps ask for %s", "a GPU each" if cluster.gpus else "CPUs only (no GPU used)"
            )
            return _StepGraph(cluster.ray, self, cfg, types, steps, cluster.gpus).run()


def benchmark_inputs(cfg: BenchmarkConfig) -> dict[str, str]:
    """The benchmark's input files and folders every node must see."""
    return local_inputs(
        data=cfg.data,
        base=cfg.base,
        u2net_weights=cfg.u2net_weights,
        inception_weights=cfg.inception_weights,
        lpips_vgg_weights=cfg.lpips_vgg_weights,
        imagenet_weights=cfg.classification.imagenet_weights,
        perlin_source=cfg.generate.perlin_source,
    )


def run_step_task(cwd: str, cfg: BenchmarkConfig, types: dict[str, list[str]], step: Step, board) -> dict:
    """The body of a step's task, on whichever node Ray chose: note the start, run the step, mark it done."""
    enter_driver_directory(cwd)
    host = socket.gethostname()
    board.started.remote(step.id, host)
    out = Path(cfg.out)
    if not (out / "config.json").is_file():  # a node that joined after the storage check, without the mount
        raise InputError(f"--out {out}: node {host} does not see the benchmark folder (no config.json there)")
    with worker_output():
        return {**run_step(cfg, types, step), "node": host}


class _StepGraph:
    """Submits each step once the steps it reads are done, and follows the tasks to their end."""

    def __init__(
        self,
        ray: ModuleType,
        runner: RayRunner,
        cfg: BenchmarkConfig,
        types: dict[str, list[str]],
        todo: list[Step],
        gpus: bool,
    ):
        self.ray = ray
        self.runner = runner
        self.cfg = replace(cfg, progress=False)  # in a worker (see worker_output)
        self.types = types
        self.todo = todo
        self.gpus = gpus
        self.state = {s.id: "waiting" for s in todo}  # waiting, submitted, done, failed
        self.show_bar = cfg.progress

    def run(self) -> dict[str, dict[str, Any]]:
        statuses: dict[str, dict[str, Any]] = {}
        progress = ClusterProgress(len(self.todo), noun="step", show_bar=self.show_bar)
        with logging_redirect_tqdm(), TaskGroup(self.ray, progress) as tasks:
            self._submit_ready(tasks)
            while tasks:
                for ended in tasks.wait():
                    attempts = progress.attempts(ended.id)
                    if ended.error is None:
                        self.state[ended.id] = "done"
                        statuses[ended.id] = {**ended.result, "attempts": attempts}
                    else:
                        self.state[ended.id] = "failed"
                        node = progress.host(ended.id) or None
                        statuses[ended.id] = {
                            "id": ended.id,
                            "status": "failed",
                            "error": ended.error,
                            "node": node,
                            "attempts": attempts,
                        }
                self._submit_ready(tasks)
        for step in self.todo:
            if self.state[step.id] == "waiting":
                unfinished = [n for n in step.needs if self.state.get(n, "done") != "done"]
                statuses[step.id] = {
                    "id": step.id,
                    "status": "not run",
                    "reason": f"reads {', '.join(unfinished)}, which did not finish",
                }
        return statuses

    def _submit_ready(self, tasks: TaskGroup) -> None:
        for step in self.todo:
            if self.state[step.id] != "waiting":
                continue
            if all(self.state.get(n, "done") == "done" for n in step.needs):  # not in todo: finished before
                options = {
                    **task_resources(step.gpu, self.gpus, self.runner.cpus),
                    "max_retries": self.runner.retries,
                    "retry_exceptions": retry_exceptions(),
                }
                tasks.submit(step.id, run_step_task, options, self.cfg, self.types, step)
                self.state[step.id] = "submitted"
