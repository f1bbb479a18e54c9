"""Generated folders + normal images -> a dataset tree that anomalib's ``Folder`` datamodule reads.

::

    OUT/train/good/<name>                     normal images to train a detector on
    OUT/test/good/<name>                      normal images to test it on
    OUT/test/<type>/<NNNNN>.png               the kept generated images, one folder per anomaly type
    OUT/ground_truth/<type>/<NNNNN>_mask.png  their masks, 0/255
    OUT/export.json                           the settings, the Folder(...) call, where every file came from

This is also MVTec AD's layout of one category, so ``dualanodiff evaluate --data <parent of OUT>
--category <name of OUT>`` reads it too. anomalib (2.x, ``data/datasets/image/folder.py``) pairs masks
with abnormal images by position in the sorted list of paths and checks that each image's stem is part of
its mask's: the abnormal images of a type are therefore numbered with one width, so that ``NNNNN.png`` and
``NNNNN_mask.png`` sort alike. Rejected pairs are never exported.

Normal images come from ``--normal`` and, when given, ``--normal-test``; without it ``--normal`` is split:
a permutation seeded by ``--seed`` sends ``round(test_fraction * n)`` of them (at least one, never all) to
``test/good`` and the rest to ``train/good``. The split is made here, in files, rather than left to
Folder's own ``normal_split_ratio``, so that every tool that reads the tree sees the same split.
Image files are hard links to the sources where the file system allows, else copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.folder import folder_normals
from ..data.images import load_mask
from ..data.mvtec import GOOD
from ..errors import InputError
from ..io import save_image_atomic
from .common import check_out, check_sources_apart, check_type_name, link_or_copy, writing

FORMAT = "anomalib Folder (MVTec AD category layout)"
_TREE = ("train", "test", "ground_truth")  # what an export writes besides its record


@dataclass(frozen=True)
class NormalSplit:
    train: list[Path]
    test: list[Path]


def split_normals(
    normal: str | os.PathLike,
    normal_test: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> NormalSplit:
    """The normal images for training and for testing (see the module's docstring for the rule)."""
    train = [s.image for s in folder_normals(normal)]
    if not train:
        raise InputError(f"--normal {normal}: no images there")
    if normal_test is not None:
        test = [s.image for s in folder_normals(normal_test)]
        if not test:
            raise InputError(f"--normal-test {normal_test}: no images there")
        return NormalSplit(train=train, test=test)
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if len(train) < 2:
        raise InputError(
            f"--normal {normal}: one image cannot be split into train and test; give --normal-test"
        )
    n_test = min(max(round(test_fraction * len(train)), 1), len(train) - 1)
    order = np.random.default_rng(seed).permutation(len(train))
    chosen = set(order[:n_test].tolist())
    return NormalSplit(
        train=[p for i, p in enumerate(train) if i not in chosen],
        test=[p for i, p in enumerate(train) if i in chosen],
    )


def folder_arguments(out: str | os.PathLike, types: list[str]) -> dict[str, Any]:
    """The arguments of anomalib's ``Folder`` datamodule that load an exported tree."""
    out = Path(out).resolve()
    return {
        "name": out.name,
        "root": str(out),
        "normal_dir": f"train/{GOOD}",
        "normal_test_dir": f"test/{GOOD}",
        "abnormal_dir": [f"test/{t}" for t in types],
        "mask_dir": [f"ground_truth/{t}" for t in types],
    }


def folder_call(arguments: dict[str, Any]) -> str:
    """``arguments`` as the Python that builds the datamodule, to copy into a script."""
    order = ["name", "root", "normal_dir", "normal_test_dir", "abnormal_dir", "mask_dir"]
    keys = [k for k in order if k in arguments] + sorted(set(arguments) - set(order))
    lines = "".join(f"    {key}={arguments[key]!r},\n" for key in keys)
    return f"from anomalib.data import Folder\n\ndatamodule = Folder(\n{lines})"


def export_anomalib(
    generated: list[str | os.PathLike],
    normal: str | os.PathLike,
    out: str | os.PathLike,
    normal_test: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    anomaly_types: list[str] | None = None,
) -> dict[str, Any]:
    """Write the tree described in the module's docstring; return its summary with the ``Folder(...)`` call.

    Everything is read and checked before anything is written; ``out`` is held by the one-writer lock
    while it is written (``common.writing``).
    """
    from ..evaluate.protocol import load_generated_sets

    if not generated:
        raise InputError("--generated: give at least one generated folder")
    out = Path(out)
    sets = load_generated_sets(generated, anomaly_types)
    for kind, pairs in sets.items():
        check_type_name(kind, Path(pairs[0].image).parent.parent)
    normals = split_normals(normal, normal_test, test_fraction, seed)
    check_out(out, FORMAT)
    check_sources_apart(out, [*generated, normal, *([] if normal_test is None else [normal_test])])
    types = sorted(sets)
    width = max(5, len(str(max(len(p) for p in sets.values()) - 1)))
    record: dict[str, Any] = {
        "format": FORMAT,
        "generated": [str(Path(g).resolve()) for g in generated],
        "normal": str(Path(normal).resolve()),
        "normal_test": None if normal_test is None else str(Path(normal_test).resolve()),
        "test_fraction": None if normal_test is not None else test_fraction,
        "seed": seed,
        "anomaly_types": types,
        "counts": {
            "train_good": len(normals.train),
            "test_good": len(normals.test),
            **{f"test_{t}": len(sets[t]) for t in types},
        },
        "folder_arguments": folder_arguments(out, types),
    }
    record["folder_call"] = folder_call(record["folder_arguments"])
    sources: dict[str, dict[str, Any]] = {}
    with writing(out, "export anomalib", record, _TREE):
        for split, images in (("train", normals.train), ("test", normals.test)):
            for image in images:
                rel = f"{split}/{GOOD}/{image.name}"
                link_or_copy(image, out / rel)
                sources[rel] = {"image": str(image.resolve())}
        for kind in types:
            for i, pair in enumerate(sets[kind]):
                stem = f"{i:0{width}d}"
                rel = f"test/{kind}/{stem}{pair.image.suffix.lower()}"
                link_or_copy(pair.image, out / rel)
                mask = load_mask(pair.mask)
                save_image_atomic(
                    out / "ground_truth" / kind / f"{stem}_mask.png", mask.astype(np.uint8) * 255
                )
                sources[rel] = {
                    "image": str(pair.image.resolve()),
                    "mask": str(pair.mask.resolve()),
                    "seed": pair.record.get("seed"),
                }
        record["files"] = sources
    return {k: v for k, v in record.items() if k != "files"}
