"""`dualanodiff benchmark`: the whole protocol over chosen categories, types and methods, resumable."""

from __future__ import annotations

import argparse
import copy

from ..checks import (
    MASK_METHODS,
    MAX_RESOLUTION,
    float_arg,
    int_arg,
    name_arg,
    pairs_arg,
    resolution_arg,
    seed_arg,
)
from . import add_progress_argument, add_split_argument
from .evaluate import add_quality_images_argument

_DESCRIPTION = """\
Run the paper's evaluation protocol end to end on an MVTec-AD-layout root, for every chosen category and anomaly
type and every chosen method:

  dualanodiff  train adapters per type, generate pairs (masks from the part images, quality-gated)
  crop-paste   defects cut from the few-shot images, pasted on normal images
  perlin       DRAEM's Perlin-noise anomalies on normal images
  none         no generated data: the U-Net sees normal images only (shows what generated data adds)

then, per category and method: Inception Score and IC-LPIPS of the generated images, downstream localization
(DRAEM U-Net, image/pixel AUROC, AP, F1-max, AU-PRO) and anomaly-type classification (ResNet-34). Tables at the
end: OUT/summary.md (laid out like the paper's, with its figures beside ours on MVTec AD), OUT/summary.json,
OUT/localization.csv, OUT/quality.csv, OUT/classification.csv; the resolved settings in OUT/config.json.

Resumable: every finished step leaves OUT/steps/<step>.json; running the same command again skips those and
continues (training, generation and the U-Net also resume inside a step). A folder made with other settings is
refused before anything runs.

On a cluster: --executor ray runs every step as a Ray task, each started once the steps it reads are done
(types train in parallel, one GPU each); OUT must be on storage every node sees (docs/ray.md).

Sizes: the paper's by default (days of GPU time for all of MVTec AD); --quick for a rough look (shorter training,
100 pairs, 25 sampler steps, 20 U-Net epochs, 1 run, 5 classifier epochs). Every size can be set below.
"""

_EPILOG = """\
example:
  dualanodiff benchmark --data mvtec --base stable-diffusion-v1-5/stable-diffusion-v1-5 --out bench \\
      --categories hazelnut,pill --quick --inception-weights weights-inception-2015-12-05-6726825d.pth \\
      --lpips-vgg-weights vgg16-397923af.pth --imagenet-weights resnet34-b627a593.pth
"""


# The options of `train` and `generate` that change a result, and how the benchmark reaches each.
# BORROWED: the benchmark adds the command's own declaration (flags, type, choices, default, help), so the two
# cannot drift: {dest in that command: (the benchmark's flags, or None for the same; the benchmark's setting, by
# its flat name: `benchmark.SETTINGS`)}.
BORROWED = {
    "train": {
        "rank": (None, "train_rank"),
        "text_encoder_rank": (None, "train_text_encoder_rank"),
        "alpha": (None, "train_alpha"),
        "saim": (None, "train_saim"),
        "saim_zero_init": (None, "train_saim_zero_init"),
        "background_latent_scaling": (None, "train_background_latent_scaling"),
        "flips": (None, "train_flips"),
        "save_dtype": (None, "train_save_dtype"),
        "probe_every": (None, "train_probe_every"),
        "mixed_precision": (None, "mixed_precision"),
    },
    "generate": {
        "zero_mean_noise": (None, "zero_mean_noise"),
        "shared_initial_noise": (None, "shared_initial_noise"),
        "background_every": (None, "background_every"),
        "background_noise": (None, "background_noise"),
        "threshold": (("--mask-threshold",), "mask_threshold"),
        "vae_tiling": (None, "vae_tiling"),
        "band": (None, "band"),
        "departure": (None, "departure"),
        "free_part": (None, "free_part"),
        "trim": (None, "trim"),
    },
}
# OWN: declared here, under other names or defaults: sizes and presets whose unset value comes from the
# profile (--quick), and settings one flag sets for training and generation alike. {dest: the setting's flat name}
OWN = {
    "train": {
        "preset": "train_preset",
        "epochs": "train_epochs",
        "max_steps": "train_steps",
        "batch_size": "train_batch_size",
        "learning_rate": "train_lr",
        "resolution": "train_resolution",
        "bcm": "bcm",
        "foreground": "foreground",
        "u2net_weights": "u2net_weights",
        "seed": "seed",
        "split": "split",
    },
    "generate": {
        "preset": "gen_preset",
        "num_pairs": "num_pairs",
        "steps": "sampler_steps",
        "guidance": "guidance",
        "scheduler": "scheduler",
        "batch_size": "gen_batch_size",
        "resolution": "gen_resolution",
        "method": "mask_method",
        "u2net_weights": "u2net_weights",
        "max_area": "max_mask_area",
        "seed": "seed",
        "mixed_precision": "mixed_precision",
        "foreground": "foreground",
        "device": "device",
    },
}
# Not for the benchmark: inputs and outputs it lays out itself (per category and type), how one run proceeds
# (checkpoints, resume, progress, where it runs) and speed settings that leave every pixel as it is.
NOT_FOR_BENCHMARK = {
    "train": {"data", "category", "anomaly", "images", "masks", "base", "out", "gradient_checkpointing",
              "checkpoint_every", "keep_checkpoints", "resume", "progress"},
    "generate": {"base", "adapters", "out", "backgrounds", "category", "anomaly_type", "compile", "channels_last",
                 "vae_slicing", "shard", "progress", "executor", "ray_address", "ray_cpus", "ray_retries",
                 "ray_shards", "on_normal", "where", "fewshot_data", "fewshot_anomaly"},
}  # fmt: skip


