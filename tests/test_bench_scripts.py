"""The benchmark scripts run end to end, and their paths agree: the authors' structure (one pair per call,
per-branch attention loop, BCM as a second forward), measured in other processes, makes the same pairs and the
same first training step as ours. Times are recorded, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str, out: Path) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        str(BENCHMARKS / script),
        "--threads",
        "1",
        "--repeats",
        "1",
        *args,
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, cwd=BENCHMARKS, env=env, capture_output=True, text=True)
    data = json.loads(out.read_text())
    assert {"device", "torch", "base", "reference"} <= set(data["meta"])
    return data["results"]


def test_generation_benchmark_reference_makes_the_same_pairs(tmp_path):
    rows = _run(
        "bench_generation.py", "--steps", "2", "--batch-size", "3", "--bcm", "on", "--reference-pairs", "2",
        out=tmp_path / "generation.json",
    )  # fmt: skip
    (row,) = rows
    assert row["bcm"] and row["batch_size"] == 3 and row["precision"] == "fp32"
    assert row["reference"]["pairs_per_call"] == 1 and row["reference"]["pairs"] == 2
    assert row["reference_batched"]["pairs_per_call"] == 3
    for path in ("ours", "reference", "reference_batched"):
        assert row[path]["s_per_pair"] > 0 and row[path]["peak_memory_mb"] > 0
    assert row["speedup"] == row["reference"]["s_per_pair"] / row["ours"]["s_per_pair"]
    assert row["max_abs_diff"] <= 1e-5 and row["max_abs_diff_batched_reference"] <= 1e-5


def test_training_benchmark_reference_takes_the_same_first_step(tmp_path):
    rows = _run("bench_training.py", "--batch-size", "2", "--bcm", "on", out=tmp_path / "training.json")
    (row,) = rows
    assert row["bcm"] and row["reference"]["precision"] == "fp32"
    assert row["ours"]["s_per_step"] > 0 and row["reference"]["s_per_step"] > 0
    assert row["max_abs_diff"] <= 1e-5 and row["grad_norm_rel_diff"] <= 1e-5
    assert row["ours_first_loss"] > 0
