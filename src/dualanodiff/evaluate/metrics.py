"""Anomaly detection and localization metrics of the MVTec AD protocol (AnomalyDiffusion's, METHOD section 8).

Image level: AUROC, AP, F1-max over one score per image. Pixel level: AUROC, AP, F1-max over the pixels
of every test image of a category pooled, and AU-PRO (per-region overlap integrated up to FPR 0.3).
All curve maths is scikit-learn's; only the pooling, the region weights of AU-PRO and the authors'
coarse pixel F1 are written here.

Memory: at 256 x 256 a category pools a few million pixels and everything is exact. Past ``max_pixels``
(at full MVTec resolution a category reaches ~10^8 pixels) every anomalous pixel is kept and the normal
pixels are subsampled uniformly (seeded) with weight 1/rate, so all curves stay unbiased estimates
while the sort that scikit-learn does stays a fixed size; the result says when that happened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from ..errors import InputError

IMAGE_SCORE_KERNEL = 21
PRO_FPR_LIMIT = 0.3
DEFAULT_MAX_PIXELS = 2**24
# The authors' pixel F1: thresholds 0, 0.05, ..., 1.0 on softmax probabilities, "score > t".
PAPER_F1_THRESHOLDS = np.arange(0.0, 1.0 + 1e-3, 0.05)


def image_score_from_map(anomaly_map: np.ndarray | torch.Tensor, kernel: int = IMAGE_SCORE_KERNEL) -> float:
    """Image anomaly score: the max of the ``kernel x kernel`` mean-filtered map.

    Written exactly like the authors' ``avg_pool2d(map, 21, stride=1, padding=10)`` (zero padding counted
    in the mean), so border blobs are damped the same way.
    """
    return float(image_scores_from_maps(np.asarray(anomaly_map)[None], kernel)[0])


def image_scores_from_maps(maps: np.ndarray | torch.Tensor, kernel: int = IMAGE_SCORE_KERNEL) -> np.ndarray:
    """:func:`image_score_from_map` for a stack ``(N, H, W)`` of maps."""
    t = maps if torch.is_tensor(maps) else torch.from_numpy(np.asarray(maps, dtype=np.float32))
    if t.dim() != 3:
        raise InputError(f"anomaly maps must be (N, H, W), got shape {tuple(t.shape)}")
    pooled = F.avg_pool2d(t.float()[:, None], kernel, stride=1, padding=kernel // 2)
    return pooled.flatten(1).amax(dim=1).cpu().numpy().astype(np.float64)


def _check_binary(labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels).astype(bool).ravel()
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise InputError(
            f"{what}: need both normal and anomalous examples to compute AUROC/AP/F1 "
            f"(got {n_pos} anomalous of {labels.size})"
        )
    return labels


def f1_max(labels: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Best F1 over all thresholds, exact, from ``sklearn.metrics.precision_recall_curve``."""
    precision, recall, _ = precision_recall_curve(labels, scores, sample_weight=sample_weight)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def f1_max_paper(
    labels: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None, eps: float = 1e-8
) -> float:
    """The authors' coarse pixel F1-max: 21 thresholds 0, 0.05, ..., 1 on the raw scores, ``score > t``.

    Expects probabilities (the U-Net's softmax); their code also adds ``eps`` to every denominator.
    """
    scores = np.asarray(scores).ravel()
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise InputError("paper_compat pixel F1 thresholds scores on [0, 1]; got scores outside that range")
    labels = np.asarray(labels).astype(bool).ravel()
    w = np.ones(scores.shape, dtype=np.float64) if sample_weight is None else np.asarray(sample_weight)
    total_label = float(w[labels].sum())
    best = -1.0
    for t in PAPER_F1_THRESHOLDS:
        pred = scores > t
        inter = float(w[pred & labels].sum())
        precision = inter / (float(w[pred].sum()) + eps)
        recall = inter / (total_label + eps)
        best = max(best, 2 * precision * recall / (precision + recall + eps))
    return float(best)


