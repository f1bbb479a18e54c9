"""Read a folder of generated (image, part, mask) triples, as written by ``generate`` and the baselines.

Layout: ``image/<name>.png``, ``mask/<name>.png``, optional ``part/<name>.png``, ``manifest.jsonl``
(one record per pair; a later record for the same name overrides an earlier one) and ``config.json``.
The manifest decides which pairs were kept: a writer appends the record only after the files, so an
image without a record is an unfinished pair from an interrupted run and is never returned.
Without a manifest (a hand-made folder) every image with a mask counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import read_jsonl
from .images import IMAGE_EXTENSIONS, image_size, is_image_file

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class GeneratedPair:
    """One generated pair: the whole image, its mask, the anomaly-part image if any, its manifest record."""

    name: str
    image: Path
    mask: Path
    part: Path | None
    record: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if is_image_file(p)}


def manifest_records(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The manifest of a generated folder as {name: last record for that name}."""
    records: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(Path(folder) / MANIFEST):
        if isinstance(rec, dict) and "name" in rec:
            records[str(rec["name"])] = rec
    return records


def read_generated(folder: str | os.PathLike, include_rejected: bool = False) -> list[GeneratedPair]:
    """List the pairs of a generated folder, sorted by name; kept pairs only unless ``include_rejected``.

    Raises :class:`InputError` naming the file for a missing folder, a folder without ``image/``,
    a folder with no usable pair, an image without its mask, or a mask whose size differs from its image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: generated-data folder not found")
    image_dir = folder / "image"
    if not image_dir.is_dir():
        raise InputError(f"{folder}: no image/ folder (expected image/, mask/ and manifest.jsonl)")
    images = _by_stem(image_dir)
    if not images:
        raise InputError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    masks = _by_stem(folder / "mask")
    parts = _by_stem(folder / "part")
    has_manifest = (folder / MANIFEST).is_file()
    records = manifest_records(folder) if has_manifest else {}

    pairs: list[GeneratedPair] = []
    for name, image in images.items():
        if has_manifest:
            record = records.get(name)
            if record is None:  # files written, record not yet: an interrupted pair
                continue
            if not include_rejected and not record.get("kept", True):
                continue
        else:
            record = {"name": name, "kept": True}
        mask = masks.get(name)
        if mask is None:
            raise InputError(f"{image}: no matching mask {folder / 'mask' / (name + '.png')}")
        image_wh, mask_wh = image_size(image), image_size(mask)
        if image_wh != mask_wh:
            raise InputError(
                f"{mask}: mask size {mask_wh[0]}x{mask_wh[1]} differs from its image {image} "
                f"({image_wh[0]}x{image_wh[1]})"
            )
        pairs.append(GeneratedPair(name=name, image=image, mask=mask, part=parts.get(name), record=record))
    if not pairs:
        what = "pairs" if include_rejected else "kept pairs"
        raise InputError(f"{folder}: no {what} (manifest {folder / MANIFEST} lists none that are complete)")
    return pairs
