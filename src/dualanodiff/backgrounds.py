"""BCM backgrounds for generation: defect-free images with their object blacked out (METHOD section 5).

Made exactly as the training backgrounds are (`data.pairs.black_out_object`), from the foreground source the
adapters were trained with unless the user chooses another one (`generation_foreground`). Only the images a
run uses are read (a few per thousand pairs), and all of them before any diffusion model is loaded, so a
missing or mis-sized foreground mask fails the command at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from .data.folder import folder_normals
from .data.images import load_mask_for, load_rgb
from .data.pairs import black_out_object, image_to_tensor, mask_to_tensor
from .errors import InputError
from .masks.foreground import SOURCES, ForegroundEstimator, check_foreground_spec, foreground_kind

log = logging.getLogger(__name__)


def generation_foreground(given: str | None, trained: str | None) -> str:
    """The foreground source generation uses: ``given``, else the one the adapters were trained with.

    Another source than training's is allowed (a loud warning says why it matters); none given and none
    recorded, or a training folder (whose masks are of other images), is an error that says what to pass.
    """
    if given is None:
        if trained is None:
            raise InputError(
                "these BCM adapters do not record how their training backgrounds were made; give --foreground "
                f"{'|'.join(SOURCES)}|DIR, the source they were trained with"
            )
        if foreground_kind(trained) == "folder":
            raise InputError(
                f"these BCM adapters were trained with foreground masks from a folder ({trained}); give --foreground "
                "DIR with the masks of the --backgrounds images (or another source: auto, u2net, none)"
            )
        return trained
    if trained is not None and foreground_kind(given) != foreground_kind(trained):
        log.warning(
            "WARNING: BCM backgrounds from --foreground %s, but these adapters were trained with %s foregrounds "
            "(%s): BCM now sees backgrounds made differently from those it learned from, which can change the "
            "object and the background of every pair",
            given,
            foreground_kind(trained),
            trained,
        )
    return given


class Backgrounds:
    """The backgrounds of a folder of normal images, (name, (3, R, R) tensor in [-1, 1]) by index.

    ``pairs``: the pairs that will be made, their background switched every ``every`` pairs (default: every
    image is used); the images they use are read and masked now. ``foreground`` is a source of
    `masks.foreground` (None: the whole image is background).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        foreground: str | None,
        resolution: int,
        pairs: Iterable[int] | None = None,
        every: int = 1,
        u2net_weights: str | os.PathLike | None = None,
        category: str | None = None,
        device: str | None = None,
    ) -> None:
        kind = foreground_kind(foreground) or "none"
        check_foreground_spec(foreground, u2net_weights)
        self.normals = folder_normals(folder, foreground_dir=foreground if kind == "folder" else None)
        if not self.normals:
            raise InputError(f"--backgrounds {folder}: no images found")
        if kind == "folder":
            missing = [s.image for s in self.normals if s.foreground is None]
            if missing:
                raise InputError(
                    f"--foreground {foreground}: no mask for {len(missing)} of the --backgrounds images (expected "
                    f"<stem>.png or <stem>_mask.png, e.g. for {missing[0]})"
                )
        self.estimator = (
            None if kind == "folder" else ForegroundEstimator(kind, u2net_weights, category, device)
        )
        self.resolution = resolution
        self._made: dict[int, torch.Tensor] = {}
        self.every = every
        for i in range(len(self)) if pairs is None else sorted({self.index_of(p) for p in pairs}):
            self._make(i)

    def __len__(self) -> int:
        return len(self.normals)

    def index_of(self, pair: int) -> int:
        """The background of pair ``pair``: switched every ``every`` pairs, cycling through the images."""
        return (pair // self.every) % len(self)

    def for_pair(self, pair: int) -> tuple[str, torch.Tensor]:
        return self[self.index_of(pair)]

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.normals[index].image.name, self._make(index)

    def _make(self, index: int) -> torch.Tensor:
        if index not in self._made:
            sample = self.normals[index]
            rgb = load_rgb(sample.image)
            if self.estimator is None:
                mask = load_mask_for(sample.foreground, sample.image, rgb.shape, label="foreground mask")
            else:
                mask = self.estimator(rgb)
            fg = None if mask is None else mask_to_tensor(mask, self.resolution)
            self._made[index] = black_out_object(image_to_tensor(rgb, self.resolution), fg)
        return self._made[index]


def load_backgrounds(folder: str | Path, foreground: str | None, resolution: int, **kwargs) -> Backgrounds:
    """The backgrounds of ``folder`` (see `Backgrounds`)."""
    return Backgrounds(folder, foreground, resolution, **kwargs)
