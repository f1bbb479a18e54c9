"""Generated pairs (+ real defects, + normal images) -> a COCO instance-segmentation dataset.

::

    OUT/images/<NNNNN>-<type>.png               every image, train and val (hard links where possible)
    OUT/annotations/instances_train.json        COCO: images, annotations, categories
    OUT/annotations/instances_val.json
    OUT/export.json                             settings and the source of every image

One category per anomaly type (ids from 1, by name), one annotation per connected component of a mask
(``instances``), its ``segmentation`` as compressed RLE: exact, holes included, where a polygon would fill
holes and, rasterised by pycocotools, lose a band of edge pixels. ``area`` and ``bbox`` come from the RLE
itself (pycocotools ``area``/``toBbox``). Normal images are images without annotations. Image and
annotation ids are unique across both files. torchvision (``wrap_dataset_for_transforms_v2``), Detectron2
and MMDetection read RLE segmentations as they read polygons.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import write_json_atomic
from .common import check_out, check_sources_apart, link_or_copy, writing
from .instances import coco_annotation, components
from .sources import (
    SPLITS,
    Item,
    check_items,
    collect_items,
    file_names,
    input_folders,
    load_defect_mask,
    source_settings,
    split_counts,
    split_items,
)

FORMAT = "COCO instance segmentation (RLE)"
_TREE = ("images", "annotations")


def require_pycocotools() -> None:
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError as e:
        raise InputError(
            "export coco: RLE masks are encoded with pycocotools, which is not installed; "
            "pip install 'dualanodiff[coco]'"
        ) from e


def annotation_file(out: Path, split: str) -> Path:
    return out / "annotations" / f"instances_{split}.json"


def train_snippet(out: Path) -> str:
    """Python that loads the export as torchvision's Mask R-CNN training targets (boxes, labels, masks)."""
    lines = [
        "from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2",
        "",
        "# (image, {'boxes', 'labels', 'masks'}) per image, as torchvision's maskrcnn_resnet50_fpn trains on",
        "# (num_classes = number of categories + 1 for the background, label 0)",
    ]
    for split in SPLITS:
        lines += [
            f"{split} = wrap_dataset_for_transforms_v2(",
            f"    CocoDetection({str(out / 'images')!r}, {str(annotation_file(out, split))!r}),",
            "    target_keys=('boxes', 'labels', 'masks'),",
            ")",
        ]
    return "\n".join(lines)


def write_coco(
    items: Sequence[Item],
    out: str | os.PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    inputs: Sequence[str | os.PathLike] = (),
    settings: dict[str, Any] | None = None,
    portable: bool = False,
) -> dict[str, Any]:
    """Write ``items`` as the layout in the module's docstring; return the record without its file list.

    Every mask is read and checked, ``out`` is checked to be new, empty or an earlier export and apart from
    ``inputs``, and the split is made before anything is written; ``out`` is held by the one-writer lock.
    """
    out = Path(out)
    sizes = check_items(items)
    splits = split_items(items, val_fraction, seed)
    check_out(out, FORMAT)
    check_sources_apart(out, inputs)
    require_pycocotools()
    names = sorted({i.category for i in items if i.category is not None})
    categories = [{"id": k + 1, "name": name, "supercategory": "defect"} for k, name in enumerate(names)]
    category_id = {c["name"]: c["id"] for c in categories}
    files = file_names(items)
    record: dict[str, Any] = {
        "format": FORMAT,
        **(settings or {}),
        "val_fraction": val_fraction,
        "seed": seed,
        "categories": categories,
        "counts": split_counts(items, splits, names),
        # portable: the code as run beside the unzipped or copied folder
        "train_snippet": train_snippet(Path(out.name) if portable else out.resolve()),
    }
    datasets = {
        split: {
            "info": {"description": f"dualanodiff export coco ({split})", "version": "1.0"},
            "images": [],
            "annotations": [],
            "categories": categories,
        }
        for split in SPLITS
    }
    sources: dict[str, dict[str, Any]] = {}
    with writing(out, "export coco", record, _TREE):
        for image_id, (item, split, name, (width, height)) in enumerate(zip(items, splits, files, sizes), 1):
            link_or_copy(item.image, out / "images" / name)
            data = datasets[split]
            data["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
            parts = components(load_defect_mask(item)) if item.category is not None else []
            for part in parts:
                annotation = {"id": 0, "image_id": image_id, "category_id": category_id[item.category]}
                data["annotations"].append({**annotation, **coco_annotation(part)})
            sources[f"images/{name}"] = {**item.source(), "split": split, "instances": len(parts)}
        next_id = 1
        for split in SPLITS:
            for annotation in datasets[split]["annotations"]:
                annotation["id"], next_id = next_id, next_id + 1
            write_json_atomic(annotation_file(out, split), datasets[split])
        record["counts"]["annotations"] = next_id - 1
        record["files"] = sources
    return {k: v for k, v in record.items() if k != "files"}


def export_coco(
    out: str | os.PathLike,
    generated: Sequence[str | os.PathLike] = (),
    anomaly_types: Sequence[str] | None = None,
    real: Sequence[str | os.PathLike] = (),
    val_real: Sequence[str | os.PathLike] = (),
    normal: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    portable: bool = False,
) -> dict[str, Any]:
    """``dualanodiff export coco``: collect the sources (``sources.collect_items``) and :func:`write_coco`."""
    items = collect_items(generated, anomaly_types, real, val_real, normal)
    settings = source_settings(generated, real, val_real, normal)
    folders = input_folders(generated, real, val_real, normal)
    return write_coco(items, out, val_fraction, seed, folders, settings, portable)
