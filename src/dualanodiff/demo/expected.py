"""What a normal demo run looks like: the miniature study's spread, set beside the user's run.

``scripts/miniature_study.py`` runs the demo's default settings over several seeds (each seed a new dataset,
new adapters, new pairs, new detectors); ``scripts/miniature_tables.py`` writes the per-figure mean, standard
deviation and range to ``dualanodiff/assets/demo_expected.json``. A user's figure inside that range, widened by
one standard deviation on each side, is a normal result; one far outside points to a broken install or a
changed stack (the report says which figure and by how much).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXPECTED_NAME = "demo_expected.json"
# The settings the study's figures hold for; another value of any of them gets no verdict.
MATCHED = (
    "category",
    "anomaly",
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


def compare_with_study(
    summary: dict[str, Any], cfg, expected: dict[str, Any] | None = None
) -> dict[str, Any]:
    """{"applies": bool, "why": str, "rows": [figure, yours, study mean +- sd, range, verdict]}."""
    expected = expected if expected is not None else read_expected()
    if expected is None:
        return {"applies": False, "why": "no study results are installed (demo_expected.json)", "rows": []}
    settings = expected.get("settings", {})
    differ = [k for k in MATCHED if k in settings and settings[k] != getattr(cfg, k, None)]
    if differ:
        return {
            "applies": False,
            "why": "the study used other settings: "
            + ", ".join(f"{k} {settings[k]!r} (here {getattr(cfg, k, None)!r})" for k in differ[:4]),
            "rows": [],
        }
    rows = []
    for name, value in figures(summary).items():
        ref = expected.get("figures", {}).get(name)
        if ref is None or value is None:
            continue
        lo, hi = ref["min"] - ref["sd"], ref["max"] + ref["sd"]
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
                "study range": f"{ref['min']:.3g} to {ref['max']:.3g}",
                "verdict": verdict,
            }
        )
    measured = expected.get("times", {}).get(cfg.mode)
    mine = summary.get("timings", {}).get("cpu_before_report_s")
    if measured and mine is not None and measured.get("cpu_in_run_s"):
        ref = measured["cpu_in_run_s"]
        skipped = summary.get("steps_finished_before", 0)
        if skipped:
            verdict = f"not comparable: {skipped} step(s) had finished before and were skipped"
        elif mine <= 1.5 * ref:
            verdict = "normal"
        else:
            verdict = "SLOWER than measured (another CPU, or other load)"
        rows.append(
            {
                "figure": "CPU seconds of the run (before the report)",
                "this run": mine,
                "study mean ± sd": f"{ref:.0f} (measured on a {measured['machine']})",
                "study range": "",
                "verdict": verdict,
            }
        )
    n = expected.get("seeds")
    why = (
        f"the miniature study, {n} seeds, {expected.get('stack', '')}"
        if n
        else "no miniature study is installed yet: only the measured run time"
    )
    return {"applies": True, "why": why, "rows": rows}
