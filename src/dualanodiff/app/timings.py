"""How long the app's jobs take, said before they start and while they run.

Before: the measured cost of a training step, a generated pair's sampler step and a detector's training sample
on the demo base (`TIMINGS_FILE`, written by ``python -m dualanodiff.app.timings``), times the sizes on the
page. The table holds processor seconds of one thread: what a machine of that kind doing nothing else takes,
measured the same way on a busy one. While running: the job's own pace so far (`remaining_seconds`,
`recent_pace`), which knows this machine and its load better than any table. Everything here but `measure` is
plain arithmetic, so the tests check the sums without timing anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from ..io import write_json_atomic

TIMINGS_FILE = Path(__file__).resolve().parents[1] / "assets" / "app_timings.json"
DEMO_SIDE = 64  # the demo base's images: the table's training and generation costs are at this side
DETECTORS = 2  # the study trains one on normal images plus pairs, one on normal images alone


def read_timings(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The measured table (None when there is none: the pages then say only what the running job shows)."""
    path = Path(path) if path is not None else TIMINGS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def per_size(measured: dict[str, float], size: float) -> float:
    """Seconds at ``size`` (a batch) from ``{size: seconds}`` measurements: the line through the two measured
    sizes nearest to it (a fixed part and a part per item, as a batch costs), never below zero; one
    measurement alone is taken as proportional to the size."""
    points = sorted((float(k), float(v)) for k, v in measured.items())
    if len(points) == 1:
        ((x, y),) = points
        return y * size / x
    nearest = sorted(points, key=lambda p: (abs(p[0] - size), p[0]))[:2]
    (x0, y0), (x1, y1) = sorted(nearest)
    slope = (y1 - y0) / (x1 - x0)
    return max(0.0, y0 + slope * (size - x0))


def training_seconds(table: dict[str, Any], steps: int, batch_size: int, side: int = DEMO_SIDE) -> float:
    """A demo-base training run: the start-up, then ``steps`` steps of ``batch_size`` pairs; a step's cost
    grows with the pixels of a side other than the demo's 64 px."""
    train = table["train"]
    step = per_size(train["s_per_step"], batch_size) * (side / DEMO_SIDE) ** 2
    return train["startup_s"] + steps * step


def generation_seconds(table: dict[str, Any], num_pairs: int, sampler_steps: int) -> float:
    """Generating ``num_pairs`` pairs of ``sampler_steps`` sampler steps each on the demo base."""
    generate = table["generate"]
    return generate["startup_s"] + num_pairs * sampler_steps * generate["s_per_pair_step"]


def sample_seconds(table: dict[str, Any], width: int, side: int) -> float:
    """Seconds per training sample of one detector of U-Net ``width`` at ``side`` px: the nearest measured
    width and side (the measurement covers its fixed costs), scaled by width squared and pixel count."""
    rows = table["detector"]["s_per_sample"]

    def distance(row: dict[str, Any]) -> tuple[float, float]:
        return abs(math.log(row["width"] / width)), abs(math.log(row["side"] / side))

    row = min(rows, key=distance)
    return row["seconds"] * (width / row["width"]) ** 2 * (side / row["side"]) ** 2


def study_seconds(table: dict[str, Any], epochs: int, samples_per_epoch: int, side: int, width: int) -> float:
    """The study: `DETECTORS` detectors of ``epochs`` epochs of ``samples_per_epoch`` samples, plus start-up."""
    per_detector = epochs * samples_per_epoch * sample_seconds(table, width, side)
    return table["detector"]["startup_s"] + DETECTORS * per_detector


def remaining_seconds(done: float, total: float | None, elapsed: float) -> float | None:
    """Seconds left of a job ``done`` of ``total`` through after ``elapsed`` seconds, at its pace so far."""
    if not total or done <= 0 or elapsed <= 0 or done >= total:
        return None
    return elapsed / done * (total - done)


def recent_pace(log: list[dict[str, Any]], window: int = 20) -> float | None:
    """Seconds per step over the last ``window`` steps of a training loss log (a resumed run's steps before
    its restart count too: the log's elapsed time carries on from the checkpoint)."""
    if len(log) < 2:
        return None
    first, last = log[max(0, len(log) - 1 - window)], log[-1]
    steps = last["step"] - first["step"]
    return (last["elapsed_s"] - first["elapsed_s"]) / steps if steps > 0 else None


_BAR = re.compile(r"(\d+)/(\d+) \[")  # a progress bar's "done/total [" (tqdm's format)


def study_fraction(stage: str, last_line: str) -> float | None:
    """How far the study is (0-1) from its stage ("detector 2/2: ...") and its progress bar's epochs."""
    found = re.match(r"detector (\d+)/(\d+)", stage or "")
    if not found:
        return 1.0 if stage == "report" else None
    index, count = int(found[1]), int(found[2])
    bar = _BAR.search(last_line or "")
    within = int(bar[1]) / int(bar[2]) if bar and int(bar[2]) else 0.0
    return (index - 1 + within) / count


def duration_words(seconds: float) -> str:
    """A duration as a person says it: under a minute, about 4 minutes, about 1.5 hours."""
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"
    if seconds < 48 * 3600:
        return f"about {seconds / 3600:.1f} hours"
    return f"about {round(seconds / 86400)} days"


def table_conditions(table: dict[str, Any]) -> str:
    """Where the table was measured, for the page's estimates: 'a 2-core cpu (x86_64) with one thread', and
    'busy' with its load when the machine did other work then (a load above half its cores): idle is faster."""
    meta = table.get("meta", {})
    threads = meta.get("threads")
    thread_words = "one thread" if threads == 1 else f"{threads} threads" if threads else "torch's threads"
    machine = meta.get("machine", "an unnamed machine")
    load, cores = meta.get("load_before"), meta.get("cores")
    if load is not None and cores and load > cores / 2:
        return f"a busy {machine} with {thread_words} (load {load}; idle is faster)"
    return f"a {machine} with {thread_words}"


# -- measuring -----------------------------------------------------------------------------------------------


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
    from ..synthetic import make_synthetic
    from .handlers import AppHandlers

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

    from ..training import train_adapters
    from .fields import TrainFields

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

    from ..generate import generate_to_folder
    from .fields import GenerateFields
    from .worker import discard_generated

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

    from .evaluation import run_study
    from .fields import StudyFields

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
        "command": "python -m dualanodiff.app.timings",
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
        prog="python -m dualanodiff.app.timings",
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
