"""`dualanodiff demo`: the whole method on CPU in a few minutes, ending in an HTML report a person can look at.

Steps: make the synthetic dataset, write the shipped demo base (`base`) as a diffusers folder, then the protocol
runner (`run_benchmark`, the same code as a real benchmark at toy sizes) trains the adapters of one defect type
on its few-shot split, generates DualAnoDiff pairs and Crop&Paste pairs, and trains the downstream U-Net on each
(and on normal images only). The shipped reference segmenter then measures how well the generated masks fit
the generated defects (`alignment`), and the report sets every figure beside the range the miniature study
measured over several seeds (`expected`). Everything resumes: a rerun with the same settings skips the
finished steps; other settings in the same folder are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shlex
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io import write_json_atomic
from .config import METHOD_LABELS, DemoConfig

log = logging.getLogger(__name__)


def _say(text: str) -> None:
    """A stage of the demo, through logging (the CLI shows INFO lines as plain text, with or without the
    progress bars)."""
    log.info(text)


def benchmark_config(cfg: DemoConfig, data: Path, base: Path, out: Path, methods: list[str] | None = None):
    """The protocol runner's settings for the demo: one type, toy sizes, the demo's sampler."""
    from ..benchmark import (
        BenchmarkConfig,
        ClassificationSettings,
        GenerateSettings,
        LocalizationSettings,
        TrainSettings,
    )

    return BenchmarkConfig(
        data=str(data),
        out=str(out),
        base=str(base),
        categories=[cfg.category],
        anomalies=[cfg.anomaly],
        methods=methods or ["dualanodiff", "crop-paste", "none"],
        quick=True,
        seed=cfg.seed,
        device="cpu",
        progress=cfg.progress,
        bcm=cfg.bcm,
        train=TrainSettings(
            max_steps=cfg.train_steps,
            batch_size=cfg.train_batch_size,
            learning_rate=cfg.train_lr,
            rank=cfg.train_rank,
            text_encoder_rank=cfg.train_rank,
            probe_every=cfg.probe_every,
            resolution=cfg.resolution,
        ),
        generate=GenerateSettings(
            num_pairs=cfg.num_pairs,
            steps=cfg.sampler_steps,
            scheduler=cfg.scheduler,
            guidance=cfg.guidance,
            zero_mean_noise=cfg.zero_mean_noise,
            shared_initial_noise=cfg.shared_initial_noise,
            batch_size=16,
            resolution=cfg.resolution,
            max_mask_area=cfg.max_mask_area,
            mask_method=cfg.mask_method,
        ),
        quality=False,
        localization=LocalizationSettings(
            epochs=cfg.loc_epochs,
            samples_per_epoch=cfg.loc_samples_per_epoch,
            resolution=cfg.resolution,
            base_channels=cfg.loc_base_channels,
            runs=1,
        ),
        classification=ClassificationSettings(enabled=False),
    )


def check_config(cfg: DemoConfig) -> None:
    """Refuse a bad type or option before anything runs."""
    from ..generate import SCHEDULERS
    from ..synthetic import DEFECT_TYPES

    if cfg.category not in DEFECT_TYPES or cfg.anomaly not in DEFECT_TYPES[cfg.category]:
        raise InputError(
            f"demo: {cfg.category}/{cfg.anomaly} is not a synthetic anomaly type; choose from "
            + "; ".join(f"{c}: {', '.join(k)}" for c, k in DEFECT_TYPES.items())
        )
    if cfg.scheduler not in SCHEDULERS:
        raise InputError(f"demo: --scheduler {cfg.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    if not cfg.saim or cfg.bcm:
        raise InputError("demo: SAIM off and BCM are measured by scripts/miniature_study.py, not by the demo")


def weights_file_digest(folder: str | None) -> str:
    """A short hash of the demo base's weight file: which base a run used (the file's bytes; not
    :func:`dualanodiff.model.base.weights_fingerprint`, which hashes loaded weights)."""
    from .base import ASSETS, WEIGHTS_NAME

    path = Path(folder or ASSETS) / WEIGHTS_NAME
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "missing"


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the demo end to end; returns what it writes to ``OUT/demo_results.json``."""
    from ..benchmark import run_benchmark
    from ..data.generated import read_generated
    from ..synthetic import make_synthetic
    from .alignment import load_segmenter, pairs_alignment
    from .base import demo_base_folder
    from .expected import compare_with_study
    from .report import write_demo_report

    cfg = config.resolved()
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started, cpu_started = time.perf_counter(), time.process_time()

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)

    _say(f"[demo 1/5] synthetic dataset ({cfg.resolution} px) -> {out / 'data'}")
    t0 = time.perf_counter()
    data = make_synthetic(
        out / "data",
        seed=cfg.seed,
        resolution=cfg.resolution,
        categories=[cfg.category],
        progress=cfg.progress,
    )
    lap("dataset_s", t0)

    _say(
        f"[demo 2/5] demo base (a small SD pretrained on synthetic images and generic marks) -> {out / 'base'}",
    )
    t0 = time.perf_counter()
    base = demo_base_folder(out / "base", cfg.base_weights)
    lap("base_s", t0)

    _say(
        f"[demo 3/5] protocol runner: train adapters ({cfg.category}/{cfg.anomaly}, {cfg.train_steps} steps), "
        f"generate {cfg.num_pairs} DualAnoDiff + {cfg.num_pairs} Crop&Paste pairs, train one detector on each "
        "(and one on normal images alone)",
    )
    t0 = time.perf_counter()
    bench = run_benchmark(benchmark_config(cfg, data, base, out / "benchmark"))
    lap("benchmark_s", t0)

    _say("[demo 4/5] mask alignment: the reference segmenter on the generated images")
    t0 = time.perf_counter()
    seg = load_segmenter(cfg.category, cfg.base_weights, cfg.anomaly)
    gen_dirs = {m: generated_dir(out, cfg, m) for m in ("dualanodiff", "crop-paste")}
    alignment = {m: pairs_alignment(seg, read_generated(d)) for m, d in gen_dirs.items()}
    alignment["real test images"] = real_alignment(seg, data, cfg)
    lap("alignment_s", t0)

    all_pairs = read_generated(gen_dirs["dualanodiff"], include_rejected=True)
    summary = {
        "localization": localization_rows(bench["results"]["localization"], cfg),
        "alignment": alignment,
        "pairs": {"generated": len(all_pairs), "kept": sum(bool(p.record.get("kept")) for p in all_pairs)},
        "loss": loss_summary(out / "benchmark" / "adapters" / cfg.category / cfg.anomaly),
        # A rerun skips the finished steps: its time says nothing of this machine's speed (`compare_with_study`).
        "steps_finished_before": sum(s["status"] == "skipped" for s in bench["steps"]),
    }
    timings["total_before_report_s"] = round(time.perf_counter() - started, 1)
    timings["cpu_before_report_s"] = round(time.process_time() - cpu_started, 1)
    summary["timings"] = timings
    summary["checks"] = compare_with_study(summary, cfg)

    _say("[demo 5/5] HTML report")
    t0 = time.perf_counter()
    report_path = write_demo_report(cfg, out, data, gen_dirs, summary)
    lap("report_s", t0)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    timings["cpu_s"] = round(time.process_time() - cpu_started, 1)
    result = {
        "report": str(report_path),
        **summary,
        "config": asdict(cfg),
        "base_weights": weights_file_digest(cfg.base_weights),
        "stack": stack(),
    }
    write_json_atomic(out / "demo_results.json", result)
    return result


