"""What a normal demo run looks like: the miniature study's spread, set beside the user's run.

``scripts/miniature_study.py`` runs the demo's default settings over several seeds (each seed a new dataset,
new adapters, new pairs, new detectors), for every built-in defect type; ``scripts/miniature_tables.py`` writes
the per-type, per-figure mean, standard deviation and range to ``dualanodiff/assets/demo_expected.json``
(``types["<category>/<anomaly>"]``). A user's figure inside the seeds' range, widened by one standard deviation
on each side (:data:`VERDICT_RULE`), is a normal result; one outside points to a broken install or a changed
stack (the report says which figure and by how much).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXPECTED_NAME = "demo_expected.json"
VERDICT_RULE = "normal: inside the study seeds' range widened by one standard deviation on each side"
# The settings the study's figures hold for; another value of any of them gets no verdict (the type itself
# picks the study's row).
MATCHED = (
    "resolution",
    "train_lr",
    "train_rank",
    "train_batch_size",
    "scheduler",
    "guidance",
    "zero_mean_noise",
    "shared_initial_noise",
    "mask_method",
    "train_steps",
    "num_pairs",
    "sampler_steps",
    "loc_epochs",
    "loc_samples_per_epoch",
    "loc_base_channels",
    "max_mask_area",
    "probe_every",
)


def figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """The figures of one run that the study gives a range for (the same function reads the study's runs)."""
    out: dict[str, float | None] = {}
    for row in summary.get("localization", []):
        out[f"pixel AP, {row['training data']}"] = row.get("pixel AP")
    align = summary.get("alignment", {}).get("dualanodiff", {})
    out["median mask IoU, DualAnoDiff"] = align.get("iou_median")
    pairs = summary.get("pairs", {})
    out["kept pairs (%)"] = (
        round(100.0 * pairs["kept"] / pairs["generated"], 1) if pairs.get("generated") else None
    )
    loss = summary.get("loss", {})
    out["adapter loss, last / first"] = round(loss["last"] / loss["first"], 3) if loss.get("first") else None
    probe = loss.get("probe", {})
    out["probe loss, last / first"] = round(probe["last"] / probe["first"], 3) if probe.get("first") else None
    return out


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of one figure over the study's seeds."""
    return {
        "mean": round(statistics.fmean(values), 3),
        "sd": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
        "values": [round(v, 3) for v in values],
    }


def read_expected(path: str | Path | None = None) -> dict[str, Any] | None:
    path = Path(path) if path is not None else ASSETS / EXPECTED_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def study_row(expected: dict[str, Any] | None, category: str, anomaly: str) -> dict[str, Any] | None:
    """The study's figures for one defect type, or None where that type was not measured."""
    return (expected or {}).get("types", {}).get(f"{category}/{anomaly}")


def normal_range(ref: dict[str, Any]) -> tuple[float, float]:
    """The range :data:`VERDICT_RULE` calls normal: the seeds' min and max, each widened by one sd."""
    return ref["min"] - ref["sd"], ref["max"] + ref["sd"]


def compare_with_study(
    summary: dict[str, Any], cfg, expected: dict[str, Any] | None = None
) -> dict[str, Any]:
    """{"applies": bool, "why": str, "rule": str, "rows": [figure, this run, study mean ± sd, the seeds' values,
    the normal range the verdict uses, verdict]}: the run beside the study's row of its own defect type."""
    expected = expected if expected is not None else read_expected()
    if expected is None:
        return {"applies": False, "why": "no study results are installed (demo_expected.json)", "rows": []}
    kind = f"{cfg.category}/{cfg.anomaly}"
    row = study_row(expected, cfg.category, cfg.anomaly)
    rows, why = [], ""
    if row is None:
        measured = ", ".join(expected.get("types", {})) or "none"
        why = f"the miniature study has no row for {kind} (types measured: {measured})"
    else:
        settings = row.get("settings", {})
        differ = [k for k in MATCHED if k in settings and settings[k] != getattr(cfg, k, None)]
        if differ:
            why = "the study used other settings: " + ", ".join(
                f"{k} {settings[k]!r} (here {getattr(cfg, k, None)!r})" for k in differ[:4]
            )
        else:
            rows = _figure_rows(summary, row)
            why = f"the miniature study of {kind}, {row.get('seeds')} seeds, {row.get('stack', '')}"
    time_row = _time_row(summary, cfg, expected)
    if time_row:
        rows.append(time_row)
    return {
        "applies": bool(rows),
        "why": why or "the measured run time only",
        "rule": VERDICT_RULE,
        "rows": rows,
    }


def _figure_rows(summary: dict[str, Any], row: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, value in figures(summary).items():
        ref = row.get("figures", {}).get(name)
        if ref is None or value is None:
            continue
        lo, hi = normal_range(ref)
        verdict = (
            "normal"
            if lo <= value <= hi
            else ("LOWER than the study" if value < lo else "HIGHER than the study")
        )
        rows.append(
            {
                "figure": name,
                "this run": value,
                "study mean ± sd": f"{ref['mean']:.3g} ± {ref['sd']:.2g}",
                "study seeds": ", ".join(f"{v:.3g}" for v in ref.get("values", [])),
                "normal range": f"{lo:.3g} to {hi:.3g}",
                "verdict": verdict,
            }
        )
    return rows


def _time_row(summary: dict[str, Any], cfg, expected: dict[str, Any]) -> dict[str, Any] | None:
    measured = expected.get("times", {}).get(cfg.mode)
    mine = summary.get("timings", {}).get("cpu_before_report_s")
    if not (measured and mine is not None and measured.get("cpu_in_run_s")):
        return None
    ref = measured["cpu_in_run_s"]
    skipped = summary.get("steps_finished_before", 0)
    if skipped:
        verdict = f"not comparable: {skipped} step(s) had finished before and were skipped"
    elif mine <= 1.5 * ref:
        verdict = "normal"
    else:
        verdict = "SLOWER than measured (another CPU, or other load)"
    return {
        "figure": "CPU seconds of the run (before the report)",
        "this run": mine,
        "study mean ± sd": f"{ref:.0f} (measured on a {measured['machine']})",
        "study seeds": "",
        "normal range": f"up to {1.5 * ref:.0f}",
        "verdict": verdict,
    }
