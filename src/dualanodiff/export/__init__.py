"""Generated data as datasets other tools read: anomalib's Folder tree, COCO instance segmentation,
Ultralytics YOLO segmentation. Each export is its own module; they share the checks on ``--out``, the
one-writer lock and the record ``export.json`` (``common``), and COCO and YOLO share their sources and
split (``sources``) and the masks' instances (``instances``)."""

from .anomalib import NormalSplit, export_anomalib, folder_arguments, folder_call, split_normals
from .coco import export_coco, write_coco
from .common import EXPORT_RECORD
from .sources import Item, collect_items
from .yolo import export_yolo, write_yolo

__all__ = [
    "EXPORT_RECORD",
    "Item",
    "NormalSplit",
    "collect_items",
    "export_anomalib",
    "export_coco",
    "export_yolo",
    "folder_arguments",
    "folder_call",
    "split_normals",
    "write_coco",
    "write_yolo",
]
