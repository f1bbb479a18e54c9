"""`dualanodiff demo`: the whole method on CPU in a few minutes, ending in an HTML report a person can look at.

Steps: make the synthetic dataset, write the shipped demo base (`demo_base`) as a diffusers folder, then the
protocol runner (`run_benchmark`, the same code as a real benchmark at toy sizes) trains the adapters of one
defect type on its few-shot split, generates DualAnoDiff pairs and Crop&Paste pairs, and trains the downstream
U-Net on each (and on normal images only). A reference segmenter then measures how well the generated masks
fit the generated defects (`demo_alignment`). Everything resumes: a rerun with the same settings skips the
finished steps.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .io import write_json_atomic

# Sizes per mode: "full" is what `dualanodiff demo` runs (<= 10 minutes on 2 CPU cores), "quick" the test suite's.
MODES: dict[str, dict[str, Any]] = {
    "full": dict(
        train_steps=400,
        num_pairs=64,
        sampler_steps=25,
        loc_epochs=25,
        loc_samples_per_epoch=128,
        loc_base_channels=16,
        seg_steps=600,
        max_mask_area=0.5,
    ),
    "quick": dict(
        train_steps=12,
        num_pairs=8,
        sampler_steps=4,
        loc_epochs=2,
        loc_samples_per_epoch=16,
        loc_base_channels=8,
        seg_steps=10,
        max_mask_area=1.0,  # toy training leaves whole-image masks: keep them, or nothing reaches the detector
    ),
}
METHOD_LABELS = {"dualanodiff": "DualAnoDiff", "crop-paste": "Crop&Paste", "none": "no generated data"}


@dataclass
class DemoConfig:
    """The demo's settings; sizes left None come from the mode (`MODES`)."""

    out: str = "dualanodiff-demo"
    quick: bool = False
    category: str = "pill"
    anomaly: str = "spot"
    seed: int = 0
    resolution: int = 64
    train_lr: float = 1e-3
    train_rank: int = 16
    train_batch_size: int = 4
    guidance: float = 2.5
    saim: bool = True
    # torch CPU threads (None: torch's default). 1 by default: on 2 cores shared with any other work, two
    # OpenMP threads stall each other (measured 2-8 s per training step against 0.25 s with one thread).
    threads: int | None = 1
    train_steps: int | None = None
    num_pairs: int | None = None
    sampler_steps: int | None = None
    loc_epochs: int | None = None
    loc_samples_per_epoch: int | None = None
    loc_base_channels: int | None = None
    seg_steps: int | None = None
    max_mask_area: float | None = None
    progress: bool = True
    base_weights: str | None = None  # folder with demo_base.safetensors/.json; None: the shipped ones
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> DemoConfig:
        sizes = MODES["quick" if self.quick else "full"]
        return replace(self, **{k: v for k, v in sizes.items() if getattr(self, k) is None})


def _say(cfg: DemoConfig, text: str) -> None:
    if cfg.progress:
        print(text, flush=True)


