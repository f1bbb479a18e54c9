"""The miniature study's tables and the demo's reference figures, from the JSON files that measured them.

    python scripts/miniature_tables.py study/study.json --times benchmarks/results/demo-cpu.json

Writes, from ``study.json`` (scripts/miniature_study.py), the timing file (benchmarks/bench_demo.py) and the
shipped base's ``demo_base.json``:

- the tables between the ``<!-- miniature-table:start/end -->``, ``<!-- demo-times:start/end -->`` and
  ``<!-- demo-base:start/end -->`` markers of README.md and docs/demo.md, so every figure there is a measured one;
- ``src/dualanodiff/assets/demo_expected.json``: the study's spread of each figure the demo's report checks, the
  settings it holds for, and the measured run times (read by the report and by `dualanodiff demo --help`).

``--print`` only prints the tables.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from dualanodiff.demo.base import ASSETS, META_NAME
from dualanodiff.demo.expected import EXPECTED_NAME, MATCHED, read_expected, spread
from dualanodiff.io import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
ORDER = (
    "DualAnoDiff (DPM-Solver++ 20 steps)",
    "DualAnoDiff, PNDM 50 steps",
    "DualAnoDiff, guidance 2.5",
    "DualAnoDiff, independent initial noise",
    "DualAnoDiff, SAIM off",
    "DualAnoDiff with BCM",
    "DualAnoDiff placed on normal images",
    "DualAnoDiff placed, part branch free",
    "DualAnoDiff placed, trimmed to the mask",
    "Crop&Paste",
    "DRAEM-Perlin",
    "no generated data",
)
COMPARISONS = (
    ("DualAnoDiff (DPM-Solver++ 20 steps)", "Crop&Paste"),
    ("DualAnoDiff (DPM-Solver++ 20 steps)", "DRAEM-Perlin"),
    ("DualAnoDiff (DPM-Solver++ 20 steps)", "no generated data"),
    ("DualAnoDiff (DPM-Solver++ 20 steps)", "DualAnoDiff, SAIM off"),
    ("DualAnoDiff with BCM", "DualAnoDiff (DPM-Solver++ 20 steps)"),
    ("DualAnoDiff, PNDM 50 steps", "DualAnoDiff (DPM-Solver++ 20 steps)"),
    ("DualAnoDiff, guidance 2.5", "DualAnoDiff (DPM-Solver++ 20 steps)"),
    ("DualAnoDiff, independent initial noise", "DualAnoDiff (DPM-Solver++ 20 steps)"),
    ("DualAnoDiff placed on normal images", "Crop&Paste"),
    ("DualAnoDiff placed on normal images", "DualAnoDiff (DPM-Solver++ 20 steps)"),
    ("DualAnoDiff placed, part branch free", "DualAnoDiff placed on normal images"),
    ("DualAnoDiff placed, trimmed to the mask", "DualAnoDiff placed on normal images"),
    ("DualAnoDiff placed, trimmed to the mask", "Crop&Paste"),
)
# Paired differences of the median mask IoU: the settings that change the sampling of the same adapters.
IOU_COMPARISONS = (
    ("DualAnoDiff, guidance 2.5", "DualAnoDiff (DPM-Solver++ 20 steps)"),
    ("DualAnoDiff, independent initial noise", "DualAnoDiff (DPM-Solver++ 20 steps)"),
    ("DualAnoDiff, SAIM off", "DualAnoDiff (DPM-Solver++ 20 steps)"),
    ("DualAnoDiff placed on normal images", "DualAnoDiff (DPM-Solver++ 20 steps)"),
    ("DualAnoDiff placed on normal images", "Crop&Paste"),
    ("DualAnoDiff placed, part branch free", "DualAnoDiff placed on normal images"),
)


def _cell(stats: dict | None, bold: bool = False, digits: int = 1) -> str:
    if not stats:
        return "-"
    text = f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"
    return f"**{text}**" if bold else text


def _stack(study: dict) -> str:
    s = study["stack"]
    return f"torch {s['torch']}, Python {s['python']}, {s['machine']} CPU, {s['threads']} thread(s)"


def study_table(study: dict) -> str:
    """Mean ± sd over seeds per kind of training data, and the paired per-seed differences of pixel AP."""
    summary = study["summary"]
    cfg = study["settings"]
    seeds = ", ".join(str(s) for s in study["seeds"])
    best = max(summary[k]["pixel AP"]["mean"] for k in ORDER if k in summary and "pixel AP" in summary[k])
    lines = [
        f"`{cfg['category']}/{cfg['anomaly']}`, seeds {seeds} (mean ± standard deviation over seeds; each seed a new "
        f"dataset, adapters, pairs and detectors); {cfg['train_steps']} adapter steps, {cfg['num_pairs']} pairs per "
        f"generator (DualAnoDiff: DPM-Solver++ {cfg['sampler_steps']} steps, guidance {cfg['guidance']:g}, unless the "
        f"row says otherwise), detector {cfg['loc_epochs']} epochs x {cfg['loc_samples_per_epoch']} samples at "
        f"{cfg['resolution']} px. Measured with {_stack(study)}; `study.json` by `scripts/miniature_study.py`.",
        "",
        "| training data of the detector | pixel AP | pixel AUROC | AU-PRO | image AUROC | median mask IoU | kept pairs % |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in ORDER:
        if label not in summary:
            continue
        failed = sum("error" in seed["runs"].get(label, {}) for seed in study["per_seed"])
        s = summary[label]
        ap = s.get("pixel AP")
        cells = [
            _cell(ap, bold=ap is not None and ap["mean"] == best),
            _cell(s.get("pixel AUROC")),
            _cell(s.get("AU-PRO")),
            _cell(s.get("image AUROC")),
            _cell(s.get("iou_median"), digits=2),
            _cell(s.get("kept_pct"), digits=0),
        ]
        note = f" (failed in {failed} seed(s): no pair passed the mask gate)" if failed else ""
        lines.append(f"| {label}{note} | " + " | ".join(cells) + " |")
    lines += _paired(study, "pixel AP", "pixel AP", COMPARISONS, 1)
    lines += _paired(study, "iou_median", "the median mask IoU", IOU_COMPARISONS, 3)
    lines += _probe_lines(study)
    return "\n".join(lines) + "\n"


def _paired(study: dict, key: str, name: str, comparisons, digits: int) -> list[str]:
    """Table lines: the per-seed differences of ``key`` between two runs of the same seed, mean ± sd."""
    summary = study["summary"]
    lines = ["", f"Paired differences of {name} (the same seed's two runs; mean ± sd over seeds):", ""]
    lines += ["| comparison | difference | per seed | verdict |", "|---|---|---|---|"]
    rows = 0
    for a, b in comparisons:
        if a not in summary or b not in summary:
            continue
        diffs = _paired_diffs(study, a, b, key)
        if not diffs:
            continue
        d = spread(diffs)
        verdict = (
            "tie (within one sd)" if abs(d["mean"]) <= d["sd"] else ("higher" if d["mean"] > 0 else "lower")
        )
        per_seed = ", ".join(f"{v:+.{digits}f}" for v in diffs)
        lines.append(
            f"| {a} minus {b} | {d['mean']:+.{digits}f} ± {d['sd']:.{digits}f} | {per_seed} | {verdict} |"
        )
        rows += 1
    return lines if rows else []


def _probe_lines(study: dict) -> list[str]:
    """The DualAnoDiff adapters' probe loss (`dualanodiff.training.probe`) per seed, before and after training."""
    probes = [(s["seed"], s.get("demo", {}).get("loss", {}).get("probe")) for s in study["per_seed"]]
    if not all(p for _, p in probes):
        return []
    cells = [
        f"seed {seed}: {p['first']:.4f} to {p['last']:.4f} ({-p['fall_pct']:+.1f} %; whole-image rows "
        f"{p['global_first']:.4f} to {p['global_last']:.4f}, part rows {p['part_first']:.4f} to {p['part_last']:.4f})"
        for seed, p in probes
    ]
    return ["", "Probe loss of the DualAnoDiff adapters (fixed few-shot pairs, timesteps and noise), before and "
            "after training: " + "; ".join(cells) + "."]  # fmt: skip


