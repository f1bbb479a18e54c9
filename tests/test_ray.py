"""`--executor ray` on a local Ray of 2 CPUs started here: the same tables as the local executor, a killed
worker retried, a failing step reported while the others go on, resume across executors, shared storage.

Skipped where Ray is not installed (``pip install -e ".[test,ray]"`` installs it)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_benchmark import STEP_FUNCTIONS, _boom, _csv, tiny_config

import dualanodiff
import dualanodiff.benchmark as bm
from dualanodiff.benchmark import run_benchmark
from dualanodiff.cli import main
from dualanodiff.errors import InputError
from dualanodiff.executors.ray_benchmark import RayRunner
from dualanodiff.executors.ray_cluster import import_ray

from rounding import assert_equal_up_to_rounding

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
TABLES = ("localization.csv", "quality.csv", "classification.csv")


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """The folder where a test asks the workers for a fault (see ray_worker_hooks.py)."""
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def local_ray(faults):
    """A Ray of 2 CPUs whose workers import this checkout and install the fault hooks."""
    import ray

    paths = [
        str(Path(__file__).parent),
        str(Path(dualanodiff.__file__).parents[1]),
        os.environ.get("PYTHONPATH"),
    ]
    with pytest.MonkeyPatch.context() as mp:  # the workers inherit the environment of the Ray started here
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        mp.setenv("DUALANODIFF_TEST_FAULTS", str(faults))
        ray.init(
            num_cpus=2,
            num_gpus=0,
            include_dashboard=False,
            object_store_memory=80 * 1024**2,
            runtime_env={"worker_process_setup_hook": "ray_worker_hooks.install"},
            logging_level="WARNING",
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def config(synthetic_pill_root, tiny_base_dir, random_quality_weights):
    """The tiny benchmark of test_benchmark.py, one pair per sampler call: a pair is then the same bytes
    whether it is made in one batch or after a resume (a batch's float rounding depends on its size)."""
    return tiny_config(synthetic_pill_root, tiny_base_dir, "unset", random_quality_weights).with_settings(
        gen_batch_size=1
    )


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    """The local executor's run: the tables every Ray run must reproduce. On one torch thread, as a Ray task
    of one CPU runs (OMP_NUM_THREADS=1): float sums over other thread counts round differently."""
    import torch

    out = tmp_path_factory.mktemp("local") / "bench"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_benchmark(replace(config, out=str(out)))
    finally:
        torch.set_num_threads(threads)
    return out


def _rows(path: Path, method: str) -> list[dict]:
    return [r for r in _csv(path) if r["method"] == method]


def _statuses(result) -> dict[str, dict]:
    return {s["id"]: s for s in result["steps"]}


@pytest.mark.slow
@needs_ray
def test_ray_gives_the_local_tables_and_a_rerun_does_nothing(
    config, reference, local_ray, tmp_path, monkeypatch
):
    out = tmp_path / "bench"
    ray_config = replace(config, out=str(out))
    result = run_benchmark(ray_config, RayRunner())
    statuses = _statuses(result)
    assert {s["status"] for s in statuses.values()} == {"done"}
    assert all(s["node"] and s["attempts"] == 1 for s in statuses.values())
    for table in TABLES:  # same seeds, same numbers, to the last digit
        assert (out / table).read_text() == (reference / table).read_text(), table
    local = json.loads((reference / "summary.json").read_text())
    assert result["results"] == local["results"]
    for kind in ("crack", "scratch"):
        folder = Path("generated/dualanodiff/pill") / kind
        for name in ("00000.png", "00003.png"):
            made_on_ray = np.asarray(Image.open(out / folder / "image" / name))
            assert np.array_equal(made_on_ray, np.asarray(Image.open(reference / folder / "image" / name)))

    # The same command again: every step is finished, so no task runs and no file changes.
    markers = {p: p.stat().st_mtime_ns for p in (out / "steps").iterdir()}
    started = time.perf_counter()
    again = run_benchmark(ray_config, RayRunner())
    seconds = time.perf_counter() - started
    assert {s["status"] for s in again["steps"]} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in (out / "steps").iterdir()} == markers
    assert again["results"] == result["results"]
    print(f"second Ray run over a finished folder: {seconds:.2f} s")

    # The local executor resumes the Ray run's folder too (and has nothing to do).
    for name in STEP_FUNCTIONS:
        monkeypatch.setattr(bm, name, _boom)
    assert {s["status"] for s in run_benchmark(ray_config)["steps"]} == {"skipped"}


