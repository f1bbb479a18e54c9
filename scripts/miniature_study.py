"""The method in miniature, over several seeds: what DualAnoDiff's data is worth against copy-paste and noise.

    python scripts/miniature_study.py --out study --seeds 0,1,2        # the README's table (hours of CPU)
    python scripts/miniature_tables.py study/study.json                # its tables and the demo's ranges

Per seed (each seed is a new synthetic dataset, new adapters, new pairs and new detectors), in OUT/seed-<s>/:

- ``demo``: `dualanodiff demo` at its default settings: DualAnoDiff pairs (DPM-Solver++, 20 steps), Crop&Paste
  pairs, no generated data, and the mask alignment of the pairs;
- ``paper-sampling``: the demo's adapters sampled as the paper and the authors' code do: a noise draw per
  branch, no zero-mean noise, guidance 2.5 (the demo's sampler and mask rule kept);
- ``perlin``: DRAEM's Perlin-noise anomalies, the same number of pairs;
- ``pndm-50``: the demo's adapters sampled with PNDM, 50 steps (the paper's sampler) instead of DPM-Solver++ 20;
- ``guidance-2.5``: the demo's adapters sampled at the paper's guidance scale, 2.5, instead of the demo's 5;
- ``independent-noise``: the demo's adapters sampled with a noise draw per branch, as the authors sample, instead
  of the part starting from the whole's draw;
- ``saim-off``: adapters trained and sampled without SAIM, all else equal;
- ``bcm``: adapters trained and sampled with BCM (backgrounds: train/good with their foreground masks);
- ``placed``: the demo's adapters, each pair placed on a train/good image in a region drawn from the few-shot
  masks (`dualanodiff generate --on-normal`), the same sampler settings; ``placed-free-part``: the same with
  the part branch left free outside the region (`--free-part`); ``placed-trim``: placed pairs that keep the
  normal image outside the defect's mask grown by the seam band (`--trim`).

Every variant is the protocol runner (`run_benchmark`) on the demo's data and base, so a detector is trained and
tested exactly as in the demo. Every step resumes; a variant whose adapters equal the demo's reuses them. After
each seed, writes OUT/study.json from every finished seed in OUT (every run's figures, per-method mean and
standard deviation, times, the stack), so seeds may run in parallel processes:
``for s in 0 1 2; do python scripts/miniature_study.py --out study --seeds $s & done``.

Every built-in type with one recipe (the demo's, chosen on weave/hole and pill/spot only), in
OUT/<category>-<anomaly>/ (one study.json each, as above)::

    python scripts/miniature_study.py --out study --types all --variants paper-sampling,perlin,placed
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dualanodiff.benchmark import run_benchmark
from dualanodiff.data.generated import read_generated
from dualanodiff.demo.alignment import load_segmenter, pairs_alignment
from dualanodiff.demo.expected import figures, spread
from dualanodiff.demo.run import DemoConfig, benchmark_config, localization_rows, run_demo, stack
from dualanodiff.errors import InputError
from dualanodiff.io import write_json_atomic

# name: (label, benchmark settings by flat name (`BenchmarkConfig.with_settings`), reuses the demo's adapters)
VARIANTS: dict[str, tuple[str, dict, bool]] = {
    "paper-sampling": (
        "DualAnoDiff, sampled the paper's way",
        {
            "methods": ["dualanodiff"],
            "guidance": 2.5,
            "shared_initial_noise": False,
            "zero_mean_noise": False,
        },
        True,
    ),
    "perlin": ("DRAEM-Perlin", {"methods": ["perlin"]}, False),
    "pndm-50": (
        "DualAnoDiff, PNDM 50 steps",
        {"methods": ["dualanodiff"], "scheduler": "pndm", "sampler_steps": 50},
        True,
    ),
    "guidance-2.5": (
        "DualAnoDiff, guidance 2.5",
        {"methods": ["dualanodiff"], "guidance": 2.5},
        True,
    ),
    "independent-noise": (
        "DualAnoDiff, independent initial noise",
        {"methods": ["dualanodiff"], "shared_initial_noise": False},
        True,
    ),
    "saim-off": ("DualAnoDiff, SAIM off", {"methods": ["dualanodiff"], "train_saim": False}, False),
    "bcm": ("DualAnoDiff with BCM", {"methods": ["dualanodiff"], "bcm": True}, False),
    "placed": (
        "DualAnoDiff placed on normal images",
        {"methods": ["dualanodiff-placed"]},
        True,
    ),
    "placed-free-part": (
        "DualAnoDiff placed, part branch free",
        {"methods": ["dualanodiff-placed"], "free_part": True},
        True,
    ),
    "placed-trim": (
        "DualAnoDiff placed, trimmed to the mask",
        {"methods": ["dualanodiff-placed"], "trim": True},
        True,
    ),
}
DEMO_LABELS = {"DualAnoDiff": "DualAnoDiff (DPM-Solver++ 20 steps)"}
METRICS = ("pixel AP", "pixel AUROC", "AU-PRO", "image AUROC")
# The demo's generated runs: (label in the study, method folder)
DEMO_GENERATORS = ((DEMO_LABELS["DualAnoDiff"], "dualanodiff"), ("Crop&Paste", "crop-paste"))


def _reuse_adapters(demo_bench: Path, variant_out: Path, category: str, anomaly: str) -> None:
    """Give a variant the demo's finished training step (same key, so the runner skips it)."""
    marker = f"train--{category}--{anomaly}.json"
    if (variant_out / "steps" / marker).is_file():
        return
    shutil.copytree(demo_bench / "adapters", variant_out / "adapters", dirs_exist_ok=True)
    (variant_out / "steps").mkdir(parents=True, exist_ok=True)
    shutil.copy2(demo_bench / "steps" / marker, variant_out / "steps" / marker)


