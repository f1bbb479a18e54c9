"""Placement on normal images: the pipeline keeps the normal image outside the allowed area bit for bit, the
regions come from the few-shot shapes on the object, and the mask never leaves the allowed area."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dualanodiff.errors import InputError
from dualanodiff.masks.regions import RegionSampler, allowed_area, blend_weights, composite
from dualanodiff.model.dual_unet import AdapterConfig
from dualanodiff.pipeline import DualAnoDiffPlacementPipeline


def _normal(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _square(top: int, left: int, side: int, size: int = 64) -> np.ndarray:
    region = np.zeros((size, size), bool)
    region[top : top + side, left : left + side] = True
    return region


@pytest.fixture(scope="module")
def placement_pipe(tiny_base_dir, tiny_adapters):
    pipe = DualAnoDiffPlacementPipeline.from_pretrained(tiny_base_dir, adapters=tiny_adapters)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_outside_the_band_the_image_is_the_normal_image_bit_for_bit(placement_pipe):
    normals, regions = [_normal(0), _normal(1)], [_square(10, 12, 12), _square(30, 5, 20)]
    out = placement_pipe(normals, regions, band=4, num_inference_steps=3, guidance_scale=2.5, seeds=[1, 2])
    for image, normal, region, allowed in zip(out.images, normals, regions, out.allowed):
        placed = (np.asarray(image) * 255).round().astype(np.uint8)
        assert np.array_equal(allowed, allowed_area(region, 4))
        assert np.array_equal(placed[~allowed], normal[~allowed])
        assert np.abs(placed[region].astype(int) - normal[region]).mean() > 5  # the region was regenerated
    assert out.nonfinite_steps == [None, None]


def test_the_whole_branch_is_held_to_the_normal_latent_outside(placement_pipe, monkeypatch):
    """The sampler's final whole-branch latents equal the normal image's latent on every cell outside the free
    area, and differ inside it; the part branch is held to its mid-grey canvas there."""
    normal, region = _normal(3), _square(20, 20, 16)
    final = {}
    denoise = placement_pipe.denoise

    def spy(*args, **kwargs):
        final["latents"], nonfinite = denoise(*args, **kwargs)
        return final["latents"], nonfinite

    monkeypatch.setattr(placement_pipe, "denoise", spy)
    out = placement_pipe([normal], [region], band=4, num_inference_steps=4, seeds=[5])
    latent = placement_pipe.encode_normals([normal])[0]
    free = placement_pipe.free_latent_mask(out.allowed, latent.shape[-2:])[0, 0].bool()
    assert free.any() and not free.all()
    whole, part = final["latents"][0], final["latents"][1]
    assert torch.equal(whole[:, ~free], latent[:, ~free])
    assert (whole[:, free] - latent[:, free]).abs().max() > 1e-3
    canvas = placement_pipe.canvas_latent((64, 64))[0]
    assert torch.equal(part[:, ~free], canvas[:, ~free])  # the part is held to its empty canvas
    assert (part[:, free] - canvas[:, free]).abs().max() > 1e-3


def test_the_same_seed_gives_the_same_pair_whatever_the_batch(placement_pipe):
    normals, regions = [_normal(0), _normal(1)], [_square(10, 12, 12), _square(30, 5, 20)]
    both = placement_pipe(normals, regions, num_inference_steps=2, seeds=[1, 2])
    alone = placement_pipe(normals[1:], regions[1:], num_inference_steps=2, seeds=[2])
    assert np.abs(both.images[1] - alone.images[0]).max() < 2 / 255


def test_bcm_adapters_place_without_backgrounds(tiny_base_dir):
    pipe = DualAnoDiffPlacementPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=4, bcm=True))
    pipe.set_progress_bar_config(disable=True)
    out = pipe([_normal(0)], [_square(8, 8, 16)], num_inference_steps=2, seeds=[0])
    assert out.nonfinite_steps == [None]


@pytest.mark.parametrize(
    ("normals", "regions", "band", "message"),
    [
        ([_normal(0)], [_square(0, 0, 8), _square(0, 0, 8)], 4, "2 regions for 1 normal images"),
        ([_normal(0)], [np.zeros((64, 64), bool)], 4, "region 0 is empty"),
        ([_normal(0)], [_square(0, 0, 8, size=32)], 4, "the normal image is (64, 64)"),
        ([_normal(0)], [_square(0, 0, 8)], -1, "band must be 0 or more"),
        ([_normal(0, size=62)], [_square(0, 0, 8, size=62)], 4, "multiples of"),
    ],
)
def test_bad_placement_inputs_are_refused(placement_pipe, normals, regions, band, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        placement_pipe(normals, regions, band=band, num_inference_steps=1)


def test_blend_weights_and_composite_keep_the_normal_pixels_beyond_the_band():
    region = _square(20, 20, 10)
    weights = blend_weights(region, 3)
    assert (weights[region] == 1).all()
    assert (weights[~allowed_area(region, 3)] == 0).all()
    between = allowed_area(region, 3) & ~region
    assert ((weights[between] > 0) & (weights[between] < 1)).all()
    normal, generated = _normal(0), _normal(1)
    out = composite(generated, normal, weights)
    assert np.array_equal(out[weights == 0], normal[weights == 0])
    assert np.array_equal(out[region], generated[region])


def test_regions_are_drawn_from_the_few_shot_shapes_on_the_object():
    shape = np.zeros((64, 64), bool)
    shape[10:16, 10:30] = True  # a 6 x 20 bar
    sampler = RegionSampler([shape], ["bar"], (64, 64), margin=0.0)
    foreground = np.zeros((64, 64), bool)
    foreground[16:56, 8:48] = True
    turns = set()
    for seed in range(20):
        drawn = sampler.draw(np.random.default_rng(seed), foreground)
        assert drawn.region.any() and not drawn.region[~foreground].any()
        assert drawn.spec["kind"] == "auto" and drawn.spec["shape"] == "bar"
        turns.add(drawn.spec["rot90"] % 2)
        again = sampler.draw(np.random.default_rng(seed), foreground)
        assert np.array_equal(again.region, drawn.region)  # a seed makes the same region
    assert turns == {0, 1}  # rotated both ways


def test_a_region_on_an_empty_foreground_is_refused():
    shape = _square(0, 0, 8)
    sampler = RegionSampler([shape], ["sq"], (64, 64))
    with pytest.raises(InputError, match="foreground estimate is empty"):
        sampler.draw(np.random.default_rng(0), np.zeros((64, 64), bool))
    tiny = np.zeros((64, 64), bool)
    tiny[0, 0] = True
    with pytest.raises(InputError, match="fits on the object"):
        sampler.draw(np.random.default_rng(0), tiny)


# -- dualanodiff generate --on-normal ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def placed_data(tmp_path_factory):
    """A 64 px synthetic pill category (an object: the foreground estimate matters) with few-shot cracks."""
    from dualanodiff.synthetic import make_synthetic

    root = make_synthetic(
        tmp_path_factory.mktemp("placed_data"), resolution=64, n_train_good=4, n_test_good=1,
        categories=["pill"], defect_counts={"pill": {"crack": 6}},
    )  # fmt: skip
    return root


def _generate(capsys, tiny_base_dir, adapters, out, *extra):
    from dualanodiff.cli import main

    args = ["generate", "--base", str(tiny_base_dir), "--adapters", str(adapters), "--out", str(out),
            "--num-pairs", "4", "--steps", "2", "--batch-size", "2", "--max-area", "1.0", "--no-progress"]  # fmt: skip
    code = main([*args, *extra])
    return code, capsys.readouterr().err


def _records(out):
    from dualanodiff.io import read_jsonl

    return {r["name"]: r for r in read_jsonl(out / "manifest.jsonl")}


def _pair_image(out, name, kept):
    from PIL import Image

    folder = out if kept else out / "rejected"
    return np.asarray(Image.open(folder / "image" / f"{name}.png").convert("RGB"))


def _pair_mask(out, name, kept):
    from PIL import Image

    folder = out if kept else out / "rejected"
    return np.asarray(Image.open(folder / "mask" / f"{name}.png")) > 0


@pytest.mark.slow
def test_generate_on_normal_keeps_the_normal_image_outside_the_region_file(
    capsys, tiny_base_dir, tiny_adapters, placed_data, tmp_path
):
    from PIL import Image

    out = tmp_path / "placed"
    code, err = _generate(
        capsys, tiny_base_dir, tiny_adapters, out, "--on-normal", "data", "--data", str(placed_data),
        "--category", "pill", "--anomaly", "crack",
    )  # fmt: skip
    assert code == 0, err
    records = _records(out)
    assert len(records) == 4
    for name, record in records.items():
        allowed = np.asarray(Image.open(out / "region" / f"{name}.png")) > 0
        normal = np.asarray(Image.open(record["normal"]).convert("RGB"))
        image = _pair_image(out, name, record["kept"])
        assert allowed.any() and not allowed.all()
        assert np.array_equal(image[~allowed], normal[~allowed]), name  # bit for bit outside the band
        assert not _pair_mask(out, name, record["kept"])[~allowed].any()  # the mask never leaves the band
        assert record["region"]["kind"] == "auto" and record["region"]["shape"].endswith(".png")
        assert Path(record["normal"]).parent == placed_data / "pill" / "train" / "good"
    # Resumes: the same command makes nothing new and changes nothing.
    before = {n: _pair_image(out, n, r["kept"]) for n, r in records.items()}
    code, err = _generate(
        capsys, tiny_base_dir, tiny_adapters, out, "--on-normal", "data", "--data", str(placed_data),
        "--category", "pill", "--anomaly", "crack",
    )  # fmt: skip
    assert code == 0, err
    assert _records(out) == records
    assert all(np.array_equal(before[n], _pair_image(out, n, r["kept"])) for n, r in records.items())


@pytest.mark.slow
def test_trim_keeps_the_normal_image_outside_the_mask_and_band_and_the_same_masks(
    capsys, tiny_base_dir, tiny_adapters, placed_data, tmp_path
):
    """--trim: each pair equals the untrimmed pair inside its mask and the normal image beyond the mask grown
    by the band; masks and verdicts are the untrimmed ones; recorded in config.json."""
    import json

    from PIL import Image

    from dualanodiff.masks.regions import allowed_area

    common = ["--on-normal", "data", "--data", str(placed_data), "--category", "pill", "--anomaly", "crack",
              "--band", "3", "--departure", "4"]  # fmt: skip
    plain, trimmed = tmp_path / "plain", tmp_path / "trimmed"
    assert _generate(capsys, tiny_base_dir, tiny_adapters, plain, *common)[0] == 0
    assert _generate(capsys, tiny_base_dir, tiny_adapters, trimmed, *common, "--trim")[0] == 0
    assert json.loads((trimmed / "config.json").read_text())["trim"] is True
    assert "trim" not in json.loads((plain / "config.json").read_text())
    before, after = _records(plain), _records(trimmed)
    assert [r["kept"] for r in before.values()] == [r["kept"] for r in after.values()]
    masked = 0
    for name, record in after.items():
        mask = _pair_mask(trimmed, name, record["kept"])
        assert np.array_equal(mask, _pair_mask(plain, name, record["kept"]))
        image, untrimmed = (
            _pair_image(trimmed, name, record["kept"]),
            _pair_image(plain, name, record["kept"]),
        )
        normal = np.asarray(Image.open(record["normal"]).convert("RGB"))
        if mask.any():
            masked += 1
            assert np.array_equal(image[mask], untrimmed[mask])
            outside = ~allowed_area(mask, 3)
            assert np.array_equal(image[outside], normal[outside])
    assert masked > 0


@pytest.mark.slow
def test_generate_where_dir_puts_the_defect_where_the_user_said(
    capsys, tiny_base_dir, tiny_adapters, placed_data, tmp_path
):
    from PIL import Image

    good = placed_data / "pill" / "train" / "good"
    where = tmp_path / "where"
    where.mkdir()
    regions = {}
    for k, path in enumerate(sorted(good.iterdir())):
        region = _square(16 + 2 * k, 20, 12)
        regions[path.stem] = region
        Image.fromarray(region.astype(np.uint8) * 255).save(where / f"{path.stem}.png")
    out = tmp_path / "placed"
    code, err = _generate(
        capsys, tiny_base_dir, tiny_adapters, out, "--on-normal", str(good), "--where", str(where),
        "--band", "3", "--foreground", "none", "--shard", "0/2",
    )  # fmt: skip
    assert code == 0, err
    code, err = _generate(
        capsys, tiny_base_dir, tiny_adapters, out, "--on-normal", str(good), "--where", str(where),
        "--band", "3", "--foreground", "none", "--shard", "1/2",
    )  # fmt: skip
    assert code == 0, err
    records = _records(out)
    assert len(records) == 4  # two shards fill one folder
    for name, record in records.items():
        stem = Path(record["normal"]).stem
        allowed = np.asarray(Image.open(out / "region" / f"{name}.png")) > 0
        assert np.array_equal(allowed, allowed_area(regions[stem], 3))
        assert record["region"] == {"kind": "file", "file": str(where / f"{stem}.png")}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty-folder", "no normal images there"),
        ("region-size", "region of 32x32 px, the normal image is 64x64"),
        ("region-misses", "the region misses the object"),
        ("no-fewshot", "carry no few-shot masks"),
        ("where-without", "--where and --band place defects on normal images: give --on-normal too"),
    ],
)
def test_bad_placement_input_is_one_line_and_exit_2(
    capsys, tiny_base_dir, tiny_adapters, placed_data, tmp_path, case, message
):
    from PIL import Image

    good = placed_data / "pill" / "train" / "good"
    where = tmp_path / "where"
    where.mkdir()
    extra = ["--on-normal", str(good), "--where", str(where)]
    if case == "empty-folder":
        (tmp_path / "empty").mkdir()
        extra = ["--on-normal", str(tmp_path / "empty"), "--data", str(placed_data), "--category", "pill",
                 "--anomaly", "crack"]  # fmt: skip
    elif case == "region-size":
        for path in good.iterdir():
            Image.fromarray(_square(4, 4, 8, size=32).astype(np.uint8) * 255).save(where / f"{path.stem}.png")
    elif case == "region-misses":  # a corner of the plain background, off the pill
        for path in good.iterdir():
            Image.fromarray(_square(0, 0, 3).astype(np.uint8) * 255).save(where / f"{path.stem}.png")
        extra += ["--foreground", "auto"]
    elif case == "no-fewshot":
        extra = ["--on-normal", str(good)]
    else:
        extra = ["--where", "auto"]
    out = tmp_path / "out"
    code, err = _generate(capsys, tiny_base_dir, tiny_adapters, out, *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (out / "manifest.jsonl").exists()


@pytest.mark.slow
def test_non_finite_pairs_are_never_kept(capsys, tiny_base_dir, tiny_adapters, tmp_path):
    """An overflowing guidance scale: every pair is rejected, the reason naming the step and the cause, even
    with the area gate wide open."""
    out = tmp_path / "nan"
    code, err = _generate(capsys, tiny_base_dir, tiny_adapters, out, "--guidance", "1e30")
    assert code == 0, err
    records = _records(out)
    assert records and not any(r["kept"] for r in records.values())
    for record in records.values():
        assert re.fullmatch(
            r"the sampler produced non-finite values at step [12] of 2 \(guidance 1e\+30 too high\?\)",
            record["reject_reason"],
        ), record["reject_reason"]
    assert not (out / "image").exists() or not any((out / "image").iterdir())


@pytest.mark.slow
def test_masks_on_a_placed_folder_applies_the_placed_rule_and_never_revives_a_nan_pair(
    capsys, tiny_base_dir, tiny_adapters, placed_data, tmp_path
):
    """`dualanodiff masks` again on a placed folder gives the same masks (the placed rule, not the part's own
    mask) and keeps an overflowed pair rejected with its reason."""
    from dualanodiff.cli import main
    from dualanodiff.io import read_jsonl

    out = tmp_path / "placed"
    common = ["--on-normal", "data", "--data", str(placed_data), "--category", "pill", "--anomaly", "crack"]
    assert _generate(capsys, tiny_base_dir, tiny_adapters, out, *common)[0] == 0
    before = _records(out)
    masks = {n: _pair_mask(out, n, r["kept"]) for n, r in before.items()}
    assert (
        main(["masks", "--generated", str(out), "--method", "grey", "--max-area", "0.9", "--no-progress"])
        == 0
    )
    after = {r["name"]: r for r in read_jsonl(out / "manifest.jsonl")}
    for name, record in after.items():
        assert np.array_equal(_pair_mask(out, name, record["kept"]), masks[name]), name
        assert record["normal"] == before[name]["normal"]

    nan = tmp_path / "nan"
    assert _generate(capsys, tiny_base_dir, tiny_adapters, nan, "--guidance", "1e30")[0] == 0
    assert main(["masks", "--generated", str(nan), "--max-area", "1.0", "--no-progress"]) == 0
    for record in read_jsonl(nan / "manifest.jsonl"):
        assert not record["kept"] and record["reject_reason"].startswith("the sampler produced non-finite")


@pytest.mark.parametrize("method", ["crop-paste", "perlin"])
def test_baselines_take_the_same_foreground_choice_and_record_it(capsys, placed_data, tmp_path, method):
    """--foreground auto keeps every baseline defect on the estimated object and is recorded per pair; an
    unknown source is one line and exit 2."""
    from PIL import Image

    from dualanodiff.cli import main
    from dualanodiff.io import read_jsonl
    from dualanodiff.masks.plain_background import estimate_foreground

    out = tmp_path / method
    args = ["baseline", method, "--data", str(placed_data), "--category", "pill", "--anomaly", "crack",
            "--num-pairs", "6", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main([*args, "--foreground", "auto"]) == 0, capsys.readouterr().err
    on_object = 0
    for record in read_jsonl(out / "manifest.jsonl"):
        assert record["foreground"] == "auto"
        normal = np.asarray(Image.open(placed_data / "pill" / "train" / record["normal"]).convert("RGB"))
        object_mask = estimate_foreground(normal)  # None: no plain background found, anywhere goes
        if object_mask is not None:
            mask = np.asarray(Image.open(out / "mask" / f"{record['name']}.png")) > 0
            assert not (mask & ~object_mask).any(), record["name"]
            on_object += 1
    assert on_object >= 3  # three of the four normal images have an estimated object
    capsys.readouterr()
    assert (
        main([*args[:-3], "--out", str(tmp_path / "bad"), "--foreground", "elsewhere", "--no-progress"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--foreground elsewhere: not a folder of masks" in err[0]


@pytest.mark.slow
def test_the_placement_picture_shows_each_pair_with_its_normal_part_and_region(
    capsys, tiny_base_dir, tiny_adapters, placed_data, tmp_path
):
    """scripts/miniature_tables.py draws the first placed pairs (4 cells a pair) from a placed folder."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location(
        "miniature_tables", Path(__file__).resolve().parents[1] / "scripts" / "miniature_tables.py"
    )
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    out = tmp_path / "placed"
    common = ["--on-normal", "data", "--data", str(placed_data), "--category", "pill", "--anomaly", "crack"]
    assert _generate(capsys, tiny_base_dir, tiny_adapters, out, *common)[0] == 0
    picture = tmp_path / "pairs.png"
    tables.placed_pairs_picture(out, picture, count=4)
    width, height = Image.open(picture).size
    assert width > 8 * 64 and height > 64  # 4 pairs x 4 cells in rows of 8: two pairs a row


