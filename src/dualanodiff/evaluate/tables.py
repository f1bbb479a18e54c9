"""Result tables of the protocol: CSV files and markdown laid out like the paper's, with its figures beside ours.

The paper's numbers (METHOD section 9) are MVTec AD averages, so they are printed only when every
evaluated category is an MVTec AD category; on other data they would invite a false comparison.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import PAPER_ROWS, TABLE_COLUMNS

MVTEC_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
# Reported generation quality, MVTec AD average: (IS, IC-LPIPS), higher is better (METHOD section 9).
PAPER_QUALITY: tuple[tuple[str, float, float], ...] = (
    ("paper: DualAnoDiff", 1.93, 0.38),
    ("paper: AnomalyDiffusion", 1.80, 0.32),
    ("paper: DFMGAN", 1.72, 0.20),
    ("paper: Crop&Paste", 1.51, 0.14),
)
LOCALIZATION_FIELDS = tuple(k for _, k in TABLE_COLUMNS) + ("pixel_aupro",)
NA = "n/a"


def looks_like_mvtec(categories: Iterable[str]) -> bool:
    """True when there is at least one category and all are MVTec AD's (the paper's figures then apply)."""
    cats = list(categories)
    return bool(cats) and all(c in MVTEC_CATEGORIES for c in cats)


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with a header; missing values are left empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def _pct(value: float | None) -> str:
    return NA if value is None else f"{100.0 * float(value):.2f}"


def _num(value: float | None, digits: int = 2) -> str:
    return NA if value is None else f"{float(value):.{digits}f}"


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def methods_localization_table(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]], with_paper: bool = False
) -> str:
    """One row per method: its category-averaged localization metrics (percent), then AU-PRO.

    ``results`` is {method: {category: metrics dict}}. The paper's rows have no AU-PRO.
    """
    header = "| method | " + " | ".join(c for c, _ in TABLE_COLUMNS) + " | AU-PRO | categories |"
    lines = [header, "|---" * (len(TABLE_COLUMNS) + 3) + "|"]
    for method, per_cat in results.items():
        if not per_cat:
            continue
        vals = [mean_or_none(m.get(k) for m in per_cat.values()) for k in LOCALIZATION_FIELDS]
        lines.append(f"| {method} | " + " | ".join(_pct(v) for v in vals) + f" | {len(per_cat)} |")
    if with_paper:
        for name, vals in PAPER_ROWS:
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {NA} | 15 |")
    return "\n".join(lines) + "\n"


def quality_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]], with_paper: bool = False) -> str:
    """IS / IC-LPIPS per method (rows) and category (columns), then the average over categories.

    ``results`` is {method: {category: {"is": float|None, "ic_lpips": float|None}}} (category averages).
    """
    categories = sorted({c for per_cat in results.values() for c in per_cat})
    header = "| method | " + " | ".join(f"{c} IS | {c} IC-LPIPS" for c in categories)
    header += " | **average IS** | **average IC-LPIPS** |"
    lines = [header, "|---" * (2 * len(categories) + 3) + "|"]
    for method, per_cat in results.items():
        cells = []
        for c in categories:
            d = per_cat.get(c, {})
            cells += [_num(d.get("is")), _num(d.get("ic_lpips"))]
        avg_is = mean_or_none(d.get("is") for d in per_cat.values())
        avg_ic = mean_or_none(d.get("ic_lpips") for d in per_cat.values())
        lines.append(f"| {method} | " + " | ".join(cells + [_num(avg_is), _num(avg_ic)]) + " |")
    if with_paper:
        blanks = [""] * (2 * len(categories))
        for name, is_, ic in PAPER_QUALITY:
            lines.append(f"| {name} | " + " | ".join(blanks + [f"{is_:.2f}", f"{ic:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def classification_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Accuracy (percent) per method (rows) and category (columns), then the average. A method whose
    ResNet-34 started from random values (``--random-init``) is named so: not the paper's protocol."""
    categories = sorted({c for per_cat in results.values() for c in per_cat})
    header = "| method | " + " | ".join(categories) + " | **average** |"
    lines = [header, "|---" * (len(categories) + 2) + "|"]
    for method, per_cat in results.items():
        cells = [_pct(per_cat[c].get("accuracy")) if c in per_cat else NA for c in categories]
        avg = mean_or_none(d.get("accuracy") for d in per_cat.values())
        random = [c for c in sorted(per_cat) if per_cat[c].get("imagenet_init") is False]
        label = method + (f" (random init: {', '.join(random)})" if random else "")
        lines.append(f"| {label} | " + " | ".join(cells + [_pct(avg)]) + " |")
    return "\n".join(lines) + "\n"
