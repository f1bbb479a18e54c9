"""The DualAnoDiff pipelines, in diffusers' shape: `DualAnoDiffPipeline` (the paper's method: whole image and
anomaly part generated together) and `DualAnoDiffPlacementPipeline` (the same adapters, the defect drawn into a
region of a real normal image). Adapter I/O lives in `loaders`, per-pair randomness in `noise`."""

from .dual import DualAnoDiffOutput, DualAnoDiffPipeline, image_to_tensor, tensor_to_uint8, to_uint8
from .loaders import DualAnoDiffLoaderMixin
from .noise import BACKGROUND_NOISE, ZERO_MEAN_NOISE, centred_noise
from .placement import DualAnoDiffPlacementPipeline, PlacementOutput

__all__ = [
    "BACKGROUND_NOISE",
    "ZERO_MEAN_NOISE",
    "DualAnoDiffLoaderMixin",
    "DualAnoDiffOutput",
    "DualAnoDiffPipeline",
    "DualAnoDiffPlacementPipeline",
    "PlacementOutput",
    "centred_noise",
    "image_to_tensor",
    "tensor_to_uint8",
    "to_uint8",
]