def finished_line(result: dict[str, Any]) -> str:
    """What the command prints at the end: the time, where the report is, and the `generate` command that
    continues from the demo's adapters (which carry the demo's sampling settings: no flag needed)."""
    cfg = result["config"]
    out = Path(cfg["out"]).resolve()
    adapters = out / "benchmark" / "adapters" / cfg["category"] / cfg["anomaly"]
    more = shlex.join(["dualanodiff", "generate", "--base", str(out / "base"), "--adapters", str(adapters),
                       "--out", str(out / "more-pairs"), "--num-pairs", "100"])  # fmt: skip
    return (
        f"demo finished in {result['timings']['total_s']:.0f} s. Open the report: {Path(result['report']).resolve()}"
        f"\nMore pairs from its adapters: {more}"
    )


def generated_dir(out: Path, cfg: DemoConfig, method: str) -> Path:
    return out / "benchmark" / "generated" / method / cfg.category / cfg.anomaly


def stack() -> dict[str, str]:
    """The software and machine a run was measured on."""
    import os

    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "threads": str(torch.get_num_threads()),
    }


def real_alignment(seg, data: Path, cfg: DemoConfig) -> dict[str, Any]:
    """The segmenter against the ground truth of the real test images of the type (its ceiling)."""
    from ..data.images import load_mask, load_rgb
    from ..data.mvtec import anomaly_samples, few_shot_split
    from .alignment import mask_alignment

    test = few_shot_split(anomaly_samples(data, cfg.category, cfg.anomaly)).test
    return mask_alignment(seg, [load_rgb(s.image) for s in test], [load_mask(s.mask) for s in test])


def localization_rows(localization: dict[str, Any], cfg: DemoConfig) -> list[dict[str, Any]]:
    """One row per kind of training data: the detector's metrics on the real test images, in %."""
    rows = []
    # The demo's methods first, in their order, then any other (the miniature study's variants, e.g. perlin).
    methods = [*METHOD_LABELS, *(m for m in localization if m not in METHOD_LABELS)]
    for method in methods:
        label = METHOD_LABELS.get(method, method)
        r = localization.get(method, {}).get(cfg.category)
        if r is None:
            continue
        rows.append(
            {
                "training data": label,
                "pixel AP": _pct(r["pixel_ap"]),
                "pixel AUROC": _pct(r["pixel_auroc"]),
                "AU-PRO": _pct(r["pixel_aupro"]),
                "pixel F1-max": _pct(r["pixel_f1_max"]),
                "image AUROC": _pct(r["image_auroc"]),
                "image AP": _pct(r["image_ap"]),
            }
        )
    return rows


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * float(value), 1)


def loss_summary(run_dir: Path, window: int = 50) -> dict[str, Any]:
    """The adapter loss: mean of the first and of the last ``window`` steps (the curve itself is in the log),
    and the probe loss's first and last values (`training.probe.probe_summary`) under ``probe``."""
    from ..training.checkpoint import read_loss_log
    from ..training.probe import probe_summary, read_probe_log

    losses = [r["loss"] for r in read_loss_log(run_dir)]
    if not losses:
        return {}
    w = max(1, min(window, len(losses) // 4))
    first, last = float(np.mean(losses[:w])), float(np.mean(losses[-w:]))
    out = {"steps": len(losses), "window": w, "first": round(first, 5), "last": round(last, 5)}
    probe = probe_summary(read_probe_log(run_dir))
    if probe:
        out["probe"] = probe
    return out


def load_results(out: str | Path) -> dict[str, Any]:
    """The ``demo_results.json`` a finished demo wrote."""
    path = Path(out) / "demo_results.json"
    if not path.is_file():
        raise InputError(f"{path}: no finished demo there")
    return json.loads(path.read_text(encoding="utf-8"))
