"""Writing the synthetic dataset to disk in the MVTec AD layout (resumable, deterministic for a seed)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import save_image_atomic, write_json_atomic, write_text_atomic
from ..progress import progress_bar
from .render import CATEGORIES, DEFECT_TYPES, TEXTURES, synthetic_sample

# Per-type image counts in the range of real MVTec AD types after scaling (few-shot train 4-6).
DEFAULT_DEFECT_COUNTS: dict[str, dict[str, int]] = {
    "weave": {"crack": 16, "hole": 15, "scratch": 17, "stain": 12},
    "pill": {"crack": 18, "scratch": 14, "spot": 16, "stain": 17},
}
# 2: scenes with lighting, varied colours and backgrounds; defects rendered into the scene (issue 14).
FORMAT_VERSION = 2


_README = """Synthetic defect dataset (procedural, MVTec AD layout), made by dualanodiff.synthetic.

Categories: weave (texture: plain-weave cloth over a coloured backing; defects crack, hole, scratch,
stain) and pill (object: a lit orange-to-amber tablet on a textured table; defects crack, scratch, spot,
stain; foreground masks of the pill under pill/foreground/<same path as the image>). Colours, light and
background vary per image; every defect is rendered into its image's scene, so its look depends on where
it lands.

<category>/train/good/*.png            defect-free training images
<category>/test/good/*.png             defect-free test images
<category>/test/<type>/*.png           defect images
<category>/ground_truth/<type>/<stem>_mask.png   0/255 masks of exactly the pixels the defect changed

Deterministic for a seed; see meta.json for the settings and counts.
"""


def _plan(
    categories: Sequence[str], n_train_good: int, n_test_good: int, counts: Mapping[str, Mapping[str, int]]
) -> list[tuple[str, str, str, int]]:
    jobs = []
    for cat in categories:
        jobs += [(cat, "train", "good", i) for i in range(n_train_good)]
        jobs += [(cat, "test", "good", i) for i in range(n_test_good)]
        for kind in DEFECT_TYPES[cat]:
            jobs += [(cat, "test", kind, i) for i in range(counts[cat][kind])]
    return jobs


def make_synthetic(
    out_dir: str | os.PathLike,
    seed: int = 0,
    resolution: int = 128,
    n_train_good: int = 24,
    n_test_good: int = 10,
    defect_counts: Mapping[str, Mapping[str, int]] | None = None,
    categories: Sequence[str] = CATEGORIES,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the synthetic dataset to ``out_dir`` and return it.

    ``meta.json`` is written last and marks a complete dataset: calling again with the same settings
    returns at once; other settings need ``overwrite=True`` (which only ever deletes a folder that
    holds a previous synthetic dataset). ``defect_counts`` overrides per-type image counts.
    """
    out = Path(out_dir)
    if resolution < 32:
        raise InputError(f"synthetic resolution {resolution} is too small (minimum 32)")
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise InputError(f"synthetic categories {list(categories)!r}: choose from {', '.join(CATEGORIES)}")
    counts = {c: dict(DEFAULT_DEFECT_COUNTS[c]) for c in categories}
    for cat, per_type in (defect_counts or {}).items():
        for kind, n in per_type.items():
            if cat not in counts or kind not in counts[cat]:
                raise InputError(f"defect_counts: {cat}/{kind} is not a synthetic anomaly type")
            counts[cat][kind] = int(n)
    meta = {
        "generator": "dualanodiff.synthetic",
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "resolution": int(resolution),
        "n_train_good": int(n_train_good),
        "n_test_good": int(n_test_good),
        "categories": {
            c: {"kind": "texture" if c in TEXTURES else "object", "defect_counts": counts[c]}
            for c in categories
        },
    }
    meta_path = out / "meta.json"
    if out.exists() and any(out.iterdir()):
        old = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if old == meta:
            return out
        if old is None or old.get("generator") != "dualanodiff.synthetic":
            raise InputError(
                f"{out}: folder is not empty and holds no synthetic dataset; choose an empty folder"
            )
        if not overwrite:
            raise InputError(f"{out}: holds a synthetic dataset with other settings; pass overwrite=True")
        shutil.rmtree(out)

    jobs = _plan(categories, n_train_good, n_test_good, counts)
    for cat, split, kind, i in progress_bar(jobs, desc="synthetic dataset", disable=not progress):
        s = synthetic_sample(cat, split, kind, i, seed, resolution)
        name = f"{i:03d}.png"
        rel = Path(split) / kind / name
        save_image_atomic(out / cat / rel, s.image)
        if kind != "good":
            save_image_atomic(
                out / cat / "ground_truth" / kind / f"{i:03d}_mask.png", s.mask.astype(np.uint8) * 255
            )
        if s.foreground is not None:
            save_image_atomic(out / cat / "foreground" / rel, s.foreground.astype(np.uint8) * 255)
    write_text_atomic(out / "README.txt", _README)
    write_json_atomic(meta_path, meta)
    return out