def _kept_alignment(cfg: DemoConfig, gen_dir: Path) -> tuple[list, list, dict]:
    """Every pair of a generated folder, the kept ones, and the reference segmenter's alignment of those."""
    pairs = read_generated(gen_dir, include_rejected=True)
    kept = [p for p in pairs if p.record.get("kept")]
    return pairs, kept, pairs_alignment(load_segmenter(cfg.category, cfg.base_weights, cfg.anomaly), kept)


def run_variant(name: str, cfg: DemoConfig, seed_dir: Path) -> dict:
    """One variant on the demo's data and base; its localization rows, alignment and pair counts."""
    label, overrides, reuse = VARIANTS[name]
    demo = seed_dir / "demo"
    out = seed_dir / name
    if reuse:
        _reuse_adapters(demo / "benchmark", out, cfg.category, cfg.anomaly)
    started = time.perf_counter()
    bench_cfg = benchmark_config(cfg, demo / "data", demo / "base", out).with_settings(**overrides)
    try:
        bench = run_benchmark(bench_cfg)
    except InputError as err:  # e.g. no pair passed the mask gate: a result of the study, not a crash
        print(f"[study] {name}: {err}", flush=True)
        return {"label": label, "error": str(err), "seconds": round(time.perf_counter() - started, 1)}
    method = bench_cfg.methods[0]
    row = localization_rows(bench["results"]["localization"], cfg)
    row = [r for r in row if r["training data"] != "no generated data"][0]
    result = {"label": label, **{k: row[k] for k in row if k != "training data"}}
    gen_dir = out / "generated" / method / cfg.category / cfg.anomaly
    if method in ("dualanodiff", "dualanodiff-placed"):
        pairs, kept, align = _kept_alignment(cfg, gen_dir)
        result.update(
            kept=len(kept), generated=len(pairs), iou_median=align["iou_median"], iou_mean=align["iou_mean"],
            part_match=align["part_match_best_share"],
        )  # fmt: skip
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def run_seed(args, seed: int) -> dict:
    seed_dir = args.type_out / f"seed-{seed}"
    done = seed_dir / "seed.json"
    if done.is_file():  # a finished seed: only the variants it lacks are run (each records its commit)
        finished = json.loads(done.read_text())
        runs = finished["runs"]  # a variant that ended in an error is tried again (its finished steps resume)
        missing = [n for n in args.variants if "error" in runs.get(VARIANTS[n][0], {"error": "not run"})]
        cfg = DemoConfig(**finished["settings"])
        for name in missing:
            print(f"[study] seed {seed}: {name}", flush=True)
            result = run_variant(name, cfg, seed_dir)
            finished["runs"][result["label"]] = {**result, "commit": _commit()}
        if missing or _backfill_alignment(finished, cfg, seed_dir):
            write_json_atomic(done, finished)
        return finished
    cfg = DemoConfig(
        out=str(seed_dir / "demo"), seed=seed, threads=args.threads, progress=args.progress,
        base_weights=args.base_weights, quick=args.quick,
        **({"category": args.category} if args.category else {}),
        **({"anomaly": args.anomaly} if args.anomaly else {}),
    ).resolved()  # fmt: skip
    started = time.perf_counter()
    demo = run_demo(cfg)
    runs: dict[str, dict] = {}
    for row in demo["localization"]:
        label = DEMO_LABELS.get(row["training data"], row["training data"])
        runs[label] = {"label": label, **{k: v for k, v in row.items() if k != "training data"}}
    align = demo["alignment"]
    runs[DEMO_LABELS["DualAnoDiff"]].update(
        kept=demo["pairs"]["kept"], generated=demo["pairs"]["generated"],
        iou_median=align["dualanodiff"]["iou_median"], iou_mean=align["dualanodiff"]["iou_mean"],
    )  # fmt: skip
    runs["Crop&Paste"].update(
        iou_median=align["crop-paste"]["iou_median"], iou_mean=align["crop-paste"]["iou_mean"]
    )
    for label, method in DEMO_GENERATORS:
        runs[label]["part_match"] = align[method]["part_match_best_share"]
    for name in args.variants:
        print(f"[study] seed {seed}: {name}", flush=True)
        result = run_variant(name, cfg, seed_dir)
        runs[result["label"]] = result
    out = {
        "seed": seed,
        "runs": runs,
        "demo": {k: demo[k] for k in ("timings", "loss", "pairs", "checks")},
        "figures": figures(demo),  # what the demo's report sets beside the study's range
        # the reference segmenter on the type's real test images: how far its IoU on generated pairs can be read
        "reference_iou": align["real test images"]["iou_median"],
        "seconds": round(time.perf_counter() - started, 1),
        "settings": asdict(cfg),
        "commit": _commit(),  # of the demo and the variants run with it (a variant added later has its own)
    }
    write_json_atomic(done, out)
    return out


