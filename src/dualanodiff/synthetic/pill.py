"""The ``pill`` category: a lit, domed, coloured tablet on a textured table, and four defects.

Per image the scene varies: the pill's position, size and turn; its colour (orange to amber); the light's
direction (the highlight, the shaded side and the pill's shadow move with it); the table's colour and
grain. A defect changes the scene inside its region and the scene is rendered again, so its look depends
on where it lands:

- ``spot``: a pit in the coating. The height field sinks inside an irregular outline of varied size and
  stretch; its walls catch or lose the light according to the light's direction, and its floor shows
  the pill's core (a darker, greyer tone of *that* pill's colour).
- ``stain``: a translucent green-brown discolouration that multiplies the albedo, so the shading, the
  highlight and the printed specks stay visible through it.
- ``crack``: a groove that follows the pill's shape: a jagged arc concentric with its outline.
- ``scratch``: a pale scuff of the coating along a slightly bent line, any direction.
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


@dataclass(frozen=True)
class PillScene:
    """Everything that decides a pill image; `render` turns it into pixels."""

    res: int
    centre: np.ndarray  # (x, y)
    axes: tuple[float, float]  # semi-axes a (long), b
    turn: float
    foreground: np.ndarray  # bool (H, W)
    height: np.ndarray  # pixels, 0 off the pill
    albedo: np.ndarray  # (H, W, 3) in [0, 1]
    light: np.ndarray  # unit vector toward the light
    table: np.ndarray  # (H, W, 3) in [0, 255], shadow included
    grain: np.ndarray  # (H, W, 3) sensor noise in grey levels


def pill_frame(res: int, centre: np.ndarray, turn: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in the pill's frame (u along its long axis), centred on it."""
    y, x = grid(res)
    c, s = np.cos(turn), np.sin(turn)
    dx, dy = x - centre[0], y - centre[1]
    return dx * c + dy * s, -dx * s + dy * c


def make_scene(rng: np.random.Generator, res: int) -> PillScene:
    k = res / 64.0
    centre = res / 2 + rng.uniform(-0.06, 0.06, size=2) * res
    a, b = 0.36 * res * rng.uniform(0.92, 1.08), 0.24 * res * rng.uniform(0.92, 1.08)
    turn = rng.uniform(-0.35, 0.35)
    light = light_direction(rng.uniform(0, 2 * np.pi), rng.uniform(0.75, 1.15))
    u, v = pill_frame(res, centre, turn)
    r2 = (u / a) ** 2 + (v / b) ** 2
    fg = r2 <= 1.0
    height = 0.55 * b * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))

    body = hsv(rng.uniform(0.035, 0.10), rng.uniform(0.62, 0.8), rng.uniform(0.82, 0.95))
    albedo = np.broadcast_to(body, (res, res, 3)).copy()
    albedo *= (1 + 0.03 * smooth_noise(rng, (res, res), 2.0 * k))[..., None]
    specks = (rng.random((res, res)) < 0.004) & (r2 < 0.85)  # printed dots, single pixels
    albedo[specks] *= 0.72

    tone = hsv(rng.uniform(0, 1), rng.uniform(0.15, 0.4), rng.uniform(0.17, 0.32)) * 255
    texture = (
        1 + 0.14 * smooth_noise(rng, (res, res), 3.0 * k) + 0.05 * smooth_noise(rng, (res, res), 0.6 * k)
    )
    table = tone * texture[..., None]
    # The pill's soft shadow, cast away from the light.
    offset = -light[:2] / (np.linalg.norm(light[:2]) + 1e-8) * 0.07 * res
    shadow = ndimage.shift(fg.astype(float), (offset[1], offset[0]), order=1)
    shadow = ndimage.gaussian_filter(shadow, 1.5 * k)
    table = table * (1 - 0.55 * shadow)[..., None]
    grain = rng.normal(0, 2.0, size=(res, res, 3))
    return PillScene(res, centre, (a, b), turn, fg, height, albedo, light, table, grain)


def render(
    scene: PillScene, height: np.ndarray | None = None, albedo: np.ndarray | None = None
) -> np.ndarray:
    """The scene (optionally with another height field or albedo) as a uint8 image."""
    height = scene.height if height is None else height
    albedo = scene.albedo if albedo is None else albedo
    diffuse, specular = lambert_phong(normals(height), scene.light, shininess=28.0)
    shade = 0.28 + 0.8 * diffuse
    pill = 255.0 * (albedo * shade[..., None] + 0.42 * specular[..., None])
    image = np.where(scene.foreground[..., None], pill, scene.table) + scene.grain
    return clip_to_uint8(image)