def test_a_foreground_folder_keeps_drawn_regions_on_its_masks_and_a_missing_one_is_named(tmp_path):
    """``--foreground DIR``: each normal image's mask is found by stem (``<stem>.png`` or ``<stem>_mask.png``)
    and every drawn region lies on it; a normal image without one is refused before anything loads."""
    from PIL import Image

    from dualanodiff.placement import Placements

    good, fg, shapes = tmp_path / "good", tmp_path / "fg", tmp_path / "shapes"
    for folder in (good, fg, shapes):
        folder.mkdir()
    objects = {}
    for k in range(3):
        Image.fromarray(_normal(k)).save(good / f"n{k}.png")
        objects[f"n{k}"] = _square(8 + 4 * k, 30 - 4 * k, 28)
        suffix = "_mask" if k == 1 else ""
        Image.fromarray(objects[f"n{k}"].astype(np.uint8) * 255).save(fg / f"n{k}{suffix}.png")
    Image.fromarray(_square(0, 0, 6, size=32).astype(np.uint8) * 255).save(shapes / "s.png")
    placements = Placements(good, "auto", 64, str(fg), fewshot_masks=[shapes / "s.png"])
    for seed in range(12):
        placed = placements.for_seed(seed)
        assert placed.region.any() and not (placed.region & ~objects[placed.normal_path.stem]).any()

    (fg / "n2.png").unlink()
    with pytest.raises(InputError, match=r"--foreground .*fg: no mask for n2\.png .*1 of 3 missing"):
        Placements(good, "auto", 64, str(fg), fewshot_masks=[shapes / "s.png"])


def test_a_region_painted_at_the_normal_images_own_size_is_resized_with_it(tmp_path):
    """A region the size of the normal image on disk (as the app's region painter saves it) is resized to the
    generation size as the image is; any other size is refused naming both."""
    from PIL import Image

    from dualanodiff.placement import Placements

    good, where = tmp_path / "good", tmp_path / "where"
    good.mkdir()
    where.mkdir()
    Image.fromarray(_normal(0, size=128)).save(good / "a.png")
    Image.fromarray(_square(32, 64, 40, size=128).astype(np.uint8) * 255).save(where / "a.png")
    placed = Placements(good, str(where), 64, "none").for_seed(0)
    assert placed.normal.shape == (64, 64, 3)
    assert np.array_equal(placed.region, _square(16, 32, 20))
    Image.fromarray(_square(4, 4, 8, size=32).astype(np.uint8) * 255).save(where / "a.png")
    with pytest.raises(InputError, match=r"a\.png: region of 32x32 px, the normal image is 128x128$"):
        Placements(good, str(where), 64, "none").for_seed(0)
