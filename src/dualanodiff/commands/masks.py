"""`dualanodiff masks`: (re)compute masks of a generated folder from its anomaly-part images."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "masks",
        help="compute the masks of generated pairs from their anomaly-part images",
        description=(
            "For every pair in a generated folder (OUT/part/<name>.png), compute its mask and write OUT/mask/<name>.png; "
            "update mask_area, kept and reject_reason in OUT/manifest.jsonl and the mask settings in OUT/config.json, "
            "moving pairs between OUT/{image,part,mask} and OUT/rejected/{image,part,mask} as they pass or fail. "
            "`generate` already does this; run it again to change the method or the thresholds. Each pair changes as "
            "one step, and an interrupted run resumes. grey (no weights): the part image is mid-grey outside the "
            "defect, so the mask is where it departs from grey. u2net: the paper's U^2-Net, weights from a file you give."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_mask_arguments(p)
    p.add_argument("--generated", required=True, help="a folder written by `dualanodiff generate`")
    p.set_defaults(func=run)


def add_mask_arguments(p) -> None:
    """The mask options, shared by `masks` and `generate`."""
    p.add_argument(
        "--method",
        choices=["auto", "grey", "u2net"],
        default="auto",
        help="auto: u2net when --u2net-weights is given, else grey",
    )
    p.add_argument(
        "--u2net-weights", help="the original u2net.pth or u2netp.pth state dict (variant detected)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="grey: grey-level distance out of 255 (default 16); u2net: probability (default 0.5)",
    )
    p.add_argument(
        "--max-area", type=float, default=0.5, help="reject pairs whose mask covers more than this fraction"
    )


def run(args) -> int:
    from ..masks import make_masks_for_folder

    summary = make_masks_for_folder(
        args.generated,
        method=args.method,
        u2net_weights=args.u2net_weights,
        threshold=args.threshold,
        max_area_fraction=args.max_area,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0
