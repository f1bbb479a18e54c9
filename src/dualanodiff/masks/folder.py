"""Masks for a generated folder: ``OUT/part/<name>.png`` -> ``OUT/mask/<name>.png`` + manifest verdicts.

``dualanodiff generate`` calls :func:`mask_from_part` (or a masker from :func:`build_masker`) per
pair; :func:`make_masks_for_folder` redoes the masks of a finished folder, e.g. with U^2-Net weights
obtained later or another threshold, and rewrites the manifest's mask fields to match.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..checks import check_float
from ..data.generated import MANIFEST, manifest_records
from ..data.images import image_size, load_rgb
from ..errors import InputError
from ..io import save_image_atomic, write_text_atomic
from ..progress import progress_bar
from .grey import DEFAULT_THRESHOLD as GREY_DEFAULT_THRESHOLD
from .grey import grey_mask
from .quality import DEFAULT_MAX_AREA_FRACTION, DEFAULT_MIN_AREA_FRACTION, judge_mask
from .u2net import U2NetMasker, load_u2net

Method = Literal["auto", "grey", "u2net"]
U2NET_DEFAULT_THRESHOLD = 0.5


@dataclass
class PartMasker:
    """A callable part image (uint8 H x W x 3) -> bool mask, with the method and threshold it uses."""

    method: Literal["grey", "u2net"]
    threshold: float
    fn: Callable[[np.ndarray], np.ndarray]
    many: Callable[[Sequence[np.ndarray]], list[np.ndarray]] | None = None

    def __call__(self, part: np.ndarray) -> np.ndarray:
        return self.fn(part)

    def batch(self, parts: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Masks of several part images (batched through the network for U^2-Net)."""
        return self.many(parts) if self.many is not None else [self.fn(p) for p in parts]


def resolve_method(method: str, u2net_weights: str | os.PathLike | None) -> Literal["grey", "u2net"]:
    """``auto`` means U^2-Net when weights are given, the weight-free grey mask otherwise."""
    if method == "auto":
        return "u2net" if u2net_weights is not None else "grey"
    if method == "grey":
        return "grey"
    if method == "u2net":
        if u2net_weights is None:
            raise InputError("--method u2net needs --u2net-weights (the original u2net.pth or u2netp.pth)")
        return "u2net"
    raise InputError(f"--method must be auto, grey or u2net, got {method!r}")


def build_masker(
    method: Method = "auto",
    u2net_weights: str | os.PathLike | None = None,
    threshold: float | None = None,
    device: str | None = None,
    batch_size: int = 8,
) -> PartMasker:
    """A part->mask callable. ``threshold`` is in grey levels of 255 for ``grey``, a probability for
    ``u2net``; None takes the method's default (16 levels; 0.5)."""
    resolved = resolve_method(method, u2net_weights)
    if resolved == "grey":
        t = GREY_DEFAULT_THRESHOLD if threshold is None else check_float(threshold, "--threshold", 0, 255)
        return PartMasker("grey", t, functools.partial(grey_mask, threshold=t))
    t = U2NET_DEFAULT_THRESHOLD if threshold is None else check_float(threshold, "--threshold", 0, 1, above=0)
    masker = U2NetMasker(load_u2net(u2net_weights, device=device), threshold=t, batch_size=batch_size)
    return PartMasker("u2net", t, masker, masker.batch)


@functools.lru_cache(maxsize=4)
def _cached_masker(
    method: str, weights: str | None, threshold: float | None, device: str | None
) -> PartMasker:
    return build_masker(method, weights, threshold, device)  # type: ignore[arg-type]


def mask_from_part(
    part: np.ndarray,
    method: Method = "auto",
    u2net_weights: str | os.PathLike | None = None,
    threshold: float | None = None,
    device: str | None = None,
) -> np.ndarray:
    """Mask of one part image; U^2-Net weights are loaded once and cached across calls."""
    weights = None if u2net_weights is None else str(Path(u2net_weights).resolve())
    return _cached_masker(method, weights, threshold, device)(part)


