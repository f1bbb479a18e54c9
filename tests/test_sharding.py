"""Sharded generation (issue 12): --shard I/N, torchrun and accelerate launch on CPU split the pairs between
processes, disjoint and complete, and the folder equals a one-process run byte for byte.

Batches of one pair each: a pair's pixels do not depend on its batch only to float rounding (test_generate),
and a shard batches other pairs together than one process does; here every computation is the same."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualanodiff.errors import InputError
from dualanodiff.generate import GenerateConfig, generate_to_folder
from dualanodiff.io import read_jsonl
from dualanodiff.locking import STATE_DIR
from dualanodiff.sharding import Shard, launcher_shard, process_shard

NUM_PAIRS = 7


def test_shard_parsing_and_the_split_between_launcher_ranks(monkeypatch) -> None:
    assert Shard.parse("1/4") == Shard(1, 4) and str(Shard.parse(" 0 / 1 ")) == "0/1"
    for bad in ("4/4", "1", "-1/3", "a/b", "0/0"):
        with pytest.raises(InputError, match=r"--shard .*: expected I/N with 0 <= I < N"):
            Shard.parse(bad)
    for var in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert launcher_shard() == Shard(0, 1) and process_shard("2/5") == Shard(2, 5)
    # Array task I of N run by W ranks: rank r takes every W-th item of the task, all ranks all of it.
    owners: dict[int, list[tuple[int, int]]] = {}
    for task in range(3):
        for rank in range(2):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            shard = process_shard(Shard(task, 3))
            assert shard == process_shard(f"{task}/3", ranks=Shard(rank, 2))  # ranks given
            for item in range(60):
                if shard.owns(item):
                    owners.setdefault(item, []).append((task, rank))
    assert sorted(owners) == list(range(60)) and all(len(v) == 1 for v in owners.values())
    assert all(task == item % 3 for item, [(task, _)] in owners.items())
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(InputError, match="launcher variables RANK=1 WORLD_SIZE=x"):
        launcher_shard()


def _args(base, adapters, out) -> list[str]:
    return ["--base", str(base), "--adapters", str(adapters), "--out", str(out), "--num-pairs", str(NUM_PAIRS)] + [
        "--steps", "2", "--batch-size", "1", "--max-area", "0.3", "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tiny_base_dir, tiny_adapters, tmp_path_factory) -> Path:
    """The folder one process makes."""
    out = tmp_path_factory.mktemp("reference") / "gen"
    config = GenerateConfig(
        base=str(tiny_base_dir), adapters=str(tiny_adapters), out=str(out), num_pairs=NUM_PAIRS, steps=2, batch_size=1,
        max_mask_area=0.3, device="cpu",
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1): same sums, same pixels
    try:
        summary = generate_to_folder(config, process_index=0, num_processes=1, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary["complete"] == NUM_PAIRS
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*.png"))
        if STATE_DIR not in p.relative_to(folder).parts
    }


def _assert_same_as_one_process(out: Path, reference: Path) -> None:
    records = read_jsonl(out / "manifest.jsonl")
    assert sorted(r["name"] for r in records) == [f"{i:05d}" for i in range(NUM_PAIRS)]  # disjoint, complete
    by_name = {r["name"]: r for r in read_jsonl(reference / "manifest.jsonl")}
    assert {r["name"]: r for r in records} == by_name
    assert _tree(out) == _tree(reference)


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"],
    # --multi_gpu starts the processes with torchrun's machinery; without GPUs they run on the CPU.
    "accelerate --multi_gpu": [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "PORT",
        "-m",
    ],
    # --cpu starts one process (Accelerate needs MPI for several CPU processes): it must make every pair.
    "accelerate --cpu": [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_launcher_splits_the_pairs(launcher, tiny_base_dir, tiny_adapters, reference, tmp_path) -> None:
    out = tmp_path / "gen"
    command = [a.replace("PORT", _free_port()) for a in LAUNCHERS[launcher]]
    command += ["dualanodiff.cli", "generate", *_args(tiny_base_dir, tiny_adapters, out)]
    run = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_same_as_one_process(out, reference)
    written = sorted(
        int(line.split(":")[1].strip(" ,")) for line in run.stdout.splitlines() if '"written"' in line
    )
    assert written == ([NUM_PAIRS] if launcher == "accelerate --cpu" else [3, 4])  # each rank its own share


@pytest.mark.slow
def test_explicit_shards_run_side_by_side(tiny_base_dir, tiny_adapters, reference, tmp_path) -> None:
    out = tmp_path / "gen"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dualanodiff.cli",
                "generate",
                *_args(tiny_base_dir, tiny_adapters, out),
                "--shard",
                s,
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in ("0/2", "1/2")
    ]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0], [r[1][-2000:] for r in results]
    assert '"shard": "0/2"' in results[0][0] and '"written": 4' in results[0][0]
    _assert_same_as_one_process(out, reference)


@pytest.mark.slow
def test_shards_in_one_process_then_a_plain_resume(tiny_base_dir, tiny_adapters, reference, tmp_path) -> None:
    out = tmp_path / "gen"
    config = GenerateConfig(
        base=str(tiny_base_dir), adapters=str(tiny_adapters), out=str(out), num_pairs=NUM_PAIRS, steps=2, batch_size=1,
        max_mask_area=0.3, device="cpu",
    )  # fmt: skip
    one = generate_to_folder(config, process_index=0, num_processes=1, show_progress=False, shard="1/3")
    assert (one["written"], one["shard"], one["complete"]) == (2, "1/3", 2)  # pairs 1 and 4
    rest = generate_to_folder(config, process_index=0, num_processes=1, show_progress=False)
    assert (rest["written"], rest["complete"]) == (NUM_PAIRS - 2, NUM_PAIRS)
    _assert_same_as_one_process(out, reference)
