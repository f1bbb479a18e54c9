"""`dualanodiff generate`: adapters -> N (image, anomaly part, mask) triples on disk."""

from __future__ import annotations

import argparse
import json
import sys

from ..checks import float_arg, int_arg, name_arg, pairs_arg, resolution_arg, seed_arg
from ..errors import InputError
from . import add_progress_argument
from .masks import add_mask_arguments

# Options whose default depends on the preset or the adapters: absent from the parsed arguments unless given
# (so --help shows the help's own "default: ...", not "None").
PRESET_DEFAULT = argparse.SUPPRESS
# --zero-mean-noise [both|part|off] as GenerateConfig.zero_mean_noise takes it (absent: None, the adapters' recipe)
ZERO_MEAN_NOISE = {None: None, "off": False, "both": True, "part": "part"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate (image, anomaly part, mask) triples from trained adapters",
        description=(
            "Generate pairs with trained adapters and write OUT/image/NNNNN.png, OUT/part/NNNNN.png, "
            "OUT/mask/NNNNN.png, OUT/manifest.jsonl (seed, prompts, settings, adapter identity, mask area, kept or "
            "rejected and why, one line per pair) and OUT/config.json. Pair i uses seed + i, so a rerun finishes "
            "only the missing pairs with the same seeds, and `accelerate launch`, `torchrun` or --shard split pairs "
            "between processes. Masks are made from the part images (see `dualanodiff masks`); pairs whose mask is "
            "empty or too large go to OUT/rejected/{image,part,mask} (still listed in the manifest, with the reason) "
            "and are left out of evaluation. One writer per --out: a second one is refused, naming the first."
        ),
    )
    p.add_argument(
        "--base", required=True, help="the base the adapters were trained on: hub id or local folder"
    )
    p.add_argument(
        "--adapters", required=True, help="folder written by `dualanodiff train` (adapters.safetensors)"
    )
    p.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    p.add_argument(
        "--preset",
        choices=["adapters", "paper", "official-code"],
        default="adapters",
        help="sampler settings: adapters (default) = the sampling recipe the adapters carry from their base (the "
        "demo base's: DPM-Solver++ 20 steps, guidance 5, centred shared noise, grey-half-max masks), else the "
        "paper's; paper = 50 PNDM steps, guidance 2.5, 1000 pairs; official-code = the authors' inference: 100 "
        "steps, guidance 2.5, 500 pairs (BCM: 50 steps, guidance 2.0, 1.2 for screw, background every 50 pairs, "
        "10 for screw, independent background noise); explicit options below win",
    )
    p.add_argument(
        "--num-pairs",
        type=pairs_arg,
        default=PRESET_DEFAULT,
        help="pairs to generate (default: the preset's)",
    )
    p.add_argument(
        "--batch-size", type=int_arg(1), default=8, help="pairs per UNet call (both branches ride together)"
    )
    p.add_argument(
        "--steps", type=int_arg(1, 1000), default=PRESET_DEFAULT, help="sampler steps (default: the preset's)"
    )
    p.add_argument(
        "--guidance",
        type=float_arg(),
        default=PRESET_DEFAULT,
        help="classifier-free guidance scale; <= 1 disables it (default: the preset's)",
    )
    p.add_argument(
        "--scheduler",
        default=PRESET_DEFAULT,
        choices=["pndm", "ddim", "dpm++", "unipc", "euler"],
        help="sampler (default: the preset's, pndm: SD 1.5's and the authors')",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="pair i is drawn from seed + i")
    p.add_argument(
        "--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help="inference precision"
    )
    p.add_argument(
        "--resolution",
        type=resolution_arg,
        help="image side, a multiple of the VAE's factor (8 for SD 1.5) (default: the base's native size)",
    )
    p.add_argument(
        "--backgrounds", default=None, help="BCM adapters: folder of normal images (e.g. train/good)"
    )
    p.add_argument(
        "--foreground",
        default=PRESET_DEFAULT,
        help="BCM: how the object of each --backgrounds image is found (and blacked out): auto, u2net (with "
        "--u2net-weights), none (whole image: textures) or a folder of masks matched by stem (<stem>.png or "
        "<stem>_mask.png); default: the source the adapters were trained with (another one is allowed, with a "
        "warning). With --on-normal: the object --where auto puts a defect on (auto when unset; none for textures)",
    )
    p.add_argument(
        "--background-every",
        type=int_arg(1),
        default=PRESET_DEFAULT,
        help="BCM: switch background every K pairs (default: the preset's)",
    )
    p.add_argument(
        "--background-noise",
        choices=["shared", "independent"],
        default=PRESET_DEFAULT,
        help="BCM under guidance: one noise draw per step for a pair's grey and real background rows (shared), or "
        "one each, as the authors' inference (independent); both seeded per pair (default: the preset's)",
    )
    p.add_argument(
        "--zero-mean-noise",
        nargs="?",
        const="both",
        choices=["both", "part", "off"],
        help="centre each pair's initial noise (zero mean per channel) in both branches, or in the part branch "
        "only (part: whole images keep their colour from the noise): on small latents (e.g. the demo base's "
        "16x16) the noise's mean colour otherwise tints the part's grey canvas and the masks fail (default: the "
        "adapters' recipe, else off)",
    )
    p.add_argument(
        "--shared-initial-noise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start the part branch from the whole branch's noise draw (the authors draw one for each): each "
        "branch samples as before, but the two agree better on where the defect goes (on the demo's 16x16 "
        "latents, docs/demo.md) (default: the adapters' recipe, else off)",
    )
    p.add_argument(
        "--category",
        default=PRESET_DEFAULT,
        help="the category, for the screw settings of --preset official-code (default: the adapters')",
    )
    p.add_argument(
        "--anomaly-type",
        type=name_arg,
        help="recorded in the manifest (default: the type the adapters were trained on)",
    )
    place = p.add_argument_group(
        "placement on real normal images (the background stays real, the mask lies in the target region)"
    )
    place.add_argument(
        "--on-normal",
        metavar="DIR",
        help="start each pair from a defect-free image of DIR (chosen by the pair's seed) and draw the defect "
        "into a target region of it: outside the region and a seam band the image is the normal image's own "
        "pixels; OUT/region/NAME.png holds the area each pair may change. 'data': --data ROOT --category C's "
        "train/good. Any adapters work (with BCM, the normal image gives the background)",
    )
    place.add_argument(
        "--where",
        metavar="auto|DIR",
        help="target regions: auto (default) draws one per pair from the few-shot masks the adapters were "
        "trained on (their shape, rotated, flipped, scaled within the few-shot range, on the object found by "
        "--foreground); DIR: your own region masks, by the normal images' file stems",
    )
    place.add_argument(
        "--band",
        type=int_arg(0),
        help="seam band in pixels around the region, redrawn and blended (default: 1/16 of the resolution)",
    )
    place.add_argument(
        "--data",
        dest="fewshot_data",
        metavar="ROOT",
        help="MVTec-layout root: --where auto takes few-shot masks from --category/--anomaly there when the "
        "adapters carry none (the authors' checkpoints), and --on-normal data its train/good",
    )
    place.add_argument(
        "--anomaly", dest="fewshot_anomaly", type=name_arg, help="with --data: the anomaly type"
    )
    place.add_argument(
        "--departure",
        type=float_arg(minimum=0, maximum=255),
        default=16.0,
        help="placed masks: the least colour change from the normal image (0-255) that counts as the defect "
        "(default: 16; the cut is also at least half the largest change in the region)",
    )
    place.add_argument(
        "--free-part",
        action="store_true",
        help="placed pairs: leave the part branch free outside the region (default: held to its empty grey "
        "canvas there, so the part, and through SAIM the whole image, draw the defect inside the region)",
    )
    place.add_argument(
        "--trim",
        action="store_true",
        help="placed pairs: keep the normal image outside the defect's mask grown by the band, not only outside "
        "the region, so the texture the sampler redrew around the defect is dropped and every changed pixel is "
        "the defect or its seam (docs/placement.md measures it)",
    )
    speed = p.add_argument_group("speed and memory (see benchmarks/README.md)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow first batch)")
    speed.add_argument("--channels-last", action="store_true", help="channels-last UNet memory layout")
    speed.add_argument("--vae-slicing", action="store_true", help="decode one image at a time (less memory)")
    speed.add_argument(
        "--vae-tiling",
        action="store_true",
        help="above the VAE's native size (512 px for SD 1.5), decode in blended tiles: less memory, "
        "slightly different pixels",
    )
    add_mask_arguments(p, method_default=None, default_words="the adapters' recipe, else auto")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="make only the pairs i with i %% N == I, so N jobs (e.g. a Slurm array: "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT) fill one --out side by side; under torchrun or "
        "accelerate launch the processes split their shard again",
    )
    add_progress_argument(p)
    from ..executors import add_executor_arguments

    ray = add_executor_arguments(p, what="one task per shard of the pairs (by pair index, as --shard)")
    ray.add_argument(
        "--ray-shards",
        type=int_arg(1),
        default=None,
        help="Ray tasks to split the pairs between (default: one per GPU of the cluster; one per node without)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checks import check_output_dir
    from ..generate import GenerateConfig, generate_to_folder

    check_output_dir(args.out)

    config = GenerateConfig(
        base=args.base,
        adapters=args.adapters,
        out=args.out,
        preset=args.preset,
        num_pairs=getattr(args, "num_pairs", None),
        batch_size=args.batch_size,
        steps=getattr(args, "steps", None),
        guidance=getattr(args, "guidance", None),
        scheduler=getattr(args, "scheduler", None),
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        resolution=args.resolution,
        backgrounds=args.backgrounds,
        foreground=getattr(args, "foreground", None),
        background_every=getattr(args, "background_every", None),
        background_noise=getattr(args, "background_noise", None),
        zero_mean_noise=ZERO_MEAN_NOISE[getattr(args, "zero_mean_noise", None)],
        shared_initial_noise=args.shared_initial_noise,
        category=getattr(args, "category", None),
        mask_method=args.method,  # None unless given: the adapters' recipe, else auto
        u2net_weights=args.u2net_weights,
        mask_threshold=args.threshold,
        max_mask_area=args.max_area,
        device=args.device,
        anomaly_type=args.anomaly_type,
        compile=args.compile,
        channels_last=args.channels_last,
        vae_slicing=args.vae_slicing,
        vae_tiling=args.vae_tiling,
        on_normal=args.on_normal,
        where=args.where,
        band=args.band,
        fewshot_data=args.fewshot_data,
        fewshot_anomaly=args.fewshot_anomaly,
        departure=args.departure,
        free_part=args.free_part,
        trim=args.trim,
    )
    _refuse_what_does_not_apply(config, on_ray=args.executor == "ray")
    if args.executor != "ray" and (args.ray_shards is not None or args.ray_address is not None):
        raise InputError("--ray-shards and --ray-address go with --executor ray")
    if args.executor == "ray":
        from ..executors.ray_generate import generate_on_ray

        summary = generate_on_ray(
            config,
            address=args.ray_address,
            shards=args.ray_shards,
            shard=args.shard,
            retries=args.ray_retries,
            cpus=args.ray_cpus,
            show_progress=args.progress,
        )
    else:
        summary = generate_to_folder(config, shard=args.shard, show_progress=args.progress)
    print(json.dumps(summary, indent=2, default=str))
    if summary.get("failed"):
        print(
            f"dualanodiff generate: {len(summary['failed'])} shard(s) failed: "
            + "; ".join(f"{shard}: {error}" for shard, error in summary["failed"].items())
            + f". {summary['missing']} pair(s) are missing; the same command makes only those",
            file=sys.stderr,
        )
        return 1
    return 0


# The BCM options and the attribute each sets on GenerateConfig (None when not given).
_BCM_OPTIONS = {
    "--backgrounds": "backgrounds",
    "--foreground": "foreground",
    "--background-every": "background_every",
    "--background-noise": "background_noise",
}


def _refuse_what_does_not_apply(config, on_ray: bool) -> None:
    """Options these adapters or this machine cannot use are refused, before anything loads or is written,
    rather than ignored and then recorded in config.json as if they had been used. (On Ray the device is the
    workers', not this machine's.)"""
    import torch

    from ..checks import check_device
    from ..generate import resolve_for_adapters

    check_device(config.device)
    _, _, bcm = resolve_for_adapters(config)
    given = [flag for flag, field in _BCM_OPTIONS.items() if getattr(config, field) is not None]
    if config.on_normal is not None:  # placed pairs find the object with --foreground; no BCM background
        given = [flag for flag in given if flag != "--foreground"]
        if given:
            raise InputError(f"{given[0]}: placed pairs take their background from the normal image; drop it")
    if given and not bcm:
        raise InputError(
            f"{given[0]}: {config.adapters} were trained without BCM and use no background; drop "
            + ", ".join(given)
        )
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.mixed_precision == "fp16" and torch.device(device).type == "cpu" and not on_ray:
        raise InputError("--mixed-precision fp16 needs a GPU; on the CPU use bf16 (or no), as `train` says")