def benchmark_config(cfg: DemoConfig, data: Path, base: Path, out: Path):
    """The protocol runner's settings for the demo: one type, three methods, toy sizes."""
    from .benchmark import BenchmarkConfig

    return BenchmarkConfig(
        data=str(data),
        out=str(out),
        base=str(base),
        categories=[cfg.category],
        anomalies=[cfg.anomaly],
        methods=["dualanodiff", "crop-paste", "none"],
        quick=True,
        seed=cfg.seed,
        device="cpu",
        progress=cfg.progress,
        train_steps=cfg.train_steps,
        train_batch_size=cfg.train_batch_size,
        train_lr=cfg.train_lr,
        train_rank=cfg.train_rank,
        train_text_encoder_rank=cfg.train_rank,
        train_resolution=cfg.resolution,
        num_pairs=cfg.num_pairs,
        sampler_steps=cfg.sampler_steps,
        guidance=cfg.guidance,
        gen_batch_size=16,
        gen_resolution=cfg.resolution,
        max_mask_area=cfg.max_mask_area,
        quality=False,
        loc_epochs=cfg.loc_epochs,
        loc_samples_per_epoch=cfg.loc_samples_per_epoch,
        loc_resolution=cfg.resolution,
        loc_base_channels=cfg.loc_base_channels,
        loc_runs=1,
        classification=False,
    )


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the demo end to end; returns {"report": path, "results": {...}, "timings": {...}}."""
    from .benchmark import run_benchmark
    from .demo_alignment import SegmenterConfig, pairs_alignment, train_segmenter
    from .demo_base import demo_base_folder
    from .synthetic import DEFECT_TYPES, make_synthetic

    cfg = config.resolved()
    if cfg.category not in DEFECT_TYPES or cfg.anomaly not in DEFECT_TYPES[cfg.category]:
        raise InputError(
            f"demo: {cfg.category}/{cfg.anomaly} is not a synthetic anomaly type; choose from "
            + "; ".join(f"{c}: {', '.join(k)}" for c, k in DEFECT_TYPES.items())
        )
    if not cfg.saim:
        raise InputError("demo: SAIM off is measured by scripts/miniature_study.py, not by the demo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)

    _say(cfg, f"[demo 1/5] synthetic dataset ({cfg.resolution} px) -> {out / 'data'}")
    t0 = time.perf_counter()
    data = make_synthetic(
        out / "data",
        seed=cfg.seed,
        resolution=cfg.resolution,
        categories=[cfg.category],
        progress=cfg.progress,
    )
    lap("dataset_s", t0)

    _say(cfg, f"[demo 2/5] demo base (tiny SD pretrained on the synthetic normals) -> {out / 'base'}")
    t0 = time.perf_counter()
    base = demo_base_folder(out / "base", cfg.base_weights)
    lap("base_s", t0)

    _say(
        cfg,
        f"[demo 3/5] protocol runner: train adapters ({cfg.category}/{cfg.anomaly}, {cfg.train_steps} steps), "
        f"generate {cfg.num_pairs} DualAnoDiff + {cfg.num_pairs} Crop&Paste pairs, train the detector 3 times",
    )
    t0 = time.perf_counter()
    bench = run_benchmark(benchmark_config(cfg, data, base, out / "benchmark"))
    lap("benchmark_s", t0)

    _say(cfg, "[demo 4/5] mask alignment: a reference segmenter trained on real synthetic defects")
    t0 = time.perf_counter()
    from .data.generated import read_generated

    seg = train_segmenter(
        cfg.category, cfg.resolution, SegmenterConfig(steps=cfg.seg_steps, seed=cfg.seed), cfg.progress
    )
    gen_dirs = {
        m: out / "benchmark" / "generated" / m / cfg.category / cfg.anomaly
        for m in ("dualanodiff", "crop-paste")
    }
    alignment = {m: pairs_alignment(seg, read_generated(d)) for m, d in gen_dirs.items()}
    alignment["real test images"] = _real_alignment(seg, data, cfg)
    lap("alignment_s", t0)

    _say(cfg, "[demo 5/5] HTML report")
    t0 = time.perf_counter()
    timings["total_before_report_s"] = round(time.perf_counter() - started, 1)
    results = _localization_rows(bench, cfg)
    report_path = write_demo_report(cfg, out, data, gen_dirs, results, alignment, timings)
    lap("report_s", t0)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    summary = {
        "report": str(report_path),
        "localization": results,
        "alignment": alignment,
        "timings": timings,
    }
    write_json_atomic(out / "demo_results.json", {**summary, "config": asdict(cfg)})
    _say(cfg, f"demo finished in {timings['total_s']:.0f} s. Open the report: {report_path.resolve()}")
    return summary


def _real_alignment(seg, data: Path, cfg: DemoConfig) -> dict[str, float]:
    """The segmenter against the ground truth of the real test images of the type (its ceiling)."""
    from .data.images import load_mask, load_rgb
    from .data.mvtec import anomaly_samples, few_shot_split
    from .demo_alignment import mask_alignment

    test = few_shot_split(anomaly_samples(data, cfg.category, cfg.anomaly)).test
    return mask_alignment(seg, [load_rgb(s.image) for s in test], [load_mask(s.mask) for s in test])


def _localization_rows(bench: dict[str, Any], cfg: DemoConfig) -> list[dict[str, Any]]:
    loc = bench["results"]["localization"]
    rows = []
    for method in ("dualanodiff", "crop-paste", "none"):
        r = loc.get(method, {}).get(cfg.category)
        if r is None:
            continue
        rows.append(
            {
                "training data": METHOD_LABELS[method],
                "pixel AUROC": _pct(r["pixel_auroc"]),
                "pixel AP": _pct(r["pixel_ap"]),
                "pixel F1-max": _pct(r["pixel_f1_max"]),
                "AU-PRO": _pct(r["pixel_aupro"]),
                "image AUROC": _pct(r["image_auroc"]),
                "image AP": _pct(r["image_ap"]),
                "image F1-max": _pct(r["image_f1_max"]),
            }
        )
    return rows


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * float(value), 1)


# ------------------------------------------------------------------------------------------ the report


def _overlay(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    from .report import overlay_mask

    return overlay_mask(image, mask)


def _upscale(image: np.ndarray | Image.Image, side: int = 128) -> Image.Image:
    """Nearest-neighbour enlargement, so 64 px images stay crisp in the report."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return pil.resize((side, side), Image.NEAREST)


