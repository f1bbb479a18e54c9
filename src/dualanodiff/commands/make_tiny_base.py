"""`dualanodiff make-tiny-base`: a complete Stable Diffusion folder with random weights, for trying the tool."""

from __future__ import annotations

from ..checks import MAX_RESOLUTION, int_arg, seed_arg


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-tiny-base",
        help="write a small random-weight Stable Diffusion folder (SD 1.5 structure) for tests and trials",
        description=(
            "Write a complete diffusers Stable Diffusion folder with SD 1.5's structure (the same block types and "
            "32 attention layers, a real CLIP BPE tokenizer, SD 1.5's scheduler) at a small width and random "
            "weights. Loadable by diffusers' StableDiffusionPipeline and by every dualanodiff command (--base DIR). "
            "Deterministic for a seed. Its images are noise: use it to try the tool without weights."
        ),
    )
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the random weights")
    p.add_argument(
        "--resolution",
        type=int_arg(8, MAX_RESOLUTION),
        default=64,
        help="image size the model is configured for, a multiple of 8 (the latent is 8x smaller)",
    )
    p.add_argument(
        "--preset",
        choices=["tiny", "sd15"],
        default="tiny",
        help="tiny: a few MB; sd15: the real SD 1.5 shapes (about 4 GB), for speed measurements",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checks import check_output_dir
    from ..model.base import build_base, save_base

    check_output_dir(args.out)
    out = save_base(build_base(args.preset, seed=args.seed, resolution=args.resolution), args.out)
    print(f"wrote a {args.preset} Stable Diffusion folder to {out} (use it as --base {out})")
    return 0
