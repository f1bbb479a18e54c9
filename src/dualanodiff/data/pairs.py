"""The training-pair dataset: (image, mask, anomaly part, background) per few-shot sample.

METHOD.md sections 5 and 6: the image is resized to R and scaled to [-1, 1]; the mask is resized
then thresholded at 0.5; the part image is the image where the mask is set and exactly 0 (mid-grey)
elsewhere; the background keeps the pixels outside the object's foreground mask and blacks out the
object (-1). Flips are identical for all tensors of an item and drawn from a generator seeded by
(seed, epoch, index), so a resumed run sees the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import InputError
from .images import load_mask, load_mask_for, load_rgb
from .mvtec import DefectSample

# Defect types defined by orientation: a flipped sample would show a different (or no) defect.
_NO_FLIP_TYPES = {("metal_nut", "flip"), ("transistor", "misplaced")}
_NO_FLIP_CATEGORIES = {"cable"}


def default_flips(category: str, anomaly_type: str) -> bool:
    """Whether random flips are safe for this anomaly type (False where orientation is the defect)."""
    return category not in _NO_FLIP_CATEGORIES and (category, anomaly_type) not in _NO_FLIP_TYPES


def flip_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one (seed, epoch, index), well mixed by numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def image_to_tensor(image: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, R, R) in [-1, 1], bilinear resize (torchvision's Resize default)."""
    im = Image.fromarray(image)
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def mask_to_tensor(mask: np.ndarray, resolution: int) -> torch.Tensor:
    """bool (H, W) -> float32 (1, R, R) in {0, 1}: bilinear resize of 0/1, then >= 0.5."""
    m = mask.astype(np.float32)
    if m.shape != (resolution, resolution):
        m = np.asarray(Image.fromarray(m).resize((resolution, resolution), Image.BILINEAR))
    return torch.from_numpy((m >= 0.5).astype(np.float32))[None]


def black_out_object(image: torch.Tensor, foreground: torch.Tensor | None) -> torch.Tensor:
    """The BCM background: ``image`` (3, R, R) with its object set to -1.0 (black) where ``foreground``
    (1, R, R) is 1. No foreground mask (textures): the whole image is background. Shared by training and
    generation, so both condition on the same thing."""
    if foreground is None:
        return image.clone()
    return torch.where(foreground.bool(), torch.full((), -1.0), image)


class DefectPairDataset(Dataset):
    """Few-shot training pairs for one anomaly type.

    Items are dicts of float32 tensors: ``image`` (3, R, R) in [-1, 1], ``mask`` (1, R, R) in {0, 1},
    ``part`` (3, R, R) = image inside the mask, 0.0 outside, and with ``with_background=True``
    ``background`` (3, R, R) = image outside the object, -1.0 (black) on it.
    """

    def __init__(
        self,
        samples: Sequence[DefectSample],
        resolution: int = 512,
        flips: bool = True,
        with_background: bool = False,
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        if not self.samples:
            raise InputError("DefectPairDataset: no training samples")
        for s in self.samples:
            if s.mask is None:
                raise InputError(f"{s.image}: missing mask")
        if resolution < 8:
            raise InputError(f"resolution {resolution} is too small (minimum 8)")
        self.resolution = int(resolution)
        self.flips = bool(flips)
        self.with_background = bool(with_background)
        self.seed = int(seed)
        self.epoch = 0
        self._cache: dict[int, dict[str, torch.Tensor]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Select the flips of this epoch (call it before each epoch, and once when resuming)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        # The few-shot set is tiny (a handful of images): decode and resize once, flip per item.
        if index in self._cache:
            return self._cache[index]
        s = self.samples[index]
        rgb = load_rgb(s.image)
        mask = load_mask(s.mask)
        if mask.shape != rgb.shape[:2]:
            raise InputError(
                f"{s.mask}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image {s.image} "
                f"size {rgb.shape[1]}x{rgb.shape[0]}"
            )
        image = image_to_tensor(rgb, self.resolution)
        m = mask_to_tensor(mask, self.resolution)
        item = {"image": image, "mask": m, "part": torch.where(m.bool(), image, torch.zeros(()))}
        if self.with_background:
            fg = None
            if s.foreground is not None:  # never resized: a mask of another size is refused, naming the files
                fg = mask_to_tensor(
                    load_mask_for(s.foreground, s.image, rgb.shape, label="foreground mask"), self.resolution
                )
            item["background"] = black_out_object(image, fg)
        self._cache[index] = item
        return item

    def flips_for(self, index: int, epoch: int | None = None) -> tuple[bool, bool]:
        """(horizontal, vertical) flip of an item in an epoch; both False when flips are off."""
        if not self.flips:
            return False, False
        g = torch.Generator().manual_seed(flip_seed(self.seed, self.epoch if epoch is None else epoch, index))
        r = torch.rand(2, generator=g)
        return bool(r[0] < 0.5), bool(r[1] < 0.5)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self.samples):
            raise IndexError(index)
        hflip, vflip = self.flips_for(index)
        dims = [d for d, on in ((-1, hflip), (-2, vflip)) if on]
        item = self._load(index)
        return {k: (torch.flip(v, dims) if dims else v.clone()) for k, v in item.items()}
