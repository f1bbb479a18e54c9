"""`dualanodiff masks`: (re)compute masks of a generated folder from its anomaly-part images."""

from __future__ import annotations

import json

from ..checks import MASK_METHODS, float_arg
from . import add_progress_argument


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
    )
    add_mask_arguments(p)
    p.add_argument("--generated", required=True, help="a folder written by `dualanodiff generate`")
    add_progress_argument(p)
    p.set_defaults(func=run)


def add_mask_arguments(p, method_default: str | None = "auto", default_words: str = "auto") -> None:
    """The mask options, shared by `masks` and `generate` (whose --method defaults to the adapters' recipe)."""
    p.add_argument(
        "--method",
        choices=list(MASK_METHODS),
        default=method_default,
        help="auto: u2net when --u2net-weights is given, else grey; grey-canvas: distance from the part image's "
        "own canvas colour (its median), for a part branch whose canvas comes out tinted; grey-half-max: the same "
        "distance cut at half its peak (never below --threshold), for soft-edged parts whose blur a fixed "
        f"threshold takes in (default: {default_words})",
    )
    p.add_argument(
        "--u2net-weights",
        help="the original u2net.pth or u2netp.pth state dict (variant detected); enables --method auto's u2net",
    )
    p.add_argument(
        "--threshold",
        type=float_arg(minimum=0),
        help="grey, grey-canvas: distance from the canvas in grey levels of 255; grey-half-max: the lowest "
        "threshold it may use; u2net: probability (default: 16 for the grey methods, 0.5 for u2net)",
    )
    p.add_argument(
        "--max-area",
        type=float_arg(above=0, maximum=1),
        default=0.5,
        help="reject pairs whose mask covers more than this fraction of the image",
    )


def run(args) -> int:
    from ..checks import check_output_dir
    from ..masks import make_masks_for_folder

    check_output_dir(args.generated, "--generated")
    summary = make_masks_for_folder(
        args.generated,
        method=args.method,
        u2net_weights=args.u2net_weights,
        threshold=args.threshold,
        max_area_fraction=args.max_area,
        show_progress=args.progress,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0
