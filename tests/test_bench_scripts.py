"""The benchmark scripts run end to end, and their paths agree: the authors' structure (one pair per call,
per-branch attention loop, BCM as a second forward), measured in other processes, makes the same pairs and the
same first training step as ours. The one-command GPU check runs its whole code on the CPU, and its machinery
(budget, rows, the largest-batch search) keeps what was measured when a row fails or time runs out. Times are
recorded, never asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --- the one-command GPU check, rehearsed on the CPU ------------------------------------------------------------


def _numbers(value) -> list[float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [n for item in items for n in _numbers(item)]


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_row_as_it_goes(tmp_path):
    """`gpu_check.py --smoke`: the GPU check's code on the CPU (tiny base, toy sizes), every row in the file as
    soon as it ends, all finite, the authors' structure agreeing with ours to bf16 rounding."""
    out, log = tmp_path / "check.json", tmp_path / "log.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--smoke", "--no-compile", "--out", str(out)]
    with log.open("w") as sink:
        proc = subprocess.Popen(command, cwd=BENCHMARKS, env=env, stdout=sink, stderr=subprocess.STDOUT)
        seen = []  # the rows in the file, each time it changed while the check ran
        while proc.poll() is None:
            if out.exists():
                rows = json.loads(out.read_text())["results"]  # always whole: written atomically
                if not seen or len(rows) != len(seen[-1]):
                    seen.append(rows)
            time.sleep(0.05)
    assert proc.returncode == 0, log.read_text()
    data = json.loads(out.read_text())
    meta, rows = data["meta"], data["results"]
    assert meta["finished"] and meta["device"].startswith("cpu") and meta["base"] == "tiny"
    assert {"torch", "diffusers", "transformers"} <= set(meta["stack"])
    assert len(seen) >= 5 and all(rows[: len(s)] == s for s in seen)  # the file grew row by row

    kinds = [r["kind"] for r in rows]
    assert (
        kinds
        == ["build"]
        + ["generation", "reference"] * 2
        + ["training"] * 4
        + ["max_batch"] * 2
        + ["generation"] * 2
    )
    *measured, compiled_off, compiled_on = rows
    assert all(r["status"] == "ok" for r in measured), [r.get("error") for r in measured]
    assert all(math.isfinite(n) for r in measured for n in _numbers(r))
    for r in (compiled_off, compiled_on):
        assert r["compile"] and r["status"] == "skipped" and "--no-compile" in r["reason"]

    build = rows[0]["trainable_parameters"]
    assert (
        min(build.values()) > 0
        and build["total"] == build["lora"] + build["saim"] + build["bcm"] + build["text_lora"]
    )
    for r in rows:
        if r["kind"] == "generation" and r["status"] == "ok":
            assert r["s_per_pair"] > 0 and r["peak_memory_mb"] > 0 and r["outputs_finite"]
        if r["kind"] == "reference":  # ours in bf16 against the fp32 reference: bf16 rounding, no more
            # Empirical bounds, not derived here: one bf16 rounding (u = 2^-8) per layer over the tiny UNet's
            # ~540 reductions is a typical relative error of sqrt(540) x 2^-8 = 0.09, which the mean's bound
            # matches; the row records no max |output| to derive the max's bound from.
            assert r["speedup_per_pair"] > 0
            assert r["first_step_max_abs_diff"] < 0.15
            assert r["first_step_mean_abs_diff"] < 0.1 * r["first_step_output_mean_abs"]  # other seeds: ~1x
        if r["kind"] == "training":
            assert r["s_per_step"] > 0 and r["first_loss"] > 0 and r["finite"]
        if r["kind"] == "max_batch":  # no allocator cap on the CPU: the search reaches its limit
            assert r["largest_batch"] == r["max_batch"] and r["limit_reached"]
            assert [t["batch_size"] for t in r["tries"]] == [2] and not r["memory_cap_applied"]
    assert "| BCM |" in log.read_text()  # the tables, printed at the end


def _runner():
    sys.path.insert(0, str(BENCHMARKS))
    import check_runner

    return check_runner