# ------------------------------------------------------------------------------------------ defects


def _placement(scene: PillScene) -> tuple[np.ndarray, np.ndarray]:
    """Where defects may lie (off the rim) and where their centres may be (well inside)."""
    res = scene.res
    allowed = ndimage.binary_erosion(scene.foreground, iterations=max(1, res // 40))
    centres = ndimage.binary_erosion(scene.foreground, iterations=max(1, res // 10))
    return allowed, centres


def _spot(scene: PillScene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    res, k = scene.res, scene.res / 64.0
    allowed, centres = _placement(scene)
    radius = rng.uniform(0.035, 0.095) * res
    region = place_blob(rng, allowed, centres, radius, 0.25, 2.2, max(4, res * res // 1000), "spot")
    # A pit: flat floor, walls about 1.5 px wide (the distance to the outline sets the depth).
    depth = rng.uniform(1.2, 2.4) * k
    inside = ndimage.distance_transform_edt(region)
    height = scene.height - depth * np.clip(inside / (1.5 * k), 0, 1)
    # The floor shows the pill's core: a darker, greyer tone of this pill's colour.
    core = scene.albedo.mean(-1, keepdims=True) * 0.35 + scene.albedo * 0.35
    floor = np.clip(inside / (1.5 * k), 0, 1)[..., None]
    albedo = scene.albedo * (1 - floor) + core * floor
    return render(scene, height, albedo), region


def _stain(scene: PillScene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    res = scene.res
    allowed, centres = _placement(scene)
    radius = rng.uniform(0.06, 0.13) * res
    region = place_blob(rng, allowed, centres, radius, 0.45, 1.8, max(4, res * res // 600), "stain")
    tint = np.array([0.62, 0.78, 0.32]) * rng.uniform(0.85, 1.0)  # green-brown
    return render(scene, albedo=translucent_tint(rng, scene.albedo, tint, 0.55, 0.35, 0.8)), region


def _crack(scene: PillScene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    res, k = scene.res, scene.res / 64.0
    allowed, _ = _placement(scene)
    a, b = scene.axes
    c, s = np.cos(scene.turn), np.sin(scene.turn)
    for _ in range(50):
        scale = rng.uniform(0.45, 0.85)
        start, span = rng.uniform(0, 2 * np.pi), rng.uniform(0.9, 2.3)
        t = np.linspace(start, start + span, 30)
        jag = rng.normal(0, 0.5 * k, size=t.size)
        u = (scale * a + jag) * np.cos(t)
        v = (scale * b + jag) * np.sin(t)
        pts = np.stack([scene.centre[0] + u * c - v * s, scene.centre[1] + u * s + v * c], 1)
        region = draw_mask(res, lines=[pts], width=max(1, round(res / 64))) & allowed
        if region.sum() >= max(6, res // 4):
            break
    height = scene.height - 1.6 * k * region
    albedo = scene.albedo * np.where(region, 0.45, 1.0)[..., None]
    return render(scene, height, albedo), region


def _scratch(scene: PillScene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    res = scene.res
    allowed, centres = _placement(scene)

    def shape(c):
        length = rng.uniform(0.2, 0.42) * res
        theta = rng.uniform(0, np.pi)
        d = np.array([np.cos(theta), np.sin(theta)]) * length / 2
        bend = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-8) * rng.uniform(-0.2, 0.2) * length
        t = np.linspace(0, 1, 30)[:, None]
        pts = (1 - t) ** 2 * (c - d) + 2 * (1 - t) * t * (c + bend) + t**2 * (c + d)
        return draw_mask(res, lines=[pts], width=max(1, round(res / 100)))

    region = place(rng, allowed, centres, shape, max(4, res // 5), "scratch")
    pale = np.array([0.97, 0.94, 0.9])
    albedo = np.where(region[..., None], 0.4 * scene.albedo + 0.6 * pale, scene.albedo)
    return render(scene, albedo=albedo), region


DEFECTS = {"spot": _spot, "stain": _stain, "crack": _crack, "scratch": _scratch}