def times_text(times: dict) -> str:
    meta, runs = times["meta"], times["results"]
    parts = []
    for mode, command in (("full", "dualanodiff demo"), ("quick", "dualanodiff demo --quick")):
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        wall = statistics.median(r["wall_s"] for r in mine)
        cpu = statistics.median(r["cpu_s"] for r in mine)
        load = max(r["load_before"] for r in mine)
        parts.append(
            f"`{command}`: {wall:.0f} s wall, {cpu:.0f} s CPU ({mine[0]['threads']} thread; load average "
            f"{load:.1f} before the run)"
        )
    where = f"{meta['cpu_count']}-core {meta['device']}, torch {meta['torch']}, {meta['date']}"
    return "Measured run times (`benchmarks/bench_demo.py`, " + where + "): " + "; ".join(parts) + ".\n"


def base_text(meta: dict) -> str:
    t, c = meta["times"], meta["config"]
    segs = "; ".join(
        f"{cat}: " + ", ".join(f"{kind} {iou:.2f}" for kind, iou in s["val_iou_mean"].items())
        for cat, s in meta["segmenters"].items()
    )
    size = (ASSETS / "demo_base.safetensors").stat().st_size / 1e6
    unet = f"UNet {c['unet_steps']} steps (batch {c['unet_batch']})"
    if "unet_snapshot_step" in meta:  # a long run stopped early: the shipped UNet is one of its snapshots
        unet = (
            f"UNet: the EMA snapshot at step {meta['unet_snapshot_step']} of a {c['unet_steps']}-step run "
            f"(batch {c['unet_batch']}; the run was stopped there for time)"
        )
    cpu = ", ".join(
        f"{stage} {t[f'{stage}_cpu_s'] / 60:.0f}"
        for stage in ("vae", "unet", "segmenter")
        if f"{stage}_cpu_s" in t
    )
    return (
        f"Shipped: UNet, VAE and reference segmenters as fp16 safetensors ({size:.1f} MB) and `demo_base.json`. "
        f"Pretraining: VAE {c['vae_steps']} steps, {unet}, segmenters {c['segmenter_steps']} steps each; CPU "
        f"minutes with one torch thread, as recorded: {cpu or 'none recorded'}; torch {meta['stack']['torch']}. "
        f"Final losses: VAE reconstruction {meta['final_losses'].get('vae')}, UNet epsilon MSE "
        f"{meta['final_losses'].get('unet', 'not recorded')}. Reference segmenters, mean IoU on held-out "
        f"VAE-decoded renders per type: {segs}.\n"
    )


