"""Masks for a generated folder: ``OUT/part/<name>.png`` -> ``OUT/mask/<name>.png`` + manifest verdicts.

``dualanodiff generate`` calls a masker from :func:`build_masker` per pair; :func:`make_masks_for_folder`
redoes the masks of a written folder, e.g. with U^2-Net weights obtained later or another threshold,
moving pairs between kept and ``rejected/`` as their new masks pass or fail, and updates the manifest
and ``config.json`` to match.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..checks import MASK_METHODS, check_float
from ..data.generated import (
    MANIFEST,
    GeneratedWriter,
    PairFiles,
    manifest_records,
    pair_path,
    read_generated_config,
)
from ..data.images import image_size, load_mask, load_rgb, resize_rgb
from ..errors import InputError
from ..progress import progress_bar
from .grey import DEFAULT_THRESHOLD as GREY_DEFAULT_THRESHOLD
from .grey import GREY_LEVEL, grey_mask, half_max_mask
from .placed import NONFINITE_REASON
from .quality import DEFAULT_MAX_AREA_FRACTION, DEFAULT_MIN_AREA_FRACTION, judge_mask
from .u2net import U2NetMasker, load_u2net

Method = Literal["auto", "grey", "grey-canvas", "grey-half-max", "u2net"]
ResolvedMethod = Literal["grey", "grey-canvas", "grey-half-max", "u2net"]
GREY_METHODS = (
    "grey",
    "grey-canvas",
    "grey-half-max",
)  # weight-free: a distance from the canvas  # what `auto` resolves to, and the rest as given
U2NET_DEFAULT_THRESHOLD = 0.5


@dataclass
class PartMasker:
    """A callable part image (uint8 H x W x 3) -> bool mask, with the method and threshold it uses."""

    method: ResolvedMethod
    threshold: float
    fn: Callable[[np.ndarray], np.ndarray]
    many: Callable[[Sequence[np.ndarray]], list[np.ndarray]] | None = None
    weights: str | None = None  # U^2-Net weights file (absolute path)

    def __call__(self, part: np.ndarray) -> np.ndarray:
        return self.fn(part)

    def settings(
        self,
        min_area_fraction: float = DEFAULT_MIN_AREA_FRACTION,
        max_area_fraction: float = DEFAULT_MAX_AREA_FRACTION,
    ) -> dict[str, Any]:
        """What decides a pair's mask and verdict, recorded with each pair (``mask_settings``) so that
        ``dualanodiff masks`` knows which pairs already have the masks it would make."""
        return {
            "method": self.method,
            "threshold": self.threshold,
            "u2net_weights": self.weights,
            "min_area_fraction": min_area_fraction,
            "max_area_fraction": max_area_fraction,
        }

    def batch(self, parts: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Masks of several part images (batched through the network for U^2-Net)."""
        return self.many(parts) if self.many is not None else [self.fn(p) for p in parts]


def resolve_method(method: str, u2net_weights: str | os.PathLike | None) -> ResolvedMethod:
    """``auto`` means U^2-Net when weights are given, the weight-free grey mask otherwise."""
    if method == "auto":
        return "u2net" if u2net_weights is not None else "grey"
    if method in GREY_METHODS:
        return method
    if method == "u2net":
        if u2net_weights is None:
            raise InputError("--method u2net needs --u2net-weights (the original u2net.pth or u2netp.pth)")
        return "u2net"
    raise InputError(f"--method must be one of {', '.join(MASK_METHODS)}, got {method!r}")


