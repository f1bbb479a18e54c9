"""Other generators to compare DualAnoDiff with, writing the same generated-data layout.

- ``crop-paste``: real defects from the few-shot images pasted onto normal images.
- ``perlin``: DRAEM's Perlin-noise anomalies on normal images (needs no defect images at all).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..checks import MAX_PAIRS, MAX_RESOLUTION, check_int
from ..data.generated import GeneratedWriter
from ..data.mvtec import SPLIT_MODES, anomaly_samples, few_shot_split, normal_train_samples
from ..errors import InputError
from .crop_paste import crop_paste
from .perlin import perlin

METHODS = ("crop-paste", "perlin")

__all__ = ["METHODS", "GeneratedWriter", "crop_paste", "perlin", "run_baseline"]


def run_baseline(
    method: str,
    root: str | os.PathLike,
    category: str,
    anomaly: str,
    num_pairs: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    split: str = "strict",
    resolution: int | tuple[int, int] | None = None,
    anomaly_source_dir: str | os.PathLike | None = None,
    foreground: str | None = None,
    u2net_weights: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Generate ``num_pairs`` pairs for one MVTec-layout anomaly type with a baseline (the CLI's entry).

    Crop&Paste uses only the few-shot training part of the type (``split`` as in
    :func:`dualanodiff.data.mvtec.few_shot_split`), so its pairs never contain a test defect.
    Both paste onto the category's ``train/good`` images. Perlin needs no defect images; ``anomaly``
    only labels its pairs. Resumable: rerun with the same arguments.

    ``foreground``: where on a normal image a defect may go, the same choice as placement's and BCM's:
    ``auto`` (estimated), ``u2net``, ``none`` (anywhere: textures) or a folder of masks by stem; None: the
    dataset's ``<category>/foreground/train/good`` masks where they exist, else anywhere. Recorded per pair.
    """
    if method not in METHODS:
        raise InputError(f"--method: unknown baseline {method!r} (choose from {', '.join(METHODS)})")
    if split not in SPLIT_MODES:
        raise InputError(f"--split: unknown split {split!r} (choose from {', '.join(SPLIT_MODES)})")
    check_int(num_pairs, "--num-pairs", 1, MAX_PAIRS)
    if isinstance(resolution, int):  # 0 must not silently mean "keep the size"
        check_int(resolution, "--resolution", 8, MAX_RESOLUTION)
    normals = normal_train_samples(root, category)
    if not normals:
        raise InputError(f"{Path(root) / category / 'train' / 'good'}: no normal images to paste onto")
    context = {"data_root": str(Path(root).resolve()), "category": category, "split": split}
    with tempfile.TemporaryDirectory() as estimated:
        normals, chosen = _with_foreground(normals, foreground, u2net_weights, category, estimated)
        if foreground is not None:  # recorded only when chosen: folders made before the option resume
            context["foreground"] = chosen
        return _run(method, root, category, anomaly, num_pairs, out_dir, seed, split, resolution,
                    anomaly_source_dir, normals, context)  # fmt: skip


def _with_foreground(normals, foreground, u2net_weights, category, scratch) -> tuple[list, str]:
    """The normal samples with the foreground masks of ``foreground`` (estimates written to ``scratch``: made
    again by a resumed run, deterministically), and the name of the choice as recorded."""
    from dataclasses import replace

    from ..data.folder import match_foregrounds
    from ..data.images import load_rgb
    from ..io import save_image_atomic
    from ..masks.foreground import ForegroundEstimator, check_foreground_spec, foreground_kind

    if foreground is None:
        return normals, "dataset" if any(s.foreground for s in normals) else "none"
    check_foreground_spec(foreground, u2net_weights)
    if foreground_kind(foreground) == "folder":
        return match_foregrounds(normals, foreground), str(foreground)
    estimator = ForegroundEstimator(foreground, u2net_weights, category)
    out = []
    for sample in normals:
        mask = estimator(load_rgb(sample.image))
        path = None
        if mask is not None:
            path = Path(scratch) / f"{sample.image.stem}.png"
            save_image_atomic(path, mask.astype("uint8") * 255)
        out.append(replace(sample, foreground=path))
    return out, foreground


def _run(method, root, category, anomaly, num_pairs, out_dir, seed, split, resolution, anomaly_source_dir,
         normals, context) -> dict[str, Any]:  # fmt: skip
    if method == "crop-paste":
        few_shot = few_shot_split(anomaly_samples(root, category, anomaly), mode=split).train
        if not few_shot:
            raise InputError(
                f"{Path(root) / category / 'test' / anomaly}: too few images for a few-shot split"
            )
        return crop_paste(few_shot, normals, num_pairs, out_dir, seed, resolution, extra_config=context)
    return perlin(
        normals,
        num_pairs,
        out_dir,
        seed,
        anomaly_source_dir,
        resolution,
        anomaly_type=anomaly,
        extra_config=context,
    )
