"""Generated data as datasets other tools read: anomalib's Folder tree, COCO instance segmentation,
Ultralytics YOLO segmentation. Each export is its own module; they share the checks on ``--out``, the
one-writer lock and the record ``export.json`` (``common``), and COCO and YOLO share their sources and
split (``sources``) and the masks' instances (``instances``)."""

import os
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from .anomalib import NormalSplit, export_anomalib, folder_arguments, folder_call, split_normals
from .coco import export_coco, write_coco
from .common import EXPORT_RECORD
from .sources import Item, collect_items
from .yolo import export_yolo, write_yolo


def export_for_training(
    fmt: str,
    out: str | os.PathLike,
    generated: Sequence[str | os.PathLike],
    normal: str | os.PathLike | None = None,
    portable: bool = False,
) -> tuple[dict[str, Any], str]:
    """A COCO or YOLO export of generated folders (+ normal images): (its summary, the code that trains on it,
    as the CLI prints it). ``portable``: for a zip, paths relative to the folder holding the export."""
    if fmt == "coco":
        summary = export_coco(out, generated, normal=normal, portable=portable)
        return summary, summary["train_snippet"]
    if fmt == "yolo":
        summary = export_yolo(out, generated, normal=normal, portable=portable)
        return summary, summary["train_command"]
    raise InputError(f"export format {fmt!r}: choose coco or yolo")


__all__ = [
    "EXPORT_RECORD",
    "Item",
    "NormalSplit",
    "collect_items",
    "export_anomalib",
    "export_coco",
    "export_for_training",
    "export_yolo",
    "folder_arguments",
    "folder_call",
    "split_normals",
    "write_coco",
    "write_yolo",
]
