"""dualanodiff: few-shot defect image generation with pixel-aligned masks (DualAnoDiff, CVPR 2025)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .pipeline import DualAnoDiffPipeline

__all__ = ["DualAnoDiffPipeline", "__version__"]


def __getattr__(name: str):
    # Lazy import: `dualanodiff --help` and the data tools should not pay for importing diffusers.
    if name == "DualAnoDiffPipeline":
        from .pipeline import DualAnoDiffPipeline

        return DualAnoDiffPipeline
    raise AttributeError(f"module 'dualanodiff' has no attribute {name!r}")
