"""Write generated pairs in the shared layout, resumably: the one writer for the baselines and ``generate``.

Layout: ``image/<name>.png``, ``mask/<name>.png`` (0/255), optional ``part/<name>.png``,
``manifest.jsonl`` (one record per pair) and ``config.json`` (the resolved settings).

A pair is *complete* when its manifest record exists and its files do. The files are written first
(each atomically) and the record is appended last, so a crash at any point leaves at worst files
without a record, which a rerun overwrites. Pair ``i`` is named ``f"{i:05d}"`` and seeded with
``base_seed + i`` (``base_seed`` = ``config["seed"]``): each pair depends only on its own seed,
so a resumed run makes exactly the missing pairs and makes them identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.generated import MANIFEST, manifest_records
from ..errors import InputError
from ..io import append_jsonl, read_jsonl, save_image_atomic, write_json_atomic, write_text_atomic

CONFIG = "config.json"


def _jsonable(obj: Any) -> Any:
    """The value as it reads back from JSON, so a stored config compares equal to a fresh one."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _as_uint8_rgb(image: Image.Image | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{what} must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


class GeneratedWriter:
    """Writes pairs into ``out_dir``; knows which are complete so a rerun makes only the missing ones.

    ``config`` (JSON-serialisable) is written to ``config.json``. When the folder already holds a
    config, the two must agree except for the keys in ``resume_ignore`` (by default ``num_pairs``,
    so a run can be extended): resuming with other settings would mix two datasets in one folder.
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
        self.config = _jsonable(dict(config))
        self.base_seed = int(self.config.get("seed", 0) if base_seed is None else base_seed)
        self._check_config(set(resume_ignore))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._repair_manifest()
        write_json_atomic(self.out_dir / CONFIG, self.config)
        self._records = manifest_records(self.out_dir)
        self.written = 0

    # -- naming, seeding, completeness -------------------------------------------------------------
    @staticmethod
    def name(index: int) -> str:
        return f"{index:05d}"

    def seed(self, index: int) -> int:
        return self.base_seed + index

    def path(self, kind: str, index: int) -> Path:
        """Path of ``kind`` (``image``, ``mask`` or ``part``) for pair ``index``."""
        return self.out_dir / kind / f"{self.name(index)}.png"

    def record(self, index: int) -> dict[str, Any] | None:
        return self._records.get(self.name(index))

    def is_complete(self, index: int) -> bool:
        rec = self.record(index)
        if rec is None:
            return False
        kinds = ["image", "mask"] + (["part"] if rec.get("has_part") else [])
        return all(self.path(kind, index).is_file() for kind in kinds)

    def pending(self, num_pairs: int) -> list[int]:
        """Indices in ``range(num_pairs)`` still to be made."""
        return [i for i in range(num_pairs) if not self.is_complete(i)]

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
        for a pair that is written but rejected.
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
            save_image_atomic(self.path("part", index), part)
        save_image_atomic(self.path("image", index), image)
        save_image_atomic(self.path("mask", index), mask.astype(np.uint8) * 255)
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
        append_jsonl(self.out_dir / MANIFEST, record)
        self._records[record["name"]] = record
        self.written += 1
        return record

    def summary(self, num_pairs: int) -> dict[str, Any]:
        """Counts over ``range(num_pairs)``: complete, kept, rejected, written by this run, still missing."""
        recs = [self.record(i) for i in range(num_pairs) if self.is_complete(i)]
        kept = sum(1 for r in recs if r.get("kept", True))
        return {
            "out_dir": str(self.out_dir),
            "num_pairs": num_pairs,
            "complete": len(recs),
            "kept": kept,
            "rejected": len(recs) - kept,
            "written": self.written,
            "missing": num_pairs - len(recs),
        }

    # -- internals ---------------------------------------------------------------------------------
    def _check_config(self, ignore: set[str]) -> None:
        path = self.out_dir / CONFIG
        if not path.is_file():
            return
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e}); remove it or use a new output folder") from e
        keys = (set(old) | set(self.config)) - ignore
        differ = sorted(k for k in keys if old.get(k) != self.config.get(k))
        if differ:
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {self.config.get(k)!r}" for k in differ[:5])
            raise InputError(
                f"{path}: this folder was made with other settings ({detail}); "
                "resume with the same settings or choose a new output folder"
            )

    def _repair_manifest(self) -> None:
        """Drop a torn last line left by a crash, so the next append starts on a line of its own."""
        path = self.out_dir / MANIFEST
        if not path.is_file():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in read_jsonl(path))
            write_text_atomic(path, text)
