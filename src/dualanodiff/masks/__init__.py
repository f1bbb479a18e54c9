"""Anomaly-part image -> defect mask: a weight-free grey-distance mask (default) or U^2-Net with
user-supplied weights, a quality gate on the mask's area, and the per-folder driver."""

from .folder import PartMasker, build_masker, make_masks_for_folder, mask_from_part
from .grey import grey_mask, half_max_mask
from .quality import MaskQuality, judge_mask
from .u2net import U2NET, U2NETP, U2NetMasker, load_u2net

__all__ = [
    "MaskQuality",
    "PartMasker",
    "U2NET",
    "U2NETP",
    "U2NetMasker",
    "build_masker",
    "grey_mask",
    "half_max_mask",
    "judge_mask",
    "load_u2net",
    "make_masks_for_folder",
    "mask_from_part",
]