def write_demo_report(
    cfg: DemoConfig,
    out: Path,
    data: Path,
    gen_dirs: dict[str, Path],
    results: list[dict[str, Any]],
    alignment: dict[str, dict[str, float]],
    timings: dict[str, float],
) -> Path:
    """The HTML report: few-shot data, generated triples, Crop&Paste pairs, metrics, loss curve, settings."""
    from .data.generated import read_generated
    from .data.images import load_mask, load_rgb
    from .data.mvtec import anomaly_samples, few_shot_split
    from .report import Report, loss_curve_png
    from .training.checkpoint import read_loss_log

    report = Report(f"DualAnoDiff demo: {cfg.category} / {cfg.anomaly}")
    report.add_text(
        "What you are looking at",
        "A tiny Stable Diffusion (SD 1.5's structure, a few MB) pretrained on synthetic normal images was "
        f"adapted with DualAnoDiff's dual-branch LoRA and SAIM to one defect type, '{cfg.anomaly}' on "
        f"'{cfg.category}', from the few real images below only. It then generated new defect images, each "
        "with its anomaly-part image, from which the mask is cut (distance from the mid-grey canvas). "
        "A downstream defect detector (DRAEM's U-Net) was trained on normal images plus those pairs, "
        "plus Crop&Paste pairs, or plus nothing, and tested on the held-out real defect images."
        + (" QUICK MODE: toy sizes, the pictures and numbers mean nothing." if cfg.quick else ""),
    )

    shots = few_shot_split(anomaly_samples(data, cfg.category, cfg.anomaly)).train
    images, captions = [], []
    for s in shots:
        img, mask = load_rgb(s.image), load_mask(s.mask)
        images += [_upscale(img), _upscale(_overlay(img, mask))]
        captions += [s.image.name, "ground-truth mask"]
    report.add_images(f"Few-shot training images ({len(shots)} real images with masks)", images, captions, 6)

    pairs = read_generated(gen_dirs["dualanodiff"], include_rejected=True)
    triples, tcaps = [], []
    for p in pairs[:12]:
        img, part = load_rgb(p.image), load_rgb(p.part) if p.part else None
        mask = load_mask(p.mask, size=(img.shape[1], img.shape[0]))
        triples += [
            _upscale(img),
            _upscale(part if part is not None else np.zeros_like(img)),
            _upscale(_overlay(img, mask)),
        ]
        state = "kept" if p.record.get("kept") else f"rejected: {p.record.get('reject_reason')}"
        tcaps += [f"{p.name} whole image", "anomaly part", f"mask ({state})"]
    kept = sum(bool(p.record.get("kept")) for p in pairs)
    report.add_images(
        f"Generated pairs: whole image / anomaly part / mask overlay ({kept} of {len(pairs)} kept)",
        triples,
        tcaps,
        6,
    )

    cp = read_generated(gen_dirs["crop-paste"])
    cp_images, cp_caps = [], []
    for p in cp[:6]:
        img = load_rgb(p.image)
        cp_images += [
            _upscale(img),
            _upscale(_overlay(img, load_mask(p.mask, size=(img.shape[1], img.shape[0])))),
        ]
        cp_caps += [f"Crop&Paste {p.name}", "mask"]
    report.add_images("Baseline: Crop&Paste pairs", cp_images, cp_caps, 6)

    report.add_table("Downstream localization on the real test images (%, higher is better)", results)
    report.add_table(
        "Mask alignment (IoU of a reference segmenter's prediction with the mask)",
        [
            {
                "images": METHOD_LABELS.get(k, k),
                "mean IoU": v["iou_mean"],
                "median IoU": v["iou_median"],
                "n": v["n"],
            }
            for k, v in alignment.items()
        ],
    )

    run_dir = out / "benchmark" / "adapters" / cfg.category / cfg.anomaly
    log = read_loss_log(run_dir)
    if log:
        steps, losses = [r["step"] for r in log], [r["loss"] for r in log]
        report.add_figure(
            "Adapter training loss",
            loss_curve_png(steps, _smooth(losses), title="epsilon MSE (moving average of 10 steps)"),
        )
    else:
        report.add_text("Adapter training loss", f"no loss log found in {run_dir}")
    settings = {k: v for k, v in asdict(cfg).items() if k != "extra"}
    settings["timings_s"] = timings
    settings["base"] = "dualanodiff/assets/demo_base.safetensors (see docs/demo.md)"
    report.add_settings(settings)
    return report.write(out / "report.html")


def _smooth(values: list[float], k: int = 10) -> list[float]:
    arr = np.asarray(values, float)
    csum = np.cumsum(np.insert(arr, 0, 0.0))
    return [
        float((csum[i + 1] - csum[max(0, i + 1 - k)]) / (i + 1 - max(0, i + 1 - k))) for i in range(len(arr))
    ]


def load_results(out: str | Path) -> dict[str, Any]:
    """The ``demo_results.json`` a finished demo wrote."""
    path = Path(out) / "demo_results.json"
    if not path.is_file():
        raise InputError(f"{path}: no finished demo there")
    return json.loads(path.read_text(encoding="utf-8"))
