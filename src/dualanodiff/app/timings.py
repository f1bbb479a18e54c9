"""How long the app's jobs take, said before they start and while they run.

Before: the measured cost of a training step, a generated pair's sampler step and a detector's training sample
on the demo base (`TIMINGS_FILE`, written by ``python benchmarks/app_timings.py``), times the sizes on the
page. The table holds processor seconds of one thread: what a machine of that kind doing nothing else takes,
measured the same way on a busy one. While running: the job's own pace so far (`remaining_seconds`,
`recent_pace`), which knows this machine and its load better than any table. Everything here is plain
arithmetic, so the tests check the sums without timing anything.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

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