def command_actions(command: str) -> dict[str, argparse.Action]:
    """{dest: argparse action} of the `train` or `generate` command, as that command declares them."""
    from . import generate, train

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    {"train": train, "generate": generate}[command].register(subparsers)
    sub = subparsers.choices[command]
    return {a.dest: a for a in sub._actions if a.dest != "help"}


def _borrow(group: argparse._ArgumentGroup, command: str) -> None:
    """Add the BORROWED options of ``command`` to ``group``: the same declarations under the benchmark's
    flags and fields. argparse has no public way to re-add an action, so a copy goes through the group's
    ``_add_action`` (what ``add_argument`` itself ends with)."""
    actions = command_actions(command)
    for dest, (flags, field) in BORROWED[command].items():
        action = copy.copy(actions[dest])
        action.dest = field
        if action.nargs != 0 and action.metavar is None:  # --rank RANK, not --rank TRAIN_RANK
            action.metavar = dest.upper()
        if flags is not None:
            action.option_strings = list(flags)
        group._add_action(action)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _names(text: str) -> list[str]:
    """A comma list of names that become folder names (categories, anomaly types)."""
    return [name_arg(t) for t in _csv(text)]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="the whole protocol in one resumable command: train, generate, baselines, metrics, tables",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    what = p.add_argument_group("what to run")
    what.add_argument("--data", required=True, help="dataset root in the MVTec AD layout")
    what.add_argument(
        "--base", help="Stable Diffusion 1.5 (hub id or local diffusers folder); needed for dualanodiff"
    )
    what.add_argument("--out", required=True, help="benchmark folder (resumed if it exists)")
    what.add_argument(
        "--categories", type=_names, help="comma list of categories (default: all under --data)"
    )
    what.add_argument(
        "--anomalies", type=_names, help="comma list of anomaly types (default: all types of each category)"
    )
    what.add_argument(
        "--methods",
        type=_csv,
        default=["dualanodiff", "crop-paste", "perlin", "none"],
        help="comma list from dualanodiff, dualanodiff-placed (the adapters' defects placed on the category's "
        "train/good images, in regions drawn from the few-shot masks), crop-paste, perlin, none (default: all "
        "but dualanodiff-placed)",
    )
    what.add_argument("--quick", action="store_true", help="the quick profile's sizes instead of the paper's")
    add_split_argument(what)
    what.add_argument("--seed", type=seed_arg, default=0, help="seed of every random draw (default 0)")
    what.add_argument(
        "--device", help="torch device for generation and evaluation (default: cuda if available)"
    )
    add_progress_argument(what)

    tr = p.add_argument_group("adapter training (dualanodiff; unset: the profile's)")
    tr.add_argument(
        "--train-preset", choices=["paper", "official-code"], help="training preset (see `train --help`)"
    )
    length = tr.add_mutually_exclusive_group()
    length.add_argument("--train-epochs", type=int_arg(1), help="passes over the few-shot images")
    length.add_argument("--train-steps", type=int_arg(1), help="optimizer steps (quick: 500)")
    tr.add_argument("--train-batch-size", type=int_arg(1), help="pairs per optimizer step")
    tr.add_argument("--train-lr", type=float_arg(above=0), help="learning rate")
    tr.add_argument("--train-resolution", type=resolution_arg, help="training size (default: the base's)")
    tr.add_argument(
        "--bcm", action="store_true", help="train and generate with the Background Compensation Module"
    )
    tr.add_argument(
        "--foreground",
        choices=["auto", "u2net", "none"],
        help="BCM: how each image's object is found: auto (weight-free), u2net (--u2net-weights) or none (whole "
        "image); default: ROOT/<category>/foreground/ when it exists, else auto",
    )
    _borrow(tr, "train")

    ge = p.add_argument_group("generation (all generators; unset: the profile's)")
    ge.add_argument(
        "--gen-preset",
        choices=["paper", "official-code"],
        help="sampler settings of `generate --preset` (default paper): pairs, steps, guidance, background "
        "switching and noise; the options below win",
    )
    ge.add_argument(
        "--num-pairs",
        type=pairs_arg,
        help="pairs per anomaly type (paper 1000, official-code 500, quick 100)",
    )
    ge.add_argument(
        "--sampler-steps",
        type=int_arg(1, 1000),
        help="diffusion sampler steps (paper 50, official-code 100 or 50, quick 25)",
    )
    ge.add_argument("--guidance", type=float_arg(), help="classifier-free guidance (default: the preset's)")
    ge.add_argument(
        "--scheduler", choices=["pndm", "ddim", "dpm++", "unipc", "euler"], help="sampler (default pndm)"
    )
    ge.add_argument("--gen-batch-size", type=int_arg(1), default=8, help="pairs per UNet call (default 8)")
    ge.add_argument(
        "--gen-resolution",
        type=resolution_arg,
        help="generated size (default: the base's; baselines: the normal images')",
    )
    ge.add_argument("--mask-method", choices=list(MASK_METHODS), default="auto", help="mask from part image")
    ge.add_argument("--u2net-weights", help="U^2-Net weights for --mask-method u2net / auto")
    ge.add_argument(
        "--max-mask-area",
        type=float_arg(above=0, maximum=1),
        default=0.5,
        help="reject pairs whose mask covers more (default 0.5)",
    )
    ge.add_argument("--perlin-source", help="perlin: folder of texture images (DRAEM used DTD)")
    _borrow(ge, "generate")

    qu = p.add_argument_group("generation quality")
    qu.add_argument("--no-quality", dest="quality", action="store_false", help="skip IS / IC-LPIPS")
    qu.add_argument("--inception-weights", help="torch-fidelity's Inception weights file (offline machines)")
    qu.add_argument("--lpips-vgg-weights", help="torchvision VGG16 weights file for LPIPS (offline machines)")
    qu.add_argument("--is-splits", type=int_arg(1), default=10, help="Inception Score splits (default 10)")
    qu.add_argument(
        "--lpips-size", type=int_arg(16, 1024), default=256, help="LPIPS input side (default 256)"
    )
    add_quality_images_argument(qu)

    lo = p.add_argument_group("downstream localization (unset: the profile's)")
    lo.add_argument("--loc-epochs", type=int_arg(1), help="U-Net epochs (paper 200, quick 20)")
    lo.add_argument("--loc-samples-per-epoch", type=int_arg(1), help="U-Net samples per epoch (500)")
    lo.add_argument("--loc-batch-size", type=int_arg(1), default=16, help="U-Net batch size (default 16)")
    lo.add_argument(
        "--loc-lr", type=float_arg(above=0), default=1e-4, help="U-Net learning rate (default 1e-4)"
    )
    lo.add_argument(
        "--loc-resolution",
        type=int_arg(32, MAX_RESOLUTION),
        default=256,
        help="U-Net input side (default 256)",
    )
    lo.add_argument(
        "--loc-base-channels", type=int_arg(1, 1024), default=64, help="U-Net base width (default 64)"
    )
    lo.add_argument(
        "--runs", dest="loc_runs", type=int_arg(1), help="U-Nets trained per category, best kept (paper 3)"
    )
    lo.add_argument(
        "--select-on",
        choices=["heldout", "test"],
        default="heldout",
        help="best epoch on held-out data (default) or on the test set as the authors did (optimistic)",
    )
    lo.add_argument("--paper-compat-f1", action="store_true", help="the authors' 21-threshold pixel F1")

    cl = p.add_argument_group("anomaly-type classification")
    cl.add_argument("--no-classification", dest="classification", action="store_false", help="skip it")
    cl.add_argument(
        "--imagenet-weights",
        help="torchvision ResNet-34 ImageNet weights file (resnet34-b627a593.pth); default: the torch hub cache, "
        "and without either the run is refused (see --random-init)",
    )
    cl.add_argument(
        "--random-init",
        action="store_true",
        help="train the ResNet-34 from random values when no ImageNet weights are at hand; accuracies are then "
        "not comparable with the paper's, and the tables say so",
    )
    cl.add_argument("--cls-epochs", type=int_arg(1), help="ResNet-34 epochs (paper 30, quick 5)")
    cl.add_argument("--cls-batch-size", type=int_arg(1), default=8, help="ResNet-34 batch size (default 8)")
    cl.add_argument(
        "--cls-lr", type=float_arg(above=0), default=1e-4, help="ResNet-34 learning rate (default 1e-4)"
    )
    cl.add_argument(
        "--cls-resolution",
        type=int_arg(32, MAX_RESOLUTION),
        default=256,
        help="ResNet-34 input side (default 256)",
    )
    from ..executors import add_executor_arguments

    add_executor_arguments(
        p, what="one task per step (a type's training, generation, a category's evaluation)"
    )
    p.set_defaults(func=run)