def _backfill_alignment(finished: dict, cfg: DemoConfig, seed_dir: Path) -> bool:
    """Give a seed finished before the study recorded them the reference segmenter's IoU on the real test
    images and each generated run's part-match share (from the files the seed left); True if anything was
    added."""
    added = False
    if "reference_iou" not in finished:
        demo = json.loads((seed_dir / "demo" / "demo_results.json").read_text())
        finished["reference_iou"] = demo["alignment"]["real test images"]["iou_median"]
        for label, method in DEMO_GENERATORS:
            finished["runs"][label]["part_match"] = demo["alignment"][method]["part_match_best_share"]
        added = True
    for name, (label, overrides, _) in VARIANTS.items():
        run = finished["runs"].get(label)
        method = overrides["methods"][0]
        if run is None or "error" in run or "part_match" in run or not method.startswith("dualanodiff"):
            continue
        gen_dir = seed_dir / name / "generated" / method / cfg.category / cfg.anomaly
        align = _kept_alignment(cfg, gen_dir)[2]
        run["part_match"] = align["part_match_best_share"]
        added = True
    return added


def _commit() -> str:
    """The commit of the code that made the study (with "+changes" when the tree differed from it)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return (
        head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
        if head.returncode == 0
        else "unknown"
    )


def aggregate(seeds: list[dict]) -> dict:
    """Per method and figure: mean, sample standard deviation, min, max over the seeds."""
    out: dict[str, dict] = {}
    labels = [label for label in seeds[0]["runs"]] if seeds else []
    for label in labels:
        stats = {}
        for key in (*METRICS, "iou_median", "part_match", "kept_pct"):
            values = []
            for s in seeds:
                run = s["runs"].get(label, {})
                v = (
                    100.0 * run["kept"] / run["generated"]
                    if key == "kept_pct" and run.get("generated")
                    else run.get(key)
                )
                if v is not None:
                    values.append(float(v))
            if values:
                stats[key] = spread(values)
        out[label] = stats
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="study folder (resumes)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {','.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--category", help="the demo's category (default: the demo's, weave)")
    p.add_argument("--anomaly", help="the demo's defect type (default: the demo's, hole)")
    p.add_argument(
        "--types",
        help="all, or a comma list of category/anomaly: every type in OUT/<category>-<anomaly>/ with one recipe",
    )
    p.add_argument(
        "--base-weights", default=None, help="folder of demo base weights (default: the shipped ones)"
    )
    p.add_argument("--progress", action="store_true", help="progress bars of every step")
    p.add_argument(
        "--quick",
        action="store_true",
        help="the demo's --quick sizes: checks that the study runs (no figures)",
    )
    args = p.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.types is None:  # one type (the demo's or --category/--anomaly), straight in OUT
        args.type_out = Path(args.out)
        print(f"[study] {cpu_estimate(Path(args.out), 1, seeds, args.variants, args.quick)}", flush=True)
        run_type(args, seeds)
        return
    if args.category or args.anomaly:
        p.error("--types: give either --types or --category/--anomaly")
    try:
        types = study_types(args.types)
    except ValueError as err:
        p.error(str(err))
    print(f"[study] {cpu_estimate(Path(args.out), len(types), seeds, args.variants, args.quick)}", flush=True)
    for category, anomaly in types:
        args.category, args.anomaly = category, anomaly
        args.type_out = Path(args.out) / f"{category}-{anomaly}"
        run_type(args, seeds)


def cpu_estimate(out: Path, n_types: int, seeds: list[int], variants: list[str], quick: bool) -> str:
    """What the study will cost, said before it starts: the demo's measured CPU time per run (the shipped
    reference file) and each variant's mean time over the seeds already finished in OUT (a variant not yet
    measured there counted as one demo); finished seeds are not run again, so the figure is an upper bound."""
    from dualanodiff.demo.expected import read_expected

    times = (read_expected() or {}).get("times", {}).get("quick" if quick else "full", {})
    demo_s = float(times.get("cpu_s", 250.0))
    measured: dict[str, list[float]] = {}
    for record in out.glob("**/seed-*/seed.json"):
        for run in json.loads(record.read_text())["runs"].values():
            if run.get("seconds") is not None and "error" not in run:
                measured.setdefault(run["label"], []).append(float(run["seconds"]))
    per_seed = demo_s + sum(statistics.fmean(measured.get(VARIANTS[v][0], [demo_s])) for v in variants)
    runs = n_types * len(seeds)
    return (
        f"about {runs * per_seed / 3600:.1f} CPU hours at most: {n_types} type(s) x {len(seeds)} seed(s), each "
        f"the demo ({demo_s:.0f} s CPU, measured on a {times.get('machine', 'CPU')}) and {len(variants)} "
        f"variant(s) ({per_seed - demo_s:.0f} s together); processes side by side share it out"
    )


def study_types(spec: str) -> list[tuple[str, str]]:
    """``all`` (every built-in type) or a comma list of ``category/anomaly``."""
    from dualanodiff.synthetic.dataset import DEFAULT_DEFECT_COUNTS

    builtin = [(c, a) for c, kinds in DEFAULT_DEFECT_COUNTS.items() for a in kinds]
    if spec == "all":
        return builtin
    types = [tuple(t.split("/", 1)) for t in spec.split(",") if t]
    unknown = [t for t in types if t not in builtin]
    if unknown:
        raise ValueError(
            f"--types: unknown {['/'.join(t) for t in unknown]}; choose from "
            f"{', '.join('/'.join(t) for t in builtin)} or all"
        )
    return types


def run_type(args, seeds: list[int]) -> None:
    """The seeds of one type; after each, OUT/study.json from every finished seed in that type's folder."""
    out = args.type_out
    for seed in seeds:
        print(f"[study] {args.category or 'demo type'}/{args.anomaly or ''} seed {seed}", flush=True)
        run_seed(args, seed)
        # Every finished seed in OUT, so several processes (one per seed) may share one study folder.
        finished = sorted(
            (json.loads(p.read_text()) for p in out.glob("seed-*/seed.json")), key=lambda s: s["seed"]
        )
        study = {
            "settings": finished[0]["settings"],
            "seeds": [s["seed"] for s in finished],
            "variants": args.variants,
            "stack": stack(),
            "commit": _commit(),
            "per_seed": finished,
            "summary": aggregate(finished),
        }
        write_json_atomic(out / "study.json", study)
    print(f"wrote {out / 'study.json'}; tables: python scripts/miniature_tables.py {out / 'study.json'}")


if __name__ == "__main__":
    main()