def type_expected(study: dict) -> dict:
    """One type's row of the demo's reference file: the spread of each figure the report checks."""
    figures: dict[str, list[float]] = {}
    for seed in study["per_seed"]:
        for name, value in seed["figures"].items():
            if value is not None:
                figures.setdefault(name, []).append(float(value))
    return {
        "seeds": len(study["seeds"]),
        "stack": _stack(study),
        "settings": {k: study["settings"][k] for k in MATCHED},
        "figures": {name: spread(values) for name, values in figures.items()},
    }


def expected_file(studies: list[dict], times: dict | None, before: dict | None = None) -> dict:
    """The demo's reference file: a row per studied type (``types["<category>/<anomaly>"]``), added to the
    rows of the file ``before`` (so one type's study updates its row only), and the run times (``before``'s
    when no new ones are given)."""
    before = before or {}
    types = dict(before.get("types", {}))
    for study in studies:
        types[f"{study['settings']['category']}/{study['settings']['anomaly']}"] = type_expected(study)
    out: dict = {"types": dict(sorted(types.items()))}
    if times:
        out["times"] = times_summary(times)
    elif "times" in before:
        out["times"] = before["times"]
    return out


def times_summary(times: dict) -> dict:
    """Per mode, the median wall and CPU time of bench_demo.py's runs (what `demo --help` and the report show)."""
    return {
        mode: {
            "wall_s": statistics.median(r["wall_s"] for r in times["results"] if r["mode"] == mode),
            "cpu_s": statistics.median(r["cpu_s"] for r in times["results"] if r["mode"] == mode),
            "cpu_in_run_s": statistics.median(
                r["stages_s"]["cpu_before_report_s"] for r in times["results"] if r["mode"] == mode
            ),
            "machine": f"{times['meta']['cpu_count']}-core {times['meta']['device']}",
        }
        for mode in ("full", "quick")
        if any(r["mode"] == mode for r in times["results"])
    }


