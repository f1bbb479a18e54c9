"""The ``weave`` category: plain-weave cloth over a coloured backing, lit from one side, and four defects.

Per image: the cloth's colours, the thread period and phase, the light's direction and the backing's
colour (visible only in the small gaps where threads cross) vary. A defect changes the scene inside its
region and the scene is rendered again, so its look depends on where it lands:

- ``hole``: the threads are gone inside an irregular outline of varied size: *this* image's backing
  shows through, with a few loose fibres.
- ``stain``: a translucent brown discolouration that multiplies the albedo: the threads, their shading
  and fibres stay visible through it.
- ``crack``: a tear that follows the weave: the cloth parts along the boundary between two rows (or two
  columns) of threads, over two to five cells, and the backing shows in the gap.
- ``scratch``: an abrasion across the threads: a pale, flattened, fuzzy line in any direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .common import (
    clip_to_uint8,
    draw_mask,
    grid,
    hsv,
    lambert_phong,
    light_direction,
    normals,
    place,
    place_blob,
    smooth_noise,
    translucent_tint,
)

THREAD_WIDTH = 0.8  # of the period: the gaps where threads cross show the backing


@dataclass(frozen=True)
class WeaveScene:
    """Everything that decides a weave image; `render` turns it into pixels."""

    res: int
    period: float
    offset: np.ndarray  # (x, y) phase of the weave, pixels
    height: np.ndarray  # pixels; 0 where the backing shows
    albedo: np.ndarray  # (H, W, 3) in [0, 1]
    backing: np.ndarray  # (3,) in [0, 1]
    light: np.ndarray
    ramp: np.ndarray  # (H, W) slow illumination gradient
    grain: np.ndarray


def make_scene(rng: np.random.Generator, res: int) -> WeaveScene:
    k = res / 64.0
    period = res / 8.0 * rng.uniform(0.95, 1.05)
    offset = rng.uniform(0, 2 * period, size=2)
    y, x = grid(res)
    xs, ys = (x + offset[0]) / period, (y + offset[1]) / period
    fx, fy = xs - np.floor(xs), ys - np.floor(ys)
    weft_on_top = ((np.floor(xs) + np.floor(ys)) % 2) == 0
    half = THREAD_WIDTH / 2
    # Round threads: a cross-section profile, dipping where a thread passes under the other.
    weft_p = np.sqrt(np.clip(1 - ((fy - 0.5) / half) ** 2, 0, 1))
    warp_p = np.sqrt(np.clip(1 - ((fx - 0.5) / half) ** 2, 0, 1))
    weft_h = weft_p * (0.7 + 0.3 * np.sin(np.pi * fx))
    warp_h = warp_p * (0.7 + 0.3 * np.sin(np.pi * fy))
    in_weft, in_warp = np.abs(fy - 0.5) < half, np.abs(fx - 0.5) < half
    top_is_weft = np.where(weft_on_top, in_weft, in_weft & ~in_warp)
    top_is_warp = ~top_is_weft & in_warp
    lift = 1.6 * k
    height = np.where(top_is_weft, weft_h, 0.0) + np.where(top_is_warp, warp_h, 0.0)
    height = height * lift * np.where(top_is_weft == weft_on_top, 1.0, 0.6)

    cloth = hsv(rng.uniform(0.05, 0.55), rng.uniform(0.2, 0.5), rng.uniform(0.62, 0.85))
    weft_colour = cloth * rng.uniform(0.86, 0.95)
    backing = hsv(rng.uniform(0, 1), rng.uniform(0.5, 0.8), rng.uniform(0.12, 0.24))
    fibre_h = ndimage.gaussian_filter1d(rng.standard_normal((res, res)), sigma=period / 2, axis=1)
    fibre_v = ndimage.gaussian_filter1d(rng.standard_normal((res, res)), sigma=period / 2, axis=0)
    fibre = np.where(top_is_weft, fibre_h, fibre_v)
    fibre /= fibre.std() + 1e-8
    albedo = np.where(top_is_weft[..., None], weft_colour, cloth) * (1 + 0.06 * fibre)[..., None]
    albedo = np.where((top_is_weft | top_is_warp)[..., None], albedo, backing)

    light = light_direction(rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1.1))
    turn = rng.uniform(0, 2 * np.pi)
    ramp = 1 + 0.12 * ((x - res / 2) * np.cos(turn) + (y - res / 2) * np.sin(turn)) / res
    ramp = ramp + 0.03 * smooth_noise(rng, (res, res), 8 * k)
    grain = rng.normal(0, 2.5, size=(res, res, 3))
    return WeaveScene(res, period, offset, height, albedo, backing, light, ramp, grain)


def render(
    scene: WeaveScene, height: np.ndarray | None = None, albedo: np.ndarray | None = None
) -> np.ndarray:
    height = scene.height if height is None else height
    albedo = scene.albedo if albedo is None else albedo
    diffuse, specular = lambert_phong(normals(height), scene.light, shininess=10.0)
    shade = (0.35 + 0.75 * diffuse) * scene.ramp
    image = 255.0 * (albedo * shade[..., None] + 0.08 * specular[..., None]) + scene.grain
    return clip_to_uint8(image)


# ------------------------------------------------------------------------------------------ defects


def _anywhere(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Defects may lie anywhere; their centres keep off the border so few are clipped."""
    allowed = np.ones((res, res), bool)
    centres = np.zeros((res, res), bool)
    m = int(round(0.15 * res))
    centres[m : res - m, m : res - m] = True
    return allowed, centres


