"""A procedural dataset in the MVTec AD layout, for the demo and the tests.

Two categories: ``weave`` (a texture: woven threads with noise) and ``pill`` (an object: a coloured
oval pill on a dark plain background, with foreground masks under ``foreground/``). Each has four
defect types (scratch, hole or spot, crack, stain) with 12-18 images per type, like real MVTec AD,
so the few-shot split leaves 4-6 training images per type.

Every defect is drawn as a binary mask first and then painted *through* that mask, with pixels
whose colour would not change nudged, so ``ground_truth`` holds exactly the changed pixels.
Everything is derived from one seed (numpy ``SeedSequence`` per image), so a seed gives the
same files on every machine.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .errors import InputError
from .io import save_image_atomic, write_json_atomic, write_text_atomic
from .progress import progress_bar

TEXTURES = ("weave",)
OBJECTS = ("pill",)
CATEGORIES = TEXTURES + OBJECTS
DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "weave": ("crack", "hole", "scratch", "stain"),
    "pill": ("crack", "scratch", "spot", "stain"),
}
# Per-type image counts in the range of real MVTec AD types after scaling (few-shot train 4-6).
DEFAULT_DEFECT_COUNTS: dict[str, dict[str, int]] = {
    "weave": {"crack": 16, "hole": 15, "scratch": 17, "stain": 12},
    "pill": {"crack": 18, "scratch": 14, "spot": 13, "stain": 17},
}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered image: ``clean`` before the defect, ``image`` after, the defect ``mask``
    (all False for normal images) and the object ``foreground`` (None for textures)."""

    clean: np.ndarray
    image: np.ndarray
    mask: np.ndarray
    foreground: np.ndarray | None


def _seed_seq(seed: int, *keys: str | int) -> np.random.SeedSequence:
    # crc32 of the names: stable across runs and machines, unlike Python's salted hash().
    words = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.SeedSequence(words)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-8)


# ---------------------------------------------------------------------------------- normal images


