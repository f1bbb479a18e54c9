"""Which images a run trains on: the few-shot split of an MVTec-layout type, or a plain folder.

Every sample is validated here, before any model is loaded, so a broken file fails the command in a second
with a message naming it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from ..checks import check_name
from ..data.folder import folder_samples
from ..data.mvtec import DefectSample, few_shot_train, list_anomaly_types
from ..data.validate import validate_training_samples
from ..errors import InputError
from .config import TrainConfig

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
    """The validated few-shot training samples of ``config.anomaly``."""
    if config.uses_folder:
        samples = folder_samples(config.images, config.masks, config.foreground, anomaly_type=config.anomaly)
    else:
        samples = few_shot_train(config.data, config.category, config.anomaly, mode=config.split)
        if not samples:
            raise InputError(
                f"{Path(config.data) / config.category / 'test' / config.anomaly}: too few images for a "
                "few-shot split (the first third is the training set; need at least 3)"
            )
    validate_training_samples(samples)
    if config.bcm and not any(s.foreground is not None for s in samples):
        where = config.foreground or Path(config.data or ".") / (config.category or "") / "foreground"
        log.warning(
            "BCM: no foreground masks for %s (looked in %s): the whole image is used as background, "
            "which is right for textures only",
            config.anomaly,
            where,
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
