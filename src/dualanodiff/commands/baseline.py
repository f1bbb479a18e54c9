"""`dualanodiff baseline`: other generators, written in the same layout as `generate`."""

from __future__ import annotations

import json

from ..checks import name_arg, pairs_arg, resolution_arg, seed_arg
from ..errors import InputError
from . import add_progress_argument, add_split_argument


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
    )
    p.add_argument(
        "method",
        choices=["crop-paste", "perlin"],
        help="crop-paste: real few-shot defects pasted on normal images; perlin: DRAEM's Perlin-noise anomalies",
    )
    p.add_argument("--data", required=True, help="dataset root in the MVTec AD layout")
    p.add_argument("--category", required=True, type=name_arg, help="category folder under --data")
    p.add_argument(
        "--anomaly",
        required=True,
        type=name_arg,
        help="anomaly type: crop-paste cuts its few-shot images; perlin only records it as the pairs' type",
    )
    p.add_argument("--num-pairs", type=pairs_arg, default=500, help="pairs to write")
    p.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    p.add_argument("--seed", type=seed_arg, default=0, help="pair i is drawn from seed + i")
    add_split_argument(p)
    p.add_argument(
        "--resolution",
        type=resolution_arg,
        help="resize outputs to this side (default: keep the normal images' size)",
    )
    p.add_argument(
        "--anomaly-source",
        help="perlin: folder of texture images, e.g. DTD (default: another normal image of the category, cut "
        "into blocks that are shuffled and flipped)",
    )
    p.add_argument(
        "--foreground",
        help="where on a normal image a defect may go, as `generate --on-normal` and BCM take it: auto "
        "(estimated), u2net (with --u2net-weights), none (anywhere: textures) or a folder of masks by stem "
        "(default: the dataset's <category>/foreground/train/good masks where they exist, else anywhere)",
    )
    p.add_argument("--u2net-weights", help="with --foreground u2net: u2net.pth or u2netp.pth")
    add_progress_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..baselines import run_baseline
    from ..checks import check_output_dir

    check_output_dir(args.out)
    if args.anomaly_source is not None and args.method != "perlin":  # refused, not ignored and recorded
        raise InputError(
            f"--anomaly-source: only perlin uses an anomaly source; {args.method} pastes real defects"
        )
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
        foreground=args.foreground,
        u2net_weights=args.u2net_weights,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0
