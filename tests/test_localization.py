"""DRAEM U-Net, focal loss, and the downstream localization protocol on a tiny synthetic category."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dualanodiff.data.generated import read_generated
from dualanodiff.data.mvtec import DefectSample
from dualanodiff.errors import InputError
from dualanodiff.evaluate.localization import LocalizationConfig, train_and_evaluate_localization
from dualanodiff.evaluate.unet import DiscriminativeSubNetwork, focal_loss
from dualanodiff.io import append_jsonl

from rounding import assert_equal_up_to_rounding

SIZE = 32


def test_unet_shapes_and_draem_state_dict_names():
    model = DiscriminativeSubNetwork(in_channels=3, out_channels=2, base_channels=4)
    assert model(torch.rand(2, 3, 64, 32)).shape == (2, 2, 64, 32)
    keys = set(model.state_dict())
    # Names as in DRAEM's model_unet.py, so its checkpoints load unchanged.
    for k in (
        "encoder_segment.block1.0.weight",
        "encoder_segment.block6.4.running_var",
        "decoder_segment.up_b.1.weight",
        "decoder_segment.db_b.0.weight",
        "decoder_segment.db4.3.weight",
        "decoder_segment.fin_out.0.bias",
    ):
        assert k in keys
    # Widths of DRAEM's base 64 network: 8w at the bottleneck, skip concatenations 16w, 12w, 6w, 3w, 2w.
    full = DiscriminativeSubNetwork().state_dict()
    assert full["encoder_segment.block6.0.weight"].shape == (512, 512, 3, 3)
    assert full["decoder_segment.db_b.0.weight"].shape == (512, 1024, 3, 3)
    assert full["decoder_segment.db3.0.weight"].shape == (64, 192, 3, 3)
    assert full["decoder_segment.fin_out.0.weight"].shape == (2, 64, 3, 3)


def test_focal_loss_matches_draem_formula():
    probs = torch.tensor([0.9, 0.2, 0.6, 0.01]).reshape(1, 1, 2, 2)
    probs = torch.cat([1 - probs, probs], dim=1)  # channel 1 = anomaly
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    s = 1e-5
    expected = []
    for p1, t in zip([0.9, 0.2, 0.6, 0.01], [1, 1, 0, 0]):
        p_true = p1 if t == 1 else 1 - p1
        pt = (1 - s) * p_true + s * (1 - p_true) + s  # clamped one-hot, plus smooth
        expected.append(-((1 - pt) ** 2) * np.log(pt))
    # float32 (the probabilities too) against float64: about ten operations per pixel, and the loss moves at
    # most 6x as fast as p_t does here (|d/dp (1 - p)^2 log p| = 5.8 at p = 0.2).
    assert_equal_up_to_rounding(focal_loss(probs, target).item(), np.mean(expected), steps=10, magnitude=6.0)
    # gamma = 0 is cross-entropy (up to the smoothing): the same logs, averaged by another kernel.
    ce = torch.nn.functional.nll_loss(probs.log(), target[:, 0].long())
    ce_ours = focal_loss(probs, target, gamma=0.0, smooth=0.0).item()
    assert_equal_up_to_rounding(ce_ours, ce.item(), steps=4, magnitude=float(-probs.log().min()))


def _texture(rng: np.random.Generator) -> np.ndarray:
    base = rng.normal(100, 12, (SIZE, SIZE, 1)).clip(0, 255)
    return np.repeat(base, 3, axis=2).astype(np.uint8)


def _defect(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = _texture(rng)
    mask = np.zeros((SIZE, SIZE), bool)
    side = int(rng.integers(5, 10))
    y, x = rng.integers(0, SIZE - side, size=2)
    mask[y : y + side, x : x + side] = True
    image[mask] = 235
    return image, mask


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_category(tmp_path_factory):
    """Normal images, a generated folder (image/ mask/ manifest) and a test set with masks."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    normal = [_save(root / "train" / "good" / f"{i:03d}.png", _texture(rng)) for i in range(12)]
    gen = root / "generated"
    for i in range(24):
        image, mask = _defect(rng)
        _save(gen / "image" / f"{i:05d}.png", image)
        _save(gen / "mask" / f"{i:05d}.png", mask.astype(np.uint8) * 255)
        append_jsonl(gen / "manifest.jsonl", {"name": f"{i:05d}", "kept": True, "anomaly_type": "square"})
    test = [
        DefectSample(_save(root / "test" / "good" / f"{i:03d}.png", _texture(rng)), None, "good")
        for i in range(6)
    ]
    for i in range(8):
        image, mask = _defect(rng)
        img = _save(root / "test" / "square" / f"{i:03d}.png", image)
        m = _save(root / "ground_truth" / "square" / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
        test.append(DefectSample(img, m, "square"))
    return normal, read_generated(gen), test


def _cfg(**kw) -> LocalizationConfig:
    base = dict(
        epochs=6,
        samples_per_epoch=48,
        batch_size=8,
        lr=5e-3,  # a 4-channel U-Net learns in a few epochs with a larger step than the paper's 1e-4
        lr_milestones=(5,),
        resolution=SIZE,
        base_channels=4,
        runs=1,
        seed=0,
        device="cpu",
        num_workers=0,
    )
    base.update(kw)
    return LocalizationConfig(**base)


@pytest.mark.slow
def test_localization_learns_bright_squares_and_resumes(tiny_category, tmp_path, monkeypatch):
    normal, generated, test = tiny_category
    res = train_and_evaluate_localization(normal, generated, test, _cfg(), tmp_path / "a")
    m = res["metrics"]
    print(
        f"\ntiny synthetic localization: pixel AUROC {m['pixel_auroc']:.3f}, image AUROC {m['image_auroc']:.3f}"
    )
    assert m["pixel_auroc"] > 0.9
    assert res["selection"] == "heldout"
    assert res["counts"]["heldout_generated"] == 2 and res["counts"]["heldout_normal"] == 1
    assert json.loads((tmp_path / "a" / "results.json").read_text())["metrics"] == m
    assert len(res["runs"][0]["history"]) == 6

    # Interrupt a second run after two epochs, then resume: same result as the uninterrupted run.
    import dualanodiff.evaluate.localization as loc

    original = loc._epoch_batches

    def interrupted(data, cfg, seed, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(data, cfg, seed, epoch)

    monkeypatch.setattr(loc, "_epoch_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate_localization(normal, generated, test, _cfg(), tmp_path / "b")
    assert not (tmp_path / "b" / "results.json").exists()
    monkeypatch.setattr(loc, "_epoch_batches", original)
    resumed = train_and_evaluate_localization(normal, generated, test, _cfg(), tmp_path / "b")
    assert [h["epoch"] for h in resumed["runs"][0]["history"]] == list(range(6))
    # Bitwise: the resumed run restores weights, optimizer and random state exactly and runs the same kernels.
    assert resumed["metrics"] == m
    # A finished run is not trained again: its result.json is reused.
    monkeypatch.setattr(loc, "_epoch_batches", interrupted)
    again = train_and_evaluate_localization(normal, generated, test, _cfg(), tmp_path / "b")
    assert again["metrics"] == resumed["metrics"]
    monkeypatch.setattr(loc, "_epoch_batches", original)

    with pytest.raises(InputError, match="different configuration"):
        (tmp_path / "b" / "run0" / "result.json").unlink()
        train_and_evaluate_localization(normal, generated, test, _cfg(lr=1e-3), tmp_path / "b")


def test_localization_test_selection_runs_and_none_baseline(tiny_category, tmp_path):
    normal, generated, test = tiny_category
    res = train_and_evaluate_localization(
        normal, generated, test, _cfg(epochs=2, runs=2, select_on="test"), tmp_path / "t"
    )
    assert res["selection"] == "test (optimistic)"
    assert len(res["runs"]) == 2 and res["runs"][0]["seed"] != res["runs"][1]["seed"]
    best = max(res["runs"], key=lambda r: r["selection_score"])
    assert res["best_run"] == best["run"] and res["metrics"] == best["test"]
    # With test selection, the chosen epoch's recorded test score is the best of its history.
    hist = best["history"]
    assert best["selection_score"] == max(h["selection_score"] for h in hist)

    none = train_and_evaluate_localization(normal, [], test, _cfg(epochs=1), tmp_path / "n")
    assert none["counts"]["train_generated"] == 0 and "none" in none["selection_score"]
    assert 0.0 <= none["metrics"]["pixel_auroc"] <= 1.0


def test_localization_rejects_bad_inputs(tiny_category, tmp_path):
    normal, generated, test = tiny_category
    with pytest.raises(InputError, match="multiple of 32"):
        train_and_evaluate_localization(normal, generated, test, _cfg(resolution=48), tmp_path)
    broken = [DefectSample(test[-1].image, None, "square")]
    with pytest.raises(InputError, match="no ground-truth mask"):
        train_and_evaluate_localization(normal, generated, broken, _cfg(), tmp_path)
    with pytest.raises(InputError, match="both normal"):
        train_and_evaluate_localization(normal, generated, test[:3], _cfg(), tmp_path)


@pytest.mark.slow
def test_classification_separates_synthetic_types(tmp_path):
    from dualanodiff.evaluate.classification import ClassificationConfig, train_and_evaluate_classification

    rng = np.random.default_rng(5)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}

    def image(colour):
        return np.clip(np.array(colour) + rng.normal(0, 25, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)

    generated = {
        t: [_save(tmp_path / "gen" / t / f"{i}.png", image(c)) for i in range(10)] for t, c in colours.items()
    }
    test = [
        DefectSample(_save(tmp_path / "test" / t / f"{i}.png", image(c)), None, t)
        for t, c in colours.items()
        for i in range(5)
    ]
    test.append(DefectSample(_save(tmp_path / "test" / "good" / "0.png", image((90, 90, 90))), None, "good"))
    test.append(DefectSample(_save(tmp_path / "test" / "hole" / "0.png", image((0, 0, 0))), None, "hole"))
    cfg = ClassificationConfig(
        epochs=3, lr=1e-3, batch_size=8, resolution=SIZE, repeats_per_epoch=2, device="cpu", random_init=True
    )
    res = train_and_evaluate_classification(generated, test, cfg, out_dir=tmp_path / "out")
    print(f"\nsynthetic 3-type classification accuracy: {res['accuracy']:.3f}")
    assert res["accuracy"] >= 0.9
    assert res["classes"] == ["blue", "green", "red"] and res["n_test"] == 15 and res["n_train"] == 30
    assert res["skipped_test_types"] == ["hole"]
    assert np.trace(np.array(res["confusion"])) == round(res["accuracy"] * 15)
    assert json.loads((tmp_path / "out" / "classification.json").read_text())["accuracy"] == res["accuracy"]
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1)}, bad)
    with pytest.raises(InputError, match="imagenet_weights"):
        train_and_evaluate_classification(
            generated, test, replace(cfg, random_init=False), imagenet_weights=bad
        )
    # One rule with Inception: no weights and no explicit random init is refused, naming the way out.
    with pytest.raises(InputError, match="--random-init"):
        train_and_evaluate_classification(generated, test, replace(cfg, random_init=False))


def test_api_default_runs_is_the_papers_best_of_three_like_the_cli():
    from dualanodiff.cli import build_parser

    args = build_parser().parse_args(
        ["evaluate", "localization", "--data", "d", "--category", "c", "--no-generated", "--out", "o"]
    )
    assert LocalizationConfig().runs == args.runs == 3
