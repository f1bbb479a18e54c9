"""The MVTec AD folder layout and the few-shot split of the evaluation protocol.

Layout: ``ROOT/<category>/train/good/*``, ``ROOT/<category>/test/<type>/*`` (``good`` = normal),
``ROOT/<category>/ground_truth/<type>/<stem>_mask.png`` and, optionally, object foreground masks
under ``ROOT/<category>/foreground/<same relative path as the image>``.

The split (METHOD.md section 8): per anomaly type, test images sorted by name, the first
floor(n/3) train the generator, the rest plus all ``test/good`` form the test set.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import InputError, listed
from .images import is_image_file

SplitMode = Literal["strict", "paper-compat"]
SPLIT_MODES: tuple[str, ...] = ("strict", "paper-compat")
GOOD = "good"


@dataclass(frozen=True)
class DefectSample:
    """One image with its defect mask (``None`` for normal images) and optional object foreground mask."""

    image: Path
    mask: Path | None
    anomaly_type: str
    foreground: Path | None = None


@dataclass(frozen=True)
class FewShotSplit:
    train: list[DefectSample] = field(default_factory=list)
    test: list[DefectSample] = field(default_factory=list)


def _sorted_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def _category_dir(root: str | os.PathLike, category: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset root does not exist or is not a folder")
    cat = root / category
    if not (cat / "test").is_dir() and not (cat / "train").is_dir():
        existing = list_categories(root)
        raise InputError(
            f"{cat}: category {category!r} not found in {root}; categories there: "
            + (", ".join(existing) if existing else "none (no <category>/train or <category>/test folders)")
        )
    return cat


def _foreground(cat: Path, image: Path) -> Path | None:
    """The foreground mask at ``foreground/<relative path of image>``, if present (any image suffix, and
    ``<stem>_mask.*`` as the ground-truth masks are named)."""
    rel = image.relative_to(cat)
    exact = cat / "foreground" / rel
    if exact.is_file():
        return exact
    folder = exact.parent
    if folder.is_dir():
        for pattern in (f"{image.stem}.*", f"{image.stem}_mask.*"):
            for p in sorted(folder.glob(pattern)):
                if is_image_file(p):
                    return p
    return None


def list_categories(root: str | os.PathLike) -> list[str]:
    """Category folders of ``root`` (those with a ``train`` or ``test`` subfolder), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset root does not exist or is not a folder")
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and ((p / "test").is_dir() or (p / "train").is_dir())
    )


def list_anomaly_types(root: str | os.PathLike, category: str) -> list[str]:
    """Defect types of a category: the ``test`` subfolders other than ``good``, sorted."""
    test = _category_dir(root, category) / "test"
    if not test.is_dir():
        return []
    return sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != GOOD)


def anomaly_samples(root: str | os.PathLike, category: str, anomaly_type: str) -> list[DefectSample]:
    """All test images of one defect type, sorted by file name, each with its ground-truth mask.

    Raises :class:`InputError` listing every image whose ``ground_truth/<type>/<stem>_mask.png``
    is missing, and when the type folder does not exist or holds no images.
    """
    cat = _category_dir(root, category)
    folder = cat / "test" / anomaly_type
    if anomaly_type == GOOD:
        raise InputError(f"{folder}: 'good' is the normal class, not an anomaly type")
    if not folder.is_dir():
        types = list_anomaly_types(root, category)
        raise InputError(
            f"{folder}: anomaly type {anomaly_type!r} not found in category {category!r}; "
            f"types there: {', '.join(types) if types else 'none'}"
        )
    images = _sorted_images(folder)
    if not images:
        raise InputError(f"{folder}: no images in anomaly type folder")
    samples, missing = [], []
    for img in images:
        mask = cat / "ground_truth" / anomaly_type / f"{img.stem}_mask.png"
        if not mask.is_file():
            missing.append(f"{img}: mask not found, expected {mask}")
            continue
        samples.append(DefectSample(img, mask, anomaly_type, _foreground(cat, img)))
    if missing:
        raise InputError(f"{len(missing)} defect image(s) without a mask: {listed(missing)}")
    return samples


def _normal_samples(root: str | os.PathLike, category: str, split: str) -> list[DefectSample]:
    cat = _category_dir(root, category)
    return [DefectSample(p, None, GOOD, _foreground(cat, p)) for p in _sorted_images(cat / split / GOOD)]


def normal_train_samples(root: str | os.PathLike, category: str) -> list[DefectSample]:
    """Defect-free ``train/good`` images (mask ``None``), sorted by name."""
    return _normal_samples(root, category, "train")


def normal_test_samples(root: str | os.PathLike, category: str) -> list[DefectSample]:
    """Defect-free ``test/good`` images (mask ``None``), sorted by name."""
    return _normal_samples(root, category, "test")


def few_shot_count(n: int, mode: SplitMode = "strict") -> int:
    """Number of training images out of ``n``: floor(n/3), plus one in ``paper-compat`` mode when
    floor(n/3) is not a multiple of 3 (the authors' rule; that extra image stays in the test set)."""
    if mode not in SPLIT_MODES:
        raise InputError(f"split mode {mode!r} is not one of {', '.join(SPLIT_MODES)}")
    k = n // 3
    if mode == "paper-compat" and k % 3 != 0:
        k += 1
    return min(k, n)


def few_shot_split(samples: list[DefectSample], mode: SplitMode = "strict") -> FewShotSplit:
    """Split one anomaly type's samples (sort order kept) into few-shot train and test.

    ``strict``: first floor(n/3) train, the rest test, disjoint. ``paper-compat`` reproduces the
    official code: one more training image when floor(n/3) is not a multiple of 3, and that image is
    *also* in the test set, so train and test overlap (a :class:`UserWarning` says so).
    """
    samples = list(samples)
    n = len(samples)
    k_strict = n // 3
    k = few_shot_count(n, mode)
    train = samples[:k]
    test = samples[k_strict:]
    if k > k_strict:
        overlap = ", ".join(s.image.name for s in samples[k_strict:k])
        kind = samples[0].anomaly_type if samples else "?"
        warnings.warn(
            f"paper-compat split of {kind!r}: train and test sets overlap ({overlap} is in both), "
            "as in the official code; use mode='strict' for a leak-free evaluation",
            UserWarning,
            stacklevel=2,
        )
    return FewShotSplit(train=train, test=test)


def few_shot_train(
    root: str | os.PathLike, category: str, anomaly_type: str, mode: SplitMode = "strict"
) -> list[DefectSample]:
    """The few-shot training images of one anomaly type."""
    return few_shot_split(anomaly_samples(root, category, anomaly_type), mode).train


def category_test_set(
    root: str | os.PathLike, category: str, mode: SplitMode = "strict"
) -> list[DefectSample]:
    """Test set of a category: the held-out part of every anomaly type, then all ``test/good``."""
    out: list[DefectSample] = []
    leaked: list[str] = []
    for kind in list_anomaly_types(root, category):
        samples = anomaly_samples(root, category, kind)
        with warnings.catch_warnings():
            # One overlap warning per category instead of one per type; raised below.
            warnings.simplefilter("ignore", UserWarning)
            out.extend(few_shot_split(samples, mode).test)
        if few_shot_count(len(samples), mode) > len(samples) // 3:
            leaked.append(kind)
    if leaked:
        warnings.warn(
            f"paper-compat test set of {category!r}: train and test sets overlap for {', '.join(leaked)} "
            "(one few-shot training image per type is also a test image, as in the official code)",
            UserWarning,
            stacklevel=2,
        )
    out.extend(normal_test_samples(root, category))
    return out
