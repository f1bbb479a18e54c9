"""The evaluation protocol: metrics, generation quality (IS, IC-LPIPS), downstream localization and classification.

Names are imported lazily so that ``import dualanodiff.evaluate`` does not pull in torch-fidelity,
lpips or torchvision until they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LocalizationMetrics": "metrics",
    "image_metrics": "metrics",
    "pixel_metrics": "metrics",
    "localization_metrics": "metrics",
    "image_score_from_map": "metrics",
    "image_scores_from_maps": "metrics",
    "summary_table": "metrics",
    "inception_score": "quality",
    "inception_score_from_logits": "quality",
    "load_inception": "quality",
    "ic_lpips": "quality",
    "load_lpips_vgg": "quality",
    "generation_quality": "quality",
    "DiscriminativeSubNetwork": "unet",
    "focal_loss": "unet",
    "LocalizationConfig": "localization",
    "train_and_evaluate_localization": "localization",
    "predict_maps": "localization",
    "ClassificationConfig": "classification",
    "train_and_evaluate_classification": "classification",
}

__all__ = [
    "ClassificationConfig",
    "DiscriminativeSubNetwork",
    "LocalizationConfig",
    "LocalizationMetrics",
    "focal_loss",
    "generation_quality",
    "ic_lpips",
    "image_metrics",
    "image_score_from_map",
    "image_scores_from_maps",
    "inception_score",
    "inception_score_from_logits",
    "load_inception",
    "load_lpips_vgg",
    "localization_metrics",
    "pixel_metrics",
    "predict_maps",
    "summary_table",
    "train_and_evaluate_classification",
    "train_and_evaluate_localization",
]  # the keys of _EXPORTS


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dualanodiff.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
