"""Where long work runs: in this process (the local executor), or as tasks on a Ray cluster.

``ray`` is an optional extra (``pip install "dualanodiff[ray]"``): only the modules here import it, and only
when ``--executor ray`` is chosen.

- :mod:`.ray_cluster`: connecting to Ray, what a task asks for, and the check that every node sees the
  output folder (and the inputs) at the same path.
- :mod:`.ray_benchmark`: ``dualanodiff benchmark --executor ray``, one task per step of the benchmark.
- :mod:`.ray_generate`: ``dualanodiff generate --executor ray``, one task per shard of the pairs.
- :mod:`.progress`: the driver's view of the tasks: done, running, failed, per node.
"""

from __future__ import annotations

import argparse

from ..errors import InputError

EXECUTORS = ("local", "ray")


def check_ray_options(retries: int, cpus: int) -> None:
    """InputError naming ``--ray-retries`` or ``--ray-cpus`` when out of range."""
    if retries < 0:
        raise InputError(f"--ray-retries must be 0 or more, got {retries}")
    if cpus < 1:
        raise InputError(f"--ray-cpus must be at least 1, got {cpus}")


def add_executor_arguments(parser: argparse.ArgumentParser, *, what: str) -> argparse._ArgumentGroup:
    """The ``--executor``, ``--ray-*`` flags of a command; returns their group."""
    from ..checks import int_arg

    group = parser.add_argument_group("where it runs (see docs/ray.md)")
    group.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help=f"local: in this process (default); ray: {what}, on a Ray cluster (pip install "
        "'dualanodiff[ray]'); the output folder must be on storage every node sees",
    )
    group.add_argument(
        "--ray-address",
        default=None,
        help="the Ray cluster: 'auto' (the one this machine belongs to), ray://HOST:10001, HOST:6379; "
        "default: $RAY_ADDRESS, else a Ray started for this run on this machine",
    )
    group.add_argument(
        "--ray-cpus",
        type=int_arg(1),
        default=1,
        help="CPUs each task asks for; Ray sets its threads (OMP_NUM_THREADS) to that number (default 1)",
    )
    group.add_argument(
        "--ray-retries",
        type=int_arg(0),
        default=3,
        help="times a task is rerun after its worker died (node lost, out of memory); it resumes where it "
        "stopped (default 3)",
    )
    return group
