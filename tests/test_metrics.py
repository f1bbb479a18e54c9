"""Metrics against scikit-learn and brute-force references on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from dualanodiff.errors import InputError
from dualanodiff.evaluate.metrics import (
    LocalizationMetrics,
    au_pro_from_pooled,
    f1_max,
    f1_max_paper,
    image_metrics,
    image_score_from_map,
    image_scores_from_maps,
    localization_metrics,
    pixel_metrics,
    pool_pixels,
    summary_table,
)

from rounding import assert_equal_up_to_rounding, rounding_tolerance

# The curve metrics are float64 sums over every score in some order (scikit-learn's and ours or a brute force's):
# up to one rounding per score at the metric's magnitude (at most 1). F1 is 2pr / (p + r) from exact counts: a few.
F1_STEPS = 4


def _brute_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & labels)
        if tp == 0:
            continue
        p, r = tp / pred.sum(), tp / labels.sum()
        best = max(best, 2 * p * r / (p + r))
    return best


def _brute_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """PRO curve by definition: at every distinct score, FPR and the mean overlap of every region."""
    regions = []
    for m, g in zip(maps, masks):
        lab, n = ndimage.label(g, np.ones((3, 3), int))
        regions += [m[lab == k] for k in range(1, n + 1)]
    negatives = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = np.mean(negatives >= t)
        pro = np.mean([np.mean(r >= t) for r in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:  # cut the last segment at the limit
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


def _toy_category(rng: np.random.Generator, n: int = 6, size: int = 24):
    """Maps with quantised (tied) scores; masks with several regions, one normal image."""
    masks = np.zeros((n, size, size), bool)
    masks[0, 2:6, 2:9] = True
    masks[0, 15:20, 14:16] = True
    masks[1, 10:18, 10:18] = True
    masks[2, 0:3, 20:24] = True
    masks[3, 5:7, 5:7] = True
    masks[3, 12:22, 1:4] = True
    masks[4, 20:24, 20:24] = True
    noise = rng.random((n, size, size))
    maps = np.round(0.5 * noise + 0.5 * masks * rng.random((n, 1, 1)), 2).astype(np.float32)
    return maps, masks


def test_image_metrics_match_sklearn_and_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.random(60) + 0.4 * labels, 1)  # ties on purpose
    m = image_metrics(labels.astype(int), scores)
    n = labels.size
    assert_equal_up_to_rounding(m["auroc"], roc_auc_score(labels, scores), n, np.float64)
    assert_equal_up_to_rounding(m["ap"], average_precision_score(labels, scores), n, np.float64)
    assert_equal_up_to_rounding(m["f1_max"], _brute_f1(labels, scores), F1_STEPS, np.float64)
    assert_equal_up_to_rounding(f1_max(labels, scores), _brute_f1(labels, scores), F1_STEPS, np.float64)


def test_image_metrics_reject_single_class():
    with pytest.raises(InputError, match="both normal and anomalous"):
        image_metrics([0, 0, 0], [0.1, 0.2, 0.3])


def test_pixel_metrics_pool_all_pixels_like_sklearn():
    maps, masks = _toy_category(np.random.default_rng(1))
    px = pixel_metrics(maps, masks)
    y, s = masks.ravel(), maps.ravel()
    assert not px["subsampled"] and px["n_pixels"] == y.size
    assert_equal_up_to_rounding(px["auroc"], roc_auc_score(y, s), y.size, np.float64)
    assert_equal_up_to_rounding(px["ap"], average_precision_score(y, s), y.size, np.float64)
    assert_equal_up_to_rounding(px["f1_max"], _brute_f1(y, s), F1_STEPS, np.float64)


def test_paper_f1_is_the_authors_21_threshold_loop():
    maps, masks = _toy_category(np.random.default_rng(2))
    gt, pr_all = masks.ravel(), maps.ravel()
    best, eps = -99.0, 1e-8
    for score in np.arange(0.0, 1.0 + 1e-3, 0.05):  # the authors' loop, verbatim in substance
        pr = pr_all > score
        inter = np.logical_and(gt, pr).sum()
        precision = inter / (pr.sum() + eps)
        recall = inter / (gt.sum() + eps)
        best = max(best, 2 * precision * recall / (precision + recall + eps))
    assert_equal_up_to_rounding(f1_max_paper(gt, pr_all), best, F1_STEPS, np.float64)
    assert_equal_up_to_rounding(
        pixel_metrics(maps, masks, paper_compat=True)["f1_max"], best, F1_STEPS, np.float64
    )
    # Coarse thresholds can only miss the exact optimum (up to the rounding of the two F1 formulas).
    assert best <= pixel_metrics(maps, masks)["f1_max"] + rounding_tolerance(1.0, F1_STEPS, np.float64)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        f1_max_paper(gt, pr_all * 3)


def test_aupro_perfect_map_is_one():
    _, masks = _toy_category(np.random.default_rng(3))
    pooled = pool_pixels(masks.astype(np.float32), masks)
    assert_equal_up_to_rounding(au_pro_from_pooled(pooled), 1.0, masks.size, np.float64)
    assert pooled.n_regions == 7


def test_aupro_matches_brute_force_definition():
    for seed in range(3):
        maps, masks = _toy_category(np.random.default_rng(10 + seed))
        expected = _brute_aupro(maps, masks)
        assert_equal_up_to_rounding(pixel_metrics(maps, masks)["aupro"], expected, maps.size, np.float64, 1.0)
    # A map that ranks region pixels below every normal pixel scores 0: no overlap is ever summed.
    assert pixel_metrics(1.0 - masks.astype(np.float32), masks)["aupro"] == 0.0


def test_image_score_is_max_of_zero_padded_21x21_mean():
    rng = np.random.default_rng(4)
    m = rng.random((40, 33)).astype(np.float32)
    ref = ndimage.uniform_filter(m.astype(np.float64), size=21, mode="constant", cval=0.0).max()
    # A float32 sum of 21 x 21 values in [0, 1] against float64: 441 roundings at magnitude 1.
    assert_equal_up_to_rounding(image_score_from_map(m), ref, 21 * 21, magnitude=1.0)
    stack = rng.random((3, 30, 30)).astype(np.float32)
    # Bitwise: the pooling kernel computes each map on its own, the same way whatever the batch.
    assert np.array_equal(image_scores_from_maps(stack), [image_score_from_map(s) for s in stack])


def test_localization_metrics_and_subsampling_estimate():
    maps, masks = _toy_category(np.random.default_rng(5), n=8, size=32)
    exact = localization_metrics(maps, masks)
    assert exact.n_images == 8 and not exact.pixel_subsampled
    labels = masks.any(axis=(1, 2))
    scores = image_scores_from_maps(maps)
    assert_equal_up_to_rounding(exact.image_auroc, roc_auc_score(labels, scores), labels.size, np.float64)
    # Past max_pixels normal pixels are subsampled with weights: an unbiased, close estimate.
    # Not rounding but sampling: 4000 of 8192 normal pixels (seeded, so the check is deterministic). AUROC and
    # AP are means over the sampled pixels, whose standard error is about 0.5/sqrt(4000) = 0.008 for AUROC; the
    # bounds are 2.5 of those for AUROC, and wider for AP and AU-PRO, which also depend on the threshold grid.
    approx = localization_metrics(maps, masks, max_pixels=4000, seed=0)
    assert approx.pixel_subsampled
    assert approx.pixel_auroc == pytest.approx(exact.pixel_auroc, abs=0.02)
    assert approx.pixel_ap == pytest.approx(exact.pixel_ap, abs=0.05)
    assert approx.pixel_aupro == pytest.approx(exact.pixel_aupro, abs=0.05)
    assert LocalizationMetrics.from_dict(exact.to_dict()) == exact


def test_summary_table_layout_and_averages():
    a = LocalizationMetrics(0.9, 0.5, 0.4, 0.8, 1.0, 1.0, 1.0)
    b = {**a.to_dict(), "pixel_auroc": 0.8, "image_ap": 0.5}
    table = summary_table({"bottle": a, "carpet": b}, with_paper=True)
    lines = table.strip().splitlines()
    assert lines[0] == "| category | AUC-P | AP-P | F1-P | AUC-I | AP-I | F1-I |"
    assert lines[2].startswith("| bottle | 90.00 | 50.00 | 40.00 | 100.00 |")
    assert "| **average (2 categories)** | 85.00 | 50.00 | 40.00 | 100.00 | 75.00 | 100.00 |" in lines
    paper_row = '| paper: DualAnoDiff + prompt ("vfx"/"sks") | 98.80 | 83.00'
    assert any(line.startswith(paper_row) for line in lines)
    assert "paper" not in summary_table({"bottle": a})
    with pytest.raises(InputError, match="lack"):
        summary_table({"bottle": {"pixel_auroc": 1.0}})