def _render_weave(rng: np.random.Generator, res: int) -> np.ndarray:
    """Plain-weave cloth: over/under threads alternating per cell, thread shading, fibre noise."""
    period = max(4.0, res / 16.0) * rng.uniform(0.9, 1.1)
    ox, oy = rng.uniform(0, 2 * period, size=2)
    y, x = np.mgrid[0:res, 0:res].astype(np.float64)
    xs, ys = (x + ox) / period, (y + oy) / period
    cx, cy = np.floor(xs), np.floor(ys)
    fx, fy = xs - cx, ys - cy
    weft_on_top = ((cx + cy) % 2) == 0
    profile = np.where(weft_on_top, np.sin(np.pi * fy), np.sin(np.pi * fx)) ** 0.6
    # Fibres: fine streaks along each thread's direction.
    fibre_h = ndimage.gaussian_filter1d(rng.standard_normal((res, res)), sigma=period / 2, axis=1)
    fibre_v = ndimage.gaussian_filter1d(rng.standard_normal((res, res)), sigma=period / 2, axis=0)
    fibre = np.where(weft_on_top, fibre_h, fibre_v)
    fibre /= fibre.std() + 1e-8
    shade = 0.45 + 0.55 * profile + 0.05 * fibre + 0.04 * _smooth_noise(rng, (res, res), res / 8)
    tint = rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, size=3)  # lighting, slight white balance
    warp = np.array([196, 170, 128]) * tint
    weft = np.array([178, 150, 110]) * tint
    colour = np.where(weft_on_top[..., None], weft, warp)
    img = colour * shade[..., None] + rng.normal(0, 3.0, size=(res, res, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _pill_geometry(rng: np.random.Generator, res: int) -> tuple[float, float, float, float, float]:
    cx, cy = res / 2 + rng.uniform(-0.03, 0.03, size=2) * res
    a, b = 0.38 * res * rng.uniform(0.97, 1.03), 0.25 * res * rng.uniform(0.97, 1.03)
    angle = rng.uniform(-0.08, 0.08)
    return float(cx), float(cy), float(a), float(b), float(angle)


def _render_pill(rng: np.random.Generator, res: int) -> tuple[np.ndarray, np.ndarray]:
    """A shaded, speckled coloured oval on a dark, slightly noisy background; returns (image, foreground)."""
    cx, cy, a, b, angle = _pill_geometry(rng, res)
    y, x = np.mgrid[0:res, 0:res].astype(np.float64) + 0.5
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    r2 = (u / a) ** 2 + (v / b) ** 2
    fg = r2 <= 1.0
    bg = np.array([34, 36, 40]) * rng.uniform(0.9, 1.1) + rng.normal(0, 2.0, size=(res, res, 3))
    body = np.array([226, 128, 70]) * rng.uniform(0.95, 1.05, size=3)
    highlight = np.exp(-(((u + 0.3 * a) / (0.45 * a)) ** 2 + ((v + 0.35 * b) / (0.4 * b)) ** 2))
    shade = 1.0 - 0.28 * np.clip(r2, 0, 1) ** 2 + 0.03 * _smooth_noise(rng, (res, res), res / 20)
    pill = body * shade[..., None] + 40.0 * highlight[..., None]
    # Speckles: tiny darker dots printed on real pills (single pixels, so they never look like a spot).
    speck = (rng.random((res, res)) < 0.004) & (r2 < 0.85)
    pill = np.where(speck[..., None], pill * 0.7, pill)
    pill += rng.normal(0, 2.0, size=(res, res, 3))
    img = np.where(fg[..., None], pill, bg)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), fg


def render_normal(category: str, rng: np.random.Generator, res: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A defect-free image of ``category`` and its foreground mask (None for textures)."""
    if category == "weave":
        return _render_weave(rng, res), None
    if category == "pill":
        return _render_pill(rng, res)
    raise InputError(f"synthetic category {category!r} is not one of {', '.join(CATEGORIES)}")


# --------------------------------------------------------------------------------- defect shapes


def _draw(res: int, fn: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    canvas = Image.new("L", (res, res), 0)
    fn(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _blob_points(rng: np.random.Generator, cx: float, cy: float, r: float, rough: float) -> list[tuple]:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    k = np.arange(2, 6)
    amps = rng.normal(0, rough / k)
    phases = rng.uniform(0, 2 * np.pi, size=k.size)
    rad = r * (1 + (amps[:, None] * np.cos(k[:, None] * t + phases[:, None])).sum(0))
    rad = np.clip(rad, 0.35 * r, None) * rng.uniform(0.7, 1.0) ** np.abs(np.sin(t - rng.uniform(0, np.pi)))
    return list(zip((cx + rad * np.cos(t)).tolist(), (cy + rad * np.sin(t)).tolist()))


def _scratch_shape(rng: np.random.Generator, res: int, centre: np.ndarray) -> np.ndarray:
    """A thin curved line: quadratic Bezier through a random control point."""
    length = rng.uniform(0.25, 0.5) * res
    theta = rng.uniform(0, np.pi)
    d = np.array([np.cos(theta), np.sin(theta)]) * length / 2
    p0, p2 = centre - d, centre + d
    normal = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-8)
    p1 = centre + normal * rng.uniform(-0.35, 0.35) * length
    t = np.linspace(0, 1, 40)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    width = max(1, round(res / 110))
    return _draw(
        res, lambda d_: d_.line([tuple(p) for p in pts.tolist()], fill=255, width=width, joint="curve")
    )


def _crack_shape(rng: np.random.Generator, res: int, centre: np.ndarray) -> np.ndarray:
    """A jagged polyline (random walk with sharp turns), sometimes with a branch."""
    theta = rng.uniform(0, 2 * np.pi)
    step = res * rng.uniform(0.03, 0.05)
    n = int(rng.integers(6, 11))
    pts = [centre - np.array([np.cos(theta), np.sin(theta)]) * step * n / 2]
    for _ in range(n):
        a = theta + rng.normal(0, 0.7)
        pts.append(pts[-1] + np.array([np.cos(a), np.sin(a)]) * step * rng.uniform(0.6, 1.3))
    branches = [pts]
    if rng.random() < 0.5:
        start = int(rng.integers(2, n - 1))
        b_theta = theta + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
        branch = [pts[start]]
        for _ in range(int(rng.integers(2, 5))):
            a = b_theta + rng.normal(0, 0.6)
            branch.append(branch[-1] + np.array([np.cos(a), np.sin(a)]) * step * rng.uniform(0.5, 1.0))
        branches.append(branch)
    width = max(1, round(res / 80))

    def draw(d_: ImageDraw.ImageDraw) -> None:
        for line in branches:
            d_.line([tuple(p) for p in np.asarray(line).tolist()], fill=255, width=width)

    return _draw(res, draw)


def _blob_shape(rng: np.random.Generator, res: int, centre: np.ndarray, r: float, rough: float) -> np.ndarray:
    pts = _blob_points(rng, float(centre[0]), float(centre[1]), r, rough)
    return _draw(res, lambda d_: d_.polygon(pts, fill=255))


def _defect_shape(kind: str, rng: np.random.Generator, res: int, centre: np.ndarray) -> np.ndarray:
    if kind == "scratch":
        return _scratch_shape(rng, res, centre)
    if kind == "crack":
        return _crack_shape(rng, res, centre)
    if kind in ("hole", "spot"):
        return _blob_shape(rng, res, centre, rng.uniform(0.035, 0.08) * res, rough=0.25)
    if kind == "stain":
        return _blob_shape(rng, res, centre, rng.uniform(0.07, 0.14) * res, rough=0.45)
    raise InputError(f"synthetic defect type {kind!r} is unknown")


# ------------------------------------------------------------------------------------- painting


def _paint(kind: str, category: str, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The defect's colours over the whole image (only the masked pixels are used)."""
    res = base.shape[0]
    f = base.astype(np.float64)
    noise = _smooth_noise(rng, (res, res), 1.5)[..., None]
    if kind == "scratch":
        if category == "pill":  # a scuff: paler and greyer than the coating
            target = 0.45 * f + 0.55 * np.array([235, 225, 215])
        else:  # broken fibres catch the light
            target = f + (255 - f) * 0.7
        target = target + 6 * noise
    elif kind == "crack":
        target = f * 0.3 + 8 * noise
    elif kind in ("hole", "spot"):
        dark = np.array([22, 18, 16]) if kind == "hole" else np.array([70, 35, 25])
        target = dark + 6 * noise
    elif kind == "stain":
        colour = np.array([120, 80, 35]) if category == "weave" else np.array([150, 170, 60])
        alpha = np.clip(0.55 + 0.12 * _smooth_noise(rng, (res, res), res / 30), 0.3, 0.8)[..., None]
        target = (1 - alpha) * f + alpha * colour
    else:
        raise InputError(f"synthetic defect type {kind!r} is unknown")
    return np.clip(np.rint(target), 0, 255).astype(np.uint8)


def apply_defect(
    category: str, kind: str, clean: np.ndarray, foreground: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a defect mask (inside the object for object categories), then paint through it.

    Returns ``(image, mask)`` with ``mask == (image != clean).any(-1)`` exactly.
    """
    res = clean.shape[0]
    allowed = np.ones((res, res), bool)
    centres = allowed
    if foreground is not None:
        # Keep defects off the object's rim so they read as surface defects, not edge damage,
        # and centre them well inside so few are clipped by the rim.
        allowed = ndimage.binary_erosion(foreground, iterations=max(1, res // 40))
        centres = ndimage.binary_erosion(foreground, iterations=max(1, res // 10))
    ys, xs = np.nonzero(centres)
    min_area = max(4, res * res // 2000)
    mask = np.zeros((res, res), bool)
    for _ in range(50):
        i = int(rng.integers(0, ys.size))
        margin = 0.15 * res if foreground is None else 0.0
        centre = np.clip(np.array([xs[i], ys[i]], float), margin, res - 1 - margin)
        mask = _defect_shape(kind, rng, res, centre) & allowed
        if mask.sum() >= min_area:
            break
    else:  # pragma: no cover - 50 misses in a row would need a tiny resolution
        raise InputError(f"could not place a {kind} defect at resolution {res}")
    painted = _paint(kind, category, clean, rng)
    out = clean.copy()
    out[mask] = painted[mask]
    # Pixels whose painted colour happens to equal the original: nudge the red channel so the mask
    # is exactly the set of changed pixels.
    same = mask & (out == clean).all(-1)
    red = out[..., 0].astype(np.int16)
    red = np.where(same, np.where(red < 128, red + 8, red - 8), red)
    out[..., 0] = red.astype(np.uint8)
    return out, mask


def synthetic_sample(
    category: str, split: str, kind: str, index: int, seed: int = 0, resolution: int = 128
) -> SyntheticSample:
    """Render image ``index`` of ``<category>/<split>/<kind>`` exactly as :func:`make_synthetic` writes it."""
    if category not in CATEGORIES:
        raise InputError(f"synthetic category {category!r} is not one of {', '.join(CATEGORIES)}")
    base_rng, defect_rng = (
        np.random.default_rng(s) for s in _seed_seq(seed, category, split, kind, index).spawn(2)
    )
    clean, fg = render_normal(category, base_rng, resolution)
    if kind == "good":
        return SyntheticSample(clean, clean.copy(), np.zeros(clean.shape[:2], bool), fg)
    if kind not in DEFECT_TYPES[category]:
        raise InputError(
            f"{category} has no synthetic defect type {kind!r}: {', '.join(DEFECT_TYPES[category])}"
        )
    image, mask = apply_defect(category, kind, clean, fg, defect_rng)
    return SyntheticSample(clean, image, mask, fg)


# ----------------------------------------------------------------------------------- the dataset


_README = """Synthetic defect dataset (procedural, MVTec AD layout), made by dualanodiff.synthetic.

Categories: weave (texture: woven threads; defects crack, hole, scratch, stain) and pill (object:
orange oval pill on a dark background; defects crack, scratch, spot, stain; foreground masks of the
pill under pill/foreground/<same path as the image>).

<category>/train/good/*.png            defect-free training images
<category>/test/good/*.png             defect-free test images
<category>/test/<type>/*.png           defect images
<category>/ground_truth/<type>/<stem>_mask.png   0/255 masks of exactly the pixels the defect changed

Deterministic for a seed; see meta.json for the settings and counts.
"""


def _plan(
    categories: Sequence[str], n_train_good: int, n_test_good: int, counts: Mapping[str, Mapping[str, int]]
) -> list[tuple[str, str, str, int]]:
    jobs = []
    for cat in categories:
        jobs += [(cat, "train", "good", i) for i in range(n_train_good)]
        jobs += [(cat, "test", "good", i) for i in range(n_test_good)]
        for kind in DEFECT_TYPES[cat]:
            jobs += [(cat, "test", kind, i) for i in range(counts[cat][kind])]
    return jobs


def make_synthetic(
    out_dir: str | os.PathLike,
    seed: int = 0,
    resolution: int = 128,
    n_train_good: int = 24,
    n_test_good: int = 10,
    defect_counts: Mapping[str, Mapping[str, int]] | None = None,
    categories: Sequence[str] = CATEGORIES,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the synthetic dataset to ``out_dir`` and return it.

    ``meta.json`` is written last and marks a complete dataset: calling again with the same settings
    returns at once; other settings need ``overwrite=True`` (which only ever deletes a folder that
    holds a previous synthetic dataset). ``defect_counts`` overrides per-type image counts.
    """
    out = Path(out_dir)
    if resolution < 32:
        raise InputError(f"synthetic resolution {resolution} is too small (minimum 32)")
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise InputError(f"synthetic categories {list(categories)!r}: choose from {', '.join(CATEGORIES)}")
    counts = {c: dict(DEFAULT_DEFECT_COUNTS[c]) for c in categories}
    for cat, per_type in (defect_counts or {}).items():
        for kind, n in per_type.items():
            if cat not in counts or kind not in counts[cat]:
                raise InputError(f"defect_counts: {cat}/{kind} is not a synthetic anomaly type")
            counts[cat][kind] = int(n)
    meta = {
        "generator": "dualanodiff.synthetic",
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "resolution": int(resolution),
        "n_train_good": int(n_train_good),
        "n_test_good": int(n_test_good),
        "categories": {
            c: {"kind": "texture" if c in TEXTURES else "object", "defect_counts": counts[c]}
            for c in categories
        },
    }
    meta_path = out / "meta.json"
    if out.exists() and any(out.iterdir()):
        old = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if old == meta:
            return out
        if old is None or old.get("generator") != "dualanodiff.synthetic":
            raise InputError(
                f"{out}: folder is not empty and holds no synthetic dataset; choose an empty folder"
            )
        if not overwrite:
            raise InputError(f"{out}: holds a synthetic dataset with other settings; pass overwrite=True")
        shutil.rmtree(out)

    jobs = _plan(categories, n_train_good, n_test_good, counts)
    for cat, split, kind, i in progress_bar(jobs, desc="synthetic dataset", disable=not progress):
        s = synthetic_sample(cat, split, kind, i, seed, resolution)
        name = f"{i:03d}.png"
        rel = Path(split) / kind / name
        save_image_atomic(out / cat / rel, s.image)
        if kind != "good":
            save_image_atomic(
                out / cat / "ground_truth" / kind / f"{i:03d}_mask.png", s.mask.astype(np.uint8) * 255
            )
        if s.foreground is not None:
            save_image_atomic(out / cat / "foreground" / rel, s.foreground.astype(np.uint8) * 255)
    write_text_atomic(out / "README.txt", _README)
    write_json_atomic(meta_path, meta)
    return out