def make_masks_for_folder(
    out_dir: str | os.PathLike,
    method: Method = "auto",
    u2net_weights: str | os.PathLike | None = None,
    threshold: float | None = None,
    max_area_fraction: float = DEFAULT_MAX_AREA_FRACTION,
    show_progress: bool = True,
    min_area_fraction: float = DEFAULT_MIN_AREA_FRACTION,
    device: str | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """(Re)compute ``OUT/mask/<name>.png`` from ``OUT/part/<name>.png`` for every manifest record.

    Each mask is written atomically (0/255, one channel); then ``manifest.jsonl`` is rewritten
    atomically, one line per pair, with ``mask_area``, ``kept``, ``reject_reason`` and
    ``mask_method`` updated. Every record must have its part image (checked before anything is
    written). Returns a summary: counts kept/rejected by reason, mean mask area, method, threshold.
    """
    out = Path(out_dir)
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise InputError(f"{manifest}: not found (is {out} a folder written by dualanodiff generate?)")
    records = manifest_records(out)
    if not records:
        raise InputError(f"{manifest}: no pair records")
    for name in records:
        part_path = out / "part" / f"{name}.png"
        if not part_path.is_file():
            raise InputError(f"{part_path}: part image missing for pair {name!r} listed in {manifest}")
    # Validate options before loading anything heavy.
    judge_mask(np.ones((1, 1), bool), min_area_fraction, max_area_fraction)
    masker = build_masker(method, u2net_weights, threshold, device, batch_size)

    names = list(records)
    counts = {"kept": 0, "empty": 0, "too_small": 0, "too_large": 0}
    areas = []
    chunk = max(1, batch_size)
    with progress_bar(
        total=len(names), desc=f"masks ({masker.method})", unit="pair", disable=not show_progress
    ) as bar:
        for start in range(0, len(names), chunk):
            batch_names = names[start : start + chunk]
            parts = [load_rgb(out / "part" / f"{n}.png") for n in batch_names]
            for name, part in zip(batch_names, parts):
                image_path = out / "image" / f"{name}.png"
                if image_path.is_file() and image_size(image_path) != (part.shape[1], part.shape[0]):
                    raise InputError(
                        f"{out / 'part' / (name + '.png')}: size {part.shape[1]}x{part.shape[0]} differs "
                        f"from its image {image_path}"
                    )
            for name, mask in zip(batch_names, masker.batch(parts)):
                save_image_atomic(out / "mask" / f"{name}.png", mask.astype(np.uint8) * 255)
                verdict = judge_mask(mask, min_area_fraction, max_area_fraction)
                records[name] = {
                    **records[name],
                    "mask_area": verdict.area,
                    "kept": verdict.kept,
                    "reject_reason": verdict.reason,
                    "mask_method": masker.method,
                }
                areas.append(verdict.area)
                if verdict.kept:
                    counts["kept"] += 1
                elif verdict.area == 0.0:
                    counts["empty"] += 1
                elif verdict.area < min_area_fraction:
                    counts["too_small"] += 1
                else:
                    counts["too_large"] += 1
            bar.update(len(batch_names))

    lines = "".join(json.dumps(records[n], sort_keys=True, default=str) + "\n" for n in names)
    write_text_atomic(manifest, lines)
    return {
        "folder": str(out),
        "method": masker.method,
        "threshold": masker.threshold,
        "pairs": len(names),
        "kept": counts["kept"],
        "rejected": len(names) - counts["kept"],
        "rejected_empty": counts["empty"],
        "rejected_too_small": counts["too_small"],
        "rejected_too_large": counts["too_large"],
        "mean_mask_area": float(np.mean(areas)),
        "min_area_fraction": min_area_fraction,
        "max_area_fraction": max_area_fraction,
    }
