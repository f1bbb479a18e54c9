"""The demo's HTML report: is this run normal, the few-shot data, the generated pairs with their alignment,
the Crop&Paste baseline, the metrics, the loss curve and the settings (built with `dualanodiff.report`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..report import Report, loss_curve_png, overlay_mask
from .config import METHOD_LABELS, DemoConfig

# How each mask method cuts the mask from the part image, as the report says it.
MASK_METHOD_WORDS = {
    "grey": "where the part departs from the mid-grey canvas",
    "grey-canvas": "where the part departs from its own canvas colour",
    "grey-half-max": "where the part departs from its own canvas colour by more than half its peak distance",
    "u2net": "U^2-Net's saliency",
    "auto": "where the part departs from the mid-grey canvas",
}

SHOWN_PAIRS = 16


def _big(image: np.ndarray | Image.Image, side: int = 128) -> Image.Image:
    """Nearest-neighbour enlargement, so 64 px images stay crisp in the report."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return pil.resize((side, side), Image.NEAREST)


def _smooth(values: list[float], k: int) -> list[float]:
    """Trailing moving average over ``k`` values (fewer at the start)."""
    arr = np.asarray(values, float)
    csum = np.cumsum(np.insert(arr, 0, 0.0))
    return [
        float((csum[i + 1] - csum[max(0, i + 1 - k)]) / (i + 1 - max(0, i + 1 - k))) for i in range(len(arr))
    ]


def worse_than_none(localization: list[dict[str, Any]]) -> str | None:
    """A plain sentence when a detector trained with generated pairs found the real defects less well (pixel
    AP) than the one trained on normal images alone: the pairs taught it something wrong, and a table alone
    does not say so."""
    ap = {row["training data"]: row.get("pixel AP") for row in localization}
    none = ap.get(METHOD_LABELS["none"])
    worse = [
        f"{label} ({value:g})"
        for label, value in ap.items()
        if label != METHOD_LABELS["none"] and value is not None and none is not None and value < none
    ]
    if not worse:
        return None
    return (
        f"The detector trained with {' and with '.join(worse)} pairs found the real test defects less well "
        f"(pixel AP) than the one trained on normal images alone ({none:g}): on this run those generated pairs "
        "taught it wrong defects. Look at the pairs below: defects that do not look like the real ones, or "
        "masks that do not cover them, do this."
    )


