"""``dualanodiff generate --executor ray``: the pairs of one folder made by shards, one Ray task each.

Shard ``r`` of ``R`` makes the pairs ``i`` with ``i % R == r`` (:mod:`dualanodiff.sharding`) into the same
folder; pair ``i`` is seeded ``seed + i`` whoever makes it, so the folder holds the pairs one process would
make (byte for byte at ``--batch-size 1``; to float rounding otherwise, as batches group other pairs).
Each shard holds the folder as one shard of that split (:mod:`dualanodiff.locking`), so any other writer is
refused, and a shard whose worker died is rerun by Ray and resumes at its first missing pair. ``--shard I/N``
still works: the Ray shards then split that shard (a Slurm array of Ray jobs, say).
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.generated import manifest_records
from ..errors import InputError
from ..generate import GenerateConfig, generate_to_folder, resolve_for_adapters
from ..sharding import Shard
from . import check_ray_options
from .progress import ClusterProgress
from .ray_cluster import (
    checked_cluster,
    enter_driver_directory,
    local_inputs,
    retry_exceptions,
    task_resources,
    worker_output,
)
from .tasks import TaskGroup

log = logging.getLogger(__name__)


def generate_on_ray(
    config: GenerateConfig,
    *,
    address: str | None = None,
    shards: int | None = None,
    shard: Shard | str | None = None,
    retries: int = 3,
    cpus: int = 1,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Make the missing pairs of ``config.out`` with ``shards`` Ray tasks (default: one per GPU of the
    cluster, one per node without GPUs); return the folder's summary, with ``failed`` {shard: error} when
    some shard still failed after its retries (its pairs are then missing; a rerun makes them)."""
    outer = Shard.parse(shard) if isinstance(shard, str) else shard or Shard()
    if shards is not None and shards < 1:
        raise InputError(f"--ray-shards must be at least 1, got {shards}")
    check_ray_options(retries, cpus)
    config, _, _ = resolve_for_adapters(config)  # the preset's sizes depend on the adapters (BCM, category)
    owned = len(range(outer.index, config.num_pairs, outer.count))
    inputs = local_inputs(
        base=config.base,
        adapters=config.adapters,
        backgrounds=config.backgrounds,
        foreground=config.foreground,
        u2net_weights=config.u2net_weights,
    )
    with checked_cluster(address, config.device, Path(config.out), inputs) as cluster:
        count = shards or (int(sum(n.gpus for n in cluster.nodes)) if cluster.gpus else len(cluster.nodes))
        count = max(1, min(count, owned))
        parts = [str(outer.split(Shard(r, count))) for r in range(count)]
        log.info("ray: %d shard(s) of %s, each on %s", count, config.out, "a GPU" if cluster.gpus else "CPUs")
        options = {
            **task_resources(True, cluster.gpus, cpus),
            "max_retries": retries,
            "retry_exceptions": retry_exceptions(),
        }
        results, failed = _run_shards(cluster.ray, config, parts, options, outer, show_progress)
    # The counts of the manifest: each shard that finished checked its own pairs' files as it wrote them.
    records = _owned_records(config, outer)
    kept = sum(1 for r in records if r.get("kept", True))
    summary = {
        "out_dir": str(config.out),
        "num_pairs": config.num_pairs,
        "complete": len(records),
        "kept": kept,
        "rejected": len(records) - kept,
        "written": sum(r["written"] for r in results.values()),
        "missing": owned - len(records),
        "ray_shards": count,
    }
    if not outer.alone:
        summary["shard"] = str(outer)
    return {**summary, "failed": failed} if failed else summary


def generate_shard_task(cwd: str, config: GenerateConfig, shard: str, board) -> dict[str, Any]:
    """One shard's task: note where it runs, make its missing pairs (into the shared folder)."""
    enter_driver_directory(cwd)
    host = socket.gethostname()
    board.started.remote(f"shard {shard}", host)
    started = time.perf_counter()
    with worker_output():
        summary = generate_to_folder(
            config, process_index=0, num_processes=1, shard=shard, show_progress=False
        )
    return {**summary, "node": host, "seconds": round(time.perf_counter() - started, 3)}


def _run_shards(ray, config, parts, options, outer, show_progress):
    """Run the shards' tasks with a bar over the pairs; return ({shard: summary}, {shard: error})."""
    owned = len(range(outer.index, config.num_pairs, outer.count))
    bar = tqdm(
        total=owned,
        initial=len(_owned_records(config, outer)),
        desc="pairs on Ray",
        unit="pair",
        disable=not show_progress,
    )
    results, failed = {}, {}
    with bar, TaskGroup(ray, ClusterProgress(len(parts), noun="shard", show_bar=False)) as tasks:
        for part in parts:
            tasks.submit(f"shard {part}", generate_shard_task, options, config, part)
        while tasks:
            for ended in tasks.wait():
                if ended.error is None:
                    results[ended.id] = ended.result
                else:
                    failed[ended.id] = ended.error
            bar.update(len(_owned_records(config, outer)) - bar.n)
    return results, failed


def _owned_records(config: GenerateConfig, outer: Shard) -> list[dict[str, Any]]:
    """The manifest's records of the pairs of ``outer`` (what the bar and the summary count)."""
    records = manifest_records(config.out) if Path(config.out).is_dir() else {}
    return [r for r in records.values() if r.get("index", -1) < config.num_pairs and outer.owns(r["index"])]