@pytest.mark.slow
@needs_ray
def test_killed_worker_is_retried_and_a_failing_step_leaves_the_others_going(
    config, reference, local_ray, faults, tmp_path
):
    out = tmp_path / "bench"
    (faults / "kill").write_text("generated/dualanodiff/pill/crack")  # dies after its first pair
    (faults / "fail").write_text("generated/perlin/pill/scratch")  # fails at every attempt
    run_config = replace(config, out=str(out), methods=["dualanodiff", "perlin"])
    result = run_benchmark(run_config, RayRunner())
    statuses = _statuses(result)

    killed = statuses["generate/dualanodiff/pill/crack"]
    assert killed["status"] == "done" and killed["attempts"] == 2
    assert not (faults / "kill").exists()  # the fault fired
    manifest = (out / "generated/dualanodiff/pill/crack/manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in manifest] == [
        0,
        1,
        2,
        3,
    ]  # resumed after pair 0, not redone

    failed = statuses["generate/perlin/pill/scratch"]
    assert failed["status"] == "failed" and "RuntimeError: injected failure" in failed["error"]
    for step in ("quality/perlin/pill", "localization/perlin/pill", "classification/perlin/pill"):
        assert statuses[step]["status"] == "not run"
        assert "generate/perlin/pill/scratch" in statuses[step]["reason"]
    assert statuses["generate/perlin/pill/crack"]["status"] == "done"
    assert all(s["status"] == "done" for i, s in statuses.items() if "perlin" not in i)
    assert "Steps that did not finish" in result["summary"] and "injected failure" in result["summary"]
    for table in TABLES:  # the retried step made exactly what an undisturbed run makes
        assert _rows(out / table, "dualanodiff") == _rows(reference / table, "dualanodiff")
        assert _rows(out / table, "perlin") == []

    # Once the fault is gone, the same command runs only what did not finish.
    (faults / "fail").unlink()
    rerun = _statuses(run_benchmark(run_config, RayRunner()))
    ran = sorted(i for i, s in rerun.items() if s["status"] == "done")
    assert ran == ["classification/perlin/pill", "generate/perlin/pill/scratch", "localization/perlin/pill",
                   "quality/perlin/pill"]  # fmt: skip
    for table in TABLES:
        assert _rows(out / table, "perlin") == _rows(reference / table, "perlin")


