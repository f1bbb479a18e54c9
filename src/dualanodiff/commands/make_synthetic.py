"""`dualanodiff make-synthetic`: the procedural MVTec-layout defect dataset."""

from __future__ import annotations

from ..checks import int_arg, seed_arg
from . import add_progress_argument


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-synthetic",
        help="write a procedural MVTec-AD-layout defect dataset (texture and object categories, exact masks)",
        description=(
            "Write a procedural dataset in the MVTec AD layout: a texture category (weave) and an object category "
            "(pill, with foreground masks), each with several defect types (crack, hole/spot, scratch, stain), "
            "train/good, test/<type> and pixel-exact ground_truth masks. Deterministic for a seed."
        ),
    )
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of every random draw")
    p.add_argument("--resolution", type=int_arg(32, 1024), default=128, help="image side in pixels")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic dataset in --out")
    add_progress_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checks import check_output_dir
    from ..synthetic import make_synthetic

    check_output_dir(args.out)
    root = make_synthetic(
        args.out, seed=args.seed, resolution=args.resolution, overwrite=args.overwrite, progress=args.progress
    )
    print(f"wrote the synthetic dataset to {root}")
    return 0