def write_demo_report(
    cfg: DemoConfig, out: Path, data: Path, gen_dirs: dict[str, Path], summary: dict[str, Any]
) -> Path:
    from ..data.generated import read_generated
    from ..data.images import load_mask, load_rgb
    from ..data.mvtec import anomaly_samples, few_shot_split
    from ..training.checkpoint import read_loss_log
    from ..training.probe import read_probe_log

    report = Report(f"DualAnoDiff demo: {cfg.category} / {cfg.anomaly}")
    report.add_text(
        "What you are looking at",
        "A small Stable Diffusion (SD 1.5's block layout, 16x16 latents for 64 px images) pretrained on synthetic "
        "normal images and generic marks was adapted with DualAnoDiff's dual-branch LoRA and SAIM to one defect "
        f"type, '{cfg.anomaly}' on '{cfg.category}', from the few real images below only. It then generated new "
        "defect images, each with its anomaly-part image, from which the mask is cut "
        f"({MASK_METHOD_WORDS.get(cfg.mask_method, cfg.mask_method)}). A downstream defect detector (DRAEM's U-Net) was trained on normal images plus those pairs, "
        "plus Crop&Paste pairs, or plus nothing, and tested on the held-out real defect images."
        + (" QUICK MODE: toy sizes, the pictures and numbers mean nothing." if cfg.quick else ""),
    )
    warning = worse_than_none(summary.get("localization", []))
    if warning:
        report.add_text("Read this first: the generated pairs made the detector worse", warning)
    checks = summary.get("checks", {})
    if checks.get("rows"):
        report.add_table(
            f"Is this run normal? This run beside {checks['why']} ({checks.get('rule', '')})", checks["rows"]
        )
    else:
        report.add_text("Is this run normal?", f"No reference for this run: {checks.get('why', 'none')}.")

    shots = few_shot_split(anomaly_samples(data, cfg.category, cfg.anomaly)).train
    images, captions = [], []
    for s in shots:
        img, mask = load_rgb(s.image), load_mask(s.mask)
        images += [_big(img), _big(overlay_mask(img, mask))]
        captions += [s.image.name, "ground-truth mask"]
    report.add_images(f"Few-shot training images ({len(shots)} real images with masks)", images, captions, 6)

    pairs = read_generated(gen_dirs["dualanodiff"], include_rejected=True)
    kept_names = [p.name for p in pairs if p.record.get("kept")]
    ious = dict(zip(kept_names, summary["alignment"]["dualanodiff"].get("ious", [])))
    triples, tcaps = [], []
    for p in pairs[:SHOWN_PAIRS]:
        img = load_rgb(p.image)
        part = load_rgb(p.part) if p.part else np.zeros_like(img)
        mask = load_mask(p.mask, size=(img.shape[1], img.shape[0]))
        triples += [_big(img), _big(part), _big(overlay_mask(img, mask))]
        state = f"IoU {ious[p.name]:.2f}" if p.name in ious else f"rejected: {p.record.get('reject_reason')}"
        tcaps += [f"{p.name} whole image", "anomaly part", f"mask ({state})"]
    n_kept = summary["pairs"]["kept"]
    report.add_images(
        f"Generated pairs: whole image / anomaly part / mask overlay ({n_kept} of {len(pairs)} kept; "
        f"the first {min(SHOWN_PAIRS, len(pairs))} shown)",
        triples,
        tcaps,
        6,
    )

    cp = read_generated(gen_dirs["crop-paste"])
    cp_images, cp_caps = [], []
    for p in cp[:6]:
        img = load_rgb(p.image)
        mask = load_mask(p.mask, size=(img.shape[1], img.shape[0]))
        cp_images += [_big(img), _big(overlay_mask(img, mask))]
        cp_caps += [f"Crop&Paste {p.name}", "mask"]
    report.add_images("Baseline: Crop&Paste pairs (few-shot defects pasted elsewhere)", cp_images, cp_caps, 6)

    report.add_table(
        "Downstream localization on the real test images (%, higher is better)", summary["localization"]
    )
    report.add_table(
        "Mask alignment: IoU of the reference segmenter's mask of the whole image with the pair's mask; part "
        "match: does the whole image look like the part under the mask more than under it moved 16 px (1 = best "
        "there, about 0.4 for unrelated pairs)",
        [
            {
                "images": METHOD_LABELS.get(k, k),
                "median IoU": v["iou_median"],
                "mean IoU": v["iou_mean"],
                "share with IoU >= 0.5": round(float(np.mean(np.asarray(v["ious"]) >= 0.5)), 3)
                if v["ious"]
                else None,
                "part match: median rank": v.get("part_match_median"),
                "part match: share best at the mask": v.get("part_match_best_share"),
                "n": v["n"],
            }
            for k, v in summary["alignment"].items()
        ],
    )

    run_dir = out / "benchmark" / "adapters" / cfg.category / cfg.anomaly
    log = read_loss_log(run_dir)
    if log:
        steps, losses = [r["step"] for r in log], [r["loss"] for r in log]
        loss = summary.get("loss", {})
        k = int(loss.get("window") or max(5, len(losses) // 10))  # the caption's window: one figure, one k
        report.add_figure(
            "Adapter training loss",
            loss_curve_png(steps, _smooth(losses, k), title=f"epsilon MSE, moving average of {k} steps"),
            caption=(
                f"mean of the first {loss.get('window')} steps {loss.get('first')}, of the last {loss.get('window')} "
                f"{loss.get('last')}"
                if loss
                else None
            ),
        )
    else:
        report.add_text("Adapter training loss", f"no loss log found in {run_dir}")
    probe_rows = read_probe_log(run_dir)
    if len(probe_rows) >= 2:
        probe = summary.get("loss", {}).get("probe", {})
        report.add_figure(
            "Probe loss: what the adapters learn",
            loss_curve_png(
                [r["step"] for r in probe_rows],
                [r["loss"] for r in probe_rows],
                title="epsilon MSE on fixed few-shot pairs, timesteps and noise",
            ),
            caption=(
                "The training loss above draws new timesteps and noise at every step, and that noise hides the "
                "learning; the probe holds them fixed (every few-shot pair at 5 timesteps, one noise draw), so it "
                f"changes only as the weights do: {probe.get('first')} before training, {probe.get('last')} "
                f"after ({probe.get('fall_pct')} % lower; whole-image rows {probe.get('global_first')} to "
                f"{probe.get('global_last')}, part rows {probe.get('part_first')} to {probe.get('part_last')})"
            ),
        )
    settings = {k: v for k, v in asdict(cfg).items() if k != "extra"}
    settings["timings_s"] = summary.get("timings", {})
    settings["base"] = "dualanodiff/assets/demo_base.safetensors (see docs/demo.md)"
    report.add_settings(settings)
    return report.write(out / "report.html")