def replace_between(path: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``."""
    source = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(source):
        raise SystemExit(f"{path}: no <!-- {name}:start --> ... <!-- {name}:end --> markers")
    write_text_atomic(path, pattern.sub(lambda m: m.group(1) + text + m.group(2), source))


def placed_pairs_picture(folder: Path, out: Path, count: int = 16) -> None:
    """The first ``count`` placed pairs of a generated folder, one row each: the normal image, the placed
    image with its mask outlined (kept or the reason it was rejected), the part image, and the area the pair
    was allowed to change (OUT/region)."""
    import numpy as np
    from PIL import Image

    from dualanodiff.data.generated import manifest_records
    from dualanodiff.io import save_image_atomic
    from dualanodiff.report import image_grid, overlay_mask

    cells, labels = [], []
    for name, record in sorted(manifest_records(folder).items())[:count]:
        side = folder if record["kept"] else folder / "rejected"
        image = np.asarray(Image.open(side / "image" / f"{name}.png").convert("RGB"))
        mask = np.asarray(Image.open(side / "mask" / f"{name}.png")) > 0
        normal = Image.open(record["normal"]).convert("RGB").resize(image.shape[1::-1], Image.BILINEAR)
        region = np.asarray(Image.open(folder / "region" / f"{name}.png").convert("RGB"))
        cells += [
            np.asarray(normal),
            overlay_mask(image, mask),
            np.asarray(Image.open(side / "part" / f"{name}.png").convert("RGB")),
            region,
        ]
        verdict = "kept" if record["kept"] else "rejected"
        labels += [f"{name} normal", f"{verdict}", "part", "region+band"]
    save_image_atomic(out, image_grid(cells, 8, labels))


def measured_commits(study: dict) -> str:
    """Which commit made which runs: a seed's runs carry its commit, a variant added to it later its own."""
    made: dict[str, list[str]] = {}
    for seed in study.get("per_seed", []):
        for label, run in seed["runs"].items():
            commit = run.get("commit") or seed.get("commit") or study.get("commit", "unknown")
            made.setdefault(commit, [])
            if label not in made[commit]:
                made[commit].append(label)
    if len(made) <= 1:
        return f"`{next(iter(made), study.get('commit', 'unknown'))}`"
    return "; ".join(f"`{c}` ({', '.join(labels)})" for c, labels in made.items())


DEMO_RUN = "DualAnoDiff (DPM-Solver++ 20 steps)"
PAPER_RUN = "DualAnoDiff, sampled the paper's way"
PLACED_RUN = "DualAnoDiff placed on normal images"
# The every-type table's columns: (label in study.json, column heading).
TYPE_COLUMNS = (
    (DEMO_RUN, "DualAnoDiff, demo's sampling"),
    (PAPER_RUN, "DualAnoDiff, paper's sampling"),
    (PLACED_RUN, "DualAnoDiff placed"),
    ("Crop&Paste", "Crop&Paste"),
    ("DRAEM-Perlin", "DRAEM-Perlin"),
    ("no generated data", "no generated data"),
)
GENERATED_RUNS = (DEMO_RUN, PAPER_RUN, PLACED_RUN)
# Below this IoU of the reference segmenter on a type's real test images, its IoU on generated pairs says
# little (thin cracks: 0.12), and the part match stands in for it.
SOUND_REFERENCE_IOU = 0.7


def _type_name(study: dict) -> str:
    return f"{study['settings']['category']}/{study['settings']['anomaly']}"


def _verdict(diffs: list[float]) -> str:
    """The rule of the paired tables: a tie when the mean difference lies within one sd of it."""
    d = spread(diffs)
    if abs(d["mean"]) <= d["sd"]:
        return "tie"
    return "wins" if d["mean"] > 0 else "loses"


def _paired_diffs(study: dict, a: str, b: str, key: str = "pixel AP") -> list[float]:
    pairs = [(s["runs"].get(a, {}), s["runs"].get(b, {})) for s in study["per_seed"]]
    return [x[key] - y[key] for x, y in pairs if x.get(key) is not None and y.get(key) is not None]


def reference_iou(study: dict) -> float | None:
    """The reference segmenter's median IoU on the type's real test images, mean over seeds."""
    values = [s["reference_iou"] for s in study["per_seed"] if s.get("reference_iou") is not None]
    return statistics.fmean(values) if values else None


def types_tables(studies: list[dict]) -> str:
    """The every-type block: pixel AP per type and method with the mean over types, the paired differences
    against Crop&Paste with their verdicts, and the alignment per type by a measure sound for that type."""
    studies = sorted(studies, key=_type_name)
    first = studies[0]
    cfg = first["settings"]
    seeds = sorted({len(s["seeds"]) for s in studies})
    lines = [
        f"Every built-in type with one recipe (the demo's settings, chosen on `weave/hole` and `pill/spot` only): "
        f"{' or '.join(map(str, seeds))} seed(s) per type (mean ± sd over seeds; each seed a new dataset, adapters, "
        f"pairs and detectors); {cfg['train_steps']} adapter steps, {cfg['num_pairs']} pairs per generator, "
        f"detector {cfg['loc_epochs']} epochs x {cfg['loc_samples_per_epoch']} samples at {cfg['resolution']} px. "
        f"Measured with {_stack(first)}; one `study.json` per type by `scripts/miniature_study.py --types all`.",
        "",
        "Pixel AP of the detector on the type's real test defects (%):",
        "",
        "| type | " + " | ".join(h for _, h in TYPE_COLUMNS) + " |",
        "|---|" + "---|" * len(TYPE_COLUMNS),
    ]
    means: dict[str, list[float]] = {label: [] for label, _ in TYPE_COLUMNS}
    for study in studies:
        summary = study["summary"]
        present = [
            summary[label]["pixel AP"]["mean"]
            for label, _ in TYPE_COLUMNS
            if "pixel AP" in summary.get(label, {})
        ]
        best = max(present) if present else None
        cells = []
        for label, _ in TYPE_COLUMNS:
            ap = summary.get(label, {}).get("pixel AP")
            if ap:
                means[label].append(ap["mean"])
            cells.append(_cell(ap, bold=ap is not None and ap["mean"] == best))
        lines.append(f"| `{_type_name(study)}` | " + " | ".join(cells) + " |")
    n_types = len(studies)
    lines.append(
        f"| mean over the {n_types} types | "
        + " | ".join(
            f"{statistics.fmean(v):.1f}" if len(v) == n_types else "-"
            for v in (means[label] for label, _ in TYPE_COLUMNS)
        )
        + " |"
    )
    lines += [
        "",
        "Paired differences against Crop&Paste, pixel AP (the same seed's two detectors; mean ± sd over seeds; "
        "a tie when the mean lies within one sd):",
        "",
        "| type | " + " | ".join(f"{dict(TYPE_COLUMNS)[r]} minus Crop&Paste" for r in GENERATED_RUNS) + " |",
        "|---|" + "---|" * len(GENERATED_RUNS),
    ]
    tally = {r: {"wins": 0, "tie": 0, "loses": 0} for r in GENERATED_RUNS}
    for study in studies:
        cells = []
        for run in GENERATED_RUNS:
            diffs = _paired_diffs(study, run, "Crop&Paste")
            if not diffs:
                cells.append("-")
                continue
            d, verdict = spread(diffs), _verdict(diffs)
            tally[run][verdict] += 1
            cells.append(f"{d['mean']:+.1f} ± {d['sd']:.1f} ({verdict})")
        lines.append(f"| `{_type_name(study)}` | " + " | ".join(cells) + " |")
    lines.append(
        "| wins / ties / losses | "
        + " | ".join(f"{t['wins']} / {t['tie']} / {t['loses']}" for t in tally.values())
        + " |"
    )
    lines += [
        "",
        "Alignment of the generated masks with the generated defects. Where the reference segmenter finds a "
        f"type's real test defects well (median IoU >= {SOUND_REFERENCE_IOU} on the real test images), its median "
        "IoU with the pairs' masks; where it does not, the part match instead (the share of pairs whose whole image "
        "matches the part image best at the mask's place rather than moved 16 px; Crop&Paste 1.0), marked *pm*:",
        "",
        "| type | reference segmenter on real defects | "
        + " | ".join(dict(TYPE_COLUMNS)[r] for r in GENERATED_RUNS)
        + " | Crop&Paste | kept pairs %, demo's / paper's / placed |",
        "|---|---|" + "---|" * (len(GENERATED_RUNS) + 2),
    ]
    for study in studies:
        ref = reference_iou(study)
        sound = ref is not None and ref >= SOUND_REFERENCE_IOU
        key = "iou_median" if sound else "part_match"
        cells = []
        for run in (*GENERATED_RUNS, "Crop&Paste"):
            stats = study["summary"].get(run, {}).get(key)
            cells.append(_cell(stats, digits=2) + ("" if sound or not stats else " *pm*"))
        kept = " / ".join(
            f"{study['summary'].get(r, {}).get('kept_pct', {}).get('mean', float('nan')):.0f}"
            for r in GENERATED_RUNS
        )
        ref_cell = "-" if ref is None else f"{ref:.2f}" + ("" if sound else " (too low: part match used)")
        lines.append(f"| `{_type_name(study)}` | {ref_cell} | " + " | ".join(cells) + f" | {kept} |")
    lines += ["", aim_line(studies, means)]
    commits = sorted({c for study in studies for c in measured_commits(study).replace("`", "").split("; ")})
    lines += ["", f"Commits measured: {', '.join(commits)}."]
    return "\n".join(lines) + "\n"


def aim_line(studies: list[dict], means: dict[str, list[float]]) -> str:
    """The aim, checked: DualAnoDiff's best mode at or above Crop&Paste in mean pixel AP over the types, and a
    median mask IoU of at least 0.5 on every type (read only where the reference segmenter is sound)."""
    n = len(studies)
    over = {r: statistics.fmean(means[r]) for r in (*GENERATED_RUNS, "Crop&Paste") if len(means[r]) == n}
    if "Crop&Paste" not in over or not any(r in over for r in GENERATED_RUNS):
        return "Aim: not every type has the runs it needs yet."
    best = max((r for r in GENERATED_RUNS if r in over), key=over.get)
    reached = over[best] >= over["Crop&Paste"]
    low, unsound = [], []
    for study in studies:
        ref = reference_iou(study)
        iou = study["summary"].get(best, {}).get("iou_median", {}).get("mean")
        if ref is None or ref < SOUND_REFERENCE_IOU:
            unsound.append(_type_name(study))
        elif iou is None or iou < 0.5:
            low.append(f"{_type_name(study)} {iou if iou is None else round(iou, 2)}")
    return (
        f"Aim: DualAnoDiff's best mode over the {n} types ({dict(TYPE_COLUMNS)[best]}, mean pixel AP "
        f"{over[best]:.1f}) {'at or above' if reached else 'below'} Crop&Paste ({over['Crop&Paste']:.1f}): "
        f"{'reached' if reached else 'not reached'}. Median mask IoU >= 0.5 where it can be read: "
        + (f"not on {', '.join(low)}" if low else "on every such type")
        + (
            f"; not readable on {', '.join(unsound)} (reference segmenter below {SOUND_REFERENCE_IOU})"
            if unsound
            else ""
        )
        + "."
    )


def types_pairs_picture(study_dir: Path, types: list[str], out: Path, seed: int = 0, count: int = 3) -> None:
    """The first ``count`` kept pairs of seed ``seed`` of each type (a row) and generator: the image with its
    mask outlined."""
    import numpy as np
    from PIL import Image

    from dualanodiff.data.generated import read_generated
    from dualanodiff.io import save_image_atomic
    from dualanodiff.report import image_grid, overlay_mask

    folders = (  # (label, folder under the seed, generated method)
        ("demo's", "demo/benchmark", "dualanodiff"),
        ("paper's", "paper-sampling", "dualanodiff"),
        ("placed", "placed", "dualanodiff-placed"),
        ("Crop&Paste", "demo/benchmark", "crop-paste"),
    )
    cells, labels = [], []
    for kind in types:
        category, anomaly = kind.split("/")
        seed_dir = study_dir / f"{category}-{anomaly}" / f"seed-{seed}"
        for label, sub, method in folders:
            gen = seed_dir / sub / "generated" / method / category / anomaly
            pairs = read_generated(gen) if gen.is_dir() else []
            for k in range(count):
                if k < len(pairs):
                    image = np.asarray(Image.open(pairs[k].image).convert("RGB"))
                    mask = np.asarray(Image.open(pairs[k].mask).resize(image.shape[1::-1])) > 0
                    cells.append(overlay_mask(image, mask))
                else:
                    cells.append(np.full((64, 64, 3), 255, np.uint8))
                labels.append(f"{kind} {label}" if k == 0 else "")
    save_image_atomic(out, image_grid(cells, len(folders) * count, labels))


def placement_tables(studies: list[Path]) -> str:
    """docs/placement.md's measured block: one table per type's study.json, and where its picture is."""
    parts = []
    for path in studies:
        study = json.loads(path.read_text())
        parts.append(study_table(study))
        parts.append(
            f"Commits measured: {measured_commits(study)}; results: `{path.resolve().relative_to(ROOT)}`.\n"
        )
    return "\n".join(parts)


def write_types(study_dir: Path, print_only: bool) -> None:
    """The every-type study into the docs: tables, picture, results files and the demo's reference rows."""
    paths = sorted(study_dir.glob("*/study.json"))
    if not paths:
        raise SystemExit(f"{study_dir}: no <category>-<anomaly>/study.json in it")
    studies = [json.loads(p.read_text()) for p in paths]
    text = types_tables(studies)
    if print_only:
        print(text)
        return
    results = ROOT / "docs" / "results" / "miniature_study"
    for path, study in zip(paths, studies):
        folder = results / path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "study.json", study)
    picture = results / "types-pairs-seed-0.png"
    types_pairs_picture(study_dir, sorted(_type_name(s) for s in studies), picture)
    for doc in (ROOT / "README.md", ROOT / "docs" / "demo.md"):
        replace_between(doc, "types-table", text)
    write_json_atomic(ASSETS / EXPECTED_NAME, expected_file(studies, None, read_expected()))
    print(f"wrote the every-type tables, {picture} and the study files, and {ASSETS / EXPECTED_NAME}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "study",
        type=Path,
        nargs="?",
        help="study.json written by scripts/miniature_study.py (none: --times alone, or --base-only)",
    )
    parser.add_argument(
        "--base-only",
        action="store_true",
        help="only fill docs/demo.md's demo-base figures from demo_base.json",
    )
    parser.add_argument("--times", type=Path, default=None, help="JSON written by benchmarks/bench_demo.py")
    parser.add_argument("--print", action="store_true", help="print the tables; write nothing")
    parser.add_argument(
        "--placement",
        type=Path,
        nargs="+",
        help="instead: the placement measurement's study.json files (one per type) into docs/placement.md",
    )
    parser.add_argument(
        "--types",
        type=Path,
        help="instead: the every-type study folder (scripts/miniature_study.py --types all): its tables into "
        "README.md and docs/demo.md, a picture of its pairs, each type's study.json under "
        "docs/results/miniature_study/<category>-<anomaly>/, and each type's row of the demo's reference file",
    )
    args = parser.parse_args()
    if args.types:
        write_types(args.types, args.print)
        return
    if args.placement:
        text = placement_tables(args.placement)
        if args.print:
            print(text)
        else:
            replace_between(ROOT / "docs" / "placement.md", "placement-table", text)
            print("wrote the placement tables into docs/placement.md")
        return
    base_meta = json.loads((ASSETS / META_NAME).read_text())
    if args.base_only:
        replace_between(ROOT / "docs" / "demo.md", "demo-base", base_text(base_meta))
        print("wrote the demo base's figures into docs/demo.md")
        return
    if args.study is None and args.times is not None and not args.print:
        # No study yet: the measured times alone, the same figures in README.md, docs/demo.md and `demo --help`.
        times = json.loads(args.times.read_text())
        for doc in (ROOT / "README.md", ROOT / "docs" / "demo.md"):
            replace_between(doc, "demo-times", times_text(times))
        before = read_expected() or {}
        write_json_atomic(ASSETS / EXPECTED_NAME, expected_file([], times, before))
        print(f"wrote the run times into README.md and docs/demo.md, and {ASSETS / EXPECTED_NAME}")
        return
    if args.study is None:
        parser.error("give study.json, --times alone, or --base-only")
    study = json.loads(args.study.read_text())
    times = json.loads(args.times.read_text()) if args.times else None
    table = study_table(study)
    if args.print:
        print(table)
        print(base_text(base_meta))
        if times:
            print(times_text(times))
        return
    for doc in (ROOT / "README.md", ROOT / "docs" / "demo.md"):
        replace_between(doc, "miniature-table", table)
        if times:
            replace_between(doc, "demo-times", times_text(times))
    replace_between(ROOT / "docs" / "demo.md", "demo-base", base_text(base_meta))
    write_json_atomic(ASSETS / EXPECTED_NAME, expected_file([study], times, read_expected()))
    print(f"wrote the tables into README.md and docs/demo.md, and {ASSETS / EXPECTED_NAME}")


if __name__ == "__main__":
    main()
