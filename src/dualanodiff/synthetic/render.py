"""One image of the synthetic dataset, from (category, split, type, index, seed, resolution)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from . import pill, weave
from .common import composite, seed_sequence

TEXTURES = ("weave",)
OBJECTS = ("pill",)
CATEGORIES = TEXTURES + OBJECTS
# Each scene module has make_scene(rng, res), render(scene) and DEFECTS {type: defect(scene, rng) -> (image, region)}.
_SCENES = {"weave": weave, "pill": pill}
DEFECT_TYPES: dict[str, tuple[str, ...]] = {c: tuple(sorted(m.DEFECTS)) for c, m in _SCENES.items()}


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered image: ``clean`` before the defect, ``image`` after, the defect ``mask``
    (all False for normal images) and the object ``foreground`` (None for textures)."""

    clean: np.ndarray
    image: np.ndarray
    mask: np.ndarray
    foreground: np.ndarray | None


def synthetic_sample(
    category: str, split: str, kind: str, index: int, seed: int = 0, resolution: int = 128
) -> SyntheticSample:
    """Render image ``index`` of ``<category>/<split>/<kind>`` exactly as `make_synthetic` writes it.

    ``split`` is any name: the dataset uses ``train`` and ``test``; other names (``pretrain``,
    ``segmenter``...) give renders disjoint from the dataset's, for training helpers on fresh data.
    """
    if category not in CATEGORIES:
        raise InputError(f"synthetic category {category!r} is not one of {', '.join(CATEGORIES)}")
    if kind != "good" and kind not in DEFECT_TYPES[category]:
        raise InputError(
            f"{category} has no synthetic defect type {kind!r}: {', '.join(DEFECT_TYPES[category])}"
        )
    scene_rng, defect_rng = (
        np.random.default_rng(s) for s in seed_sequence(seed, category, split, kind, index).spawn(2)
    )
    scenes = _SCENES[category]
    scene = scenes.make_scene(scene_rng, resolution)
    clean = scenes.render(scene)
    foreground = getattr(scene, "foreground", None)
    if kind == "good":
        return SyntheticSample(clean, clean.copy(), np.zeros(clean.shape[:2], bool), foreground)
    changed, region = scenes.DEFECTS[kind](scene, defect_rng)
    image, mask = composite(clean, changed, region)
    return SyntheticSample(clean, image, mask, foreground)
