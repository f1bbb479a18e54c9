"""Small sources for the COCO and YOLO export tests: generated folders whose masks hold what converters lose
(several blobs, a hole, a blob on the border, diagonal contact, a single pixel, a one-pixel line), a real
defect folder and normal images. Images are W x H = 32 x 24, not square, to catch a swapped axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dualanodiff.data.generated import GeneratedWriter
from dualanodiff.locking import output_lock

W, H = 32, 24


def tricky_mask(i: int) -> np.ndarray:
    """A mask per index, cycling through the shapes that converters get wrong."""
    m = np.zeros((H, W), bool)
    kind = i % 4
    if kind == 0:  # a ring (hole inside) and a blob on the right border
        m[3:12, 3:12] = True
        m[6:9, 6:9] = False
        m[15:20, 27:32] = True
    elif kind == 1:  # two squares touching at a corner (one 8-connected instance), a pixel, a line
        m[2:6, 2:6] = True
        m[6:10, 6:10] = True
        m[20, 20] = True
        m[14, 10:25] = True
    elif kind == 2:  # seeded random blobs, ragged edges, touching the top border
        rng = np.random.default_rng(i)
        m[0:10, 8:24] = rng.random((10, 16)) < 0.7
    else:  # the whole bottom rows
        m[18:, :] = True
    return m


def generated(out: Path, kind: str, n: int, rejected: tuple[int, ...] = ()) -> Path:
    """A generated folder of one type: pair i has ``tricky_mask(i)``; pairs in ``rejected`` are rejected."""
    with output_lock(out, "test"):
        writer = GeneratedWriter(out, {"seed": len(kind), "anomaly_type": kind})
        for i in range(n):
            image = np.random.default_rng([len(kind), i]).integers(0, 256, (H, W, 3), dtype=np.uint8)
            mask = np.ones((H, W), bool) if i in rejected else tricky_mask(i)
            writer.write(
                i, image, mask, kept=i not in rejected, reject_reason="big" if i in rejected else None
            )
    return out


def real(folder: Path, n: int, size: tuple[int, int] = (W, H)) -> Path:
    """A real defect folder (``images/``, ``masks/<stem>_mask.png``); its type is the folder's name."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        Image.fromarray(np.full((H, W, 3), 40 + i, np.uint8)).save(folder / "images" / f"r{i}.png")
        mask = tricky_mask(i + 1)
        mask_image = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)
        mask_image.save(folder / "masks" / f"r{i}_mask.png")
    return folder


def normals(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((H, W, 3), 10 * i, np.uint8)).save(folder / f"n{i:02d}.png")
    return folder


def sources(tmp_path: Path) -> dict:
    """Two generated types (one with a rejected pair), a real folder of a third type, normals."""
    return {
        "generated": [
            generated(tmp_path / "gen" / "crack", "crack", 9, rejected=(4,)),
            generated(tmp_path / "gen" / "hole", "hole", 4),
        ],
        "real": real(tmp_path / "scratch", 3),
        "normal": normals(tmp_path / "good", 5),
    }
