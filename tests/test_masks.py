"""Part image -> mask: grey-distance mask, U^2-Net loading/inference, quality gate, folder driver."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from dualanodiff.data.generated import pair_path, read_generated
from dualanodiff.data.images import load_mask
from dualanodiff.errors import InputError
from dualanodiff.io import save_image_atomic
from dualanodiff.masks import (
    U2NET,
    U2NETP,
    MaskQuality,
    PartMasker,
    U2NetMasker,
    build_masker,
    grey_mask,
    half_max_mask,
    judge_mask,
    load_u2net,
    make_masks_for_folder,
    mask_from_part,
)
from dualanodiff.masks.u2net import IMAGENET_MEAN, IMAGENET_STD, preprocess

from rounding import (
    assert_equal_up_to_rounding,
    assert_masks_equal_up_to_rounding,
    reduction_depth,
    rounding_tolerance,
)

# ------------------------------------------------------------------------------------------------
# helpers: part images with a known defect region
# ------------------------------------------------------------------------------------------------


def _grey_canvas(rng: np.random.Generator, h: int, w: int, noise: float = 3.0) -> np.ndarray:
    """Mid-grey (127.5) plus Gaussian noise, as a VAE decodes a flat grey latent."""
    return np.clip(np.rint(127.5 + rng.normal(0, noise, (h, w, 3))), 0, 255)


def _paint(canvas: np.ndarray, region: np.ndarray, texture: np.ndarray) -> np.ndarray:
    out = canvas.copy()
    out[region] = texture[region]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _shapes(h: int = 128, w: int = 128) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 50) ** 2 + (xx - 60) ** 2 <= 28**2
    rect = (yy >= 20) & (yy < 70) & (xx >= 30) & (xx < 100)
    ellipse = ((yy - 70) / 35.0) ** 2 + ((xx - 64) / 18.0) ** 2 <= 1.0
    # an irregular blob: union of discs with a notch, not convex
    blob = ((yy - 60) ** 2 + (xx - 45) ** 2 <= 20**2) | ((yy - 75) ** 2 + (xx - 80) ** 2 <= 24**2)
    blob &= ~((yy - 60) ** 2 + (xx - 62) ** 2 <= 6**2)
    return {"disc": disc, "rect": rect, "ellipse": ellipse, "blob": blob}


def _textures(rng: np.random.Generator, h: int = 128, w: int = 128) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    dark = 40 + rng.normal(0, 12, (h, w, 3))  # dark crack/hole
    red = np.stack([200 + rng.normal(0, 15, (h, w)), 60 + 0 * yy, 50 + 0 * yy], -1)  # coloured stain
    near_grey = np.full((h, w, 3), 103.0) + rng.normal(0, 3, (h, w, 3))  # 24.5 levels below the canvas
    # fine texture alternating above and below grey (would average to grey under a blur)
    checker = np.where(((yy + xx) % 2 == 0)[..., None], 60.0, 195.0) + rng.normal(0, 5, (h, w, 3))
    return {"dark": dark, "red": red, "near_grey": near_grey, "checker": checker}


# ------------------------------------------------------------------------------------------------
# grey.py
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["disc", "rect", "ellipse", "blob"])
@pytest.mark.parametrize("texture", ["dark", "red", "near_grey", "checker"])
def test_grey_mask_recovers_known_region(shape: str, texture: str) -> None:
    rng = np.random.default_rng([len(shape), len(texture), ord(shape[0]), ord(texture[0])])
    region = _shapes()[shape]
    part = _paint(_grey_canvas(rng, 128, 128), region, _textures(rng)[texture])
    mask = grey_mask(part)
    assert mask.dtype == bool and mask.shape == region.shape
    assert _iou(mask, region) >= 0.95, (shape, texture, _iou(mask, region))


def test_grey_mask_empty_canvas_and_specks_and_holes() -> None:
    rng = np.random.default_rng(0)
    canvas = _grey_canvas(rng, 96, 96, noise=5.0)
    assert not grey_mask(canvas.astype(np.uint8)).any()  # noise alone gives nothing

    # A 2x2 speck goes with min_area above 4 pixels and stays with min_area 1.
    speck = np.zeros((96, 96), bool)
    speck[10:12, 10:12] = True
    part = _paint(canvas, speck, np.zeros((96, 96, 3)))
    assert not grey_mask(part, min_area=10).any()
    assert grey_mask(part, min_area=1).sum() >= 1

    # A ring of defect around a grey centre is filled (a defect area is solid), unless told not to.
    yy, xx = np.mgrid[:96, :96]
    r2 = (yy - 48) ** 2 + (xx - 48) ** 2
    ring = (r2 <= 30**2) & (r2 > 15**2)
    part = _paint(canvas, ring, np.zeros((96, 96, 3)))
    assert _iou(grey_mask(part), r2 <= 30**2) >= 0.95
    assert _iou(grey_mask(part, fill_holes=False), ring) >= 0.95

    # A 1-pixel-wide scratch survives the noise filter.
    scratch = np.zeros((96, 96), bool)
    scratch[40, 20:70] = True
    scratch[20:60, 80] = True
    part = _paint(canvas, scratch, np.full((96, 96, 3), 60.0))
    assert _iou(grey_mask(part), scratch) >= 0.95


def test_grey_mask_threshold_and_min_area_fraction() -> None:
    rng = np.random.default_rng(1)
    region = _shapes(64, 64)["rect"]
    faint = _paint(_grey_canvas(rng, 64, 64, noise=1.0), region, np.full((64, 64, 3), 137.5))  # 10 levels
    assert not grey_mask(faint).any()  # below the default 16 levels
    assert _iou(grey_mask(faint, threshold=6), region) >= 0.95
    # min_area as a fraction of the image: the rectangle covers ~0.41 of it
    assert grey_mask(faint, threshold=6, min_area=0.5).sum() == 0
    assert grey_mask(faint, threshold=6, min_area=0.3).any()


def test_grey_mask_auto_canvas_level() -> None:
    rng = np.random.default_rng(2)
    region = _shapes()["disc"]
    drifted = np.clip(_grey_canvas(rng, 128, 128) + np.array([25.0, 20.0, 30.0]), 0, 255)  # off-grey canvas
    part = _paint(drifted, region, _textures(rng)["dark"])
    assert grey_mask(part).mean() > 0.9  # against 127.5 the whole canvas counts as defect
    assert _iou(grey_mask(part, grey="auto"), region) >= 0.95
    assert _iou(grey_mask(part, grey=(152.5, 147.5, 157.5)), region) >= 0.95


def test_grey_mask_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="uint8"):
        grey_mask(np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="threshold"):
        grey_mask(np.zeros((8, 8, 3), np.uint8), threshold=-1)
    with pytest.raises(InputError, match="grey level"):
        grey_mask(np.zeros((8, 8, 3), np.uint8), grey="median")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# u2net.py
# ------------------------------------------------------------------------------------------------


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random weights AND random batch-norm statistics, so a lost buffer would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


def test_architecture_matches_original_sizes() -> None:
    # The published u2net.pth is 176.3 MB (44.0 M float32 parameters + BN buffers), u2netp.pth 4.7 MB.
    full, small = U2NET(), U2NETP()
    assert sum(p.numel() for p in full.parameters()) == 44_009_869
    assert sum(p.numel() for p in small.parameters()) == 1_131_181
    for model in (full, small):
        sd = model.state_dict()
        assert len(sd) == 798
        assert sd["outconv.weight"].shape == (1, 6, 1, 1)
        assert sd["stage1.rebnconvin.conv_s1.weight"].shape == (64, 3, 3, 3)
        assert "stage6.rebnconv4.bn_s1.running_var" in sd
        assert "stage1d.rebnconv6d.conv_s1.bias" in sd and "stage1d.rebnconv7.conv_s1.weight" in sd
        assert "stage2.rebnconv6.conv_s1.weight" in sd and "stage2.rebnconv7.conv_s1.weight" not in sd
    assert full.state_dict()["side6.weight"].shape == (1, 512, 3, 3)
    assert small.state_dict()["side6.weight"].shape == (1, 64, 3, 3)
    assert full.state_dict()["stage4d.rebnconvin.conv_s1.weight"].shape == (256, 1024, 3, 3)
    # Side outputs come back at the input size, also for sizes that do not divide by 32.
    with torch.no_grad():
        outs = small.eval()(torch.randn(1, 3, 50, 70))
    assert len(outs) == 7 and all(o.shape == (1, 1, 50, 70) for o in outs)
    assert all(float(o.min()) >= 0 and float(o.max()) <= 1 for o in outs)


@pytest.mark.parametrize(
    "cls,variant", [(U2NETP, "u2netp"), pytest.param(U2NET, "u2net", marks=pytest.mark.slow)]
)
def test_load_u2net_round_trip_strict(tmp_path, cls, variant) -> None:
    model = _randomised(cls(), seed=3)
    path = tmp_path / f"{variant}.pth"
    torch.save(model.state_dict(), path)
    for asked in ("auto", variant):
        loaded = load_u2net(path, variant=asked, device="cpu")
        assert type(loaded) is cls and not loaded.training
        ref = model.state_dict()
        got = loaded.state_dict()
        assert list(got) == list(ref)
        assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_load_u2net_accepts_dataparallel_prefix_and_old_batchnorm(tmp_path) -> None:
    model = _randomised(U2NETP(), seed=4)
    sd = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    loaded = load_u2net(path, device="cpu")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the same weights in other buffers: up to rounding through the network's depth
        assert_equal_up_to_rounding(loaded(x)[0], model.eval()(x)[0], steps=reduction_depth(model))


def test_load_u2net_errors_name_file_and_keys(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(InputError, match="nope.pth.*not found"):
        load_u2net(missing)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="garbage.pth.*cannot read"):
        load_u2net(garbage)

    sd = U2NETP().state_dict()
    del sd["side3.bias"]
    sd["stage3.rebnconv2.conv_s1.weight"] = torch.zeros(16, 16, 5, 5)
    sd["extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(sd, broken)
    with pytest.raises(InputError) as err:
        load_u2net(broken, device="cpu")
    msg = str(err.value)
    assert "broken.pth" in msg and "'u2netp'" in msg
    assert "missing side3.bias" in msg
    assert "stage3.rebnconv2.conv_s1.weight has shape (16, 16, 5, 5), expected (16, 16, 3, 3)" in msg
    assert "unexpected extra.weight" in msg

    # u2netp weights forced into the full architecture: shape mismatches, named.
    small = tmp_path / "small.pth"
    torch.save(U2NETP().state_dict(), small)
    with pytest.raises(InputError, match=r"small.pth.*'u2net'.*stage1\.rebnconv1\.conv_s1\.weight"):
        load_u2net(small, variant="u2net", device="cpu")

    other = tmp_path / "resnet.pth"
    torch.save(nn.Linear(3, 2).state_dict(), other)
    with pytest.raises(InputError, match="resnet.pth.*cannot tell u2net from u2netp"):
        load_u2net(other)


def test_preprocess_matches_original_formula() -> None:
    rng = np.random.default_rng(5)
    part = rng.integers(0, 200, (320, 320, 3), dtype=np.uint8)  # max < 255: the divide-by-max matters
    x = preprocess([part])[0].numpy()
    unit = part.astype(np.float64) / 255.0
    unit = unit / unit.max()
    ref = (unit - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    # float32 against float64: six roundings (/255, /max, mean and std to float32, -mean, /std) at the
    # values' magnitude, about 2.6.
    assert_equal_up_to_rounding(x, ref.transpose(2, 0, 1), steps=6)
    # other sizes are brought to 320 x 320; an all-black image does not divide by zero
    assert preprocess([np.zeros((100, 140, 3), np.uint8)]).shape == (1, 3, 320, 320)
    assert torch.isfinite(preprocess([np.zeros((10, 10, 3), np.uint8)])).all()


class _FixedProbability(nn.Module):
    """Stands in for U^2-Net: returns a given probability map (resized to the input) as all 7 outputs."""

    def __init__(self, prob: torch.Tensor) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the masker a device to read
        self.prob = prob

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = torch.nn.functional.interpolate(self.prob[None, None], size=x.shape[-2:], mode="nearest")
        return (p.expand(x.shape[0], 1, -1, -1),) * 7


def test_u2net_masker_absolute_threshold_no_minmax() -> None:
    part = np.full((80, 120, 3), 128, np.uint8)

    # A real U^2-Net whose fused output is a constant 0.3 / 0.7: empty / full mask.
    model = U2NETP().eval()
    with torch.no_grad():
        model.outconv.weight.zero_()
        model.outconv.bias.fill_(math.log(0.3 / 0.7))
    assert not U2NetMasker(model, input_size=64)(part).any()
    with torch.no_grad():
        model.outconv.bias.fill_(math.log(0.7 / 0.3))
    full = U2NetMasker(model, input_size=64)(part)
    assert full.shape == (80, 120) and full.all()

    # A varying map entirely below 0.5: no mask, although per-image min-max would have made one.
    low = torch.linspace(0.1, 0.45, 320)[None].repeat(320, 1)
    mask = U2NetMasker(_FixedProbability(low), threshold=0.5)(part)
    assert not mask.any()
    minmax = (low - low.min()) / (low.max() - low.min())
    assert (minmax > 0.5).any()

    # A map crossing 0.5: the mask is the thresholded map, resized to the part image.
    ramp = torch.linspace(0.0, 1.0, 320)[None].repeat(320, 1)
    masker = U2NetMasker(_FixedProbability(ramp), threshold=0.5)
    mask = masker(part)
    assert mask.shape == (80, 120)
    assert not mask[:, :55].any() and mask[:, 65:].all()
    assert U2NetMasker(_FixedProbability(ramp), threshold=0.8)(part).sum() < mask.sum()
    with pytest.raises(InputError, match="threshold"):
        U2NetMasker(model, threshold=3.0)


def test_u2net_masker_batch_equals_single() -> None:
    rng = np.random.default_rng(6)
    model = _randomised(U2NETP(), seed=7)
    with torch.no_grad():
        model.outconv.bias.fill_(0.0)
    masker = U2NetMasker(model, threshold=0.5, device="cpu", batch_size=2, input_size=64)
    parts = [rng.integers(0, 256, (64, 48, 3), dtype=np.uint8) for _ in range(3)]
    probs = masker.probabilities(parts)
    singles = [masker(p) for p in parts]
    batched = masker.batch(parts)
    # A batch of two against one: probabilities equal up to rounding through the network, so a pixel may land
    # on the other side of the threshold only where it lies within that rounding of it.
    tol = rounding_tolerance(1.0, reduction_depth(model))
    for prob, single, many in zip(probs, singles, batched):
        assert single.shape == (64, 48)
        np.testing.assert_array_equal(many, prob > 0.5)  # bitwise: the same batches as `probabilities`
        assert_masks_equal_up_to_rounding(single, many, prob, 0.5, tol)


# ------------------------------------------------------------------------------------------------
# quality.py
# ------------------------------------------------------------------------------------------------


def test_judge_mask() -> None:
    mask = np.zeros((10, 10), bool)
    assert judge_mask(mask) == MaskQuality(False, "empty mask", 0.0)
    mask[:7, :] = True
    mask[7, :3] = True
    kept, reason, area = judge_mask(mask)
    assert (kept, reason, area) == (False, "mask covers 73% of the image (> 50%)", 0.73)
    assert judge_mask(mask, max_area_fraction=0.8) == (True, None, 0.73)

    big = np.zeros((100, 100), bool)
    big[0, 0] = True
    kept, reason, area = judge_mask(big, min_area_fraction=0.001)
    assert not kept and reason == "mask covers 0.01% of the image (< 0.1%)" and area == 1e-4
    assert judge_mask(big, min_area_fraction=0.0).kept
    # the shown percentages never read the same as the limit they break
    half = np.zeros((1000,), bool)
    half[:505] = True
    assert judge_mask(half).reason == "mask covers 50.5% of the image (> 50.0%)"
    with pytest.raises(InputError, match="area limits"):
        judge_mask(big, min_area_fraction=0.6, max_area_fraction=0.5)


# ------------------------------------------------------------------------------------------------
# folder.py
# ------------------------------------------------------------------------------------------------


def _make_generated(tmp_path, size: int = 48):
    """A tiny generated folder: a good pair, an empty part, a huge part, and an overridden record."""
    rng = np.random.default_rng(8)
    out = tmp_path / "gen"
    yy, xx = np.mgrid[:size, :size]
    regions = {
        "00000": (yy - 20) ** 2 + (xx - 24) ** 2 <= 9**2,
        "00001": np.zeros((size, size), bool),
        "00002": yy < 36,  # 75% of the 48 x 48 image
        "00003": (yy >= 5) & (yy < 20) & (xx >= 5) & (xx < 30),
    }
    for i, (name, region) in enumerate(regions.items()):
        part = _paint(_grey_canvas(rng, size, size), region, np.full((size, size, 3), 30.0))
        save_image_atomic(out / "part" / f"{name}.png", part)
        save_image_atomic(
            out / "image" / f"{name}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        )
        save_image_atomic(out / "mask" / f"{name}.png", np.zeros((size, size), np.uint8))
        regions[name] = (region, part, i)
    lines = [
        {"name": n, "index": i, "seed": 100 + i, "anomaly_type": "hole"} for n, (_, _, i) in regions.items()
    ]
    lines.append({"name": "00003", "index": 3, "seed": 999, "anomaly_type": "hole", "note": "later wins"})
    (out / "manifest.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    return out, regions


def test_make_masks_for_folder_grey(tmp_path) -> None:
    out, regions = _make_generated(tmp_path)
    summary = make_masks_for_folder(out, method="auto", show_progress=False)
    assert summary["method"] == "grey" and summary["threshold"] == 16.0
    assert (summary["pairs"], summary["kept"], summary["rejected"]) == (4, 2, 2)
    assert summary["rejected_empty"] == 1 and summary["rejected_too_large"] == 1

    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["00000", "00001", "00002", "00003"]  # one line per pair
    by_name = {r["name"]: r for r in records}
    assert by_name["00003"]["seed"] == 999 and by_name["00003"]["note"] == "later wins"
    for name, (region, part, _) in regions.items():
        rec = by_name[name]
        on_disk = load_mask(pair_path(out, "mask", name, rec["kept"]))  # rejected pairs under rejected/
        np.testing.assert_array_equal(on_disk, grey_mask(part))
        assert rec["mask_method"] == "grey"
        assert rec["mask_area"] == on_disk.mean()  # the same mean of the same mask; JSON keeps floats exactly
        if region.any():
            assert _iou(on_disk, region) >= 0.95
    assert by_name["00000"]["kept"] and by_name["00000"]["reject_reason"] is None
    assert by_name["00001"]["reject_reason"] == "empty mask" and not by_name["00001"]["kept"]
    assert by_name["00002"]["reject_reason"] == "mask covers 75% of the image (> 50%)"
    # the data reader sees exactly the kept pairs, and so does a reader of image/ alone
    assert [p.name for p in read_generated(out)] == ["00000", "00003"]
    assert sorted(p.stem for p in (out / "image").glob("*.png")) == ["00000", "00003"]
    assert sorted(p.stem for p in (out / "rejected" / "image").glob("*.png")) == ["00001", "00002"]

    # a looser area limit keeps the large one; nothing is left behind under temporary names
    assert make_masks_for_folder(out, max_area_fraction=0.9, show_progress=False)["kept"] == 3
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_make_masks_for_folder_u2net_and_errors(tmp_path) -> None:
    out, regions = _make_generated(tmp_path)
    weights = tmp_path / "u2netp.pth"
    torch.save(_randomised(U2NETP(), seed=9).state_dict(), weights)

    summary = make_masks_for_folder(
        out, u2net_weights=weights, threshold=0.5, show_progress=False, device="cpu"
    )
    assert summary["method"] == "u2net" and summary["pairs"] == 4
    records = {r["name"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    for name in regions:
        on_disk = load_mask(pair_path(out, "mask", name, records[name]["kept"]))
        assert records[name]["mask_method"] == "u2net"
        assert records[name]["mask_area"] == on_disk.mean()  # as for the grey masks: exact
        assert records[name]["kept"] == judge_mask(on_disk).kept
    # the written mask is the network's (one pair re-run directly: each CPU forward pass is slow); the folder
    # ran it in a batch of four, so up to pixels within rounding of the threshold (as in the batch test)
    masker = U2NetMasker(load_u2net(weights, device="cpu"), threshold=0.5)
    part = regions["00000"][1]
    tol = rounding_tolerance(1.0, reduction_depth(masker.model))
    written = load_mask(pair_path(out, "mask", "00000", records["00000"]["kept"]))
    assert_masks_equal_up_to_rounding(written, masker(part), masker.probabilities([part])[0], 0.5, tol)

    with pytest.raises(InputError, match="u2net-weights"):
        make_masks_for_folder(out, method="u2net", show_progress=False)
    with pytest.raises(InputError, match="--method"):
        make_masks_for_folder(out, method="otsu", show_progress=False)  # type: ignore[arg-type]
    pair_path(out, "part", "00002", records["00002"]["kept"]).unlink()
    with pytest.raises(InputError, match=r"part[/\\]00002.png.*missing"):
        make_masks_for_folder(out, method="grey", show_progress=False)
    with pytest.raises(InputError, match="nowhere: generated-data folder not found"):
        make_masks_for_folder(tmp_path / "nowhere", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="manifest.jsonl.*not found"):
        make_masks_for_folder(tmp_path / "empty", show_progress=False)


@pytest.mark.slow
def test_build_masker_and_mask_from_part(tmp_path) -> None:
    rng = np.random.default_rng(10)
    region = _shapes(64, 64)["rect"]
    part = _paint(_grey_canvas(rng, 64, 64), region, np.full((64, 64, 3), 200.0))
    grey = build_masker("auto")
    assert isinstance(grey, PartMasker) and grey.method == "grey" and grey.threshold == 16.0
    np.testing.assert_array_equal(grey(part), grey_mask(part))
    np.testing.assert_array_equal(
        mask_from_part(part, "grey", threshold=40.0), grey_mask(part, threshold=40.0)
    )

    # grey-canvas: the distance from the part's own canvas colour, where a tinted canvas fools "grey".
    tinted = _paint(
        _grey_canvas(rng, 64, 64) + np.array([25.0, 20.0, 30.0]), region, np.full((64, 64, 3), 40.0)
    )
    canvas = build_masker("grey-canvas")
    assert canvas.method == "grey-canvas" and canvas.threshold == 16.0
    assert grey(tinted).mean() > 0.9 and _iou(canvas(tinted), region) >= 0.95
    np.testing.assert_array_equal(canvas(tinted), grey_mask(tinted, grey="auto"))
    with pytest.raises(
        InputError, match="--method must be one of auto, grey, grey-canvas, grey-half-max, u2net, got 'gray'"
    ):
        build_masker("gray")

    # grey-half-max: the threshold is half the part's peak distance, --threshold its floor.
    half = build_masker("grey-half-max", threshold=20.0)
    assert half.method == "grey-half-max" and half.threshold == 20.0
    np.testing.assert_array_equal(half(tinted), half_max_mask(tinted, floor=20.0))

    weights = tmp_path / "w.pth"
    torch.save(_randomised(U2NETP(), seed=11).state_dict(), weights)
    net = build_masker("auto", u2net_weights=weights, threshold=0.4, device="cpu")
    assert net.method == "u2net" and net.threshold == 0.4
    expected = U2NetMasker(load_u2net(weights, device="cpu"), threshold=0.4)(part)
    np.testing.assert_array_equal(mask_from_part(part, "u2net", weights, 0.4, "cpu"), expected)


def test_half_max_cuts_a_blurred_defect_at_its_edge_where_a_fixed_threshold_takes_in_the_blur() -> None:
    """A dark disc on grey, blurred as a VAE or a soft-drawn part blurs it: the half-maximum threshold finds the
    disc's own outline, the fixed 16 levels a ring of blur around it; a faint defect is cut at the floor."""
    from scipy import ndimage

    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 34) ** 2 <= 8**2
    sharp = np.where(disc[..., None], 27.5, 127.5) * np.ones(3)  # 100 levels below the canvas
    blurred = ndimage.gaussian_filter(sharp, sigma=(2.0, 2.0, 0))
    part = np.clip(np.round(blurred), 0, 255).astype(np.uint8)
    fixed, half = grey_mask(part, grey="auto"), half_max_mask(part)
    print(f"blurred disc: IoU fixed-16 {_iou(fixed, disc):.3f}, half-max {_iou(half, disc):.3f}")
    assert _iou(half, disc) >= 0.9 and _iou(fixed, disc) < 0.75
    assert fixed.sum() > 1.3 * disc.sum()  # the fixed threshold takes in the blur
    # A faint defect (peak 24 levels): half of it would be 12, under the floor, so the floor (16) cuts it.
    faint = np.clip(np.round(127.5 - 0.24 * (127.5 - blurred)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(half_max_mask(faint), grey_mask(faint, threshold=16.0, grey="auto"))
    assert not half_max_mask(np.full((32, 32, 3), 128, np.uint8)).any()  # an empty part stays empty
    with pytest.raises(InputError, match="must be >= 0"):
        half_max_mask(part, floor=-1.0)
