"""Keep or reject a generated pair by its mask's area.

An empty mask (the generator drew no defect, or the segmenter saw none) is useless as a training
pair for a localisation model, and a mask covering most of the image means the part image was not
a defect on grey (the branch failed, or a segmenter turned noise into foreground). Both are
rejected with a reason a person can read in the manifest.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import InputError

DEFAULT_MIN_AREA_FRACTION = 1e-4  # ~26 pixels at 512 x 512: a few stray pixels are not a defect
DEFAULT_MAX_AREA_FRACTION = 0.5


class MaskQuality(NamedTuple):
    """Verdict on one mask; unpacks as ``kept, reason, area``."""

    kept: bool
    reason: str | None
    area: float  # fraction of the image's pixels in the mask


def _percent(fraction: float) -> str:
    """73% for large fractions, two significant digits for small ones (0.0061%)."""
    pct = 100.0 * fraction
    return f"{pct:.0f}%" if pct >= 1.0 or pct == 0.0 else f"{pct:.2g}%"


def _compare(area: float, op: str, limit: float) -> str:
    """ "73% of the image (> 50%)", with as many decimals as it takes for the two numbers to differ."""
    shown, bound = _percent(area), _percent(limit)
    for decimals in range(1, 5):
        if shown != bound:
            break
        shown, bound = f"{100 * area:.{decimals}f}%", f"{100 * limit:.{decimals}f}%"
    return f"mask covers {shown} of the image ({op} {bound})"


def judge_mask(
    mask: np.ndarray,
    min_area_fraction: float = DEFAULT_MIN_AREA_FRACTION,
    max_area_fraction: float = DEFAULT_MAX_AREA_FRACTION,
) -> MaskQuality:
    """Reject an empty mask, one below ``min_area_fraction`` or one above ``max_area_fraction``."""
    if not 0.0 <= min_area_fraction <= max_area_fraction <= 1.0:
        raise InputError(
            f"mask area limits must satisfy 0 <= min ({min_area_fraction}) <= max ({max_area_fraction}) <= 1"
        )
    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        raise InputError("mask has no pixels")
    area = float(mask.mean())
    if area == 0.0:
        return MaskQuality(False, "empty mask", area)
    if area < min_area_fraction:
        reason = _compare(area, "<", min_area_fraction)
        return MaskQuality(False, reason, area)
    if area > max_area_fraction:
        reason = _compare(area, ">", max_area_fraction)
        return MaskQuality(False, reason, area)
    return MaskQuality(True, None, area)
