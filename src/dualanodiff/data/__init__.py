"""Dataset layouts (MVTec AD, plain folders), the few-shot split, input validation and the
training-pair dataset. Knows nothing about diffusion."""

from typing import TYPE_CHECKING

from .folder import FolderDataset, folder_normals, folder_samples, load_folder
from .images import IMAGE_EXTENSIONS, load_mask, load_rgb
from .mvtec import (
    SPLIT_MODES,
    DefectSample,
    FewShotSplit,
    anomaly_samples,
    category_test_set,
    few_shot_count,
    few_shot_split,
    few_shot_train,
    list_anomaly_types,
    list_categories,
    normal_test_samples,
    normal_train_samples,
)
from .validate import validate_training_samples

if TYPE_CHECKING:
    from .pairs import DefectPairDataset, default_flips

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_MODES",
    "DefectPairDataset",
    "DefectSample",
    "FewShotSplit",
    "FolderDataset",
    "anomaly_samples",
    "category_test_set",
    "default_flips",
    "few_shot_count",
    "few_shot_split",
    "few_shot_train",
    "folder_normals",
    "folder_samples",
    "list_anomaly_types",
    "list_categories",
    "load_folder",
    "load_mask",
    "load_rgb",
    "normal_test_samples",
    "normal_train_samples",
    "validate_training_samples",
]


def __getattr__(name: str):
    # Lazy: listing or validating a dataset should not pay for importing torch.
    if name in ("DefectPairDataset", "default_flips"):
        from . import pairs

        return getattr(pairs, name)
    raise AttributeError(f"module 'dualanodiff.data' has no attribute {name!r}")