@pytest.mark.parametrize(
    "threshold, tried", [(13, [4, 8, 16, 12, 14, 13]), (64, [4, 8, 16, 32, 64]), (0, [4, 2, 1])]
)
def test_largest_batch_search_doubles_then_bisects(threshold, tried):
    runner = _runner()
    released = []

    def try_size(size: int) -> dict:
        if size > threshold:
            raise torch.OutOfMemoryError(f"CUDA out of memory at batch {size}")
        return {"peak_memory_mb": 10.0 * size}

    tries: list[dict] = []
    largest = runner.largest_fitting(try_size, 4, 64, tries, lambda: released.append(len(tries)))
    assert largest == threshold
    assert [t["batch_size"] for t in tries] == tried and released == list(range(len(tried)))
    assert all(t["fits"] == (t["batch_size"] <= threshold) for t in tries)
    assert all("out of memory" in t["error"] for t in tries if not t["fits"])


def test_largest_batch_search_counts_library_allocation_failures_and_raises_the_rest():
    runner = _runner()

    def cublas(size: int) -> dict:
        if size > 4:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        return {}

    assert runner.largest_fitting(cublas, 4, 64, []) == 4

    def broken(size: int) -> dict:
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        runner.largest_fitting(broken, 4, 64, [])


def test_rows_record_errors_and_the_budget_interrupts_and_skips(tmp_path):
    """A failing row records its error and the next runs; the deadline interrupts a running row (what it had
    measured is kept) and skips the rest; the file holds every finished row before the next starts."""
    runner = _runner()
    path = tmp_path / "rows.json"
    on_disk = []

    def fails(record):
        on_disk.append(len(json.loads(path.read_text())["results"]))
        raise RuntimeError("no model")

    def slow(record):
        on_disk.append(len(json.loads(path.read_text())["results"]))
        record["partial"] = 1.5
        time.sleep(30)

    rows = [
        runner.Row("a", "x", lambda record: record.update(value=1.0)),
        runner.Row("b", "x", fails),
        runner.Row("c", "x", lambda record: None, skip="switched off"),
        runner.Row("d", "x", slow),
        runner.Row("e", "x", lambda record: None),
    ]
    budget = runner.Budget(seconds=1.0, started=time.time())
    results = runner.ResultsFile(path, {"device": "test"})
    start = time.perf_counter()
    runner.run_rows(rows, budget, results)
    assert time.perf_counter() - start < 10  # interrupted at the deadline, not after the 30 s sleep
    a, b, c, d, e = json.loads(path.read_text())["results"]
    assert on_disk == [1, 3]
    assert a["status"] == "ok" and a["value"] == 1.0
    assert b["status"] == "error" and b["error"] == "RuntimeError: no model" and b["traceback"]
    assert c["status"] == "skipped" and c["reason"] == "switched off"
    assert d["status"] == "interrupted" and d["partial"] == 1.5 and "budget of 1 s" in d["reason"]
    assert e["status"] == "skipped" and "budget of 1 s" in e["reason"]


def test_foreground_study_at_toy_size_writes_its_results(tmp_path, capsys):
    """scripts/foreground_study.py end to end at 32 px and one seed: every row of the study's table, its JSON
    and markdown, and the figure; the objects' IoU is the library's (`demo.alignment.iou`)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "foreground_study.py"
    spec = importlib.util.spec_from_file_location("foreground_study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    from dualanodiff.demo.alignment import iou

    assert study.iou is iou
    out = tmp_path / "foreground.json"
    study.main(["--seeds", "0", "--resolutions", "32", "--out", str(out), "--figure", str(tmp_path / "f.png"),
                "--figure-size", "32"])  # fmt: skip
    result = json.loads(out.read_text())
    names = {r["category"] for r in result["rows"]}
    assert {"pill", "weave"} | {f"pill: {v}" for v in study.VARIANTS} == names
    assert out.with_suffix(".md").read_text() == result["table"] and (tmp_path / "f.png").stat().st_size > 0
    assert result["table"] in capsys.readouterr().out
