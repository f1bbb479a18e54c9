"""`dualanodiff baseline`: other generators, written in the same layout as `generate`."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "baseline",
        help="generate defect pairs with a baseline (Crop&Paste, DRAEM Perlin) in the same layout as `generate`",
        description=(
            "Write OUT/image, OUT/mask and OUT/manifest.jsonl exactly like `generate`, so every evaluation command "
            "takes either. crop-paste: defects cut from the few-shot images by their masks, pasted at random "
            "positions (inside the object's foreground when known) on normal images. perlin: DRAEM's Perlin-noise "
            "anomalies. Resumable: a rerun makes only the missing pairs, with the same seeds."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("method", choices=["crop-paste", "perlin"])
    p.add_argument("--data", required=True, help="MVTec-AD-layout root")
    p.add_argument("--category", required=True)
    p.add_argument("--anomaly", required=True, help="anomaly type (crop-paste cuts its few-shot images)")
    p.add_argument("--num-pairs", type=int, default=500)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split", choices=["strict", "paper-compat"], default="strict", help="few-shot split rule"
    )
    p.add_argument("--resolution", type=int, default=None, help="resize outputs to this side (default: keep)")
    p.add_argument("--anomaly-source", default=None, help="perlin: folder of texture images (e.g. DTD)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..baselines import run_baseline

    summary = run_baseline(
        args.method,
        args.data,
        args.category,
        args.anomaly,
        args.num_pairs,
        args.out,
        seed=args.seed,
        split=args.split,
        resolution=args.resolution,
        anomaly_source_dir=args.anomaly_source,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0
