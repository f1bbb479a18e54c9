"""The procedural MVTec-layout dataset: layout, exact masks, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dualanodiff.data import (
    DefectPairDataset,
    anomaly_samples,
    few_shot_split,
    list_anomaly_types,
    list_categories,
    load_mask,
    load_rgb,
    normal_test_samples,
    normal_train_samples,
    validate_training_samples,
)
from dualanodiff.errors import InputError
from dualanodiff.synthetic import DEFAULT_DEFECT_COUNTS, DEFECT_TYPES, make_synthetic, synthetic_sample
from dualanodiff.synthetic.common import composite


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", seed=0, resolution=64)


def test_layout_and_counts(dataset):
    assert list_categories(dataset) == ["pill", "weave"]
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["resolution"] == 64 and (dataset / "README.txt").is_file()
    for cat in ("pill", "weave"):
        assert list_anomaly_types(dataset, cat) == sorted(DEFECT_TYPES[cat])
        assert 20 <= len(normal_train_samples(dataset, cat)) <= 40
        assert len(normal_test_samples(dataset, cat)) == 10
        for kind in DEFECT_TYPES[cat]:
            samples = anomaly_samples(dataset, cat, kind)
            assert len(samples) == DEFAULT_DEFECT_COUNTS[cat][kind] and 12 <= len(samples) <= 18
            train = validate_training_samples(few_shot_split(samples).train)
            assert 4 <= len(train) <= 6
            assert all((s.foreground is not None) == (cat == "pill") for s in samples)
    assert all(s.foreground is not None for s in normal_train_samples(dataset, "pill"))
    img = Image.open(dataset / "pill/test/crack/000.png")
    assert img.size == (64, 64) and img.mode == "RGB"
    assert Image.open(dataset / "pill/ground_truth/crack/000_mask.png").mode == "L"


def test_masks_are_exactly_the_changed_pixels(dataset):
    for cat in ("pill", "weave"):
        for kind in DEFECT_TYPES[cat]:
            for s in anomaly_samples(dataset, cat, kind):
                i = int(s.image.stem)
                ref = synthetic_sample(cat, "test", kind, i, seed=0, resolution=64)
                image, mask = load_rgb(s.image), load_mask(s.mask)
                assert np.array_equal(image, ref.image)
                assert np.array_equal(mask, (image != ref.clean).any(-1)), (cat, kind, i)
                assert mask.sum() >= 4
                raw = np.asarray(Image.open(s.mask))
                assert set(np.unique(raw).tolist()) == {0, 255}
                if cat == "pill":  # defects of objects lie on the object
                    assert not (mask & ~load_mask(s.foreground)).any()
    for s in normal_test_samples(dataset, "weave")[:3]:
        ref = synthetic_sample("weave", "test", "good", int(s.image.stem), seed=0, resolution=64)
        assert np.array_equal(load_rgb(s.image), ref.clean) and not ref.mask.any()


@pytest.mark.parametrize("value", [0, 255])
def test_composite_changes_every_pixel_of_the_region(value):
    # Where the re-rendered colour happens to equal the original, the nudge must kick in.
    clean = np.full((16, 16, 3), value, np.uint8)
    changed = clean.copy()
    changed[:4] = 255 - value
    region = np.zeros((16, 16), bool)
    region[2:8, 2:8] = True  # half of it re-renders to the same colour
    out, mask = composite(clean, changed, region)
    assert np.array_equal(mask, region) and np.array_equal(mask, (out != clean).any(-1))
    assert np.array_equal(out[~region], clean[~region])


def _defect_pixels(module, kind: str, scene) -> tuple[np.ndarray, np.ndarray]:
    """A defect drawn with fixed random draws into ``scene``: (its pixels' colours, its region)."""
    changed, region = module.DEFECTS[kind](scene, np.random.default_rng(7))
    return changed[region].astype(float), region


@pytest.mark.parametrize(
    ("category", "kind", "change"),
    [
        # light from the other side; a pill of another colour; another backing behind the cloth
        ("pill", "spot", lambda s: {"light": s.light * np.array([-1.0, -1.0, 1.0])}),
        ("pill", "stain", lambda s: {"albedo": s.albedo[..., ::-1].copy()}),
        ("weave", "hole", lambda s: {"backing": s.backing[::-1].copy() + 0.3}),
    ],
)
def test_a_defect_looks_different_in_another_scene(category, kind, change):
    """The same defect (same region, same random draws) in a scene that differs in one respect has other
    colours: a defect's look follows the light, surface and background where it lands, so a defect pasted
    from another image is not what the renderer would have drawn there."""
    from dataclasses import replace

    from dualanodiff.synthetic import pill, weave

    module = pill if category == "pill" else weave
    scene = module.make_scene(np.random.default_rng(1), 64)
    here, region = _defect_pixels(module, kind, scene)
    there, region_there = _defect_pixels(module, kind, replace(scene, **change(scene)))
    assert np.array_equal(region, region_there) and region.sum() >= 4
    assert np.abs(here - there).mean() > 10  # grey levels of 255


def test_deterministic_for_a_seed(tmp_path):
    small = {"weave": {"crack": 3, "hole": 3, "scratch": 3, "stain": 3}}
    kwargs = dict(resolution=48, n_train_good=2, n_test_good=1, defect_counts=small, categories=("weave",))
    a = make_synthetic(tmp_path / "a", seed=5, **kwargs)
    b = make_synthetic(tmp_path / "b", seed=5, **kwargs)
    c = make_synthetic(tmp_path / "c", seed=6, **kwargs)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 + 1 + 12 * 2
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all(np.array_equal(np.asarray(Image.open(a / f)), np.asarray(Image.open(b / f))) for f in files)
    assert not np.array_equal(
        load_rgb(a / "weave/test/hole/000.png"), load_rgb(c / "weave/test/hole/000.png")
    )

    # Same settings again: nothing is rewritten. Other settings: refused unless overwrite=True.
    stamp = (a / "weave/test/hole/000.png").stat().st_mtime_ns
    assert make_synthetic(tmp_path / "a", seed=5, **kwargs) == a
    assert (a / "weave/test/hole/000.png").stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="other settings"):
        make_synthetic(tmp_path / "a", seed=7, **kwargs)
    make_synthetic(tmp_path / "a", seed=6, overwrite=True, **kwargs)
    assert np.array_equal(load_rgb(a / "weave/test/hole/000.png"), load_rgb(c / "weave/test/hole/000.png"))
    (tmp_path / "user").mkdir()
    (tmp_path / "user/keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        make_synthetic(tmp_path / "user", overwrite=True)


def test_feeds_the_pair_dataset(dataset):
    train = few_shot_split(anomaly_samples(dataset, "pill", "spot")).train
    item = DefectPairDataset(train, resolution=32, with_background=True)[0]
    assert (item["background"] == -1).float().mean() > 0.2  # the pill is blacked out
    assert (item["part"][item["mask"].expand(3, -1, -1) == 0] == 0).all()