def build_masker(
    method: Method = "auto",
    u2net_weights: str | os.PathLike | None = None,
    threshold: float | None = None,
    device: str | None = None,
    batch_size: int = 8,
) -> PartMasker:
    """A part->mask callable. ``threshold`` is in grey levels of 255 for the grey methods, a probability for
    ``u2net``; None takes the method's default (16 levels; 0.5). ``grey-canvas`` measures the distance from
    the part image's own canvas colour (its per-channel median) instead of mid-grey: for a part branch whose
    canvas comes out tinted (the demo's adapters after several hundred steps), where ``grey`` would mark the
    whole canvas. ``grey-half-max`` measures it the same way and cuts at half the part's peak distance, with
    ``threshold`` as the floor (`masks.grey.half_max_mask`): for soft-edged parts, whose blur a fixed low
    threshold takes in."""
    resolved = resolve_method(method, u2net_weights)
    if resolved in GREY_METHODS:
        t = GREY_DEFAULT_THRESHOLD if threshold is None else check_float(threshold, "--threshold", 0, 255)
        if resolved == "grey-half-max":
            return PartMasker(resolved, t, functools.partial(half_max_mask, floor=t, grey="auto"))
        canvas = "auto" if resolved == "grey-canvas" else GREY_LEVEL
        return PartMasker(resolved, t, functools.partial(grey_mask, threshold=t, grey=canvas))
    t = U2NET_DEFAULT_THRESHOLD if threshold is None else check_float(threshold, "--threshold", 0, 1, above=0)
    masker = U2NetMasker(load_u2net(u2net_weights, device=device), threshold=t, batch_size=batch_size)
    return PartMasker("u2net", t, masker, masker.batch, weights=str(Path(u2net_weights).resolve()))


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


# The settings in a generated folder's config.json that `masks` changes (the names `generate` gives them).
MASK_CONFIG_KEYS = ("mask_method", "u2net_weights", "mask_threshold", "max_mask_area")


