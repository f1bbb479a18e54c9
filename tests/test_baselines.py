"""Baselines and the generated-data writer: resume, Crop&Paste geometry, Perlin masks, determinism."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dualanodiff.data.generated as generated_mod
from dualanodiff.baselines import run_baseline
from dualanodiff.baselines.crop_paste import crop_paste, extract_defects, valid_positions
from dualanodiff.baselines.perlin import perlin, rand_perlin_2d
from dualanodiff.data.generated import GeneratedWriter, read_generated
from dualanodiff.data.images import load_mask, load_rgb
from dualanodiff.data.mvtec import DefectSample
from dualanodiff.errors import InputError
from dualanodiff.locking import output_lock

from rounding import assert_equal_up_to_rounding

S = 48  # image side of the fixture tree
CAT = "obj"


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _disc(r: float = 17.0) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return (yy - S / 2 + 0.5) ** 2 + (xx - S / 2 + 0.5) ** 2 <= r * r


def _normal(rng: np.random.Generator) -> np.ndarray:
    """Dark background, grey-ish object disc; red channel never above 130."""
    img = rng.integers(0, 60, (S, S, 3), dtype=np.uint8)
    obj = rng.integers(90, 131, (S, S, 3), dtype=np.uint8)
    return np.where(_disc()[..., None], obj, img)


def _tree(root: Path, n_defect: int = 6, n_good: int = 4, foreground: bool = True) -> Path:
    """A tiny MVTec-layout category whose defects are saturated red (red >= 200): never in a normal image."""
    rng = np.random.default_rng(0)
    cat = root / CAT
    for i in range(n_good):
        _save(cat / "train" / "good" / f"{i:03d}.png", _normal(rng))
        if foreground:
            _save(cat / "foreground" / "train" / "good" / f"{i:03d}.png", _disc().astype(np.uint8) * 255)
    for i in range(n_defect):
        img = _normal(rng)
        mask = np.zeros((S, S), dtype=bool)
        mask[20 : 24 + i % 3, 18:26] = True  # one blob ...
        if i % 2 == 0:
            mask[28:31, 26:32] = True  # ... and a second, separate one in every other image
        if i == 0:
            mask[14, 30] = True  # and a one-pixel speck, too small to paste as a defect
        red = np.stack(
            [rng.integers(200, 256, (S, S)), rng.integers(0, 40, (S, S)), rng.integers(0, 40, (S, S))], -1
        )
        _save(cat / "test" / "broken" / f"{i:03d}.png", np.where(mask[..., None], red, img).astype(np.uint8))
        _save(cat / "ground_truth" / "broken" / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    _save(cat / "test" / "good" / "000.png", _normal(rng))
    return root


def _samples(root: Path) -> tuple[list[DefectSample], list[DefectSample]]:
    cat = root / CAT
    few = [
        DefectSample(p, cat / "ground_truth" / "broken" / f"{p.stem}_mask.png", "broken", None)
        for p in sorted((cat / "test" / "broken").glob("*.png"))[:2]
    ]
    normals = []
    for p in sorted((cat / "train" / "good").glob("*.png")):
        fg = cat / "foreground" / "train" / "good" / p.name
        normals.append(DefectSample(p, None, "good", fg if fg.exists() else None))
    return few, normals


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _records(folder: Path) -> dict[str, dict]:
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    return {r["name"]: r for r in map(json.loads, lines)}  # every line must parse


# -- writer --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["crop-paste", "perlin"])
def test_interrupted_run_resumes_with_exactly_the_missing_pairs(tmp_path: Path, monkeypatch, method) -> None:
    few, normals = _samples(_tree(tmp_path / "data"))

    def run(out: Path, n: int = 6) -> dict:
        if method == "crop-paste":
            return crop_paste(few, normals, n, out, seed=7)
        return perlin(normals, n, out, seed=7)

    full = tmp_path / "full"
    assert run(full)["written"] == 6

    # Crash while appending the 4th record: pair 3's files exist, its record does not.
    resumed = tmp_path / "resumed"
    real_append, calls = generated_mod.append_jsonl, []

    def crashing_append(path, record):
        calls.append(record["name"])
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_append(path, record)

    monkeypatch.setattr(generated_mod, "append_jsonl", crashing_append)
    with pytest.raises(KeyboardInterrupt):
        run(resumed)
    monkeypatch.setattr(generated_mod, "append_jsonl", real_append)
    assert (resumed / "image" / "00003.png").exists()
    with (resumed / "manifest.jsonl").open("a") as f:
        f.write('{"name": "000')  # and a torn last line
    before = {p.name: p.stat().st_mtime_ns for p in (resumed / "image").glob("*.png")}

    summary = run(resumed)
    assert summary["written"] == 3 and summary["complete"] == 6 and summary["missing"] == 0
    assert _files(resumed) == _files(full)
    assert _records(resumed) == _records(full)
    for name in ("00000.png", "00001.png", "00002.png"):  # complete pairs were not touched
        assert (resumed / "image" / name).stat().st_mtime_ns == before[name]
    assert run(resumed)["written"] == 0  # nothing left to do
    assert run(resumed, n=8)["written"] == 2  # extending a run is allowed


def test_writer_refuses_other_settings_and_checks_shapes(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="hold output_lock"):
        GeneratedWriter(tmp_path, {"seed": 1})  # a writer works inside the folder's lock
    with output_lock(tmp_path, "test"):
        GeneratedWriter(tmp_path, {"seed": 1, "method": "perlin", "num_pairs": 4})
        GeneratedWriter(tmp_path, {"seed": 1, "method": "perlin", "num_pairs": 9})
        with pytest.raises(
            InputError, match=r"config\.json: this folder was made with other settings \(seed: 1 -> 2"
        ):
            GeneratedWriter(tmp_path, {"seed": 2, "method": "perlin", "num_pairs": 9})
        w = GeneratedWriter(tmp_path, {"seed": 1, "method": "perlin", "num_pairs": 9})
        with pytest.raises(ValueError, match="mask shape"):
            w.write(0, np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), bool))
        rec = w.write(0, np.zeros((4, 4, 3), np.uint8), np.eye(4, dtype=bool), mask_area=0.5, prompt="sks")
    assert rec["seed"] == 1 and rec["mask_area"] == 0.5 and rec["prompt"] == "sks"  # fields override
    assert np.array_equal(load_mask(w.path("mask", 0)), np.eye(4, dtype=bool))
    assert json.loads((tmp_path / "config.json").read_text())["num_pairs"] == 9


# -- Crop&Paste ----------------------------------------------------------------------------------------
def test_valid_positions_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    fg = np.zeros((20, 23), dtype=bool)
    fg[3:17, 2:20] = rng.random((14, 18)) < 0.93
    mask = rng.random((4, 5)) < 0.6
    got = valid_positions(mask, fg.shape, fg)
    want = np.array(
        [[not (mask & ~fg[y : y + 4, x : x + 5]).any() for x in range(23 - 5 + 1)] for y in range(20 - 4 + 1)]
    )
    assert got.shape == want.shape and want.any() and not want.all()
    assert np.array_equal(got, want)
    assert valid_positions(np.ones((30, 2), bool), (20, 23), None).size == 0


def test_crop_paste_masks_exactly_the_changed_pixels_inside_the_foreground(tmp_path: Path) -> None:
    few, normals = _samples(_tree(tmp_path / "data"))
    component_areas = {int(d.mask.sum()) for d in extract_defects(few)}
    assert len(extract_defects(few)) == 3  # first image: two blobs and a speck, second: one blob
    summary = crop_paste(few, normals, 10, tmp_path / "out", seed=3)
    assert summary["kept"] == 10
    by_name = {f"good/{s.image.name}": s for s in normals}
    for pair in read_generated(tmp_path / "out"):
        image, mask = load_rgb(pair.image), load_mask(pair.mask)
        normal = by_name[pair.record["normal"]]
        base, fg = load_rgb(normal.image), load_mask(normal.foreground)
        changed = (image != base).any(axis=-1)
        assert np.array_equal(changed, mask)
        assert mask.any() and not (mask & ~fg).any()
        assert int(mask.sum()) in component_areas
        assert pair.record["mask_area"] == mask.mean()  # the same mean of the same mask; JSON keeps it exact
        assert pair.record["source"] in {"broken/000.png", "broken/001.png"}


def test_crop_paste_is_deterministic_per_seed(tmp_path: Path) -> None:
    few, normals = _samples(_tree(tmp_path / "data"))
    crop_paste(few, normals, 4, tmp_path / "a", seed=5)
    crop_paste(few, normals, 4, tmp_path / "b", seed=5)
    crop_paste(few, normals, 4, tmp_path / "c", seed=6)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_crop_paste_errors(tmp_path: Path) -> None:
    few, normals = _samples(_tree(tmp_path / "data"))
    no_mask = [DefectSample(few[0].image, None, "broken", None)]
    with pytest.raises(InputError, match=r"000\.png: few-shot defect image has no mask"):
        crop_paste(no_mask, normals, 1, tmp_path / "x", seed=0)
    tiny_fg = _save(tmp_path / "fg.png", np.pad(np.full((2, 2), 255, np.uint8), 23))
    cramped = [DefectSample(n.image, None, "good", tiny_fg) for n in normals]
    with pytest.raises(InputError, match="no defect fits inside the foreground"):
        crop_paste(few, cramped, 1, tmp_path / "y", seed=0)


def test_crop_paste_resolution_resizes_everything(tmp_path: Path) -> None:
    few, normals = _samples(_tree(tmp_path / "data"))
    crop_paste(few, normals, 2, tmp_path / "out", seed=0, resolution=(40, 32))
    for pair in read_generated(tmp_path / "out"):
        assert load_rgb(pair.image).shape == (32, 40, 3) and load_mask(pair.mask).shape == (32, 40)


# -- Perlin --------------------------------------------------------------------------------------------
def _lerp(x, y, w):
    return (y - x) * w + x


def _draem_rand_perlin_2d_np(shape, res, angles):
    """DRAEM's rand_perlin_2d_np (perlin.py of VitjanZ/DRAEM), with the random angles passed in."""

    def fade(t):
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    delta = (res[0] / shape[0], res[1] / shape[1])
    d = (shape[0] // res[0], shape[1] // res[1])
    grid = np.mgrid[0 : res[0] : delta[0], 0 : res[1] : delta[1]].transpose(1, 2, 0) % 1
    gradients = np.stack((np.cos(angles), np.sin(angles)), axis=-1)

    def tile_grads(s1, s2):
        return np.repeat(np.repeat(gradients[s1[0] : s1[1], s2[0] : s2[1]], d[0], axis=0), d[1], axis=1)

    def dot(grad, shift):
        g = grid[: shape[0], : shape[1]]
        return (
            np.stack((g[..., 0] + shift[0], g[..., 1] + shift[1]), axis=-1) * grad[: shape[0], : shape[1]]
        ).sum(axis=-1)

    n00 = dot(tile_grads([0, -1], [0, -1]), [0, 0])
    n10 = dot(tile_grads([1, None], [0, -1]), [-1, 0])
    n01 = dot(tile_grads([0, -1], [1, None]), [0, -1])
    n11 = dot(tile_grads([1, None], [1, None]), [-1, -1])
    t = fade(grid[: shape[0], : shape[1]])
    return math.sqrt(2) * _lerp(_lerp(n00, n10, t[..., 0]), _lerp(n01, n11, t[..., 0]), t[..., 1])


@pytest.mark.parametrize("res", [(1, 1), (2, 8), (16, 4), (32, 32)])
def test_perlin_noise_equals_draem(res: tuple[int, int]) -> None:
    shape = (64, 128)
    ours = rand_perlin_2d(shape, res, np.random.default_rng(11))
    angles = 2 * math.pi * np.random.default_rng(11).random((res[0] + 1, res[1] + 1))
    # float64, two formulas: the rounding sits in the lattice coordinates (up to max(res)), then about 25
    # operations per value (the fade polynomial, four dot products, three interpolations).
    ref = _draem_rand_perlin_2d_np(shape, res, angles)
    assert_equal_up_to_rounding(ours, ref, steps=25, dtype=np.float64, magnitude=max(res))
    odd = rand_perlin_2d((37, 53), res, np.random.default_rng(0))  # any shape works here
    assert odd.shape == (37, 53) and np.isfinite(odd).all()


@pytest.mark.parametrize("foreground", [True, False])
def test_perlin_changes_only_masked_pixels(tmp_path: Path, foreground: bool) -> None:
    _, normals = _samples(_tree(tmp_path / "data", foreground=foreground))
    perlin(normals, 8, tmp_path / "out", seed=2)
    by_name = {f"good/{s.image.name}": s for s in normals}
    pairs = read_generated(tmp_path / "out")
    assert len(pairs) == 8
    for pair in pairs:
        image, mask = load_rgb(pair.image), load_mask(pair.mask)
        normal = by_name[pair.record["normal"]]
        changed = (image != load_rgb(normal.image)).any(axis=-1)
        assert mask.any() and pair.record["mask_area"] > 0
        assert not (changed & ~mask).any()
        assert changed.sum() > 0.5 * mask.sum()  # the blend really changes the masked region
        if foreground:
            assert not (mask & ~load_mask(normal.foreground)).any()
        assert set(pair.record["perlin_res"]) <= {1, 2, 4, 8, 16, 32}
        assert 0 <= pair.record["beta"] < 0.8 and len(pair.record["augmentations"]) == 3


def test_perlin_is_deterministic_per_seed_and_reads_a_texture_folder(tmp_path: Path) -> None:
    _, normals = _samples(_tree(tmp_path / "data"))
    perlin(normals, 3, tmp_path / "a", seed=4)
    perlin(normals, 3, tmp_path / "b", seed=4)
    perlin(normals, 3, tmp_path / "c", seed=5)
    assert _files(tmp_path / "a") == _files(tmp_path / "b") != _files(tmp_path / "c")
    rng = np.random.default_rng(0)
    for k in range(2):
        _save(
            tmp_path / "dtd" / "images" / "banded" / f"t{k}.jpg", rng.integers(0, 256, (30, 70, 3), np.uint8)
        )
    perlin(normals, 3, tmp_path / "d", seed=4, anomaly_source_dir=tmp_path / "dtd")
    sources = {p.record["source"] for p in read_generated(tmp_path / "d")}
    assert sources <= {"t0.jpg", "t1.jpg"}
    with pytest.raises(InputError, match="anomaly-source folder not found"):
        perlin(normals, 1, tmp_path / "e", seed=0, anomaly_source_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: anomaly-source folder holds no images"):
        perlin(normals, 1, tmp_path / "f", seed=0, anomaly_source_dir=tmp_path / "empty")


# -- the CLI entry ---------------------------------------------------------------------------------------
def test_run_baseline_uses_only_the_few_shot_split(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", n_defect=9)
    summary = run_baseline("crop-paste", root, CAT, "broken", 12, tmp_path / "cp", seed=1)
    assert summary["complete"] == 12 and summary["method"] == "crop-paste"
    # strict split of 9 images: 000-002 train the generator, 003-008 are test images.
    sources = {p.record["source"] for p in read_generated(tmp_path / "cp")}
    assert sources <= {"broken/000.png", "broken/001.png", "broken/002.png"}
    config = json.loads((tmp_path / "cp" / "config.json").read_text())
    assert config["few_shot"] == ["broken/000.png", "broken/001.png", "broken/002.png"]
    assert config["category"] == CAT and config["split"] == "strict"
    summary = run_baseline("perlin", root, CAT, "broken", 2, tmp_path / "pn", seed=1)
    assert summary["complete"] == 2 and read_generated(tmp_path / "pn")[0].record["anomaly_type"] == "broken"
    with pytest.raises(InputError, match="unknown baseline 'cutpaste'"):
        run_baseline("cutpaste", root, CAT, "broken", 1, tmp_path / "x")
    with pytest.raises(InputError, match="--split"):
        run_baseline("perlin", root, CAT, "broken", 1, tmp_path / "x", split="loose")