def config_from_args(args):
    """The BenchmarkConfig of the parsed options: each option's dest is a setting's flat name
    (`benchmark.SETTINGS`), which places it in the config."""
    from ..benchmark import SETTINGS, BenchmarkConfig
    from .generate import ZERO_MEAN_NOISE

    values = {k: v for k, v in vars(args).items() if k in SETTINGS}
    if "zero_mean_noise" in values:
        values["zero_mean_noise"] = ZERO_MEAN_NOISE[values["zero_mean_noise"]]
    for name in (
        "zero_mean_noise",
        "shared_initial_noise",
    ):  # not given: BenchmarkConfig's (the paper's) default
        if values.get(name) is None:
            values.pop(name, None)
    return BenchmarkConfig(data=values.pop("data"), out=values.pop("out")).with_settings(**values)


def runner_from_args(args):
    """Where the steps run: here (None: the benchmark's in-process runner) or as Ray tasks."""
    if args.executor != "ray":
        if args.ray_address is not None:
            from ..errors import InputError

            raise InputError("--ray-address goes with --executor ray")
        return None
    from ..executors.ray_benchmark import RayRunner

    return RayRunner(address=args.ray_address, retries=args.ray_retries, cpus=args.ray_cpus)


def run(args) -> int:
    import sys

    from ..benchmark import run_benchmark
    from ..checks import check_device, check_output_dir

    check_output_dir(args.out)
    check_device(args.device)
    result = run_benchmark(config_from_args(args), runner_from_args(args))
    print(result["summary"])
    unfinished = [s for s in result["steps"] if s["status"] in ("failed", "not run")]
    for s in unfinished:
        print(
            f"dualanodiff benchmark: {s['id']}: {s['status']}: {s.get('error') or s.get('reason')}",
            file=sys.stderr,
        )
    if unfinished:
        print(
            f"dualanodiff benchmark: {len(unfinished)} step(s) did not finish; the others are kept, and the same "
            "command reruns only those",
            file=sys.stderr,
        )
    return 1 if unfinished else 0
