"""What a placed pair starts from: its normal image and target region, chosen by the pair's seed.

`Placements` reads the normal images, the foreground source and the region source (``--where auto``: the
few-shot masks the adapters were trained on; ``--where DIR``: the user's masks by file stem) and makes, for
each pair this process owns, the (normal image, region) it is placed on, all before any diffusion model
loads, so a bad folder or a region that cannot fit fails the command at once. A pair's choice depends only on
its seed, so a resumed or sharded run places every pair exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.folder import folder_normals
from .data.images import image_size, is_image_file, load_mask, load_mask_for, load_rgb, resize_rgb
from .errors import InputError
from .masks.foreground import ForegroundEstimator, check_foreground_spec, foreground_kind
from .masks.regions import RegionSampler, load_region, region_files
from .model.dual_unet import FEWSHOT_MASKS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    normal_path: Path
    normal: np.ndarray  # uint8 R x R x 3
    region: np.ndarray  # bool R x R
    spec: dict[str, Any]  # how the region was made (recorded per pair)


def fewshot_mask_paths(
    adapters: str | os.PathLike,
    training: dict[str, Any],
    data: str | None = None,
    category: str | None = None,
    anomaly: str | None = None,
) -> list[Path]:
    """The few-shot masks ``--where auto`` draws shapes from: the adapters' own copy, else ``--data
    --category --anomaly``'s few-shot split, else the training data the adapters record (if still there)."""
    from .data.mvtec import few_shot_train

    own = Path(adapters) / FEWSHOT_MASKS
    if own.is_dir() and any(own.iterdir()):
        return sorted(p for p in own.iterdir() if is_image_file(p))
    if data is not None:
        if not (category and anomaly):
            raise InputError(
                "--data with --where auto needs --category and --anomaly (the few-shot masks' type)"
            )
        return [s.mask for s in few_shot_train(data, category, anomaly)]
    if training.get("data") and training.get("category") and training.get("anomaly"):
        root = Path(training["data"])
        if (root / training["category"] / "ground_truth" / training["anomaly"]).is_dir():
            mode = training.get("split") or "strict"
            return [
                s.mask for s in few_shot_train(root, training["category"], training["anomaly"], mode=mode)
            ]
    if training.get("masks") and Path(training["masks"]).is_dir():
        return sorted(p for p in Path(training["masks"]).iterdir() if is_image_file(p))
    raise InputError(
        f"--where auto: {adapters} carry no few-shot masks (the authors' checkpoints do not, and the training "
        "data they record is not there): give --data ROOT --category C --anomaly A, or --where DIR"
    )


def normal_folder(on_normal: str | None, data: str | None, category: str | None) -> Path:
    """``--on-normal DIR``, or ``--data ROOT --category C``'s ``train/good``."""
    if on_normal not in (None, "", "data"):
        return Path(on_normal)
    if data is None or category is None:
        raise InputError(
            "--on-normal: give a folder of normal images, or --data ROOT --category C (train/good)"
        )
    return Path(data) / category / "train" / "good"


class Placements:
    """(normal image, region) per pair; see the module docstring."""

    def __init__(
        self,
        folder: str | os.PathLike,
        where: str,
        resolution: int,
        foreground: str,
        fewshot_masks: list[Path] | None = None,
        u2net_weights: str | None = None,
        category: str | None = None,
        device: str | None = None,
    ) -> None:
        self._folder = foreground if foreground_kind(foreground) == "folder" else None
        # One listing: the normal images, each with its foreground mask matched by stem when --foreground DIR
        # (none found when DIR is missing: check_foreground_spec below names it).
        samples = folder_normals(folder, self._folder)
        self.normals = [s.image for s in samples]
        if not self.normals:
            raise InputError(f"--on-normal {folder}: no normal images there")
        self.size = (resolution, resolution)
        self.where = where
        self.regions: dict[str, Path] | None = None
        self.sampler: RegionSampler | None = None
        if where == "auto":
            if not fewshot_masks:
                raise InputError("--where auto: no few-shot masks to draw regions from")
            shapes = [load_mask(p) for p in fewshot_masks]
            self.sampler = RegionSampler(shapes, [Path(p).name for p in fewshot_masks], self.size)
        else:
            self.regions = region_files(where)
            self.normals = [p for p in self.normals if p.stem in self.regions]
            if not self.normals:
                raise InputError(
                    f"--where {where}: no region mask is named like a normal image of {folder} (<stem>.png)"
                )
        check_foreground_spec(foreground, u2net_weights)
        self.foreground = foreground
        self._foreground_files: list[Path] = []
        if self._folder is not None:
            found = {s.image: s.foreground for s in samples}
            missing = [p.name for p in self.normals if found[p] is None]
            if missing:
                raise InputError(
                    f"--foreground {self._folder}: no mask for {missing[0]} (expected <stem>.png or "
                    f"<stem>_mask.png; {len(missing)} of {len(self.normals)} missing)"
                )
            self._foreground_files = [found[p] for p in self.normals]
        self._estimator = None
        if self._folder is None:  # auto regions stay on it; a user's region must touch it
            self._estimator = ForegroundEstimator(foreground, u2net_weights, category, device=device)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def for_seed(self, seed: int) -> Placement:
        """The pair of ``seed``'s normal image and region."""
        rng = np.random.default_rng(seed)
        index = int(rng.integers(len(self.normals)))
        normal, foreground = self._normal(index)
        path = self.normals[index]
        if self.regions is not None:
            region = load_region(self.regions[path.stem], self.size, own_size=image_size(path))
            if foreground is not None and not (region & foreground).any():
                raise InputError(f"{self.regions[path.stem]}: the region misses the object of {path.name}")
            return Placement(path, normal, region, {"kind": "file", "file": str(self.regions[path.stem])})
        drawn = self.sampler.draw(rng, foreground)
        return Placement(path, normal, drawn.region, {**drawn.spec, "foreground": self.foreground})

    def _normal(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if index not in self._cache:
            path = self.normals[index]
            normal = resize_rgb(load_rgb(path), self.size)
            if self._folder is not None:
                foreground = load_mask_for(self._foreground_files[index], path, size=self.size)
            elif self._estimator is not None:
                foreground = self._estimator(normal)
            else:
                foreground = None
            if foreground is not None and not foreground.any():
                raise InputError(f"{path}: the foreground estimate is empty (no object to place a defect on)")
            self._cache[index] = (normal, foreground)
        return self._cache[index]