def image_metrics(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """Image AUROC, AP and F1-max (labels: 1 = anomalous)."""
    y = _check_binary(np.asarray(labels), "image labels")
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise InputError(f"image scores: {s.size} scores for {y.size} labels")
    return {
        "auroc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "f1_max": f1_max(y, s),
    }


@dataclass
class PooledPixels:
    """The pixels of a category pooled (maybe subsampled), with the AU-PRO region weight of each."""

    scores: np.ndarray  # float32 (M,)
    labels: np.ndarray  # bool (M,)
    weights: np.ndarray | None  # float64 (M,), None when nothing was subsampled
    region_weights: np.ndarray  # float64 (M,): 1/(K |C_k|) on anomalous pixels, 0 elsewhere
    n_pixels: int
    n_regions: int
    subsampled: bool


def _stack_maps(maps: np.ndarray | Sequence[np.ndarray], what: str, dtype) -> list[np.ndarray]:
    if isinstance(maps, np.ndarray):
        if maps.ndim != 3:
            raise InputError(f"{what} must be (N, H, W), got shape {maps.shape}")
        return [m.astype(dtype, copy=False) for m in maps]
    out = [np.asarray(m).astype(dtype, copy=False) for m in maps]
    for m in out:
        if m.ndim != 2:
            raise InputError(f"{what}: each map must be (H, W), got shape {m.shape}")
    return out


def pool_pixels(
    score_maps: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
) -> PooledPixels:
    """Pool every pixel of every map and label the ground-truth regions (8-connected) for AU-PRO."""
    smaps = _stack_maps(score_maps, "score maps", np.float32)
    gmaps = _stack_maps(masks, "masks", bool)
    if len(smaps) != len(gmaps) or not smaps:
        raise InputError(f"need one mask per score map (got {len(smaps)} maps, {len(gmaps)} masks)")
    structure = np.ones((3, 3), dtype=int)
    region_w, n_regions = [], 0
    for i, (s, g) in enumerate(zip(smaps, gmaps)):
        if s.shape != g.shape:
            raise InputError(f"map {i}: score map {s.shape} and mask {g.shape} differ in size")
        labeled, n = ndimage.label(g, structure)
        w = np.zeros(g.shape, dtype=np.float64)
        if n:
            sizes = np.bincount(labeled.ravel(), minlength=n + 1).astype(np.float64)
            inv = np.zeros_like(sizes)
            inv[1:] = 1.0 / sizes[1:]
            w = inv[labeled]
        region_w.append(w.ravel())
        n_regions += n
    scores = np.concatenate([s.ravel() for s in smaps])
    labels = np.concatenate([g.ravel() for g in gmaps])
    rweights = np.concatenate(region_w)
    if n_regions:
        rweights /= n_regions
    n_pixels = scores.size
    if n_pixels <= max_pixels:
        return PooledPixels(scores, labels, None, rweights, n_pixels, n_regions, False)
    # Keep every anomalous pixel, subsample normal ones (weight 1/rate keeps the curves unbiased).
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(labels)
    neg = np.flatnonzero(~labels)
    n_neg_keep = max(int(max_pixels) - pos.size, min(neg.size, 1_000_000))
    rate = min(1.0, n_neg_keep / max(neg.size, 1))
    neg_keep = np.sort(rng.choice(neg.size, size=int(round(rate * neg.size)), replace=False))
    keep = np.concatenate([pos, neg[neg_keep]])
    weights = np.ones(keep.size, dtype=np.float64)
    weights[pos.size :] = neg.size / max(neg_keep.size, 1)
    return PooledPixels(scores[keep], labels[keep], weights, rweights[keep], n_pixels, n_regions, True)


def au_pro_from_pooled(pooled: PooledPixels, fpr_limit: float = PRO_FPR_LIMIT) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    Written here because anomalib's AUPRO needs the whole lightning stack. The PRO curve is a weighted
    ROC curve: each anomalous pixel weighs 1/(K |C_k|) (K regions, C_k its region), so the weighted true
    positive rate at a threshold is the mean over regions of the overlap. ``roc_curve`` then gives it
    exactly at every distinct score; the curve is cut at ``fpr_limit`` by linear interpolation.
    """
    if pooled.n_regions == 0:
        raise InputError("AU-PRO: the masks contain no anomalous region")
    w = pooled.region_weights.copy()
    neg = ~pooled.labels
    w[neg] = 1.0 if pooled.weights is None else pooled.weights[neg]
    if not neg.any():
        raise InputError("AU-PRO: the masks contain no normal pixel")
    fpr, pro, _ = roc_curve(pooled.labels, pooled.scores, sample_weight=w, drop_intermediate=False)
    return integrate_to_limit(fpr, pro, fpr_limit) / fpr_limit


def integrate_to_limit(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid integral of a curve with ascending (possibly repeated) ``x`` from ``x[0]`` to ``x_max``.

    Points at ``x <= x_max`` are kept (a vertical jump at ``x_max`` counts); the value at ``x_max`` is
    interpolated between the last point before it and the first point after it, as MVTec's evaluation does.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    if xs.size and xs[-1] < x_max and not keep.all():
        ins = int(np.searchsorted(x, x_max, side="right"))  # first point past x_max
        x0, y0, x1, y1 = x[ins - 1], y[ins - 1], x[ins], y[ins]
        xs = np.append(xs, x_max)
        ys = np.append(ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0))
    return float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))


@dataclass
class LocalizationMetrics:
    """The six numbers of the paper's tables plus AU-PRO, as fractions in [0, 1]."""

    pixel_auroc: float
    pixel_ap: float
    pixel_f1_max: float
    pixel_aupro: float
    image_auroc: float
    image_ap: float
    image_f1_max: float
    n_images: int = 0
    n_pixels: int = 0
    pixel_subsampled: bool = False
    pixel_f1_method: str = "exact"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LocalizationMetrics:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})


