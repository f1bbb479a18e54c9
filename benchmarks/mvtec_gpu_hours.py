"""The GPU-hours of the paper's whole protocol on MVTec AD, and its wall-clock time on G GPUs (docs/ray.md).

Nothing is run: the benchmark's step graph (per type: training, then generation; per category and method:
quality, localization, classification once its types are generated) is priced with per-step times and
scheduled as `--executor ray` runs it (a step starts when the steps it reads are done and a GPU is free, in the
benchmark's order). Each time is recorded with where it comes from: the authors' measurement (training, 4.5 h per
type on a V100), a measurement of ours (`--gpu-check`: the s/pair of `benchmarks/gpu_check.py` on your GPU),
or an estimate (said so, with its reasoning). Baselines (Crop&Paste, Perlin) run on CPUs and are left out.

    python benchmarks/mvtec_gpu_hours.py --out benchmarks/results/mvtec-gpu-hours.json
"""

from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path

# MVTec AD's anomaly types per category (Bergmann et al., CVPR 2019): 73 in 15 categories.
MVTEC_TYPES = {
    "bottle": 3, "cable": 8, "capsule": 5, "carpet": 5, "grid": 5, "hazelnut": 4, "leather": 5, "metal_nut": 4,
    "pill": 7, "screw": 5, "tile": 5, "toothbrush": 1, "transistor": 4, "wood": 5, "zipper": 7,
}  # fmt: skip
GENERATORS = ("dualanodiff", "crop-paste", "perlin")
METHODS = (*GENERATORS, "none")

# (value, source). "estimate" rows are reasoned guesses for a V100, to be replaced by measurements.
TIMES = {
    "train_h_per_type": (4.5, "the paper: 4.5 h per anomaly type on one V100"),
    "gen_s_per_pair": (
        8.0,
        "estimate: SD 1.5 at 512 px, 50 steps with guidance takes ~4 s per image on a V100; a pair is two "
        "images in one batch plus SAIM",
    ),
    "quality_h": (0.05, "estimate: Inception and LPIPS-VGG over ~1,000 images per type"),
    "loc_h_per_run": (
        0.6,
        "estimate: 200 epochs x 500 samples of a U-Net at 256 px (~20 ms per sample with its backward), plus "
        "the per-epoch evaluation",
    ),
    "cls_h": (
        0.3,
        "estimate: ResNet-34, 30 epochs at 256 px over the generated images of a category's types",
    ),
}


def step_graph(
    times: dict[str, float], pairs: int, loc_runs: int
) -> list[tuple[str, float, tuple[str, ...]]]:
    """(id, GPU-hours, ids it reads) in the benchmark's order (`dualanodiff.benchmark`, GPU steps only)."""
    steps = []
    for category, n in MVTEC_TYPES.items():
        kinds = [f"{category}/{i}" for i in range(n)]
        for kind in kinds:
            steps.append((f"train/{kind}", times["train_h_per_type"], ()))
            steps.append(
                (f"generate/dualanodiff/{kind}", pairs * times["gen_s_per_pair"] / 3600, (f"train/{kind}",))
            )
        reads = {
            m: tuple(f"generate/dualanodiff/{k}" for k in kinds) if m == "dualanodiff" else ()
            for m in METHODS
        }
        for m in GENERATORS:
            steps.append((f"quality/{m}/{category}", times["quality_h"], reads[m]))
        for m in METHODS:
            steps.append((f"localization/{m}/{category}", loc_runs * times["loc_h_per_run"], reads[m]))
        if n >= 2:
            for m in GENERATORS:
                steps.append((f"classification/{m}/{category}", times["cls_h"], reads[m]))
    return steps


def wall_hours(steps: list[tuple[str, float, tuple[str, ...]]], gpus: int) -> float:
    """Hours until the last step ends when each step takes a GPU as soon as its inputs are done and one is free."""
    free = [0.0] * gpus  # when each GPU is next free
    ends: dict[str, float] = {}
    pending = list(steps)
    while pending:  # the earliest-ready step first (ties: the benchmark's order), as Ray's queue does
        placeable = [j for j, (_, _, needs) in enumerate(pending) if all(d in ends for d in needs)]
        i = min(placeable, key=lambda j: max((ends[d] for d in pending[j][2]), default=0.0))
        step, hours, needs = pending.pop(i)
        ready = max((ends[d] for d in needs), default=0.0)
        start = max(ready, heapq.heappop(free))
        ends[step] = start + hours
        heapq.heappush(free, ends[step])
    return max(ends.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=1000, help="pairs per type (paper 1000)")
    parser.add_argument("--loc-runs", type=int, default=3, help="U-Nets per category and method (paper 3)")
    parser.add_argument(
        "--gpu-check", help="a gpu_check.py results file: its measured s/pair replaces the estimate"
    )
    parser.add_argument(
        "--gpus", type=int, nargs="+", default=[1, 8, 32, 73], help="cluster sizes to schedule"
    )
    parser.add_argument("--out", required=True, help="results JSON file")
    args = parser.parse_args()

    times = dict(TIMES)
    if args.gpu_check:
        rows = json.loads(Path(args.gpu_check).read_text())["results"]
        row = next(r for r in rows if r.get("name") == "generation, BCM off" and r.get("status") == "ok")
        device = json.loads(Path(args.gpu_check).read_text())["meta"].get("gpu", {}).get("name", "a GPU")
        times["gen_s_per_pair"] = (row["s_per_pair"], f"measured: {args.gpu_check} on {device}")
    values = {k: v for k, (v, _) in times.items()}
    steps = step_graph(values, args.pairs, args.loc_runs)
    by_kind: dict[str, float] = {}
    for step, hours, _ in steps:
        by_kind[step.split("/")[0]] = by_kind.get(step.split("/")[0], 0.0) + hours
    result = {
        "inputs": {k: {"value": v, "source": s} for k, (v, s) in times.items()},
        "pairs_per_type": args.pairs,
        "loc_runs": args.loc_runs,
        "types": sum(MVTEC_TYPES.values()),
        "categories": len(MVTEC_TYPES),
        "gpu_steps": len(steps),
        "gpu_hours": {k: round(v, 1) for k, v in by_kind.items()},
        "gpu_hours_total": round(sum(by_kind.values()), 1),
        "wall_hours": {str(g): round(wall_hours(steps, g), 1) for g in args.gpus},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
