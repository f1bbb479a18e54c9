"""How good is `--foreground auto`? The weight-free estimate against the synthetic data's exact foregrounds.

    python scripts/foreground_study.py                      # writes docs/results/foreground_auto.json + the figure

Every image that `make-synthetic` writes (train/good, test/good and every defect type, per seed) is rendered
with its exact object mask (`synthetic.synthetic_sample`); the estimate's IoU with it is measured per category,
and for the texture category whether the estimate rightly finds no object (the whole image is then the BCM
background). Four stress variants of the pill scenes follow MVTec AD's harder set-ups: a light table with a
vignette and a gradient (screw), a low-contrast object, an object cut by the frame, a cast shadow. Writes
the JSON results, the markdown table of docs/foreground.md, and docs/foreground_auto.png.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
from PIL import Image, ImageDraw

import dualanodiff
from dualanodiff.demo.alignment import iou
from dualanodiff.io import save_image_atomic, write_json_atomic, write_text_atomic
from dualanodiff.masks.plain_background import estimate_foreground
from dualanodiff.synthetic import (
    DEFAULT_DEFECT_COUNTS,
    DEFECT_TYPES,
    TEXTURES,
    make_synthetic,
    synthetic_sample,
)

ROOT = Path(__file__).resolve().parent.parent
# as many images as `make-synthetic` writes by default
N_TRAIN_GOOD, N_TEST_GOOD = (
    inspect.signature(make_synthetic).parameters[n].default for n in ("n_train_good", "n_test_good")
)


def images_of(category: str, seed: int, resolution: int):
    """(name, sample) of every image `make_synthetic` writes for ``category``."""
    jobs = [("train", "good", i) for i in range(N_TRAIN_GOOD)] + [
        ("test", "good", i) for i in range(N_TEST_GOOD)
    ]
    jobs += [
        ("test", k, i) for k in DEFECT_TYPES[category] for i in range(DEFAULT_DEFECT_COUNTS[category][k])
    ]
    for split, kind, i in jobs:
        yield f"{split}/{kind}/{i:03d}", synthetic_sample(category, split, kind, i, seed, resolution)


# ------------------------------------------------------------------------------ stress variants of a pill


def _table(res: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:res, 0:res] / res - 0.5
    light = 215 - 60 * (x * x + y * y) + 25 * x + rng.normal(0, 3, (res, res))
    return light[..., None] * np.array([1.0, 0.98, 0.95])


def light_table(s, rng):
    return np.where(s.foreground[..., None], s.image, _table(s.image.shape[0], rng)), s.foreground


def low_contrast(s, rng):
    dimmed = 34 + (s.image.astype(float) - 34) * 0.22  # the object only about 40 levels above the background
    return np.where(s.foreground[..., None], dimmed, s.image), s.foreground


def cut_by_frame(s, rng):
    shift = s.image.shape[1] // 4
    image, fg = np.roll(s.image, shift, axis=1), np.roll(s.foreground, shift, axis=1)
    image[:, :shift] = np.median(s.image[:3].reshape(-1, 3), axis=0)  # the wrapped-around part removed
    fg[:, :shift] = False
    return image, fg


def cast_shadow(s, rng):
    from scipy import ndimage

    res = s.image.shape[0]
    shadow = np.roll(s.foreground.astype(float), (res // 25, res // 25), axis=(0, 1))
    shadow = ndimage.gaussian_filter(shadow, res / 40) * ~s.foreground
    table = _table(res, rng) * (1 - 0.5 * shadow[..., None])
    return np.where(s.foreground[..., None], s.image, table), s.foreground


VARIANTS: dict[str, tuple[str, Callable]] = {
    "light-table": ("pill on a light table with a vignette and a gradient", light_table),
    "low-contrast": ("pill only about 40 grey levels above the background", low_contrast),
    "cut-by-frame": ("pill cut by the image frame", cut_by_frame),
    "cast-shadow": ("pill casting a soft shadow on a light table (the shadow is not object)", cast_shadow),
}


def variant(name: str, s, seed: int):
    image, fg = VARIANTS[name][1](s, np.random.default_rng(seed))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), fg


# ---------------------------------------------------------------------------------------------- measuring


def measure(seeds: list[int], resolutions: list[int]) -> list[dict]:
    rows = []
    for res in resolutions:
        for category in ("pill", "weave"):
            texture = category in TEXTURES
            for seed in seeds:
                ious, found, n, seconds = [], 0, 0, 0.0
                for _, s in images_of(category, seed, res):
                    started = time.perf_counter()
                    mask = estimate_foreground(s.image)
                    seconds += time.perf_counter() - started
                    n += 1
                    found += mask is not None
                    if not texture:
                        ious.append(0.0 if mask is None else iou(mask, s.foreground))
                rows.append(
                    _row(category, "texture" if texture else "object", res, seed, n, found, ious, seconds)
                )
        for name in VARIANTS:
            for seed in seeds:
                ious, found, n, seconds = [], 0, 0, 0.0
                for i in range(N_TRAIN_GOOD):
                    image, fg = variant(
                        name, synthetic_sample("pill", "train", "good", i, seed, res), seed * 1000 + i
                    )
                    started = time.perf_counter()
                    mask = estimate_foreground(image)
                    seconds += time.perf_counter() - started
                    n, found = n + 1, found + (mask is not None)
                    ious.append(0.0 if mask is None else iou(mask, fg))
                rows.append(_row(f"pill: {name}", "object", res, seed, n, found, ious, seconds))
    return rows


def _row(category, kind, res, seed, n, found, ious, seconds) -> dict:
    return {
        "category": category,
        "kind": kind,
        "resolution": res,
        "seed": seed,
        "images": n,
        "object_found": found,
        "iou_mean": float(np.mean(ious)) if ious else None,
        "iou_min": float(np.min(ious)) if ious else None,
        "seconds_per_image": seconds / n,
    }


def table(rows: list[dict]) -> str:
    """Mean over seeds (and the spread between seeds) per category and resolution."""
    lines = [
        "| scenes | px | images per seed | IoU with the exact foreground, mean (min over seeds - max) | worst image "
        "| object found | s / image |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["category"], r["resolution"]) for r in rows))
    for category, res in keys:
        group = [r for r in rows if (r["category"], r["resolution"]) == (category, res)]
        n, found = group[0]["images"], sum(r["object_found"] for r in group) / len(group)
        speed = np.mean([r["seconds_per_image"] for r in group])
        if group[0]["kind"] == "texture":
            iou_cell, worst = "n/a: a texture, the whole image is background", "-"
            found_cell = f"{found:.0f} of {n} (should be 0)"
        else:
            means = [r["iou_mean"] for r in group]
            iou_cell = f"{np.mean(means):.4f} ({min(means):.4f} - {max(means):.4f})"
            worst, found_cell = f"{min(r['iou_min'] for r in group):.4f}", f"{found:.0f} of {n}"
        label = category if ":" not in category else VARIANTS[category.split(": ")[1]][0]
        lines.append(f"| {label} | {res} | {n} | {iou_cell} | {worst} | {found_cell} | {speed:.3f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ figure


def _overlay(image: np.ndarray, estimate: np.ndarray | None, exact: np.ndarray | None) -> np.ndarray:
    """Estimate in green, exact foreground outline in magenta."""
    out = image.astype(float)
    if estimate is not None:
        out[estimate] = 0.55 * out[estimate] + 0.45 * np.array([40, 220, 60])
    if exact is not None:
        from scipy import ndimage

        edge = exact & ~ndimage.binary_erosion(exact, iterations=2)
        out[edge] = [255, 0, 255]
    return out.astype(np.uint8)


def figure(path: Path, res: int = 192) -> None:
    cases = [
        ("pill, stain", synthetic_sample("pill", "test", "stain", 2, 0, res)),
        ("weave (texture)", synthetic_sample("weave", "train", "good", 0, 0, res)),
    ]
    base = synthetic_sample("pill", "train", "good", 3, 0, res)
    scenes = [(label, s.image, s.foreground) for label, s in cases]
    scenes += [(name, *variant(name, base, 7)) for name in VARIANTS]
    columns = ("image", "estimate (green), exact (magenta)", "BCM background")
    pad, head = 6, 22
    canvas = Image.new("RGB", (3 * res + 4 * pad + 120, len(scenes) * (res + pad) + head + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(columns):
        draw.text((120 + pad + c * (res + pad), 6), title, fill="black")
    for r, (label, image, exact) in enumerate(scenes):
        estimate = estimate_foreground(image)
        background = image.copy()
        if estimate is not None:
            background[estimate] = 0
        y = head + r * (res + pad)
        draw.text((pad, y + res // 2 - 6), label, fill="black")
        for c, tile in enumerate((image, _overlay(image, estimate, exact), background)):
            canvas.paste(Image.fromarray(tile), (120 + pad + c * (res + pad), y))
    save_image_atomic(path, np.asarray(canvas))


def _machine() -> str:
    """CPU model and core count (timings are single-threaded numpy/scipy)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores (shared with other jobs), one process, OMP_NUM_THREADS=1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "foreground_auto.json")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "foreground_auto.png")
    parser.add_argument("--figure-size", type=int, default=192, help="side of each picture in the figure")
    args = parser.parse_args(argv)
    rows = measure(args.seeds, args.resolutions)
    markdown = table(rows)
    write_json_atomic(
        args.out,
        {
            "what": "IoU of `--foreground auto` (masks.plain_background.estimate_foreground) with the exact object "
            "masks of the synthetic data, per category, resolution and seed",
            "stack": {
                "dualanodiff": dualanodiff.__version__,
                "numpy": np.__version__,
                "scipy": scipy.__version__,
                "python": platform.python_version(),
            },
            "machine": _machine(),
            "rows": rows,
            "table": markdown,
        },
    )
    write_text_atomic(args.out.with_suffix(".md"), markdown)
    figure(args.figure, args.figure_size)
    print(markdown)


if __name__ == "__main__":
    main()
