"""Ray, connected and checked: the session, the nodes, what a task asks for, and shared storage.

Every node reads and writes the same output folder, so the first thing a run does is ask each node to read
a probe file the driver wrote there and to answer with a file of its own (and to look for the inputs):
a node that mounts another folder at that path, or none, is named in a one-line error before any work.
Tasks work in the driver's working directory where the node has it (a shared home or project folder), so
relative paths mean on every node what they mean to the driver; absolute paths need no such thing.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..errors import InputError
from ..io import write_text_atomic
from ..locking import STATE_DIR

log = logging.getLogger(__name__)

# A node's first task starts a Python worker that imports dualanodiff: seconds to minutes.
PROBE_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 10.0
INSTALL_HINT = "pip install 'dualanodiff[ray]'"


def import_ray() -> ModuleType:
    """The ``ray`` module, or an InputError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise InputError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from err
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[ModuleType]:
    """Connected to Ray for the block: the session already open in this process (left open), or one opened
    here (``address`` None: ``$RAY_ADDRESS`` if set, else a Ray started on this machine) and shut at the end."""
    ray = import_ray()
    _check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as err:
        where = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
        raise InputError(f"--ray-address {where}: cannot connect to Ray ({_first_line(err)})") from err
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class Node:
    """A live node of the cluster that can run work."""

    node_id: str
    host: str
    ip: str
    cpus: float
    gpus: float

    def __str__(self) -> str:
        return self.host if self.host == self.ip else f"{self.host} ({self.ip})"


@dataclass(frozen=True)
class Cluster:
    """A connected, checked cluster: the ``ray`` module, its working nodes, and whether device work gets GPUs."""

    ray: ModuleType
    nodes: list[Node]
    gpus: bool


@contextmanager
def checked_cluster(
    address: str | None, device: str | None, out: Path, inputs: Mapping[str, str]
) -> Iterator[Cluster]:
    """Connected to Ray (:func:`ray_session`) once every node is known to see ``out`` and ``inputs``."""
    with ray_session(address) as ray:
        nodes = cluster_nodes(ray)
        gpus = use_gpus(device, nodes)
        check_shared_storage(ray, nodes, out, inputs)
        yield Cluster(ray, nodes, gpus)


def cluster_nodes(ray: ModuleType) -> list[Node]:
    """The live nodes with CPUs or GPUs (a KubeRay head started with ``num-cpus: 0`` runs no work)."""
    nodes = []
    for n in ray.nodes():
        res = n.get("Resources", {})
        if n.get("Alive") and (res.get("CPU", 0) > 0 or res.get("GPU", 0) > 0):
            nodes.append(
                Node(
                    node_id=n["NodeID"],
                    host=n.get("NodeManagerHostname") or n["NodeManagerAddress"],
                    ip=n["NodeManagerAddress"],
                    cpus=res.get("CPU", 0.0),
                    gpus=res.get("GPU", 0.0),
                )
            )
    if not nodes:
        raise InputError("the Ray cluster has no live node with CPUs or GPUs to run on")
    return nodes


def use_gpus(device: str | None, nodes: list[Node]) -> bool:
    """Whether device steps ask for a GPU: yes when the cluster has one, unless ``--device cpu``."""
    gpus = sum(n.gpus for n in nodes)
    if device and device.startswith("cpu"):
        return False
    if device and device.startswith("cuda") and gpus == 0:
        raise InputError(f"--device {device}: the Ray cluster has no GPU (its nodes: {_list(nodes)})")
    return gpus > 0


def task_resources(on_device: bool, gpus: bool, cpus: int = 1) -> dict[str, float]:
    """What one task asks Ray for: ``cpus`` CPUs, and a whole GPU for device work where GPUs are used. Ray
    gives the task that GPU alone (``CUDA_VISIBLE_DEVICES``), so ``cuda`` means it, and as many threads as
    CPUs (``OMP_NUM_THREADS``)."""
    return {"num_cpus": cpus, "num_gpus": 1 if on_device and gpus else 0}


def retry_exceptions() -> list[type[BaseException]]:
    """Exceptions raised inside a step that are worth a retry: a CUDA out-of-memory error (another process
    may have held memory on that GPU). Dead workers (lost nodes, the system's OOM killer) are always retried."""
    import torch

    return [torch.cuda.OutOfMemoryError]