@pytest.mark.slow
@needs_ray
def test_cluster_problems_are_one_line_errors_before_any_work(
    synthetic_pill_root, local_ray, faults, tmp_path, capsys
):
    argv = ["benchmark", "--data", str(synthetic_pill_root), "--out", str(tmp_path / "b"), "--methods", "none",
            "--no-quality", "--no-classification", "--executor", "ray"]  # fmt: skip
    (faults / "blind").write_text("")
    try:
        assert main(argv) == 2
    finally:
        (faults / "blind").unlink()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "cannot see the output folder" in err and "node " in err and "shared storage" in err
    assert not list((tmp_path / "b" / "steps").glob("*.json"))  # nothing ran
    assert not list((tmp_path / "b" / ".dualanodiff").glob("probe-*"))  # and the probe files are gone

    # An address where no Ray listens is refused at once (Ray itself would retry for minutes).
    assert main([*argv, "--ray-address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--ray-address 127.0.0.1:1: nothing answers there" in err, err

    with pytest.raises(InputError, match="--device cuda: the Ray cluster has no GPU"):
        run_benchmark(bm.BenchmarkConfig(data=str(synthetic_pill_root), out=str(tmp_path / "c"), methods=["none"],
                                         quality=False, device="cuda"), RayRunner())  # fmt: skip


@pytest.mark.slow
@needs_ray
def test_generate_on_ray_makes_the_pairs_one_process_makes(
    tiny_base_dir, tiny_adapters, local_ray, tmp_path, capsys
):
    from dualanodiff.generate import GenerateConfig, generate_to_folder

    common = ["--base", str(tiny_base_dir), "--adapters", str(tiny_adapters), "--num-pairs", "5", "--steps", "2",
              "--batch-size", "1", "--max-area", "1.0", "--device", "cpu"]  # fmt: skip
    assert (
        main(["generate", *common, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-shards", "2"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert (summary["complete"], summary["written"], summary["missing"], summary["ray_shards"]) == (
        5,
        5,
        0,
        2,
    )
    generate_to_folder(
        GenerateConfig(
            base=str(tiny_base_dir),
            adapters=str(tiny_adapters),
            out=str(tmp_path / "one"),
            num_pairs=5,
            steps=2,
            batch_size=1,
            max_mask_area=1.0,
            device="cpu",
        ),  # fmt: skip
        process_index=0,
        num_processes=1,
        show_progress=False,
    )
    # Bitwise: both make one pair per call on one thread (Ray gives each task OMP_NUM_THREADS = its one CPU), the
    # same kernels on the same files and shapes.
    for kind in ("image", "part", "mask"):
        names = sorted(p.name for p in (tmp_path / "one" / kind).glob("*.png"))
        assert names == sorted(p.name for p in (tmp_path / "ray" / kind).glob("*.png")) and len(names) == 5
        for name in names:
            a = np.asarray(Image.open(tmp_path / "one" / kind / name))
            assert np.array_equal(a, np.asarray(Image.open(tmp_path / "ray" / kind / name))), (kind, name)


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, synthetic_pill_root, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, installed or not
    with pytest.raises(InputError, match=r"pip install 'dualanodiff\[ray\]'"):
        import_ray()
    argv = ["benchmark", "--data", str(synthetic_pill_root), "--out", str(tmp_path / "b"), "--methods", "none",
            "--executor", "ray"]  # fmt: skip
    assert main(argv) == 2
    assert "needs Ray" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_the_cli_lists_unfinished_steps_and_exits_1(monkeypatch, synthetic_pill_root, tmp_path, capsys):
    steps = [{"id": "generate/perlin/pill/crack", "status": "failed", "error": "RuntimeError: boom"},
             {"id": "localization/perlin/pill", "status": "not run", "reason": "reads generate/perlin/pill/crack"},
             {"id": "localization/none/pill", "status": "done", "seconds": 1.0}]  # fmt: skip
    monkeypatch.setattr(bm, "run_benchmark", lambda cfg, runner: {"summary": "tables", "steps": steps})
    assert main(["benchmark", "--data", str(synthetic_pill_root), "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == "tables"
    lines = captured.err.strip().splitlines()
    assert lines[0] == "dualanodiff benchmark: generate/perlin/pill/crack: failed: RuntimeError: boom"
    assert lines[1].startswith("dualanodiff benchmark: localization/perlin/pill: not run: reads")
    assert "2 step(s) did not finish" in lines[2]


def test_the_gpu_hours_in_docs_ray_md_are_what_the_script_computes(tmp_path):
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "mvtec_gpu_hours", root / "benchmarks" / "mvtec_gpu_hours.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    times = {k: v for k, (v, _) in script.TIMES.items()}
    steps = script.step_graph(times, pairs=1000, loc_runs=3)
    total = sum(h for _, h, _ in steps)
    # float64 sums of the same hours in another order: one rounding a step.
    assert_equal_up_to_rounding(
        script.wall_hours(steps, 1), total, len(steps), np.float64
    )  # one after another
    chain = times["train_h_per_type"] + 1000 * times["gen_s_per_pair"] / 3600 + 3 * times["loc_h_per_run"]
    longest = script.wall_hours(steps, 10_000)  # unlimited GPUs: the longest chain
    assert_equal_up_to_rounding(longest, chain, len(steps), np.float64)
    assert sum(1 for s, _, _ in steps if s.startswith("train/")) == 73

    recorded = json.loads((root / "benchmarks" / "results" / "mvtec-gpu-hours.json").read_text())
    sys_argv = ["mvtec_gpu_hours.py", "--out", str(tmp_path / "again.json")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", sys_argv)
        script.main()
    assert json.loads((tmp_path / "again.json").read_text()) == recorded
    docs = (root / "docs" / "ray.md").read_text()
    assert f"**{recorded['gpu_hours_total']}**" in docs
    assert (
        "| wall-clock hours | " + " | ".join(str(v) for v in recorded["wall_hours"].values()) + " |" in docs
    )
    for kind, hours in recorded["gpu_hours"].items():
        assert f"| {hours} |" in docs, kind