def _hole(scene: WeaveScene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    res, k = scene.res, scene.res / 64.0
    allowed, centres = _anywhere(res)
    radius = rng.uniform(0.055, 0.12) * res
    region = place_blob(rng, allowed, centres, radius, 0.3, 1.7, max(4, res * res // 800), "hole")
    fibres = region & (rng.random((res, res)) < 0.12)  # a few loose fibres across the hole
    height = np.where(region, np.where(fibres, 0.5 * k, 0.0), scene.height)
    shade = 1 + 0.15 * smooth_noise(rng, (res, res), 1.5 * k)[..., None]
    inside = np.where(fibres[..., None], scene.albedo.mean((0, 1)) * 0.9, scene.backing * shade)
    albedo = np.where(region[..., None], inside, scene.albedo)
    return render(scene, height, albedo), region


def _stain(scene: WeaveScene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    res = scene.res
    allowed, centres = _anywhere(res)
    radius = rng.uniform(0.08, 0.15) * res
    region = place_blob(rng, allowed, centres, radius, 0.45, 1.8, max(4, res * res // 500), "stain")
    tint = np.array([0.72, 0.5, 0.26]) * rng.uniform(0.8, 1.0)  # brown
    return render(scene, albedo=translucent_tint(rng, scene.albedo, tint, 0.6, 0.4, 0.85)), region


def _crack(scene: WeaveScene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    res, k, p = scene.res, scene.res / 64.0, scene.period
    for _ in range(50):
        across = bool(rng.random() < 0.5)  # True: along a column boundary (vertical tear)
        phase = scene.offset[0] if across else scene.offset[1]
        line = (int(rng.integers(2, 7)) * p - phase) % res  # a boundary between two thread rows
        length = rng.integers(2, 6) * p
        start = rng.uniform(0.1 * res, max(0.1 * res + 1, 0.9 * res - length))
        t = np.linspace(start, start + length, 24)
        wobble = line + rng.normal(0, 0.35 * k, size=t.size)
        pts = np.stack([wobble, t], 1) if across else np.stack([t, wobble], 1)
        region = draw_mask(res, lines=[pts], width=max(2, round(1.5 * k)))
        if region.sum() >= max(6, res // 4):
            break
    height = np.where(region, 0.0, scene.height)
    albedo = np.where(region[..., None], scene.backing, scene.albedo)
    return render(scene, height, albedo), region


def _scratch(scene: WeaveScene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    res, k = scene.res, scene.res / 64.0
    allowed, centres = _anywhere(res)

    def shape(c):
        length = rng.uniform(0.25, 0.5) * res
        theta = rng.uniform(0, np.pi)
        d = np.array([np.cos(theta), np.sin(theta)]) * length / 2
        return draw_mask(res, lines=[np.stack([c - d, c + d])], width=max(1, round(1.5 * k)))

    region = place(rng, allowed, centres, shape, max(4, res // 4), "scratch")
    fuzz = 1 + 0.1 * rng.standard_normal((res, res))[..., None]
    pale = np.array([0.96, 0.94, 0.9])
    albedo = np.where(region[..., None], (0.45 * scene.albedo + 0.55 * pale) * fuzz, scene.albedo)
    height = np.where(region, 0.5 * scene.height + 0.4 * k, scene.height)
    return render(scene, height, albedo), region


DEFECTS = {"hole": _hole, "stain": _stain, "crack": _crack, "scratch": _scratch}
