"""A defect mask as instance labels: its connected components, each as COCO RLE or as a YOLO polygon.

One instance per connected component (8-connected, as OpenCV traces contours), not one per mask: a
generated mask with two blobs holds two defects, and detectors count, match and score defects one at a
time (COCO's mAP matches instances). RLE (pycocotools) is exact, holes included. A polygon is the outer
contour of a component as OpenCV traces it (``findContours``, pixel centres); it fills the component back
exactly as Ultralytics rasterises it (``cv2.fillPoly`` with integer vertices) but cannot carry a hole, which
it fills: :func:`polygon_iou` measures that loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError

_EIGHT = np.ones((3, 3), bool)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a bool mask, largest first (ties: in scan order)."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    order = sorted(range(n), key=lambda i: -areas[i])
    return [labels == i + 1 for i in order]


def coco_rle(component: np.ndarray) -> dict[str, Any]:
    """``{"size": [h, w], "counts": str}``: compressed RLE as COCO's JSON stores it."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(component.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_annotation(component: np.ndarray) -> dict[str, Any]:
    """``segmentation``, ``area`` and ``bbox`` of one component, the last two from the RLE itself so that
    they agree with what ``pycocotools`` decodes."""
    from pycocotools import mask as mask_utils

    rle = coco_rle(component)
    encoded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return {
        "segmentation": rle,
        "area": float(mask_utils.area(encoded)),
        "bbox": [float(v) for v in mask_utils.toBbox(encoded)],
        "iscrowd": 0,
    }


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise InputError(
            "export yolo: polygons are traced with OpenCV, which is not installed; "
            "pip install 'dualanodiff[yolo]' (or opencv-python-headless)"
        ) from e
    return cv2


def require_opencv() -> None:
    """One line naming the missing extra instead of an ImportError halfway through an export."""
    _cv2()


def polygon(component: np.ndarray) -> np.ndarray:
    """The outer contour of one component as ``(N, 2)`` integer pixel coordinates (x, y), N >= 3.

    A single pixel or a one-pixel line traces to fewer than 3 points; their points are repeated, which
    still fills exactly those pixels, so that every component keeps a polygon (YOLO needs 3 points).
    """
    cv2 = _cv2()
    contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    points = max(contours, key=len).reshape(-1, 2)  # one contour per 8-connected component
    while len(points) < 3:
        points = np.concatenate([points, points[::-1]])[:3] if len(points) > 1 else np.repeat(points, 3, 0)
    return points


def normalised(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel centres in YOLO's [0, 1] image coordinates: ``(x + 0.5) / w``. Ultralytics multiplies back by
    the size and truncates to integers before ``fillPoly``; a centre at +0.5 truncates to its own pixel
    whatever the float rounding, where ``x / w`` could come back as ``x - 1e-6`` and lose a column."""
    return (points.astype(np.float64) + 0.5) / np.array([width, height], np.float64)


def rasterise(polygons: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """Normalised polygons filled as Ultralytics does (``ultralytics.data.utils.polygon2mask``: scale,
    truncate to int32, ``cv2.fillPoly``), restated here so the export measures its loss without it."""
    cv2 = _cv2()
    mask = np.zeros((height, width), np.uint8)
    for p in polygons:
        pixels = (p * np.array([width, height])).astype(np.int32).reshape(1, -1, 2)
        cv2.fillPoly(mask, pixels, color=1)
    return mask.astype(bool)


def polygon_iou(mask: np.ndarray, polygons: list[np.ndarray]) -> float:
    """IoU of the filled polygons against the mask they were traced from (1.0 for two empty masks)."""
    height, width = mask.shape
    filled = rasterise(polygons, width, height)
    union = np.logical_or(filled, mask).sum()
    return 1.0 if union == 0 else float(np.logical_and(filled, mask).sum() / union)
