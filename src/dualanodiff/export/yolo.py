"""Generated pairs (+ real defects, + normal images) -> an Ultralytics YOLO segmentation dataset.

::

    OUT/images/{train,val}/<NNNNN>-<type>.png    the images (hard links where possible, else copies)
    OUT/labels/{train,val}/<NNNNN>-<type>.txt    one line per defect: class x1 y1 x2 y2 ... (normalised)
    OUT/data.yaml                                path, train, val, names: what ``yolo segment train`` reads
    OUT/export.json                              settings, the polygons' loss, the source of every image

Normal images get an empty label file (a background image). A line is the outer contour of one connected
component of the mask (``instances``); a hole inside a defect is filled, since a YOLO polygon has no
holes. The loss is measured while exporting: the IoU of each mask against its polygons filled back as
Ultralytics fills them, summarised in ``export.json`` under ``polygon_iou``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_text_atomic
from .common import check_out, check_sources_apart, link_or_copy, writing
from .instances import components, normalised, polygon, polygon_iou, require_opencv
from .sources import (
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

DATA_YAML = "data.yaml"
FORMAT = "Ultralytics YOLO segmentation"
_TREE = ("images", "labels", DATA_YAML)


def label_lines(mask: np.ndarray, class_id: int) -> tuple[list[str], float]:
    """The label file's lines for one mask, and the IoU of their polygons filled back against the mask."""
    height, width = mask.shape
    polygons = [normalised(polygon(c), width, height) for c in components(mask)]
    lines = [f"{class_id} " + " ".join(f"{v:.6f}" for v in p.ravel()) for p in polygons]
    # The IoU is measured on the polygons as written (6 decimals), as a reader gets them.
    written = [np.array(line.split()[1:], np.float64).reshape(-1, 2) for line in lines]
    return lines, polygon_iou(mask, written)


def train_command(out: Path, image_size: int) -> str:
    """The Ultralytics call that trains a segmentation model on the export, from a model yaml (no download)."""
    return (
        f"yolo segment train data={out / DATA_YAML} model=yolo11n-seg.yaml imgsz={image_size} "
        "pretrained=False"
    )


def data_yaml(out: Path, names: Sequence[str], portable: bool = False) -> str:
    """``path`` (absolute), ``train``, ``val``, ``names``; with ``portable`` no ``path``, which Ultralytics
    then takes to be data.yaml's own folder (``check_det_dataset``), so a moved or unzipped copy still
    loads (a relative ``path`` would be read under Ultralytics' datasets folder instead)."""
    import yaml

    body = {"path": str(out.resolve()), "train": "images/train", "val": "images/val"}
    if portable:
        del body["path"]
    return yaml.safe_dump({**body, "names": dict(enumerate(names))}, sort_keys=False)


def _summary(ious: list[float]) -> dict[str, Any]:
    values = np.array(ious, np.float64)
    return {
        "masks": len(ious),
        "mean": round(float(values.mean()), 6),
        "min": round(float(values.min()), 6),
        "exact": int((values == 1.0).sum()),
    }


def write_yolo(
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
    require_opencv()
    names = sorted({i.category for i in items if i.category is not None})
    classes = {name: k for k, name in enumerate(names)}
    files = file_names(items)
    side = max(max(s) for s in sizes)
    record: dict[str, Any] = {
        "format": FORMAT,
        **(settings or {}),
        "val_fraction": val_fraction,
        "seed": seed,
        "names": names,
        "counts": split_counts(items, splits, names),
        # portable: the call as run beside the unzipped or copied folder
        "train_command": train_command(Path(out.name) if portable else out.resolve(), -(-side // 32) * 32),
    }
    sources: dict[str, dict[str, Any]] = {}
    ious: list[float] = []
    with writing(out, "export yolo", record, _TREE):
        for item, split, name in zip(items, splits, files):
            rel = f"images/{split}/{name}"
            link_or_copy(item.image, out / rel)
            lines: list[str] = []
            if item.category is not None:
                lines, iou = label_lines(load_defect_mask(item), classes[item.category])
                ious.append(iou)
            write_text_atomic(
                out / "labels" / split / f"{Path(name).stem}.txt", "".join(f"{x}\n" for x in lines)
            )
            sources[rel] = {**item.source(), "instances": len(lines)}
        write_text_atomic(out / DATA_YAML, data_yaml(out, names, portable))
        record["polygon_iou"] = _summary(ious)
        record["files"] = sources
    return {k: v for k, v in record.items() if k != "files"}


def export_yolo(
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
    """``dualanodiff export yolo``: collect the sources (:func:`collect_items`) and :func:`write_yolo` them."""
    items = collect_items(generated, anomaly_types, real, val_real, normal)
    folders = input_folders(generated, real, val_real, normal)
    settings = source_settings(generated, real, val_real, normal)
    return write_yolo(items, out, val_fraction, seed, folders, settings, portable)
