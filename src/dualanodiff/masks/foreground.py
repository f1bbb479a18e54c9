"""Where BCM's object foreground masks come from (METHOD section 5), one rule for training and generation.

The BCM background is the image with its object blacked out; the object is found by one of these sources:

- ``auto``: the weight-free plain-background estimate (`plain_background.estimate_foreground`), the default;
- ``u2net``: the salient-object network the paper used, with the user's ``u2net.pth`` / ``u2netp.pth``;
- ``none``: no object, the whole image is background (textures);
- a folder of masks, matched to the images by name (``<stem>.png`` or ``<stem>_mask.png``).

Texture categories of MVTec AD (carpet, grid, leather, tile, wood) always use the whole image, as the paper;
``auto`` also finds no object where the image border is not plain. Adapters record the source they were
trained with (``adapter_config.json``, ``training.foreground``), and generation uses the same one unless told
otherwise, because BCM learned to read backgrounds made that way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .plain_background import estimate_foreground

log = logging.getLogger(__name__)

SOURCES = ("auto", "u2net", "none")
TEXTURE_CATEGORIES = frozenset({"carpet", "grid", "leather", "tile", "wood"})  # MVTec AD's textures
U2NET_THRESHOLD = 0.5


def foreground_kind(spec: str | os.PathLike | None) -> str | None:
    """``auto``, ``u2net``, ``none``, ``folder`` (any other value: a path), or None when unset."""
    if spec is None:
        return None
    return str(spec) if str(spec) in SOURCES else "folder"


def check_foreground_spec(spec: str | None, u2net_weights: str | os.PathLike | None) -> None:
    """One-line errors for a source that cannot work, before any model is loaded."""
    kind = foreground_kind(spec)
    if kind == "u2net":
        if u2net_weights is None:
            raise InputError(
                "--foreground u2net needs --u2net-weights (the original u2net.pth or u2netp.pth)"
            )
        if not Path(u2net_weights).is_file():
            raise InputError(f"--u2net-weights {u2net_weights}: file not found")
    elif kind == "folder" and not Path(spec).is_dir():
        raise InputError(f"--foreground {spec}: not a folder of masks, nor one of {', '.join(SOURCES)}")


class ForegroundEstimator:
    """Image (uint8 H x W x 3) -> object mask (bool H x W), or None for "the whole image is background"."""

    def __init__(
        self,
        kind: str,
        u2net_weights: str | os.PathLike | None = None,
        category: str | None = None,
        device: str | None = None,
    ) -> None:
        if kind not in ("auto", "u2net", "none"):
            raise InputError(f"foreground source must be one of {', '.join(SOURCES)} here, got {kind!r}")
        self.kind = "none" if category in TEXTURE_CATEGORIES else kind
        self._u2net = None
        if self.kind == "u2net":
            from .u2net import U2NetMasker, load_u2net

            check_foreground_spec("u2net", u2net_weights)
            self._u2net = U2NetMasker(load_u2net(u2net_weights, device=device), threshold=U2NET_THRESHOLD)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        if self.kind == "none":
            return None
        if self.kind == "auto":
            return estimate_foreground(image)
        mask = self._u2net(np.asarray(image))
        return mask if mask.any() else None
