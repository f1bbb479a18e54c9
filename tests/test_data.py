"""Data layer: image/mask loading, MVTec layout and split, folder layout, validation, training pairs."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dualanodiff.data import (
    DefectPairDataset,
    DefectSample,
    anomaly_samples,
    category_test_set,
    default_flips,
    few_shot_count,
    few_shot_split,
    folder_normals,
    folder_samples,
    list_anomaly_types,
    list_categories,
    load_folder,
    load_mask,
    load_rgb,
    normal_test_samples,
    normal_train_samples,
    validate_training_samples,
)
from dualanodiff.errors import InputError

# Test images per anomaly type of the real MVTec AD (1258 defect images in 73 types).
MVTEC_COUNTS = {
    "bottle": {"broken_large": 20, "broken_small": 22, "contamination": 21},
    "cable": {
        "bent_wire": 13, "cable_swap": 12, "combined": 11, "cut_inner_insulation": 14,
        "cut_outer_insulation": 10, "missing_cable": 12, "missing_wire": 10, "poke_insulation": 10,
    },
    "capsule": {"crack": 23, "faulty_imprint": 22, "poke": 21, "scratch": 23, "squeeze": 20},
    "carpet": {"color": 19, "cut": 17, "hole": 17, "metal_contamination": 17, "thread": 19},
    "grid": {"bent": 12, "broken": 12, "glue": 11, "metal_contamination": 11, "thread": 11},
    "hazelnut": {"crack": 18, "cut": 17, "hole": 18, "print": 17},
    "leather": {"color": 19, "cut": 19, "fold": 17, "glue": 19, "poke": 18},
    "metal_nut": {"bend": 25, "color": 22, "flip": 23, "scratch": 23},
    "pill": {
        "color": 25, "combined": 17, "contamination": 21, "crack": 26, "faulty_imprint": 19,
        "pill_type": 9, "scratch": 24,
    },
    "screw": {
        "manipulated_front": 24, "scratch_head": 24, "scratch_neck": 25, "thread_side": 23, "thread_top": 23,
    },
    "tile": {"crack": 17, "glue_strip": 18, "gray_stroke": 16, "oil": 18, "rough": 15},
    "toothbrush": {"defective": 30},
    "transistor": {"bent_lead": 10, "cut_lead": 10, "damaged_case": 10, "misplaced": 10},
    "wood": {"color": 8, "combined": 11, "hole": 10, "liquid": 10, "scratch": 21},
    "zipper": {
        "broken_teeth": 19, "combined": 16, "fabric_border": 17, "fabric_interior": 16, "rough": 17,
        "split_teeth": 18, "squeezed_teeth": 16,
    },
}  # fmt: skip

SIZE = 8


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(value: int = 100) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), value, np.uint8)


def _mask(box: tuple[int, int, int, int] = (2, 2, 5, 5), size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


def make_tree(
    root: Path,
    category: str,
    counts: dict[str, int],
    n_train_good: int = 3,
    n_test_good: int = 2,
    foreground: bool = False,
) -> Path:
    """A tiny MVTec-layout category; files are written in shuffled order to test name sorting."""
    cat = root / category
    jobs = [("train/good", i) for i in range(n_train_good)] + [("test/good", i) for i in range(n_test_good)]
    for kind, n in counts.items():
        jobs += [(f"test/{kind}", i) for i in range(n)]
    random.Random(0).shuffle(jobs)
    for rel, i in jobs:
        img = _png(cat / rel / f"{i:03d}.png", _rgb(i))
        kind = rel.split("/")[1]
        if kind != "good":
            _png(cat / "ground_truth" / kind / f"{i:03d}_mask.png", _mask())
        if foreground:
            _png(cat / "foreground" / img.relative_to(cat), _mask((1, 1, 7, 7)))
    return root


# ----------------------------------------------------------------------------------------- images


def test_load_rgb_converts_gray_rgba_palette_16bit(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = load_rgb(_png(tmp_path / "gray.png", gray))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert all((out[..., c] == gray).all() for c in range(3))

    rgba = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    assert (load_rgb(_png(tmp_path / "rgba.png", rgba)) == rgba[..., :3]).all()

    pal = Image.fromarray((np.arange(64).reshape(8, 8) % 3).astype(np.uint8), mode="L").convert("P")
    colours = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    pal.putpalette(colours + [0] * (768 - len(colours)))
    pal.save(tmp_path / "pal.png")
    out = load_rgb(tmp_path / "pal.png")
    assert (
        (out[0, 0] == [255, 0, 0]).all()
        and (out[0, 1] == [0, 255, 0]).all()
        and (out[0, 2] == [0, 0, 255]).all()
    )

    g16 = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    _png(tmp_path / "g16.png", g16)
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_rgb(tmp_path / "g16.png")
    assert (out[..., 1] == np.rint(g16 / 257.0).astype(np.uint8)).all()


def test_load_mask_binarises_at_half_range(tmp_path):
    m8 = np.array([[0, 127, 128, 255]], np.uint8)
    assert load_mask(_png(tmp_path / "m8.png", m8)).tolist() == [[False, False, True, True]]
    m16 = np.array([[0, 32767, 32768, 65535]], np.uint16)
    assert load_mask(_png(tmp_path / "m16.png", m16)).tolist() == [[False, False, True, True]]
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 1] = [200, 0, 0]  # a red mask pixel counts as set
    rgb[0, 2] = [100, 100, 100]
    assert load_mask(_png(tmp_path / "rgb.png", rgb)).tolist() == [[False, True, False]]
    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(tmp_path / "bit.png")
    assert load_mask(tmp_path / "bit.png").tolist() == [[False, True]]


def test_load_mask_resizes_before_binarising(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[:, :4] = 255
    out = load_mask(_png(tmp_path / "half.png", m), size=(16, 12))
    assert out.shape == (12, 16) and out[:, :8].all() and not out[:, 8:].any()


def test_unreadable_images_raise_input_error_naming_file(tmp_path):
    good = _png(tmp_path / "ok.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    for path in (truncated, text, tmp_path / "missing.png"):
        for loader in (load_rgb, load_mask):
            with pytest.raises(InputError, match=path.name):
                loader(path)


# ------------------------------------------------------------------------------------- MVTec split


@pytest.mark.parametrize(
    "n, strict, compat", [(17, 5, 6), (18, 6, 6), (10, 3, 3), (12, 4, 5), (30, 10, 11), (8, 2, 3), (9, 3, 3)]
)
def test_few_shot_split_counts_on_tree(tmp_path, n, strict, compat):
    make_tree(tmp_path, "thing", {"crack": n})
    samples = anomaly_samples(tmp_path, "thing", "crack")
    assert [s.image.name for s in samples] == [f"{i:03d}.png" for i in range(n)]
    assert all(s.mask == tmp_path / "thing/ground_truth/crack" / f"{s.image.stem}_mask.png" for s in samples)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strict never warns
        split = few_shot_split(samples)
    assert split.train == samples[:strict] and split.test == samples[strict:]

    if compat > strict:
        with pytest.warns(UserWarning, match="overlap"):
            split = few_shot_split(samples, "paper-compat")
        assert set(split.train) & set(split.test) == {samples[strict]}
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            split = few_shot_split(samples, "paper-compat")
    assert split.train == samples[:compat] and split.test == samples[strict:]


def test_paper_compat_leaks_in_43_of_73_real_mvtec_types():
    counts = [n for types in MVTEC_COUNTS.values() for n in types.values()]
    assert len(counts) == 73 and sum(counts) == 1258
    leaks = sum(few_shot_count(n, "paper-compat") > few_shot_count(n, "strict") for n in counts)
    assert leaks == 43  # the number METHOD.md quotes for the official code
    assert few_shot_count(17) == 5 and few_shot_count(17, "paper-compat") == 6
    with pytest.raises(InputError, match="split mode"):
        few_shot_count(17, "loose")


def test_category_listing_and_test_set(tmp_path):
    make_tree(tmp_path, "screw", {"scratch": 10, "bend": 8}, n_train_good=4, n_test_good=3)
    make_tree(tmp_path, "bottle", {"broken": 6})
    assert list_categories(tmp_path) == ["bottle", "screw"]
    assert list_anomaly_types(tmp_path, "screw") == ["bend", "scratch"]
    assert [s.image.name for s in normal_train_samples(tmp_path, "screw")] == [
        f"{i:03d}.png" for i in range(4)
    ]
    assert all(s.mask is None and s.anomaly_type == "good" for s in normal_test_samples(tmp_path, "screw"))

    test = category_test_set(tmp_path, "screw")
    by_type = {k: [s.image.name for s in test if s.anomaly_type == k] for k in ("bend", "scratch", "good")}
    assert by_type == {
        "bend": [f"{i:03d}.png" for i in range(2, 8)],
        "scratch": [f"{i:03d}.png" for i in range(3, 10)],
        "good": ["000.png", "001.png", "002.png"],
    }
    with pytest.warns(UserWarning, match="overlap for bend"):
        compat = category_test_set(tmp_path, "screw", mode="paper-compat")
    assert compat == test  # the compat test set is the strict one; only the training set grows


def test_missing_mask_and_category_errors(tmp_path):
    make_tree(tmp_path, "hazelnut", {"crack": 6, "hole": 3})
    (tmp_path / "hazelnut/ground_truth/crack/004_mask.png").unlink()
    with pytest.raises(InputError) as e:
        anomaly_samples(tmp_path, "hazelnut", "crack")
    msg = str(e.value)
    assert "test/crack/004.png" in msg and "ground_truth/crack/004_mask.png" in msg

    with pytest.raises(InputError, match="categories there: hazelnut"):
        anomaly_samples(tmp_path, "carpet", "hole")
    with pytest.raises(InputError, match="types there: crack, hole"):
        anomaly_samples(tmp_path, "hazelnut", "print")


def test_foreground_masks_are_picked_up(tmp_path):
    make_tree(tmp_path, "pill", {"crack": 3}, foreground=True)
    make_tree(tmp_path, "carpet", {"hole": 3})
    s = anomaly_samples(tmp_path, "pill", "crack")[1]
    assert s.foreground == tmp_path / "pill/foreground/test/crack/001.png"
    assert (
        normal_train_samples(tmp_path, "pill")[0].foreground
        == tmp_path / "pill/foreground/train/good/000.png"
    )
    assert anomaly_samples(tmp_path, "carpet", "hole")[0].foreground is None
    # Named like the ground-truth masks, <stem>_mask.png, they are found too.
    old = tmp_path / "pill/foreground/test/crack/001.png"
    old.rename(old.with_name("001_mask.png"))
    assert anomaly_samples(tmp_path, "pill", "crack")[1].foreground == old.with_name("001_mask.png")


# ------------------------------------------------------------------------------------ folder layout


def test_folder_layout_matches_by_stem(tmp_path):
    d = tmp_path / "scuff"
    _png(d / "images/a.png", _rgb())
    _png(d / "images/b.png", _rgb())
    _png(d / "masks/a.png", _mask())
    _png(d / "masks/b_mask.png", _mask())
    _png(d / "foreground/b.png", _mask())
    _png(d / "foreground/g1_mask.png", _mask())  # named like a defect mask: matched all the same
    _png(d / "good/g1.png", _rgb())
    _png(d / "good/g2.png", _rgb())

    samples = folder_samples(d / "images", d / "masks", d / "foreground")
    assert [(s.image.name, s.mask.name, s.anomaly_type) for s in samples] == [
        ("a.png", "a.png", "scuff"),
        ("b.png", "b_mask.png", "scuff"),
    ]
    assert samples[0].foreground is None and samples[1].foreground == d / "foreground/b.png"
    normals = folder_normals(d / "good", d / "foreground")
    assert [(s.image.name, s.mask, s.foreground) for s in normals] == [
        ("g1.png", None, d / "foreground/g1_mask.png"),
        ("g2.png", None, None),
    ]
    ds = load_folder(d)
    assert ds.samples == samples and ds.normals == normals

    _png(d / "images/c.png", _rgb())
    with pytest.raises(InputError, match=r"images/c\.png: mask not found"):
        folder_samples(d / "images", d / "masks")


# --------------------------------------------------------------------------------------- validation


def test_validate_lists_every_problem(tmp_path):
    ok = DefectSample(_png(tmp_path / "ok.png", _rgb()), _png(tmp_path / "ok_mask.png", _mask()), "crack")
    assert validate_training_samples([ok]) == [ok]

    big = _png(tmp_path / "big.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(big.read_bytes()[:200])

    def sample(name: str, mask: np.ndarray | None) -> DefectSample:
        image = _png(tmp_path / f"{name}.png", _rgb())
        return DefectSample(
            image, None if mask is None else _png(tmp_path / f"{name}_mask.png", mask), "crack"
        )

    bad = [
        sample("nomask", None),
        DefectSample(_png(tmp_path / "gone.png", _rgb()), tmp_path / "gone_mask.png", "crack"),
        DefectSample(trunc, _png(tmp_path / "trunc_mask.png", _mask()), "crack"),
        sample("size", _mask(size=(6, 8))),
        sample("empty", _mask((0, 0, 0, 0))),
        DefectSample(
            _png(tmp_path / "fg.png", _rgb()), _png(tmp_path / "fg_mask.png", _mask()), "crack",
            foreground=_png(tmp_path / "fg_foreground.png", _mask(size=(8, 6))),
        ),
    ]  # fmt: skip
    with pytest.raises(InputError) as e:
        validate_training_samples([ok, *bad])
    msg = str(e.value)
    # One line: the count, the first three problems, then how many more (`errors.listed`).
    assert msg.startswith("6 problems") and "\n" not in msg and msg.endswith("and 3 more")
    assert "nomask.png: missing mask" in msg
    assert "gone.png: missing mask" in msg and "gone_mask.png" in msg
    assert "trunc.png: cannot read image" in msg
    assert "ok.png" not in msg.replace("ok_mask", "")  # the good sample is not reported
    # The other three, each alone, name their file and problem.
    for sample, text in (
        (bad[3], "size_mask.png: mask size 8x6 differs from image"),
        (bad[4], "empty_mask.png: mask is empty"),
        (bad[5], "fg_foreground.png: foreground mask size 6x8 differs from image"),
    ):
        with pytest.raises(InputError, match=text.replace(".", r"\.")):
            validate_training_samples([ok, sample])

    with pytest.raises(InputError, match="no usable training pair"):
        validate_training_samples([])
    with pytest.raises(InputError, match="no usable training pair") as e:
        validate_training_samples(bad[:1])
    assert "nomask.png: missing mask" in str(e.value)


# ----------------------------------------------------------------------------------- training pairs


def _asymmetric_sample(tmp_path: Path, size: int = 16, foreground: bool = True) -> DefectSample:
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), (x * y) % 256], -1).astype(np.uint8)
    m = np.zeros((size, size), np.uint8)
    m[2:6, 3:12] = 255  # an "L": no symmetry along either axis
    m[2:12, 3:6] = 255
    fg = np.zeros((size, size), np.uint8)
    fg[1:14, 2:9] = 255
    return DefectSample(
        _png(tmp_path / "img.png", img),
        _png(tmp_path / "img_mask.png", m),
        "crack",
        _png(tmp_path / "fg.png", fg) if foreground else None,
    )


def test_pair_item_values(tmp_path):
    s = _asymmetric_sample(tmp_path)
    item = DefectPairDataset([s], resolution=16, flips=False, with_background=True)[0]
    img = torch.from_numpy(load_rgb(s.image).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    m = torch.from_numpy(load_mask(s.mask)).float()[None]
    fg = torch.from_numpy(load_mask(s.foreground))[None]
    assert {k: (tuple(v.shape), v.dtype) for k, v in item.items()} == {
        "image": ((3, 16, 16), torch.float32),
        "mask": ((1, 16, 16), torch.float32),
        "part": ((3, 16, 16), torch.float32),
        "background": ((3, 16, 16), torch.float32),
    }
    assert torch.equal(item["image"], img) and torch.equal(item["mask"], m)
    inside = m.bool().expand(3, -1, -1)
    assert torch.equal(item["part"][inside], img[inside])
    outside = item["part"][~inside]
    assert (outside == 0.0).all() and not torch.signbit(outside).any()  # +0.0, mid-grey
    obj = fg.expand(3, -1, -1)
    assert (item["background"][obj] == -1.0).all() and torch.equal(item["background"][~obj], img[~obj])

    texture = DefectPairDataset([_asymmetric_sample(tmp_path, foreground=False)], 16, False, True)[0]
    assert torch.equal(texture["background"], texture["image"])
    assert "background" not in DefectPairDataset([s], 16, flips=False)[0]
    # A foreground mask of another size is refused (naming it), never resized.
    Image.open(s.foreground).resize((8, 8)).save(s.foreground)
    with pytest.raises(InputError, match="foreground mask size 8x8 differs"):
        DefectPairDataset([s], 16, flips=False, with_background=True)[0]


def test_pair_resize_range_and_mask_threshold(tmp_path):
    s = _asymmetric_sample(tmp_path)
    item = DefectPairDataset([s], resolution=32, flips=False, with_background=True)[0]
    assert item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() and item["image"].max() <= 1
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    expected = torch.from_numpy(load_mask(s.mask)).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(item["mask"][0].bool(), expected)  # 2x bilinear of a binary mask, >= 0.5
    assert (item["part"][~item["mask"].bool().expand(3, -1, -1)] == 0).all()


def test_flips_identical_across_tensors_and_reproducible(tmp_path):
    s = _asymmetric_sample(tmp_path)
    ref = DefectPairDataset([s], 16, flips=False, with_background=True)[0]
    ds = DefectPairDataset([s], 16, flips=True, with_background=True, seed=3)
    seen = set()
    for epoch in range(24):
        ds.set_epoch(epoch)
        item = ds[0]
        h, v = ds.flips_for(0)
        seen.add((h, v))
        dims = [d for d, on in ((-1, h), (-2, v)) if on]
        for k in ref:
            assert torch.equal(item[k], torch.flip(ref[k], dims) if dims else ref[k]), (epoch, k)
    assert seen == {(False, False), (False, True), (True, False), (True, True)}

    # Resuming: a fresh dataset at epoch 17 gives what the first one gave at epoch 17.
    ds.set_epoch(17)
    again = DefectPairDataset([s], 16, flips=True, with_background=True, seed=3)
    again.set_epoch(17)
    assert all(torch.equal(ds[0][k], again[0][k]) for k in ref)
    other = DefectPairDataset([s], 16, flips=True, seed=4)
    assert [ds.flips_for(0, e) for e in range(24)] != [other.flips_for(0, e) for e in range(24)]
    off = DefectPairDataset([s], 16, flips=False)
    assert all(off.flips_for(0, e) == (False, False) for e in range(10))


def test_pairs_batch_through_dataloader(tmp_path):
    make_tree(tmp_path, "pill", {"crack": 6}, foreground=True)
    samples = validate_training_samples(few_shot_split(anomaly_samples(tmp_path, "pill", "crack")).train)
    batch = next(iter(DataLoader(DefectPairDataset(samples, 16, with_background=True), batch_size=2)))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["background"].shape == (2, 3, 16, 16)
    with pytest.raises(InputError, match="missing mask"):
        DefectPairDataset([DefectSample(samples[0].image, None, "crack")])


def test_default_flips():
    assert not default_flips("metal_nut", "flip") and default_flips("metal_nut", "scratch")
    assert not default_flips("transistor", "misplaced") and default_flips("transistor", "bent_lead")
    assert not any(default_flips("cable", t) for t in MVTEC_COUNTS["cable"])
    assert default_flips("hazelnut", "crack")