def _reason_counts(records: Sequence[dict[str, Any]], min_area_fraction: float) -> dict[str, int]:
    counts = {"kept": 0, "empty": 0, "too_small": 0, "too_large": 0}
    for rec in records:
        area = float(rec.get("mask_area", 0.0))
        if rec.get("kept", True):
            counts["kept"] += 1
        elif area == 0.0:
            counts["empty"] += 1
        elif area < min_area_fraction:
            counts["too_small"] += 1
        else:
            counts["too_large"] += 1
    return counts


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
    """(Re)compute the masks of a generated folder from its part images, moving pairs between kept
    (``image/``...) and ``rejected/`` as the new masks pass or fail the area limits.

    Holds the folder's output lock (a folder that ``generate`` is still writing is refused). The folder's
    ``config.json`` takes the new mask settings first; then each pair changes as one step
    (:meth:`GeneratedWriter.update`: mask, place and manifest record together, whatever interrupts it), and
    its record gets ``mask_settings``. Pairs whose record already has these settings are left as they are,
    so an interrupted run resumes where it stopped. Finally the manifest is compacted to one line per pair.
    Every record must have its part image (checked before anything is written). Returns a summary: counts
    kept/rejected by reason, pairs updated, mean mask area, method, threshold.
    """
    from ..locking import output_lock

    out = Path(out_dir)
    manifest = out / MANIFEST
    if not out.is_dir():
        raise InputError(f"{out}: generated-data folder not found")
    # Validate options before taking the folder or loading anything heavy.
    judge_mask(np.ones((1, 1), bool), min_area_fraction, max_area_fraction)
    resolve_method(method, u2net_weights)
    with output_lock(out, "masks"):  # first: a folder that generate is still filling is refused as such
        if not manifest.is_file():
            raise InputError(f"{manifest}: not found (is {out} a folder written by dualanodiff generate?)")
        config = read_generated_config(out)
        records = manifest_records(out)
        if not records:
            raise InputError(f"{manifest}: no pair records")
        files = PairFiles(out)
        for name, rec in records.items():
            if files.find("part", name, bool(rec.get("kept", True))) is None:
                raise InputError(
                    f"{pair_path(out, 'part', name, bool(rec.get('kept', True)))}: part image missing for pair "
                    f"{name!r} listed in {manifest}"
                )
        masker = build_masker(method, u2net_weights, threshold, device, batch_size)
        settings = masker.settings(min_area_fraction, max_area_fraction)
        new_config = {
            **config,
            "mask_method": method,
            "u2net_weights": None if u2net_weights is None else str(u2net_weights),
            "mask_threshold": threshold,
            "max_mask_area": max_area_fraction,
        }
        writer = GeneratedWriter(out, new_config, resume_ignore=MASK_CONFIG_KEYS)
        records = writer.records
        names = [n for n, rec in records.items() if rec.get("mask_settings") != settings]
        with progress_bar(
            total=len(names), desc=f"masks ({masker.method})", unit="pair", disable=not show_progress
        ) as bar:
            for start in range(0, len(names), max(1, batch_size)):
                batch = names[start : start + max(1, batch_size)]
                part_paths = {n: pair_path(out, "part", n, bool(records[n].get("kept", True))) for n in batch}
                parts = [load_rgb(part_paths[n]) for n in batch]
                for name, part in zip(batch, parts):
                    image = pair_path(out, "image", name, bool(records[name].get("kept", True)))
                    if image.is_file() and image_size(image) != (part.shape[1], part.shape[0]):
                        raise InputError(
                            f"{part_paths[name]}: size {part.shape[1]}x{part.shape[0]} differs from its image {image}"
                        )
                for name, mask in zip(batch, masker.batch(parts)):
                    verdict = judge_mask(mask, min_area_fraction, max_area_fraction)
                    record = records[name]
                    if record.get("normal") is not None:  # placed on a normal image: the placed rule
                        mask, verdict = _placed_again(
                            out, record, mask, config, min_area_fraction, max_area_fraction
                        )
                    if str(record.get("reject_reason") or "").startswith(NONFINITE_REASON):
                        verdict = verdict._replace(
                            kept=False, reason=record["reject_reason"]
                        )  # never revived
                    writer.update(
                        name,
                        mask,
                        mask_area=verdict.area,
                        kept=verdict.kept,
                        reject_reason=verdict.reason,
                        mask_method=masker.method,
                        mask_settings=settings,
                    )
                bar.update(len(batch))
        writer.compact()
        final = list(writer.records.values())
    counts = _reason_counts(final, min_area_fraction)
    areas = [float(r.get("mask_area", 0.0)) for r in final]
    return {
        "folder": str(out),
        "method": masker.method,
        "threshold": masker.threshold,
        "pairs": len(final),
        "updated": len(names),
        "kept": counts["kept"],
        "rejected": len(final) - counts["kept"],
        "rejected_empty": counts["empty"],
        "rejected_too_small": counts["too_small"],
        "rejected_too_large": counts["too_large"],
        "mean_mask_area": float(np.mean(areas)),
        "min_area_fraction": min_area_fraction,
        "max_area_fraction": max_area_fraction,
    }


def _placed_again(
    out: Path,
    record: dict[str, Any],
    part_mask: np.ndarray,
    config: dict[str, Any],
    min_area: float,
    max_area: float,
):
    """A placed pair's mask and verdict by the placed rule (`masks.placed`), from its image, its normal
    image (resized as generation resized it) and its OUT/region file."""

    from .placed import placed_outcome

    name, kept = record["name"], bool(record.get("kept", True))
    image = load_rgb(pair_path(out, "image", name, kept))
    region_path = out / "region" / f"{name}.png"
    if not region_path.is_file():
        raise InputError(f"{region_path}: region missing for placed pair {name!r}")
    normal_path = Path(record["normal"])
    if not normal_path.is_file():
        raise InputError(f"{normal_path}: the normal image of placed pair {name!r} is gone")
    normal = resize_rgb(load_rgb(normal_path), (image.shape[1], image.shape[0]))
    allowed = load_mask(region_path)
    departure = float(config.get("departure", 16.0))
    mask, verdict, _ = placed_outcome(part_mask, image, normal, allowed, departure, max_area, min_area)
    return mask, verdict