def error_text(err: BaseException) -> str:
    """One line for a task's failure: the step's own exception where there is one, else Ray's."""
    cause = getattr(err, "cause", None)  # RayTaskError: the exception raised inside the task
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {_first_line(cause)}"
    return f"{type(err).__name__}: {_first_line(err)}"


# -- shared storage --------------------------------------------------------------------------------------


def check_shared_storage(ray: ModuleType, nodes: list[Node], out: Path, inputs: Mapping[str, str]) -> None:
    """Each node reads a probe the driver wrote in ``out``, writes its answer there, and looks for each input
    (``{flag: path}``); InputError naming the nodes that cannot, before any work is started."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    state = Path(out) / STATE_DIR
    token = uuid.uuid4().hex
    probe = state / f"probe-{token}"
    try:
        write_text_atomic(probe, token)
    except OSError as err:
        raise InputError(f"--out {out}: cannot write there ({err.strerror or err})") from err
    probe_task = ray.remote(num_cpus=0, max_retries=1)(probe_node)
    refs = {
        node: probe_task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)
        ).remote(os.getcwd(), str(out), token, f"{probe.name}-{node.node_id}", dict(inputs))
        for node in nodes
    }
    problems = []
    try:
        for node, ref in refs.items():
            try:
                found = ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                found = [f"did not answer within {PROBE_TIMEOUT_S:.0f} s"]
            except ray.exceptions.RayError as err:
                found = [f"could not run the check ({error_text(err)}; is dualanodiff installed there?)"]
            if not found and not Path(f"{probe}-{node.node_id}").is_file():
                found = [f"wrote its answer in {out}, but this machine does not see it there"]
            problems += [f"node {node}: {p}" for p in found]
    finally:
        for path in state.glob(f"probe-{token}*"):
            path.unlink(missing_ok=True)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise InputError(
            "every Ray node must see the output folder and the inputs at the same path (shared storage, "
            f"see docs/ray.md): {'; '.join(problems[:3])}{more}"
        )
    log.info("ray: %d node(s) see %s: %s", len(nodes), out, _list(nodes))


def enter_driver_directory(cwd: str) -> None:
    """In a task: work where the driver works, when this node has that folder (relative paths then agree)."""
    if os.path.isdir(cwd):
        os.chdir(cwd)


@contextmanager
def worker_output() -> Iterator[None]:
    """In a task: no progress bars and no library chatter; Ray forwards a worker's output to the driver with
    the task's name in front, and a bar per task from every worker would bury the driver's own lines."""
    from ..progress import progress_shown, quiet_libraries

    quiet_libraries()
    with progress_shown(False):
        yield


def probe_node(cwd: str, out: str, token: str, answer: str, inputs: dict[str, str]) -> list[str]:
    """Runs on one node: what it cannot see or write in ``out`` or of ``inputs`` (empty: all is well)."""
    enter_driver_directory(cwd)
    problems = []
    state = Path(out) / STATE_DIR
    try:
        seen = (state / f"probe-{token}").read_text(encoding="utf-8")
    except OSError:
        problems.append(f"cannot see the output folder {out}")
    else:
        if seen != token:
            problems.append(f"sees another folder at {out}")
        else:
            try:
                write_text_atomic(state / answer, socket.gethostname())
            except OSError as err:
                problems.append(f"cannot write in {out} ({err.strerror or err})")
    problems += [
        f"{flag} {path}: not found there" for flag, path in inputs.items() if not Path(path).exists()
    ]
    return problems


def local_inputs(**paths: str | None) -> dict[str, str]:
    """``{--flag: path}`` of the given paths that exist here (a hub id such as ``--base`` is not a path)."""
    return {f"--{k.replace('_', '-')}": str(p) for k, p in paths.items() if p and Path(p).exists()}


def _check_reachable(address: str | None) -> None:
    """InputError at once when nothing listens at a ``HOST:PORT`` (or ``ray://HOST:PORT``) address: Ray itself
    keeps retrying for minutes. ``auto`` and other forms are left to Ray."""
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise InputError(
            f"--ray-address {address}: nothing answers there ({err.strerror or err}); start the cluster "
            "(`ray start --head` on its head node) or check the address"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _list(nodes: list[Node]) -> str:
    return ", ".join(f"{n} [{n.cpus:g} CPU, {n.gpus:g} GPU]" for n in nodes)
