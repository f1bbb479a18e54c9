"""The images a COCO or YOLO export is made of, where each comes from, and its train/val split.

Three kinds of source: the kept pairs of generated folders, real defect images with masks (this project's
plain folder layout, ``DIR/images`` + ``DIR/masks``), and normal images, which become images without
labels (the detector learns the background from them). Every defect mask is read and checked before
anything is written: a mask of another size than its image and an empty mask (a defect image without a
defect would teach the detector that the defect is background) are refused, naming the file.

The split: sources given for validation only (``--val-real``) go to val; the others are split per
(kind, anomaly type) by a permutation seeded by ``--seed``, ``round(val_fraction * n)`` of each group to
val, so that every type is in both halves when it has two or more images.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.folder import folder_normals, load_folder
from ..data.images import image_size, load_mask_for
from ..errors import InputError
from .common import check_type_name

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Item:
    """One image of an export: ``mask`` None and ``category`` None for a normal image."""

    image: Path
    mask: Path | None
    category: str | None
    origin: str  # "generated", "real" or "normal"
    split: str | None = None  # "val" or "train" when the source decides; else the seeded split does
    record: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def source(self) -> dict[str, Any]:
        """Where the image came from, for ``export.json``."""
        out: dict[str, Any] = {"origin": self.origin, "image": str(self.image.resolve())}
        if self.mask is not None:
            out.update(mask=str(self.mask.resolve()), category=self.category)
        return {**out, **self.record}


def collect_items(
    generated: Sequence[str | os.PathLike] = (),
    anomaly_types: Sequence[str] | None = None,
    real: Sequence[str | os.PathLike] = (),
    val_real: Sequence[str | os.PathLike] = (),
    normal: str | os.PathLike | None = None,
) -> list[Item]:
    """The images of the given sources in a fixed order (generated, real, val-real, normal)."""
    from ..evaluate.protocol import load_generated_sets

    if not generated and not real and not val_real:
        raise InputError("give --generated or --real: there are no defect images to export")
    items: list[Item] = []
    if generated:
        for kind, pairs in load_generated_sets(generated, anomaly_types).items():
            check_type_name(kind, pairs[0].image.parent.parent)
            items += [
                Item(p.image, p.mask, kind, "generated", record={"seed": p.record.get("seed")}) for p in pairs
            ]
    elif anomaly_types is not None:
        raise InputError("--anomaly-types names the --generated folders' types; give --generated too")
    for folders, split in ((real, None), (val_real, "val")):
        for folder in folders:
            samples = load_folder(folder).samples
            if not samples:
                raise InputError(f"{folder}: no defect images in {Path(folder) / 'images'}")
            check_type_name(samples[0].anomaly_type, Path(folder))
            items += [Item(s.image, s.mask, s.anomaly_type, "real", split) for s in samples]
    if normal is not None:
        normals = folder_normals(normal)
        if not normals:
            raise InputError(f"--normal {normal}: no images there")
        items += [Item(s.image, None, None, "normal") for s in normals]
    return items


def input_folders(
    generated: Iterable[str | os.PathLike] = (),
    real: Iterable[str | os.PathLike] = (),
    val_real: Iterable[str | os.PathLike] = (),
    normal: str | os.PathLike | None = None,
) -> list[str | os.PathLike]:
    return [*generated, *real, *val_real, *([] if normal is None else [normal])]


def load_defect_mask(item: Item) -> np.ndarray:
    """The item's mask as bool (H, W); InputError naming the file when its size differs or it is empty."""
    assert item.mask is not None
    mask = load_mask_for(item.mask, item.image)
    if not mask.any():
        raise InputError(
            f"{item.mask}: empty mask for the defect image {item.image}; a defect image needs its defect "
            "marked (drop the pair, or pass defect-free images as --normal)"
        )
    return mask


def check_items(items: Sequence[Item]) -> list[tuple[int, int]]:
    """Read every mask (and every image's header) before anything is written; the (width, height) of each."""
    sizes = []
    for item in items:
        if item.mask is not None:
            h, w = load_defect_mask(item).shape
            sizes.append((w, h))
        else:
            sizes.append(image_size(item.image))
    return sizes


def split_items(items: Sequence[Item], val_fraction: float, seed: int) -> list[str]:
    """The split of each item (see the module's docstring); refuses a split that leaves a half empty."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction must be at least 0 and below 1, got {val_fraction}")
    splits = [item.split or "train" for item in items]
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, item in enumerate(items):
        if item.split is None:
            groups.setdefault((item.origin, item.category), []).append(i)
    rng = np.random.default_rng(seed)
    for key in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        members = groups[key]
        n_val = min(round(val_fraction * len(members)), len(members) - 1)
        for j in rng.permutation(len(members))[:n_val]:
            splits[members[j]] = "val"
    for half in SPLITS:
        if half not in splits:
            raise InputError(
                f"--val-fraction {val_fraction}: no image goes to {half}; "
                + ("raise it, or give --val-real" if half == "val" else "lower it, or give more images")
            )
    return splits


def file_names(items: Sequence[Item]) -> list[str]:
    """Unique names for the exported images: a running number and the type (``normal`` for normals)."""
    width = max(5, len(str(len(items) - 1)))
    return [
        f"{i:0{width}d}-{item.category or 'normal'}{item.image.suffix.lower()}"
        for i, item in enumerate(items)
    ]


def source_settings(
    generated: Sequence[str | os.PathLike] = (),
    real: Sequence[str | os.PathLike] = (),
    val_real: Sequence[str | os.PathLike] = (),
    normal: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The source folders as an export's record states them (absolute paths)."""
    return {
        "generated": [str(Path(g).resolve()) for g in generated],
        "real": [str(Path(r).resolve()) for r in real],
        "val_real": [str(Path(r).resolve()) for r in val_real],
        "normal": None if normal is None else str(Path(normal).resolve()),
    }


def split_counts(items: Sequence[Item], splits: Sequence[str], names: Sequence[str]) -> dict[str, int]:
    """``{"train_<type>": n, ..., "val_normal": n}``: the images of each type in each half."""
    kinds = [item.category or "normal" for item in items]
    return {
        f"{half}_{what}": sum(s == half and k == what for k, s in zip(kinds, splits))
        for half in SPLITS
        for what in [*names, "normal"]
    }
