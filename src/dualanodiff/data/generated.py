"""The generated-data folder: its layout, its reader and its one writer, shared by ``generate``, the
baselines, ``masks`` and the exports (this module sits below all of them).

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
record with the mask of another (see :meth:`GeneratedWriter.update`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import (
    append_jsonl,
    iter_jsonl,
    read_json_object,
    remove_temporaries,
    repair_jsonl,
    save_image_atomic,
    save_images_atomic,
    write_json_atomic,
    write_text_atomic,
)
from ..locking import STATE_DIR, held_lock
from .images import IMAGE_EXTENSIONS, image_size, is_image_file, load_mask

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


# -- writing ---------------------------------------------------------------------------------------------
#
# A pair is *complete* when its manifest record exists and its files do. The files are written first (all
# three encoded to temporaries, then renamed mask, part, image) and the record is appended last, so a crash
# at any point leaves at worst files without a record, which a rerun overwrites. Pair ``i`` is named
# ``f"{i:05d}"`` and seeded with ``base_seed + i`` (``base_seed`` = ``config["seed"]``): each pair depends
# only on its own seed, so a resumed run makes exactly the missing pairs and makes them identical to an
# uninterrupted run.
#
# A writer works inside :func:`dualanodiff.locking.output_lock` on its folder. Opened, it puts the folder in
# order for the part it owns (a shard: its own pairs): finishes or undoes a mask update cut short by a kill,
# moves files to where their records say (kept or ``rejected/``), and removes temporaries left by a kill.


def _jsonable(obj: Any) -> Any:
    """The value as it reads back from JSON, so a stored config compares equal to a fresh one."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _as_uint8_rgb(image: Image.Image | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{what} must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def _index_of(name: str) -> int | None:
    return int(name) if name.isdigit() else None