def pixel_metrics(
    score_maps: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    paper_compat: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
    fpr_limit: float = PRO_FPR_LIMIT,
) -> dict[str, Any]:
    """Pixel AUROC, AP, F1-max (exact, or the authors' 21-threshold F1 with ``paper_compat``) and AU-PRO."""
    pooled = pool_pixels(score_maps, masks, max_pixels=max_pixels, seed=seed)
    y = _check_binary(pooled.labels, "pixel masks")
    s, w = pooled.scores, pooled.weights
    f1 = f1_max_paper(y, s, w) if paper_compat else f1_max(y, s, w)
    return {
        "auroc": float(roc_auc_score(y, s, sample_weight=w)),
        "ap": float(average_precision_score(y, s, sample_weight=w)),
        "f1_max": f1,
        "aupro": au_pro_from_pooled(pooled, fpr_limit),
        "n_pixels": pooled.n_pixels,
        "subsampled": pooled.subsampled,
    }


def localization_metrics(
    score_maps: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    image_labels: Sequence[int] | np.ndarray | None = None,
    image_scores: Sequence[float] | np.ndarray | None = None,
    paper_compat: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
) -> LocalizationMetrics:
    """All metrics of a category's test set from its pixel maps and ground-truth masks.

    ``image_labels`` default to "mask not empty"; ``image_scores`` to :func:`image_score_from_map`.
    """
    smaps = _stack_maps(score_maps, "score maps", np.float32)
    if image_labels is None:
        image_labels = [bool(np.asarray(m).any()) for m in masks]
    if image_scores is None:
        image_scores = [image_score_from_map(m) for m in smaps]
    im = image_metrics(image_labels, image_scores)
    px = pixel_metrics(smaps, masks, paper_compat=paper_compat, max_pixels=max_pixels, seed=seed)
    return LocalizationMetrics(
        pixel_auroc=px["auroc"],
        pixel_ap=px["ap"],
        pixel_f1_max=px["f1_max"],
        pixel_aupro=px["aupro"],
        image_auroc=im["auroc"],
        image_ap=im["ap"],
        image_f1_max=im["f1_max"],
        n_images=len(smaps),
        n_pixels=px["n_pixels"],
        pixel_subsampled=px["subsampled"],
        pixel_f1_method="paper-21-thresholds" if paper_compat else "exact",
    )


# Supplementary Tables 1/2 and the AnomalyDiffusion row of METHOD section 9 (percent).
TABLE_COLUMNS = (
    ("AUC-P", "pixel_auroc"),
    ("AP-P", "pixel_ap"),
    ("F1-P", "pixel_f1_max"),
    ("AUC-I", "image_auroc"),
    ("AP-I", "image_ap"),
    ("F1-I", "image_f1_max"),
)
PAPER_ROWS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("paper: DualAnoDiff, category name as prompt", (97.22, 72.35, 67.21, 94.9, 97.4, 94.38)),
    ('paper: DualAnoDiff + prompt ("vfx"/"sks")', (98.8, 83.0, 78.1, 97.6, 98.6, 96.5)),
    ("paper: DualAnoDiff + prompt + BCM (5 categories)", (99.1, 84.5, 78.8, 99.8, 98.9, 99.8)),
    ("paper: AnomalyDiffusion", (99.1, 81.4, 76.3, 99.2, 99.7, 98.7)),
)


def summary_table(
    results: Mapping[str, LocalizationMetrics | Mapping[str, Any]], with_paper: bool = False
) -> str:
    """Markdown table, one row per category then the average, in percent, laid out like the paper's.

    ``with_paper`` appends the paper's reference averages (METHOD section 9) under ours.
    """
    if not results:
        raise InputError("summary_table: no results to tabulate")
    header = "| category | " + " | ".join(c for c, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    rows = []
    for category in sorted(results):
        m = results[category]
        d = m.to_dict() if isinstance(m, LocalizationMetrics) else dict(m)
        missing = [k for _, k in TABLE_COLUMNS if k not in d]
        if missing:
            raise InputError(f"summary_table: results for {category!r} lack {', '.join(missing)}")
        vals = [100.0 * float(d[k]) for _, k in TABLE_COLUMNS]
        rows.append(vals)
        lines.append(f"| {category} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    mean = np.mean(np.asarray(rows), axis=0)
    lines.append(f"| **average ({len(rows)} categories)** | " + " | ".join(f"{v:.2f}" for v in mean) + " |")
    if with_paper:
        for name, vals in PAPER_ROWS:
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"
