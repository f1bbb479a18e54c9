"""`dualanodiff evaluate quality|localization|classification`: the paper's protocol on generated folders."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..checks import MAX_RESOLUTION, float_arg, int_arg, name_arg, seed_arg
from . import add_progress_argument, add_split_argument

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Measure generated (image, mask) pairs with the protocol of DualAnoDiff / AnomalyDiffusion (METHOD section 8), on
one category of an MVTec-AD-layout root. Any folder in the generated layout is accepted (image/, mask/,
manifest.jsonl: from `generate`, `baseline`, or your own), one folder per anomaly type.

  quality         Inception Score and IC-LPIPS of the generated images of each type, averaged per category
  localization    train DRAEM's U-Net on normal + generated pairs, test on the real test split (--no-generated:
                  normal images only, the floor that shows what generated data adds)
  classification  ResNet-34 trained on the generated images of all types, accuracy on the real test images

Results go to OUT/<mode>/<method>/<category>... as JSON; every run rewrites OUT/<mode>.csv, OUT/results.json and
OUT/results.md with everything evaluated into OUT so far (run it per category and method into one OUT for the
paper's tables). An interrupted localization resumes where it stopped when the same command is run again.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score generated pairs: IS / IC-LPIPS, downstream localization, anomaly-type classification",
        description=_DESCRIPTION,
    )
    modes = p.add_subparsers(dest="mode", metavar="<mode>", required=True)

    q = modes.add_parser(
        "quality",
        help="Inception Score and IC-LPIPS of generated images",
        description="Inception Score (torch-fidelity's Inception v3, 10 splits) of each type's generated whole "
        "images, and IC-LPIPS (LPIPS-VGG at 256 px, the few-shot real images of the type as cluster centres, up "
        "to 50 members per cluster); both averaged over the types of the category. Higher is better.",
    )
    _common(q, generated_required=True)
    q.add_argument(
        "--inception-weights",
        help="torch-fidelity's Inception file (weights-inception-2015-12-05-6726825d.pth) for machines without "
        "internet; default: torch hub cache",
    )
    q.add_argument(
        "--lpips-vgg-weights",
        help="torchvision VGG16 state dict (vgg16-397923af.pth) for LPIPS; default: torch hub cache",
    )
    q.add_argument(
        "--is-splits", type=int_arg(1), default=10, help="Inception Score splits (needs that many images)"
    )
    q.add_argument(
        "--lpips-size", type=int_arg(16, 1024), default=256, help="LPIPS input side (the protocol's 256)"
    )
    q.add_argument(
        "--max-per-cluster", type=int_arg(2), default=50, help="IC-LPIPS members sampled per cluster"
    )
    add_quality_images_argument(q)
    q.set_defaults(func=run_quality)

    loc = modes.add_parser(
        "localization",
        help="train DRAEM's U-Net on normal + generated pairs, test on the real test split",
        description="One U-Net per category, trained on train/good images (half the samples) and generated "
        "pairs (the other half), tested on the real remaining 2/3 of each type plus test/good. Metrics: image and "
        "pixel AUROC, AP, F1-max, and AU-PRO (FPR <= 0.3). With --no-generated instead of --generated, it "
        "trains on normal images only: the floor that shows what generated data adds.",
    )
    _common(loc, generated_required=False)
    loc.add_argument(
        "--test-types",
        nargs="+",
        type=name_arg,
        metavar="TYPE",
        help="test on these anomaly types (+ test/good) only; default: every type of the category",
    )
    add_localization_arguments(loc)
    loc.set_defaults(func=run_localization)

    cls = modes.add_parser(
        "classification",
        help="ResNet-34 trained on generated images of all types, accuracy on real test images",
        description="Train a torchvision ResNet-34 to tell the anomaly types of a category apart from their "
        "generated images; report accuracy on the real remaining 2/3 of those types (main paper).",
    )
    _common(cls, generated_required=True)
    add_classification_arguments(cls)
    cls.set_defaults(func=run_classification)


def _common(p, generated_required: bool) -> None:
    p.add_argument("--data", required=True, help="dataset root in the MVTec AD layout")
    p.add_argument("--category", required=True, type=name_arg, help="category folder under --data")
    generated_help = "generated folders, one per anomaly type (image/, mask/, manifest.jsonl)"
    if generated_required:
        p.add_argument("--generated", nargs="+", required=True, metavar="DIR", help=generated_help)
    else:
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--generated", nargs="+", metavar="DIR", help=generated_help)
        source.add_argument(
            "--no-generated",
            action="store_true",
            help="train on normal images only: the floor that shows what generated data adds (method 'none')",
        )
    p.add_argument(
        "--anomaly-types",
        nargs="+",
        type=name_arg,
        metavar="TYPE",
        help="the anomaly type of each --generated folder, in order (default: from its manifest or config, "
        "else the folder name)",
    )
    p.add_argument(
        "--method",
        type=name_arg,
        help="label of the generated data in the tables (default: from the folders' config: dualanodiff, "
        "crop-paste, perlin; 'none' with --no-generated)",
    )
    p.add_argument("--out", default="evaluation", help="results folder")
    add_split_argument(p)
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of every random draw")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_progress_argument(p)


def add_quality_images_argument(p) -> None:
    """Which generated images IS and IC-LPIPS score; shared with `benchmark`."""
    p.add_argument(
        "--quality-images",
        choices=["all", "kept"],
        default="all",
        help="score every generated image, kept and rejected by the mask gate, as the paper does (all), or only "
        "the kept pairs the detectors train on (kept); the tables say which",
    )


def add_localization_arguments(p) -> None:
    """The U-Net options, shared with `benchmark` (same names, same defaults: the paper's)."""
    p.add_argument(
        "--select-on",
        choices=["heldout", "test"],
        default="heldout",
        help="pick the best epoch on held-out generated pairs + normal images (default), or on the test set as "
        "the authors did (optimistic: the output says so)",
    )
    p.add_argument(
        "--runs", type=int_arg(1), default=3, help="train this many U-Nets, report the best (all are kept)"
    )
    p.add_argument("--epochs", type=int_arg(1), default=200, help="U-Net epochs")
    p.add_argument(
        "--samples-per-epoch", type=int_arg(2), default=500, help="training samples per epoch, at least 2"
    )
    p.add_argument(
        "--batch-size", type=int_arg(2), default=16, help="U-Net batch size, at least 2 (batch norm)"
    )
    p.add_argument(
        "--lr",
        type=float_arg(above=0),
        default=1e-4,
        help="Adam learning rate (x0.2 at 80%% and 90%% of epochs)",
    )
    p.add_argument(
        "--resolution",
        type=int_arg(32, MAX_RESOLUTION),
        default=256,
        help="U-Net input side, a multiple of 32",
    )
    p.add_argument("--base-channels", type=int_arg(1, 1024), default=64, help="U-Net base width (DRAEM: 64)")
    p.add_argument(
        "--paper-compat-f1",
        action="store_true",
        help="pixel F1-max with the authors' 21 thresholds instead of the exact maximum",
    )


def add_classification_arguments(p) -> None:
    p.add_argument(
        "--imagenet-weights",
        help="torchvision ResNet-34 ImageNet state dict (resnet34-b627a593.pth); default: the torch hub cache, "
        "and without either the run is refused (see --random-init)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="train the ResNet-34 from random values when no ImageNet weights are at hand; accuracies are then "
        "not comparable with the paper's, and the tables say so",
    )
    p.add_argument("--epochs", type=int_arg(1), default=30, help="ResNet-34 epochs")
    p.add_argument(
        "--batch-size", type=int_arg(2), default=8, help="ResNet-34 batch size, at least 2 (batch norm)"
    )
    p.add_argument("--lr", type=float_arg(above=0), default=1e-4, help="Adam learning rate")
    p.add_argument("--resolution", type=int_arg(32, MAX_RESOLUTION), default=256, help="input side")
    p.add_argument("--max-per-type", type=int_arg(1), default=500, help="generated images used per type")


def localization_config(args, **overrides):
    """LocalizationConfig from the parsed `add_localization_arguments` options."""
    from ..evaluate.localization import LocalizationConfig
    from ..evaluate.protocol import paper_milestones

    epochs = int(args.epochs)
    return LocalizationConfig(
        epochs=epochs,
        samples_per_epoch=args.samples_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_milestones=paper_milestones(epochs),
        resolution=args.resolution,
        base_channels=args.base_channels,
        runs=args.runs,
        select_on=args.select_on,
        seed=args.seed,
        device=args.device,
        paper_compat_f1=args.paper_compat_f1,
        **overrides,
    )


def _inputs(args, include_rejected: bool = False):
    """Check the options that need the file system or torch, then read the generated folders (and, for
    localization, the test masks): all of it before any model is loaded or anything is written."""
    from ..checks import check_device, check_name, check_output_dir
    from ..evaluate.protocol import (
        check_anomaly_types,
        check_category,
        check_test_masks,
        infer_method,
        load_generated_sets,
        test_set_for,
    )

    check_output_dir(args.out)
    check_device(args.device)
    check_category(args.data, args.category)
    if args.anomaly_types is not None:  # every mode, as classification's test set always did
        check_anomaly_types(args.data, args.category, args.anomaly_types, "--anomaly-types")
    if args.mode == "localization":
        check_test_masks(test_set_for(args.data, args.category, args.split, args.test_types))
    folders = args.generated or []
    generated = {}
    if folders:
        generated = load_generated_sets(folders, args.anomaly_types, include_rejected=include_rejected)
    # The label becomes a folder name under --out: one read from a folder's config.json is checked like --method.
    method = args.method or check_name(
        infer_method(folders), "the method in the generated folders' config.json"
    )
    return generated, method


def _holding(args):
    from ..locking import output_lock

    return output_lock(args.out, f"evaluate {args.mode}")


def _finish(args) -> int:
    from ..evaluate.protocol import write_tables
    from ..io import write_text_atomic

    markdown, _ = write_tables(args.out, args.data)
    write_text_atomic(Path(args.out) / "results.md", markdown)
    print(markdown)
    print(f"results: {Path(args.out) / 'results.md'}, {Path(args.out) / 'results.json'}", file=sys.stderr)
    return 0


def run_quality(args) -> int:
    from ..evaluate.protocol import QUALITY_DIR, load_quality_models, quality_of_category
    from ..io import write_json_atomic

    generated, method = _inputs(args, include_rejected=True)  # quality_of_category picks the images scored
    models = load_quality_models(args.inception_weights, args.lpips_vgg_weights, args.device)
    with _holding(args):  # one writer per results folder, taken once the inputs are checked
        result = quality_of_category(
            args.data,
            args.category,
            generated,
            models,
            split=args.split,
            images=args.quality_images,
            is_splits=args.is_splits,
            lpips_size=args.lpips_size,
            max_per_cluster=args.max_per_cluster,
            seed=args.seed,
        )
        result["generated"] = [str(Path(g).resolve()) for g in args.generated]
        write_json_atomic(Path(args.out) / QUALITY_DIR / method / f"{args.category}.json", result)
        return _finish(args)


def run_localization(args) -> int:
    from ..evaluate.protocol import LOCALIZATION_DIR, localize_category

    config = localization_config(args)
    config.validate()
    generated, method = _inputs(args)
    with _holding(args):  # one writer per results folder, taken once the inputs are checked
        if args.select_on == "test":
            print(
                "note: --select-on test picks the best epoch on the test set, as the authors did; the figures are "
                "optimistic (the results say so)",
                file=sys.stderr,
            )
        localize_category(
            args.data,
            args.category,
            generated,
            config,
            Path(args.out) / LOCALIZATION_DIR / method / args.category,
            split=args.split,
            anomaly_types=args.test_types,
        )
        return _finish(args)


def run_classification(args) -> int:
    from ..evaluate.classification import ClassificationConfig, resolve_imagenet_weights
    from ..evaluate.protocol import CLASSIFICATION_DIR, classify_category

    config = ClassificationConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        resolution=args.resolution,
        seed=args.seed,
        device=args.device,
        max_per_type=args.max_per_type,
        random_init=args.random_init,
    )
    config.validate()
    generated, method = _inputs(args)
    resolve_imagenet_weights(args.imagenet_weights, args.random_init)  # before the lock and any image
    with _holding(args):  # one writer per results folder, taken once the inputs are checked
        classify_category(
            args.data,
            args.category,
            generated,
            config,
            Path(args.out) / CLASSIFICATION_DIR / method / args.category,
            split=args.split,
            imagenet_weights=args.imagenet_weights,
        )
        return _finish(args)
