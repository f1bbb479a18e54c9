"""A plain folder layout for a user's own defect images.

::

    DIR/images/*        defect images of one anomaly type
    DIR/masks/*         their masks, matched by file stem: <stem>.png or <stem>_mask.png
    DIR/good/*          optional defect-free images (backgrounds for BCM, normals for detectors)
    DIR/foreground/*    optional object foreground masks, matched by stem like the masks (images and good alike)

No split is made here: every image in ``images/`` is a training image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError, listed
from .images import IMAGE_EXTENSIONS, is_image_file
from .mvtec import GOOD, DefectSample


@dataclass(frozen=True)
class FolderDataset:
    samples: list[DefectSample]
    normals: list[DefectSample]


def _images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def _by_stem(folder: Path | None) -> dict[str, Path]:
    if folder is None or not folder.is_dir():
        return {}
    out: dict[str, Path] = {}
    for p in _images(folder):
        # A PNG wins over another format with the same stem; otherwise the first by name.
        if p.stem not in out or p.suffix.lower() == ".png":
            out[p.stem] = p
    return out


def _find_mask(stem: str, masks: dict[str, Path]) -> Path | None:
    return masks.get(f"{stem}_mask") or masks.get(stem)


def folder_samples(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    foreground_dir: str | os.PathLike | None = None,
    anomaly_type: str | None = None,
) -> list[DefectSample]:
    """Defect images with their masks (matched by stem), sorted by name.

    ``anomaly_type`` defaults to the name of the folder holding ``images_dir``. Raises
    :class:`InputError` listing every image without a mask.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: image folder does not exist")
    if not masks_dir.is_dir():
        raise InputError(f"{masks_dir}: mask folder does not exist")
    images = _images(images_dir)
    if not images:
        raise InputError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    kind = anomaly_type or images_dir.resolve().parent.name
    masks = _by_stem(masks_dir)
    fgs = _by_stem(Path(foreground_dir) if foreground_dir is not None else None)
    samples, missing = [], []
    for img in images:
        mask = _find_mask(img.stem, masks)
        if mask is None:
            missing.append(
                f"{img}: mask not found, expected {masks_dir / (img.stem + '.png')} or "
                f"{masks_dir / (img.stem + '_mask.png')}"
            )
            continue
        samples.append(DefectSample(img, mask, kind, _find_mask(img.stem, fgs)))
    if missing:
        raise InputError(f"{len(missing)} image(s) without a mask: {listed(missing)}")
    return samples


def match_foregrounds(samples: list[DefectSample], foreground_dir: str | os.PathLike) -> list[DefectSample]:
    """``samples`` with their foreground masks taken from ``foreground_dir`` by stem (None where absent)."""
    fgs = _by_stem(Path(foreground_dir))
    return [replace(s, foreground=_find_mask(s.image.stem, fgs)) for s in samples]


def folder_normals(
    good_dir: str | os.PathLike, foreground_dir: str | os.PathLike | None = None
) -> list[DefectSample]:
    """Defect-free images of a folder (mask ``None``), with foreground masks matched by stem
    (``<stem>.png`` or ``<stem>_mask.png``)."""
    good_dir = Path(good_dir)
    if not good_dir.is_dir():
        raise InputError(f"{good_dir}: folder of normal images does not exist")
    fgs = _by_stem(Path(foreground_dir) if foreground_dir is not None else None)
    return [DefectSample(p, None, GOOD, _find_mask(p.stem, fgs)) for p in _images(good_dir)]


def load_folder(root: str | os.PathLike, anomaly_type: str | None = None) -> FolderDataset:
    """Read ``root/images``, ``root/masks`` and the optional ``root/good`` and ``root/foreground``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: folder does not exist")
    fg = root / "foreground" if (root / "foreground").is_dir() else None
    samples = folder_samples(root / "images", root / "masks", fg, anomaly_type or root.resolve().name)
    normals = folder_normals(root / "good", fg) if (root / "good").is_dir() else []
    return FolderDataset(samples=samples, normals=normals)
