"""BCM foregrounds: the weight-free estimate against exact foregrounds, the sources, the backgrounds they make."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from dualanodiff.backgrounds import Backgrounds, generation_foreground
from dualanodiff.demo.alignment import iou
from dualanodiff.errors import InputError
from dualanodiff.masks.foreground import ForegroundEstimator, check_foreground_spec, foreground_kind
from dualanodiff.masks.plain_background import estimate_foreground
from dualanodiff.synthetic import DEFECT_TYPES, synthetic_sample


def on_plain_table(s) -> np.ndarray:
    """The synthetic pill on the plain background the weight-free estimate is made for: the scene's grained,
    shadowed table (issue 14's renderer) replaced by its median colour with slight noise; the pill as rendered."""
    table = np.median(s.image[~s.foreground], 0) + np.random.default_rng(0).normal(0, 2, s.image.shape)
    return np.where(s.foreground[..., None], s.image, table).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["good", *DEFECT_TYPES["pill"]])
def test_estimate_matches_the_exact_foreground_of_synthetic_pills(kind):
    for i in range(3):
        s = synthetic_sample("pill", "train" if kind == "good" else "test", kind, i, seed=0, resolution=96)
        mask = estimate_foreground(on_plain_table(s))
        assert mask is not None and mask.shape == s.foreground.shape
        assert iou(mask, s.foreground) >= 0.98


def test_textures_and_empty_scenes_have_no_object():
    for i in range(3):
        assert estimate_foreground(synthetic_sample("weave", "train", "good", i, resolution=96).image) is None
    flat = np.random.default_rng(0).normal(60, 2, (64, 64, 3)).clip(0, 255).astype(np.uint8)
    assert estimate_foreground(flat) is None


def test_estimate_follows_a_lit_background_and_an_object_at_the_frame():
    """A light table with a vignette and a gradient (MVTec's screw), and an object cut by the frame."""
    s = synthetic_sample("pill", "train", "good", 0, resolution=128)
    y, x = np.mgrid[0:128, 0:128] / 128 - 0.5
    table = 215 - 60 * (x * x + y * y) + 25 * x + np.random.default_rng(1).normal(0, 3, (128, 128))
    lit = np.where(s.foreground[..., None], s.image, table[..., None]).clip(0, 255).astype(np.uint8)
    assert iou(estimate_foreground(lit), s.foreground) >= 0.98
    plain = on_plain_table(s)
    cols = np.flatnonzero(s.foreground.any(0))
    k = (
        128 - cols.max() + (cols.max() - cols.min()) // 5
    )  # the pill cut by the right frame, a fifth of its width
    shifted, fg = np.roll(plain, k, axis=1), np.roll(s.foreground, k, axis=1)
    shifted[:, :k], fg[:, :k] = np.median(plain[:3].reshape(-1, 3), 0), False  # the wrapped part removed
    assert iou(estimate_foreground(shifted), fg) >= 0.98


def test_sources_and_their_errors(tmp_path):
    assert [foreground_kind(s) for s in ("auto", "u2net", "none", str(tmp_path), None)] == [
        "auto", "u2net", "none", "folder", None,
    ]  # fmt: skip
    with pytest.raises(InputError, match="--u2net-weights"):
        check_foreground_spec("u2net", None)
    with pytest.raises(InputError, match="file not found"):
        check_foreground_spec("u2net", tmp_path / "u2net.pth")
    with pytest.raises(InputError, match="not a folder of masks"):
        check_foreground_spec(str(tmp_path / "nowhere"), None)
    pill = synthetic_sample("pill", "train", "good", 0, resolution=64).image
    assert ForegroundEstimator("auto", category="carpet")(pill) is None  # MVTec textures: the whole image
    assert ForegroundEstimator("none")(pill) is None
    assert ForegroundEstimator("auto", category="pill")(pill).any()


@pytest.mark.slow
def test_u2net_source_runs_the_users_network(tmp_path):
    from dualanodiff.masks.u2net import U2NETP

    torch.manual_seed(0)
    torch.save(U2NETP().state_dict(), tmp_path / "u2netp.pth")
    estimator = ForegroundEstimator("u2net", tmp_path / "u2netp.pth", device="cpu")
    image = synthetic_sample("pill", "train", "good", 0, resolution=64).image
    probabilities = estimator._u2net.probabilities([image])[0]
    mask = estimator(image)
    expected = probabilities > 0.5
    assert (mask is None and not expected.any()) or np.array_equal(mask, expected)


def _folder(tmp_path, n=3, size=64, mask_size=None, suffix="_mask"):
    good, fg = tmp_path / "good", tmp_path / "fg"
    good.mkdir(parents=True)
    fg.mkdir()
    for i in range(n):
        s = synthetic_sample("pill", "train", "good", i, resolution=size)
        Image.fromarray(on_plain_table(s)).save(good / f"{i:03d}.png")
        m = Image.fromarray(s.foreground.astype(np.uint8) * 255)
        (m.resize((mask_size, mask_size)) if mask_size else m).save(fg / f"{i:03d}{suffix}.png")
    return good, fg


def test_backgrounds_from_a_folder_of_stem_mask_files_and_only_those_used(tmp_path):
    good, fg = _folder(tmp_path, n=3)
    backgrounds = Backgrounds(good, str(fg), 64, pairs=range(4), every=2)  # pairs 0-3 use images 0 and 1
    assert sorted(backgrounds._made) == [0, 1] and len(backgrounds) == 3
    name, image = backgrounds.for_pair(3)
    exact = synthetic_sample("pill", "train", "good", 1, resolution=64).foreground
    assert name == "001.png" and bool((image[:, exact] == -1).all()) and bool((image[:, ~exact] > -1).any())
    auto = Backgrounds(good, "auto", 64, pairs=[0])
    assert torch.equal(auto.for_pair(0)[1], backgrounds.for_pair(0)[1])  # the estimate is the exact mask here


def test_missing_and_mis_sized_foreground_masks_are_refused(tmp_path):
    good, fg = _folder(tmp_path / "a", n=2)
    (fg / "001_mask.png").unlink()
    with pytest.raises(InputError, match="no mask for 1 of the --backgrounds images"):
        Backgrounds(good, str(fg), 64)
    good, fg = _folder(tmp_path / "b", n=1, mask_size=48, suffix="")
    with pytest.raises(InputError, match="000.png: foreground mask size 48x48 differs from image"):
        Backgrounds(good, str(fg), 64)


def test_generation_uses_the_training_source_unless_told(caplog, tmp_path):
    assert generation_foreground(None, "auto") == "auto"
    with caplog.at_level(logging.WARNING):
        assert generation_foreground("none", "auto") == "none"
    assert "trained with auto foregrounds" in caplog.text
    assert generation_foreground(str(tmp_path), "/data/pill/foreground") == str(tmp_path)  # folder for folder
    with pytest.raises(InputError, match="trained with foreground masks from a folder"):
        generation_foreground(None, "/data/pill/foreground")
    with pytest.raises(InputError, match="do not record"):
        generation_foreground(None, None)
