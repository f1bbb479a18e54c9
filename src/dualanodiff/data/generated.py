"""The generated-data folder (written by ``generate`` and the baselines) and its reader.

Layout::

    image/<name>.png  part/<name>.png  mask/<name>.png                kept pairs only
    rejected/image/<name>.png  rejected/part/...  rejected/mask/...   pairs whose mask failed the quality gate
    manifest.jsonl     one record per pair, kept and rejected alike (seed, settings, mask area, kept, reason)
    config.json        the settings that made the folder

so a reader that only looks at files (anomalib's ``Folder`` pointed at ``image/`` and ``mask/``) sees
exactly the kept pairs, and ``part/`` is optional (the baselines have none). The manifest decides: a later
record for a name overrides an earlier one, and a pair's files are looked up where its record's ``kept``
says, then in the other place (a move by ``dualanodiff masks`` in progress, or a folder written before
``rejected/`` existed). Files are written before their record, so an image without a record is an
unfinished pair and is never returned. Without a manifest (a hand-made folder), every image in
``image/`` with a mask counts.

``dualanodiff masks`` changes a pair's mask as one step: the new mask and the new record are staged in
``.dualanodiff/pending/<name>.{png,json}`` before the record is appended; once the record is in the
manifest the staged mask is the pair's mask until it has been moved into place, so a reader never sees a
record with the mask of another (see ``baselines.write.GeneratedWriter.update``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import iter_jsonl, read_json_object
from ..locking import STATE_DIR
from .images import IMAGE_EXTENSIONS, image_size, is_image_file

MANIFEST = "manifest.jsonl"
CONFIG = "config.json"
KINDS = ("image", "part", "mask")
REJECTED = "rejected"
PENDING = "pending"  # under STATE_DIR: mask updates staged by `dualanodiff masks`


@dataclass(frozen=True)
class GeneratedPair:
    """One generated pair: the whole image, its mask, the anomaly-part image if any, its manifest record."""

    name: str
    image: Path
    mask: Path
    part: Path | None
    record: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def kept(self) -> bool:
        return bool(self.record.get("kept", True))


# -- layout ------------------------------------------------------------------------------------------------


def pair_dir(folder: str | os.PathLike, kept: bool) -> Path:
    """Where the files of kept (``folder``) or rejected (``folder/rejected``) pairs live."""
    return Path(folder) if kept else Path(folder) / REJECTED


def pair_path(folder: str | os.PathLike, kind: str, name: str, kept: bool) -> Path:
    """The PNG of ``kind`` (image, part or mask) of pair ``name`` as the writers name it."""
    return pair_dir(folder, kept) / kind / f"{name}.png"


def pending_dir(folder: str | os.PathLike) -> Path:
    return Path(folder) / STATE_DIR / PENDING


class PairFiles:
    """The image files of a generated folder, indexed once, to look pairs up by name and kept/rejected."""

    def __init__(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        self._files = {
            (kept, kind): _by_stem(pair_dir(folder, kept) / kind) for kept in (True, False) for kind in KINDS
        }

    def find(self, kind: str, name: str, kept: bool) -> Path | None:
        """Where the record says (``kept``), else in the other place."""
        return self._files[(kept, kind)].get(name) or self._files[(not kept, kind)].get(name)

    def names(self) -> set[str]:
        return {name for files in self._files.values() for name in files}


def committed_pending_masks(folder: str | os.PathLike, records: dict[str, dict[str, Any]]) -> dict[str, Path]:
    """{name: staged mask} for the mask updates whose record is already the pair's latest record."""
    pending = pending_dir(folder)
    if not pending.is_dir():
        return {}
    out = {}
    for intent in sorted(pending.glob("*.json")):
        staged = intent.with_suffix(".png")
        try:
            record = json.loads(intent.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # written atomically, so only a file being replaced right now can fail to read
        if staged.is_file() and records.get(intent.stem) == record:
            out[intent.stem] = staged
    return out


# -- manifest and config ------------------------------------------------------------------------------------


def manifest_records(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The manifest of a generated folder as {name: last record for that name}, in first-seen order.

    A line that is not a JSON object with a plain file stem as ``name`` raises :class:`InputError` naming the
    file and the line (only a torn last line, left by a killed writer, is skipped).
    """
    path = Path(folder) / MANIFEST
    records: dict[str, dict[str, Any]] = {}
    for number, rec in iter_jsonl(path):
        name = rec.get("name") if isinstance(rec, dict) else None
        if not isinstance(name, str) or not _plain_stem(name):
            raise InputError(
                f"{path}, line {number}: not a pair record (a JSON object whose 'name' is a file stem); "
                "fix or delete that line"
            )
        records[name] = rec
    return records


def read_generated_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a generated folder, {} when there is none; InputError naming it when it is corrupt."""
    return read_json_object(Path(folder) / CONFIG)


def _plain_stem(name: str) -> bool:
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


# -- reading ---------------------------------------------------------------------------------------------


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if is_image_file(p)}


def _checked_pair(
    name: str, image: Path, mask: Path | None, expected_mask: Path, part: Path | None, record
) -> GeneratedPair:
    if mask is None:
        raise InputError(f"{image}: no matching mask {expected_mask}")
    image_wh, mask_wh = image_size(image), image_size(mask)
    if image_wh != mask_wh:
        raise InputError(
            f"{mask}: mask size {mask_wh[0]}x{mask_wh[1]} differs from its image {image} "
            f"({image_wh[0]}x{image_wh[1]})"
        )
    return GeneratedPair(name=name, image=image, mask=mask, part=part, record=record)


def read_generated(folder: str | os.PathLike, include_rejected: bool = False) -> list[GeneratedPair]:
    """List the pairs of a generated folder, sorted by name; kept pairs only unless ``include_rejected``.

    Raises :class:`InputError` naming the file for a missing folder, a folder with neither ``image/`` nor
    a manifest, a folder with no usable pair, an image without its mask, a mask whose size differs from its
    image, and a corrupt manifest line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: generated-data folder not found")
    image_dir = folder / "image"
    has_manifest = (folder / MANIFEST).is_file()
    if not has_manifest:
        if not image_dir.is_dir():
            raise InputError(f"{folder}: no image/ folder (expected image/, mask/ and manifest.jsonl)")
        images = _by_stem(image_dir)
        if not images:
            raise InputError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        masks, parts = _by_stem(folder / "mask"), _by_stem(folder / "part")
        return [
            _checked_pair(
                name,
                image,
                masks.get(name),
                folder / "mask" / f"{name}.png",
                parts.get(name),
                {"name": name, "kept": True},
            )
            for name, image in images.items()
        ]

    records = manifest_records(folder)
    files = PairFiles(folder)
    staged = committed_pending_masks(folder, records)
    pairs: list[GeneratedPair] = []
    for name in sorted(records):
        record = records[name]
        kept = bool(record.get("kept", True))
        if not (kept or include_rejected):
            continue
        image = files.find("image", name, kept)
        if image is None:  # a record whose image is gone (removed by hand): nothing to read
            continue
        mask = staged.get(name) or files.find("mask", name, kept)
        part = files.find("part", name, kept)
        pairs.append(_checked_pair(name, image, mask, pair_path(folder, "mask", name, kept), part, record))
    if not pairs:
        what = "pairs" if include_rejected else "kept pairs"
        raise InputError(f"{folder}: no {what} (manifest {folder / MANIFEST} lists none that are complete)")
    return pairs
