"""`dualanodiff export {anomalib,coco,yolo}`: generated folders (+ real defects, + normal images) -> a dataset
that anomalib's Folder, a COCO trainer or Ultralytics YOLO reads as it is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checks import seed_arg

_DESCRIPTION = """\
Write a dataset tree that anomalib's Folder datamodule (and its MVTec AD reader) loads as it is:

  OUT/train/good/                normal images to train a detector on
  OUT/test/good/                 normal images to test it on
  OUT/test/<type>/NNNNN.png      the kept pairs' images of each --generated folder (rejected pairs never)
  OUT/ground_truth/<type>/NNNNN_mask.png   their masks (0/255)
  OUT/export.json                the settings and where every file came from

Without --normal-test, the images of --normal are split: a permutation seeded by --seed puts
round(--test-fraction x n) of them (at least one) in test/good, the rest in train/good. Prints the
Folder(...) call that loads the tree. Files are hard links where possible, else copies.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write generated pairs + normal images as a dataset other tools read (anomalib, COCO, YOLO)",
        description="Export generated data for other tools. Formats: anomalib, coco, yolo.",
    )
    formats = p.add_subparsers(dest="mode", metavar="<format>", required=True)
    a = formats.add_parser(
        "anomalib",
        help="a tree for anomalib's Folder datamodule (MVTec AD category layout)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument(
        "--generated",
        nargs="+",
        required=True,
        metavar="DIR",
        help="generated folders (from `generate` or `baseline`), one per anomaly type; required",
    )
    a.add_argument(
        "--normal", required=True, metavar="DIR", help="folder of normal (defect-free) images; required"
    )
    a.add_argument(
        "--normal-test",
        metavar="DIR",
        help="normal images for testing (e.g. MVTec's test/good); then --normal is not split",
    )
    a.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of --normal that becomes test/good when --normal-test is not given (default: 0.2)",
    )
    a.add_argument("--seed", type=seed_arg, default=0, help="seed of that split (default: 0)")
    a.add_argument(
        "--anomaly-types",
        nargs="+",
        metavar="TYPE",
        help="the anomaly type of each --generated folder, in order (default: from its manifest or config, "
        "else the folder name)",
    )
    a.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="a new or empty folder, or an earlier export to replace; required",
    )
    a.set_defaults(func=run)
    _add_instance_format(formats, "coco", _COCO_DESCRIPTION, run_coco)
    _add_instance_format(formats, "yolo", _YOLO_DESCRIPTION, run_yolo)


_SOURCES = """\
Sources: --generated folders (kept pairs only), --real folders of real defect images (DIR/images and
DIR/masks matched by stem, the type is DIR's name), --val-real folders alike that go to val only (e.g. real
test defects, to validate on real data), --normal images without defects (no labels). Every mask is read
and checked before anything is written (an empty mask or one of another size than its image is refused).
One instance per connected component of a mask. The others are split per type by a permutation seeded by
--seed: round(--val-fraction x n) of each type to val. export.json records the source of every image.
"""

_COCO_DESCRIPTION = (
    """\
Write a COCO instance-segmentation dataset:

  OUT/images/NNNNN-<type>.png                  every image (train and val)
  OUT/annotations/instances_{train,val}.json   one category per anomaly type, one annotation per defect
                                               (compressed RLE: exact, holes kept; bbox and area from it)
  OUT/export.json                              the settings and where every image came from

"""
    + _SOURCES
    + "Prints the torchvision code that loads it. Needs pycocotools: pip install 'dualanodiff[coco]'.\n"
)

_YOLO_DESCRIPTION = (
    """\
Write an Ultralytics YOLO segmentation dataset:

  OUT/images/{train,val}/NNNNN-<type>.png   the images
  OUT/labels/{train,val}/NNNNN-<type>.txt   one line per defect: class and its outline, normalised
                                            (a polygon has no holes: a hole in a defect is filled)
  OUT/data.yaml                             path, train, val, names
  OUT/export.json                           settings, the polygons' IoU against the masks, sources

"""
    + _SOURCES
    + "Prints the `yolo segment train` call. Needs OpenCV: pip install 'dualanodiff[yolo]'.\n"
)


def _add_instance_format(formats, name: str, description: str, func) -> None:
    p = formats.add_parser(
        name,
        help=f"a {name.upper()} instance-segmentation dataset (one instance per defect blob)",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--generated",
        nargs="+",
        default=[],
        metavar="DIR",
        help="generated folders (from `generate` or `baseline`), one per anomaly type",
    )
    p.add_argument(
        "--anomaly-types",
        nargs="+",
        metavar="TYPE",
        help="the anomaly type of each --generated folder, in order (default: from its manifest or config, "
        "else the folder name)",
    )
    p.add_argument(
        "--real",
        nargs="+",
        default=[],
        metavar="DIR",
        help="folders of real defect images (DIR/images, DIR/masks; the type is DIR's name), split like the rest",
    )
    p.add_argument(
        "--val-real",
        nargs="+",
        default=[],
        metavar="DIR",
        help="folders like --real whose images all go to val (measure a detector on real defects)",
    )
    p.add_argument("--normal", metavar="DIR", help="folder of normal images, exported without labels")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of each type (and of the normals) that goes to val, 0 to below 1 (default: 0.2)",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of that split (default: 0)")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="a new or empty folder, or an earlier export of the same format to replace; required",
    )
    p.set_defaults(func=func)


def _instance_sources(args) -> dict:
    return dict(
        generated=args.generated,
        anomaly_types=args.anomaly_types,
        real=args.real,
        val_real=args.val_real,
        normal=args.normal,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )


def _say_counts(summary: dict, out: str) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items() if v)
    print(f"exported to {out}: {counts}", file=sys.stderr)
    print(f"settings and sources: {Path(out) / 'export.json'}", file=sys.stderr)


def run_coco(args) -> int:
    from ..export import export_coco

    summary = export_coco(args.out, **_instance_sources(args))
    _say_counts(summary, args.out)
    print(summary["train_snippet"])
    return 0


def run_yolo(args) -> int:
    from ..export import export_yolo

    summary = export_yolo(args.out, **_instance_sources(args))
    _say_counts(summary, args.out)
    iou = summary["polygon_iou"]
    print(
        f"polygons against their masks: mean IoU {iou['mean']:.4f}, min {iou['min']:.4f}, "
        f"{iou['exact']} of {iou['masks']} exact",
        file=sys.stderr,
    )
    print(summary["train_command"])
    return 0


def run(args) -> int:
    from ..export import export_anomalib

    summary = export_anomalib(
        args.generated,
        args.normal,
        args.out,
        normal_test=args.normal_test,
        test_fraction=args.test_fraction,
        seed=args.seed,
        anomaly_types=args.anomaly_types,
    )
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"exported to {args.out}: {counts}", file=sys.stderr)
    print(f"settings and sources: {Path(args.out) / 'export.json'}", file=sys.stderr)
    print(summary["folder_call"])
    return 0
