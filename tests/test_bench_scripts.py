"""The benchmark scripts run end to end, and their paths agree: the authors' structure (one pair per call,
per-branch attention loop, BCM as a second forward), measured in other processes, makes the same pairs and the
same first training step as ours. Times are recorded, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rounding import pipeline_depth, reduction_depth, rounding_tolerance

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


def _tiny_bcm_pipe():
    """The benchmarks' default pipeline (tiny base, BCM), for its depth."""
    from dualanodiff.model.base import build_base
    from dualanodiff.model.dual_unet import AdapterConfig
    from dualanodiff.pipeline import DualAnoDiffPipeline

    return DualAnoDiffPipeline.from_components(build_base("tiny"), AdapterConfig(rank=4, bcm=True))


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
    # Other batch layouts and attention kernels: pixels in [0, 1] equal up to rounding through two steps, and
    # the backgrounds' VAE encoder.
    pipe = _tiny_bcm_pipe()
    tol = rounding_tolerance(1.0, pipeline_depth(pipe, 2) + reduction_depth(pipe.vae.encoder))
    assert row["max_abs_diff"] <= tol and row["max_abs_diff_batched_reference"] <= tol


def test_training_benchmark_reference_takes_the_same_first_step(tmp_path):
    rows = _run("bench_training.py", "--batch-size", "2", "--bcm", "on", out=tmp_path / "training.json")
    (row,) = rows
    assert row["bcm"] and row["reference"]["precision"] == "fp32"
    assert row["ours"]["s_per_step"] > 0 and row["reference"]["s_per_step"] > 0
    # The first loss (an MSE, about 1) through one forward; the gradient norm, relative, through the backward too.
    pipe = _tiny_bcm_pipe()
    forward = reduction_depth(pipe.unet, pipe.text_encoder) + 1
    assert row["max_abs_diff"] <= rounding_tolerance(row["ours_first_loss"], forward)
    assert row["grad_norm_rel_diff"] <= rounding_tolerance(1.0, 2 * forward)
    assert row["ours_first_loss"] > 0
