"""What the renderers share: seeds, noise, shapes, lighting, and the exact-mask rule.

Every scene is rendered by a small physical model (a height field lit by one light, an albedo map),
and a defect is a change of that model (the height, the albedo, what lies behind) inside a region.
The defective image is the scene rendered again with the change, copied into the clean image inside
the region only, so a defect's look follows the surface it lands on, and the ground-truth mask is
exactly the set of changed pixels (`composite`).
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage


def seed_sequence(seed: int, *keys: str | int) -> np.random.SeedSequence:
    """A SeedSequence for (seed, keys...); crc32 of names is stable across runs, unlike Python's hash()."""
    words = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.SeedSequence(words)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise (Gaussian-filtered white noise, wrapped at the edges)."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-8)


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour in [0, 1] from hue, saturation, value in [0, 1]."""
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v))


def grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), float."""
    y, x = np.mgrid[0:res, 0:res].astype(np.float64) + 0.5
    return y, x


def draw_mask(
    res: int, lines: Sequence[np.ndarray] = (), polygons: Sequence[np.ndarray] = (), width: int = 1
):
    """A bool (res, res) mask of polylines (points (N, 2) as x, y) of ``width`` pixels and filled polygons."""
    canvas = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(canvas)
    for pts in polygons:
        draw.polygon([tuple(p) for p in np.asarray(pts, float).tolist()], fill=255)
    for pts in lines:
        draw.line([tuple(p) for p in np.asarray(pts, float).tolist()], fill=255, width=width, joint="curve")
    return np.asarray(canvas) > 0


def blob_polygon(
    rng: np.random.Generator, centre: np.ndarray, radius: float, rough: float, elongation: float = 1.0
) -> np.ndarray:
    """An irregular closed outline (40 points, x/y): a circle with random low harmonics, stretched by
    ``elongation`` along a random direction."""
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    k = np.arange(2, 6)
    amps = rng.normal(0, rough / k)
    phases = rng.uniform(0, 2 * np.pi, size=k.size)
    rad = radius * (1 + (amps[:, None] * np.cos(k[:, None] * t + phases[:, None])).sum(0))
    rad = np.clip(rad, 0.4 * radius, None)
    pts = np.stack([rad * np.cos(t) * np.sqrt(elongation), rad * np.sin(t) / np.sqrt(elongation)], 1)
    turn = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    return pts @ rot.T + centre


def normals(height: np.ndarray) -> np.ndarray:
    """Unit surface normals (H, W, 3) of a height field given in pixels."""
    gy, gx = np.gradient(height)
    n = np.stack([-gx, -gy, np.ones_like(height)], -1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def light_direction(azimuth: float, elevation: float) -> np.ndarray:
    """A unit vector toward the light: ``azimuth`` in the image plane (0 = +x), ``elevation`` from it."""
    return np.array(
        [np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)]
    )


def lambert_phong(n: np.ndarray, light: np.ndarray, shininess: float) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse (n.L, clipped) and specular (Blinn-Phong, viewer straight above) terms."""
    diffuse = np.clip(n @ light, 0.0, None)
    half = light + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    specular = np.clip(n @ half, 0.0, None) ** shininess
    return diffuse, specular


def clip_to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 255] -> uint8, rounded and clipped to [0, 255] (not the [0, 1] floats of
    `pipeline.dual.to_uint8`)."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def composite(clean: np.ndarray, changed: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The clean image with ``changed`` copied in inside ``region``; returns (image, mask).

    Pixels of the region whose colour happens not to change get their red channel nudged by 8 levels,
    so the mask is exactly the set of changed pixels: ``mask == (image != clean).any(-1)``.
    """
    out = clean.copy()
    out[region] = changed[region]
    same = region & (out == clean).all(-1)
    red = out[..., 0].astype(np.int16)
    out[..., 0] = np.where(same, np.where(red < 128, red + 8, red - 8), red).astype(np.uint8)
    return out, region.copy()


def place(
    rng: np.random.Generator,
    allowed: np.ndarray,
    centres: np.ndarray,
    shape_at: Callable[[np.ndarray], np.ndarray],
    min_area: int,
    what: str,
) -> np.ndarray:
    """Draw a defect region: a centre among ``centres``, the shape there, clipped to ``allowed``; redrawn
    until at least ``min_area`` pixels remain."""
    ys, xs = np.nonzero(centres)
    for _ in range(50):
        i = int(rng.integers(0, ys.size))
        region = shape_at(np.array([xs[i] + 0.5, ys[i] + 0.5])) & allowed
        if region.sum() >= min_area:
            return region
    raise ValueError(f"could not place a {what} defect")  # pragma: no cover - needs a tiny resolution


def place_blob(
    rng: np.random.Generator,
    allowed: np.ndarray,
    centres: np.ndarray,
    radius: float,
    rough: float,
    max_stretch: float,
    min_area: int,
    what: str,
) -> np.ndarray:
    """`place` an irregular blob of ``radius`` pixels, stretched up to ``max_stretch`` times."""
    res = allowed.shape[0]

    def shape(centre: np.ndarray) -> np.ndarray:
        stretch = rng.uniform(1.0, max_stretch)
        return draw_mask(res, polygons=[blob_polygon(rng, centre, radius, rough, stretch)])

    return place(rng, allowed, centres, shape, min_area, what)


def translucent_tint(
    rng: np.random.Generator, albedo: np.ndarray, tint: np.ndarray, opacity: float, lo: float, hi: float
) -> np.ndarray:
    """The albedo multiplied toward ``tint`` with a smoothly varying opacity around ``opacity`` (clipped to
    [lo, hi]): a translucent stain, through which the surface's shading and texture still show."""
    res = albedo.shape[0]
    alpha = np.clip(opacity + 0.12 * smooth_noise(rng, (res, res), 1.5 * res / 64.0), lo, hi)[..., None]
    return albedo * (1 - alpha + alpha * tint)
