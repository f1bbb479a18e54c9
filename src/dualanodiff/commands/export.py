"""`dualanodiff export anomalib`: generated folders + normal images -> a tree anomalib's Folder reads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
        help="write generated pairs + normal images as a dataset other tools read (anomalib's Folder)",
        description="Export generated data for other tools. Formats: anomalib.",
    )
    formats = p.add_subparsers(dest="format", metavar="<format>", required=True)
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
    a.add_argument("--seed", type=int, default=0, help="seed of that split (default: 0)")
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
