"""`dualanodiff train`: learn the adapters of one or several anomaly types from a few images with masks."""

from __future__ import annotations

import argparse
import json

from ..checks import float_arg, int_arg, name_arg, resolution_arg, seed_arg
from . import add_progress_argument, add_split_argument

_DESCRIPTION = """\
Train DualAnoDiff adapters (per-branch UNet LoRA, SAIM, optionally BCM, and a text-encoder LoRA) on the few-shot
images of an anomaly type; the base model stays frozen. One adapter set per type, written to
OUT/<category>/<anomaly>/ (adapters.safetensors, adapter_config.json, train_config.json with the resolved
settings, loss_log.csv, and probe_log.csv with --probe-every). Every input file is checked before the model is loaded.

Data: --data ROOT --category C (MVTec AD layout; the first third of each type's test images, sorted by name,
are the training images; BCM foreground masks from ROOT/C/foreground/ or --foreground) or --images DIR --masks DIR
(your own images and masks matched by file stem).

Resuming: checkpoints are written every --checkpoint-every steps; running the same command again continues
from the last one and gives the same adapters as an uninterrupted run. Types already finished are skipped.
"""

_EPILOG = """\
presets (METHOD section 6):
  paper          learning rate 5e-6, 5000 epochs (2000 with --bcm), 4 pairs per batch
  official-code  learning rate 2e-5, 5000 optimizer steps, 4 pairs per batch (2 with --bcm)
Options given explicitly override the preset.

example:
  dualanodiff train --data mvtec --category hazelnut --anomaly all --base stable-diffusion-v1-5/stable-diffusion-v1-5 \\
      --out adapters --mixed-precision bf16 --gradient-checkpointing
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the adapters of one or several anomaly types (few images + masks -> adapters)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", help="dataset root in the MVTec AD layout (ROOT/<category>/test/<type>/...)")
    data.add_argument(
        "--category",
        type=name_arg,
        help="category under --data (required with it); with --images, only names the output folder "
        "(default 'custom')",
    )
    data.add_argument(
        "--anomaly",
        help="anomaly type, a comma list, or 'all' (every type of the category); with --images the name of "
        "the type (default: the name of the folder holding --images)",
    )
    add_split_argument(data)
    data.add_argument("--images", help="folder of defect images of one type (instead of --data)")
    data.add_argument("--masks", help="their masks, matched by stem: <stem>.png or <stem>_mask.png")
    data.add_argument(
        "--foreground",
        help="where --bcm finds each image's object, to black it out of the background: auto (weight-free "
        "estimate for objects on plain backgrounds), u2net (the paper's saliency network, with --u2net-weights), "
        "none (the whole image is background: textures), or a folder of masks matched by stem (<stem>.png or "
        "<stem>_mask.png). Default: ROOT/C/foreground/ if it exists, else auto; MVTec AD textures always use the "
        "whole image. Recorded with the adapters; generate uses the same",
    )
    data.add_argument(
        "--u2net-weights", help="U^2-Net weights (u2net.pth or u2netp.pth) for --foreground u2net"
    )

    run = p.add_argument_group("model and output")
    run.add_argument(
        "--base", required=True, help="Stable Diffusion 1.5: a local diffusers folder or a hub id"
    )
    run.add_argument("--out", required=True, help="output root; adapters go to OUT/<category>/<anomaly>/")
    run.add_argument(
        "--preset",
        choices=["paper", "official-code"],
        default="paper",
        help="learning rate, length and batch size (see below); default paper",
    )
    run.add_argument(
        "--bcm",
        action="store_true",
        help="train the Background Compensation Module (needs foreground masks for objects)",
    )
    run.add_argument(
        "--rank", type=int_arg(1), default=32, help="LoRA rank of both UNet branches (default 32)"
    )
    run.add_argument(
        "--text-encoder-rank",
        type=int_arg(0),
        default=32,
        help="LoRA rank of the text encoder; 0: frozen (default 32)",
    )
    run.add_argument("--alpha", type=float_arg(above=0), help="LoRA alpha (default: = rank, i.e. scale 1.0)")
    run.add_argument("--no-saim", dest="saim", action="store_false", help="leave out SAIM (ablation)")
    run.add_argument(
        "--saim-zero-init",
        action="store_true",
        help="start SAIM as the identity (zero output projection); default: PyTorch init as the authors' code",
    )
    run.add_argument(
        "--background-scaling",
        dest="background_latent_scaling",
        choices=["correct", "official"],
        default="correct",
        help="BCM background latent times the VAE scaling factor (correct, default), or without it as the "
        "authors' code does (official)",
    )

    opt = p.add_argument_group("optimisation (override the preset)")
    length = opt.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int_arg(1), help="passes over the few-shot images")
    length.add_argument("--max-steps", type=int_arg(1), help="optimizer steps")
    opt.add_argument("--batch-size", type=int_arg(1), help="pairs per optimizer step (per process)")
    opt.add_argument(
        "--lr", dest="learning_rate", type=float_arg(above=0), help="learning rate (constant, AdamW)"
    )
    opt.add_argument(
        "--resolution",
        type=resolution_arg,
        help="training image size, multiple of 8 (default: the base's, 512 for SD 1.5)",
    )
    opt.add_argument("--seed", type=seed_arg, default=0, help="seed of every random draw (default 0)")
    opt.add_argument(
        "--flips",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal/vertical flips (default: on, off for orientation-defined types: "
        "metal_nut/flip, transistor/misplaced, cable)",
    )
    opt.add_argument(
        "--mixed-precision",
        choices=["no", "fp16", "bf16"],
        default="no",
        help="frozen base in this precision, trainable weights in fp32 under autocast (default no)",
    )
    opt.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute UNet activations: less memory, slower",
    )
    opt.add_argument(
        "--save-dtype",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="precision of the saved adapters: fp32 (exact), bf16 or fp16 (half the file; "
        "benchmarks/results/adapter-dtype.json measures what it changes); checkpoints stay fp32",
    )
    opt.add_argument(
        "--checkpoint-every",
        type=int_arg(0),
        default=500,
        help="steps between checkpoints; 0: none (default 500)",
    )
    opt.add_argument(
        "--probe-every",
        type=int_arg(0),
        default=0,
        help="steps between probe-loss evaluations, written to probe_log.csv: the loss on one fixed set of "
        "few-shot pairs, timesteps and noise, which falls as the adapters learn where the logged training "
        "loss (new draws every step) stays noisy; 0: none (default 0)",
    )
    opt.add_argument(
        "--keep-checkpoints",
        type=int_arg(0),
        default=1,
        help="checkpoints kept while running; 0: all (default 1)",
    )
    opt.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the last checkpoint and skip finished types (default); --no-resume deletes "
        "this run's earlier checkpoints and adapters and starts over",
    )
    add_progress_argument(opt)
    p.set_defaults(func=run_command)


def config_from_args(args):
    from ..training.config import TrainConfig

    names = (
        "base out data category images masks foreground u2net_weights split preset bcm epochs max_steps batch_size "
        "learning_rate rank text_encoder_rank alpha saim saim_zero_init background_latent_scaling resolution "
        "seed flips mixed_precision gradient_checkpointing save_dtype checkpoint_every probe_every keep_checkpoints resume progress"
    ).split()
    return TrainConfig(**{n: getattr(args, n) for n in names})


def run_command(args) -> int:
    from ..checks import check_output_dir
    from ..training import train_anomaly_types

    check_output_dir(args.out)
    config = config_from_args(args)
    done = train_anomaly_types(config, args.anomaly)
    print(json.dumps({kind: str(path) for kind, path in done.items()}, indent=2))
    return 0
