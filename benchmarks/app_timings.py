"""The cost of the web app's three jobs on this machine, the table its pages estimate from.

    python benchmarks/app_timings.py            # a few minutes; writes src/dualanodiff/assets/app_timings.json

Training steps at batch 1, 2 and 4, generated pairs with the adapters' own recipe, and the study's detector at
three U-Net widths and two sides, all on the demo base at 64 px (synthetic pill/crack images added to a
workspace as a user would). Each cost is the difference of two run lengths, so the start-up drops out; in
processor seconds of one thread, which is the wall time of an otherwise idle machine of that kind
(`dualanodiff.app.timings` reads the table and does the arithmetic).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from dualanodiff.app.timings import DEMO_SIDE, DETECTORS, TIMINGS_FILE
from dualanodiff.io import write_json_atomic


def _machine() -> str:
    return f"{os.cpu_count()}-core cpu ({platform.machine()})"


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_seconds(call) -> float:
    """The processor time ``call`` takes in this process: with one thread, the wall time it would take on a
    machine doing nothing else (the demo measured 253 s wall, 252 s CPU), whatever else runs here now."""
    started = time.process_time()
    call()
    return time.process_time() - started


def _project(work: Path):
    """An app workspace on a small synthetic pill/crack set (64 px, the demo's side), as a user would add it."""
    from dualanodiff.app.handlers import AppHandlers
    from dualanodiff.synthetic import make_synthetic

    root = make_synthetic(
        work / "synthetic", resolution=DEMO_SIDE, n_train_good=6, n_test_good=3,
        categories=["pill"], defect_counts={"pill": {"crack": 6}},
    )  # fmt: skip
    pill = root / "pill"
    images = sorted((pill / "test" / "crack").glob("*.png"))
    handlers = AppHandlers(work / "app")
    handlers.add_uploads(
        "pill", "crack", [str(p) for p in images],
        [str(pill / "ground_truth" / "crack" / f"{p.stem}_mask.png") for p in images],
        [str(p) for p in sorted((pill / "train" / "good").glob("*.png"))],
        [str(p) for p in sorted((pill / "test" / "good").glob("*.png"))],
    )  # fmt: skip
    return handlers


def _measure_training(handlers, batches: tuple[int, ...], steps: tuple[int, int]) -> dict[str, Any]:
    """Seconds per step per batch size, from runs of two lengths (the start-up drops out), and the start-up."""
    from dataclasses import replace

    from dualanodiff.app.fields import TrainFields
    from dualanodiff.training import train_adapters

    per_step, startup = {}, []
    base = str(handlers.workspace.demo_base())
    for batch in batches:
        cpu = []
        for count in steps:
            fields = TrainFields(images="split", max_steps=count, batch_size=batch, checkpoint_every=0)
            config = replace(handlers.train_config(fields), base=base, progress=False, resume=False)
            cpu.append(_cpu_seconds(lambda config=config: train_adapters(config)))
        step = (cpu[1] - cpu[0]) / (steps[1] - steps[0])
        per_step[str(batch)] = round(step, 4)
        startup.append(cpu[0] - steps[0] * step)
    return {"s_per_step": per_step, "startup_s": round(max(0.0, min(startup)), 1), "steps_timed": list(steps)}


def _measure_generation(handlers, counts: tuple[int, int], sampler_steps: int) -> tuple[dict[str, Any], str]:
    """Seconds per pair and sampler step (from two pair counts, so the start-up drops out) and the start-up;
    and the folder of the larger count (the study's pairs)."""
    from dataclasses import replace

    from dualanodiff.app.fields import GenerateFields
    from dualanodiff.app.worker import discard_generated
    from dualanodiff.generate import generate_to_folder

    walls = []
    for count in counts:
        fields = GenerateFields(num_pairs=count, steps=sampler_steps, max_mask_area=1.0)
        config = handlers.generate_config(fields)
        config = replace(config, out=str(Path(config.out).with_name(f"timing-{count}")))
        discard_generated(config.out)
        walls.append(_cpu_seconds(lambda config=config: generate_to_folder(config, show_progress=False)))
    per_pair = (walls[1] - walls[0]) / (counts[1] - counts[0])
    timing = {
        "s_per_pair_step": round(per_pair / sampler_steps, 5),
        "startup_s": round(max(0.0, walls[0] - counts[0] * per_pair), 1),
        "pairs_timed": list(counts),
        "sampler_steps": sampler_steps,
    }
    return timing, config.out


def _measure_detector(handlers, generated: str, sizes: list[tuple[int, int]], samples: int) -> dict[str, Any]:
    """Seconds per training sample of one detector per (width, side), from a 1- and a 3-epoch study (the
    difference leaves the start-up and the report out); each epoch's check on held-out images is included."""
    from dataclasses import replace

    from dualanodiff.app.evaluation import run_study
    from dualanodiff.app.fields import StudyFields

    rows, startup = [], []
    for width, side in sizes:
        walls = {}
        for epochs in (1, 3):
            fields = StudyFields(
                epochs=epochs, samples_per_epoch=samples, resolution=side, base_channels=width
            )
            request = handlers.study_request(fields)
            out = f"{request.out}-timing-{width}-{side}-{epochs}"
            request = replace(request, out=out, generated=generated)
            walls[epochs] = _cpu_seconds(lambda request=request: run_study(request, stage=lambda _: None))
        per_epoch = (walls[3] - walls[1]) / 2 / DETECTORS
        rows.append({"width": width, "side": side, "seconds": round(per_epoch / samples, 5)})
        startup.append(walls[1] - DETECTORS * per_epoch)
    return {"s_per_sample": rows, "startup_s": round(max(0.0, min(startup)), 1), "samples_timed": samples}


def measure(threads: int = 1) -> dict[str, Any]:
    """Time the app's three jobs on this machine with the demo base (a few minutes): training at batch 1, 2
    and 4, generation with the adapters' own recipe, and the study at three U-Net widths and two sides."""
    import torch

    torch.set_num_threads(threads)
    load_before = _load()
    with tempfile.TemporaryDirectory() as folder:
        handlers = _project(Path(folder))
        train = _measure_training(handlers, (1, 2, 4), steps=(8, 32))
        generate, pairs = _measure_generation(handlers, (4, 12), sampler_steps=20)
        sizes = [(16, 64), (32, 64), (64, 64), (16, 128), (64, 128)]
        detector = _measure_detector(handlers, pairs, sizes, samples=64)
    meta = {
        "command": "python benchmarks/app_timings.py",
        "machine": _machine(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "load_before": load_before,
        "load_after": _load(),
        "note": "the demo base at 64 px on synthetic pill/crack images; processor seconds of one thread, so "
        "the wall time of an otherwise idle machine",
    }
    return {"meta": meta, "train": train, "generate": generate, "detector": detector}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/app_timings.py",
        description="Measure the app's jobs on this machine and write the table its pages estimate from.",
    )
    parser.add_argument(
        "--out", default=str(TIMINGS_FILE), help=f"where to write it (default {TIMINGS_FILE})"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads, as the app's jobs get them"
    )
    args = parser.parse_args(argv)
    table = measure(args.threads)
    write_json_atomic(Path(args.out), table)
    print(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