class GeneratedWriter:
    """Writes pairs into ``out_dir``; knows which are complete so a rerun makes only the missing ones.

    ``config`` (JSON-serialisable) is written to ``config.json``. When the folder already holds a
    config, the two must agree except for the keys in ``resume_ignore`` (by default ``num_pairs``,
    so a run can be extended): resuming with other settings would mix two datasets in one folder.
    The calling process must hold ``output_lock(out_dir, ...)``; its shard decides which pairs this
    writer may repair (``Shard(0, 1)``: all of them). The writer's files are ``<kind>/<name>.png``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        config: dict[str, Any],
        *,
        base_seed: int | None = None,
        resume_ignore: Iterable[str] = ("num_pairs",),
    ) -> None:
        self.out_dir = Path(out_dir)
        lock = held_lock(self.out_dir)
        if lock is None:
            raise RuntimeError(
                f"GeneratedWriter({self.out_dir}): hold output_lock({self.out_dir!s}, ...) first"
            )
        self.shard = lock.shard
        self.config = _jsonable(dict(config))
        self.base_seed = int(self.config.get("seed", 0) if base_seed is None else base_seed)
        self._check_config(set(resume_ignore))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out_dir / CONFIG, self.config)
        repair_jsonl(self.out_dir / MANIFEST)
        self._records = manifest_records(self.out_dir)
        self._put_in_order()
        self.written = 0

    # -- naming, seeding, completeness -------------------------------------------------------------
    @staticmethod
    def name(index: int) -> str:
        return f"{index:05d}"

    def seed(self, index: int) -> int:
        return self.base_seed + index

    def path(self, kind: str, index: int, kept: bool = True) -> Path:
        """Path of ``kind`` (``image``, ``mask`` or ``part``) of pair ``index``, kept or rejected."""
        return pair_path(self.out_dir, kind, self.name(index), kept)

    def record(self, index: int) -> dict[str, Any] | None:
        return self._records.get(self.name(index))

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        """{name: latest record} as this writer knows them (read at opening, plus its own writes)."""
        return dict(self._records)

    def is_complete(self, index: int) -> bool:
        rec = self.record(index)
        if rec is None:
            return False
        kept = bool(rec.get("kept", True))
        kinds = ["image", "mask"] + (["part"] if rec.get("has_part") else [])
        return all(self.path(kind, index, kept).is_file() for kind in kinds)

    def pending(self, num_pairs: int) -> list[int]:
        """Indices in ``range(num_pairs)`` (this writer's shard of them) still to be made."""
        return [i for i in range(num_pairs) if self.shard.owns(i) and not self.is_complete(i)]

    # -- writing -----------------------------------------------------------------------------------
    def write(
        self,
        index: int,
        image: Image.Image | np.ndarray,
        mask: np.ndarray,
        part: Image.Image | np.ndarray | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Write pair ``index`` and append its record; ``fields`` are added to (and may override) it.

        The record holds ``name``, ``index``, ``seed``, ``kept`` (True), ``reject_reason`` (None),
        ``mask_area`` (fraction of pixels) and ``has_part``; pass ``kept=False, reject_reason=...``
        for a pair that is written but rejected: its files go to ``rejected/``.
        """
        image = _as_uint8_rgb(image, "image")
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
        mask = mask.astype(bool)
        if part is not None:
            part = _as_uint8_rgb(part, "part")
            if part.shape != image.shape:
                raise ValueError(f"part shape {part.shape} differs from image shape {image.shape}")
        record: dict[str, Any] = {
            "name": self.name(index),
            "index": index,
            "seed": self.seed(index),
            "kept": True,
            "reject_reason": None,
            "mask_area": float(mask.mean()),
            "has_part": part is not None,
        }
        record.update(fields)
        record = _jsonable(record)
        kept = bool(record["kept"])
        files = [(self.path("mask", index, kept), mask.astype(np.uint8) * 255)]
        if part is not None:
            files.append((self.path("part", index, kept), part))
        files.append((self.path("image", index, kept), image))  # last: readers of files key on the image
        for kind in KINDS:  # an unrecorded earlier attempt on the other side must not linger there
            self.path(kind, index, not kept).unlink(missing_ok=True)
        save_images_atomic(files)
        append_jsonl(self.out_dir / MANIFEST, record)
        self._records[record["name"]] = record
        self.written += 1
        return record

    def update(self, name: str, mask: np.ndarray, **fields: Any) -> dict[str, Any]:
        """Give a complete pair a new mask and record (``dualanodiff masks``), moving it between kept and
        rejected when ``fields["kept"]`` says so; a crash at any point leaves the old or the new pair.

        The new mask and record are staged under ``.dualanodiff/pending/`` first; appending the record is
        the commit; the staged mask is then moved into place. Readers take a committed staged mask as the
        pair's mask (:func:`dualanodiff.data.generated.committed_pending_masks`), and the next writer to
        open the folder finishes the move (or drops an uncommitted one). A pair leaving ``image/`` leaves
        it before the commit and a pair entering it enters after, so ``image/`` never holds a rejected pair.
        """
        self._require_exclusive("update")
        old = self._records[name]
        mask = np.asarray(mask).astype(bool)
        record = _jsonable({**old, "mask_area": float(mask.mean()), **fields})
        was_kept, kept = bool(old.get("kept", True)), bool(record.get("kept", True))
        current = pair_path(self.out_dir, "mask", name, was_kept)
        if was_kept == kept and current.exists() and np.array_equal(load_mask(current), mask):
            self._append(record)  # same pixels, same place: only the record changes
            return record
        pending = pending_dir(self.out_dir)
        save_image_atomic(pending / f"{name}.png", mask.astype(np.uint8) * 255)
        write_json_atomic(pending / f"{name}.json", record)
        if was_kept and not kept:
            self._place(name, kept, kinds=("image", "part"))
        self._append(record)
        self._finish_update(name, record)
        return record

    def compact(self) -> None:
        """Rewrite the manifest with one line per pair (its latest record), sorted by name, atomically."""
        self._require_exclusive("compact")
        records = [self._records[name] for name in sorted(self._records)]
        lines = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
        write_text_atomic(self.out_dir / MANIFEST, lines)

    def summary(self, num_pairs: int) -> dict[str, Any]:
        """Counts over ``range(num_pairs)``: complete, kept, rejected, written by this run, still missing.

        The manifest is read again, so pairs that other shards wrote meanwhile count too.
        """
        self._records.update(manifest_records(self.out_dir))
        recs = [self.record(i) for i in range(num_pairs) if self.is_complete(i)]
        kept = sum(1 for r in recs if r.get("kept", True))
        out = {
            "out_dir": str(self.out_dir),
            "num_pairs": num_pairs,
            "complete": len(recs),
            "kept": kept,
            "rejected": len(recs) - kept,
            "written": self.written,
            "missing": num_pairs - len(recs),
        }
        if not self.shard.alone:
            out["shard"] = str(self.shard)
        return out

    # -- internals ---------------------------------------------------------------------------------
    def _owns(self, name: str) -> bool:
        if self.shard.alone:
            return True
        index = _index_of(name)
        return index is not None and self.shard.owns(index)

    def _require_exclusive(self, what: str) -> None:
        if not self.shard.alone:
            raise RuntimeError(f"GeneratedWriter.{what} needs the folder to itself, not shard {self.shard}")

    def _append(self, record: dict[str, Any]) -> None:
        append_jsonl(self.out_dir / MANIFEST, record)
        self._records[record["name"]] = record

    def _place(self, name: str, kept: bool, kinds: Iterable[str] = KINDS) -> None:
        """Move the pair's files to where ``kept`` says; the mask enters first and leaves last."""
        order = [k for k in ("mask", "part", "image") if k in kinds]
        for kind in order if kept else order[::-1]:
            want = pair_path(self.out_dir, kind, name, kept)
            other = pair_path(self.out_dir, kind, name, not kept)
            if not other.exists():
                continue
            if want.exists():  # both places hold one: the one where the record says is the pair's
                other.unlink()
            else:
                want.parent.mkdir(parents=True, exist_ok=True)
                os.replace(other, want)

    def _finish_update(self, name: str, record: dict[str, Any]) -> None:
        pending = pending_dir(self.out_dir)
        kept = bool(record.get("kept", True))
        staged = pending / f"{name}.png"
        if staged.exists():
            target = pair_path(self.out_dir, "mask", name, kept)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
        self._place(name, kept)
        (pending / f"{name}.json").unlink(missing_ok=True)

    def _put_in_order(self) -> None:
        """Finish or undo interrupted mask updates, put files where their records say, drop temporaries."""
        pending = pending_dir(self.out_dir)
        for intent in sorted(pending.glob("*.json")) if pending.is_dir() else []:
            name = intent.stem
            if not self._owns(name):
                continue
            try:
                staged_record = json.loads(intent.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                staged_record = None
            if staged_record is not None and self._records.get(name) == staged_record:
                self._finish_update(name, staged_record)  # committed: complete it
            else:  # never committed: the old pair stands
                intent.unlink(missing_ok=True)
                (pending / f"{name}.png").unlink(missing_ok=True)
        for name, record in self._records.items():
            if self._owns(name):
                self._place(name, bool(record.get("kept", True)))
        for kept in (True, False):
            for kind in KINDS:
                remove_temporaries(
                    pair_dir(self.out_dir, kept) / kind, owned=lambda n: self._owns(Path(n).stem)
                )
        if self.shard.alone:
            remove_temporaries(self.out_dir)  # manifest and config temporaries
            remove_temporaries(pending)

    def _check_config(self, ignore: set[str]) -> None:
        old = read_generated_config(self.out_dir)
        if not old:
            return
        keys = (set(old) | set(self.config)) - ignore
        differ = sorted(k for k in keys if old.get(k) != self.config.get(k))
        if differ:
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {self.config.get(k)!r}" for k in differ[:5])
            raise InputError(
                f"{self.out_dir / CONFIG}: this folder was made with other settings ({detail}); "
                "resume with the same settings or choose a new output folder"
            )
