"""A procedural dataset in the MVTec AD layout, for the demo, the miniature study and the tests.

Two categories, each rendered by a small physical model (a lit height field with an albedo; see
`common`): ``pill`` (an object: a domed tablet on a table, with foreground masks under ``foreground/``)
and ``weave`` (a texture: plain-weave cloth over a backing). Each has four defect types with 12-18
images per type, like real MVTec AD, so the few-shot split leaves 4-6 training images per type.

A defect changes the scene (its height, albedo, or what shows through) inside a region, and the scene is
rendered again: the defect's look depends on the surface, the light and what lies behind it where it
lands, and its position, size and shape vary from image to image. So a defect cut from one image and
pasted onto another is visibly imperfect, as with real defects. The ground-truth mask is exactly the set
of changed pixels. Everything is derived from one seed (numpy ``SeedSequence`` per image), so a seed gives
the same files on every machine.
"""

from .dataset import DEFAULT_DEFECT_COUNTS, FORMAT_VERSION, make_synthetic
from .render import CATEGORIES, DEFECT_TYPES, OBJECTS, TEXTURES, SyntheticSample, synthetic_sample

__all__ = [
    "CATEGORIES",
    "DEFAULT_DEFECT_COUNTS",
    "DEFECT_TYPES",
    "FORMAT_VERSION",
    "OBJECTS",
    "TEXTURES",
    "SyntheticSample",
    "make_synthetic",
    "synthetic_sample",
]
