"""Which images a run trains on: the few-shot split of an MVTec-layout type, or a plain folder.

Every sample is validated here, before any model is loaded, so a broken file fails the command in a second
with a message naming it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..checks import check_name
from ..data.folder import folder_samples, match_foregrounds
from ..data.mvtec import DefectSample, few_shot_train, list_anomaly_types
from ..data.validate import validate_training_samples
from ..errors import InputError
from ..masks.foreground import foreground_kind
from ..model.dual_unet import FEWSHOT_MASKS
from .config import TrainConfig, default_foreground

log = logging.getLogger(__name__)


def expand_anomaly_types(config: TrainConfig, spec: str | None) -> list[str]:
    """``all``, a comma list, or one type, as a list of anomaly types (checked against the dataset)."""
    if config.uses_folder:
        if spec not in (None, "", "all") and "," in spec:
            raise InputError("--images/--masks hold one anomaly type; give one --anomaly name (or none)")
        name = spec if spec not in (None, "", "all") else Path(config.images).resolve().parent.name
        return [check_name(name, "--anomaly")]
    if not spec:
        raise InputError("--anomaly is required with --data: one type, a comma list, or 'all'")
    available = list_anomaly_types(config.data, config.category)
    if spec == "all":
        if not available:
            raise InputError(f"{Path(config.data) / config.category / 'test'}: no anomaly type folders")
        return available
    wanted = [check_name(s.strip(), "--anomaly") for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise InputError(
            f"--anomaly {', '.join(unknown)}: not an anomaly type of {config.category!r} in {config.data}; "
            f"types there: {', '.join(available) if available else 'none'}"
        )
    return list(dict.fromkeys(wanted))


def training_samples(config: TrainConfig) -> list[DefectSample]:
    """The validated few-shot training samples of ``config.anomaly`` (of a resolved config)."""
    if config.uses_folder:
        samples = folder_samples(config.images, config.masks, anomaly_type=config.anomaly)
    else:
        samples = few_shot_train(config.data, config.category, config.anomaly, mode=config.split)
        if not samples:
            raise InputError(
                f"{Path(config.data) / config.category / 'test' / config.anomaly}: too few images for a "
                "few-shot split (the first third is the training set; need at least 3)"
            )
    samples = _with_foreground_masks(config, samples) if config.bcm else samples
    validate_training_samples(samples)
    return samples


def _with_foreground_masks(config: TrainConfig, samples: list[DefectSample]) -> list[DefectSample]:
    """BCM with a folder of foreground masks: every image needs its mask (a missing one would silently make the
    whole image background). Other sources leave the foreground unset here (`write_estimated_foregrounds`)."""
    if foreground_kind(config.foreground) != "folder":
        return [replace(s, foreground=None) for s in samples]
    if config.uses_folder or Path(config.foreground) != Path(default_foreground(config)):
        samples = match_foregrounds(samples, config.foreground)
    missing = [s.image for s in samples if s.foreground is None]
    if missing:
        raise InputError(
            f"BCM: {len(missing)} training image(s) have no foreground mask in {config.foreground} (expected "
            f"<stem>.png or <stem>_mask.png, e.g. for {missing[0]}); add them, or use --foreground auto (estimated) "
            "or --foreground none (whole image as background, for textures)"
        )
    return samples


def data_hash(samples: list[DefectSample]) -> str:
    """SHA-256 of the training files' contents in training order (image, mask, foreground of each sample):
    what decides the data of a run, whatever the paths (a finished run is only reused for the same files)."""
    digest = hashlib.sha256()
    for sample in samples:
        for path in (sample.image, sample.mask, sample.foreground):
            digest.update(b"-" if path is None else hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()[:16]


def write_fewshot_masks(samples: list[DefectSample], run_dir: Path) -> Path:
    """Copy the training masks into ``run_dir/fewshot_masks/`` (0/255 PNGs, one per sample, in sample order),
    so adapters carry the defect shapes that placement draws regions from even when their data moves.
    Replaced whole: a retraining on other data leaves no stale shape behind."""
    import shutil

    from ..data.images import load_mask
    from ..io import save_image_atomic

    folder = run_dir / FEWSHOT_MASKS
    if folder.is_dir():
        shutil.rmtree(folder)
    for k, s in enumerate(samples):
        save_image_atomic(folder / f"{k:03d}_{s.image.stem}.png", load_mask(s.mask).astype(np.uint8) * 255)
    return folder


def write_estimated_foregrounds(
    config: TrainConfig, samples: list[DefectSample], out_dir: Path
) -> list[DefectSample]:
    """For ``--foreground auto|u2net``: estimate each training image's object mask, write it to
    ``out_dir/<stem>.png`` (to look at) and point the sample at it; no object found: the whole image."""
    from ..data.images import load_rgb
    from ..io import save_image_atomic
    from ..masks.foreground import ForegroundEstimator

    estimator = ForegroundEstimator(config.foreground, config.u2net_weights, config.category)
    out = []
    for s in samples:
        mask = estimator(load_rgb(s.image))
        path = None
        if mask is not None:
            path = out_dir / f"{s.image.stem}.png"
            save_image_atomic(path, mask.astype(np.uint8) * 255)
        out.append(replace(s, foreground=path))
    whole = sum(s.foreground is None for s in out)
    log.info(
        "BCM foregrounds (%s) of %d image(s) in %s%s",
        estimator.kind,
        len(out),
        out_dir,
        f"; {whole} without a plain background: whole image as background" if whole else "",
    )
    return out
