"""Nothing silently wrong: a diverged training run, NaN adapters, 0/1 masks, a finished run with other settings
or data, adapters on a base with other weights, NaN in a results file, an unreadable few-shot image. Each of
these used to end with exit code 0 and a wrong result."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dualanodiff.cli import main
from dualanodiff.data.images import load_mask, load_mask_for
from dualanodiff.data.mvtec import DefectSample
from dualanodiff.data.validate import validate_training_samples
from dualanodiff.errors import InputError
from dualanodiff.io import append_jsonl, write_json_atomic
from dualanodiff.model.base import build_base, load_base
from dualanodiff.model.dual_unet import ADAPTER_WEIGHTS, AdapterConfig
from dualanodiff.pipeline import DualAnoDiffPipeline
from dualanodiff.training import TrainConfig, list_checkpoints, read_loss_log, train_adapters

TINY = dict(rank=2, text_encoder_rank=2, resolution=64, progress=False, checkpoint_every=0)


@pytest.fixture
def one_pair(synthetic_pill_root, tmp_path):
    """A plain-folder training set of one real synthetic defect: images/000.png, masks/000_mask.png."""
    folder = tmp_path / "data" / "one"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    shutil.copy(synthetic_pill_root / "pill/test/crack/000.png", folder / "images/000.png")
    shutil.copy(synthetic_pill_root / "pill/ground_truth/crack/000_mask.png", folder / "masks/000_mask.png")
    return folder


def _config(base, folder, out, **kw) -> TrainConfig:
    settings = {**TINY, "max_steps": 2, **kw}
    return TrainConfig(
        base=str(base), out=str(out), images=str(folder / "images"), masks=str(folder / "masks"), **settings
    )


# --------------------------------------------------------------------------------------------- non-finite


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_step_names_the_lr_and_keeps_its_last_good_checkpoint(
    tiny_base_dir, one_pair, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["train", "--images", str(one_pair / "images"), "--masks", str(one_pair / "masks"),
            "--base", str(tiny_base_dir), "--out", str(out), "--rank", "2", "--text-encoder-rank", "2",
            "--max-steps", "6", "--batch-size", "1", "--lr", "1e30", "--checkpoint-every", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged at step" in err[0] and "--lr 1e+30" in err[0]
    run_dir = out / "custom" / "one"
    assert not (run_dir / ADAPTER_WEIGHTS).exists()  # nothing saved as if it were a result
    step = int(err[0].split("diverged at step ")[1].split()[0])
    found = list_checkpoints(run_dir)
    assert found and found[-1][0] == step - 1 and "is kept" in err[0]
    kept = load_file(str(found[-1][1] / "adapters.safetensors"))
    assert all(torch.isfinite(t).all() for t in kept.values())
    assert [r["step"] for r in read_loss_log(run_dir)] == list(range(1, step))
    assert all(np.isfinite(r["loss"]) for r in read_loss_log(run_dir))


@pytest.mark.parametrize("mode", ["localization", pytest.param("classification", marks=pytest.mark.slow)])
def test_a_diverging_detector_stops_instead_of_scoring_nan_weights(
    synthetic_pill_root, tmp_path, capsys, mode
):
    from dualanodiff.baselines import run_baseline

    generated = run_baseline("crop-paste", synthetic_pill_root, "pill", "crack", 6, tmp_path / "gen")[
        "out_dir"
    ]
    argv = ["evaluate", mode, "--data", str(synthetic_pill_root), "--category", "pill", "--out",
            str(tmp_path / "eval"), "--epochs", "2", "--resolution", "32", "--lr", "1e12", "--no-progress"]  # fmt: skip
    if mode == "localization":
        argv += ["--no-generated", "--runs", "1", "--samples-per-epoch", "8", "--base-channels", "4"]
    else:  # two labels for one folder: enough to train a classifier
        argv += [
            "--generated",
            str(generated),
            str(generated),
            "--anomaly-types",
            "crack",
            "spot",
            "--random-init",
        ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "training diverged" in err[-1] and "--lr 1e+12" in err[-1]
    assert not list((tmp_path / "eval").rglob("*.json"))  # no results computed from NaN weights


def test_non_finite_adapters_are_neither_saved_nor_loaded(tiny_components, tmp_path):
    pipe = DualAnoDiffPipeline.from_components(tiny_components, AdapterConfig(rank=2, text_encoder_rank=2))
    good = pipe.save_adapters(tmp_path / "good")
    with torch.no_grad():
        next(p for n, p in pipe.unet.named_parameters() if n.endswith("_lora.up")).fill_(float("nan"))
    with pytest.raises(InputError, match="hold NaN or infinite values"):
        pipe.save_adapters(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()

    state = load_file(str(good / ADAPTER_WEIGHTS))
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("inf"))
    save_file(state, str(good / ADAPTER_WEIGHTS))
    with pytest.raises(InputError, match=f"{good}.*1 of {len(state)} tensors hold NaN or infinite"):
        DualAnoDiffPipeline.from_components(tiny_components).load_adapters(good)


# ------------------------------------------------------------------------------------------------ 0/1 masks


def _mask_files(tmp_path, mask: np.ndarray) -> dict[str, object]:
    """The same mask in the formats people store masks in."""
    files = {}
    for name, array, mode in (
        ("0-255", mask.astype(np.uint8) * 255, "L"),
        ("0-1", mask.astype(np.uint8), "L"),
        ("0-1-16bit", mask.astype(np.uint16), "I;16"),
        ("0-1-rgb", np.repeat(mask.astype(np.uint8)[..., None], 3, axis=-1), "RGB"),
    ):
        path = tmp_path / f"{name}.png"
        Image.fromarray(array).save(path)
        with Image.open(path) as im:
            assert im.mode == mode
        files[name] = path
    return files


def test_masks_stored_as_0_1_read_like_0_255_everywhere(tmp_path):
    from dualanodiff.baselines.crop_paste import extract_defects
    from dualanodiff.evaluate.localization import _load_set

    mask = np.zeros((24, 32), bool)
    mask[5:12, 8:20] = True
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(image)
    files = _mask_files(tmp_path, mask)
    reference = files.pop("0-255")
    for name, path in files.items():
        assert np.array_equal(load_mask(path), mask), name  # the reader
        assert np.array_equal(load_mask_for(path, image, size=(16, 12)), load_mask(reference, size=(16, 12)))
        # training data, the evaluation's ground truth and generated pairs, Crop&Paste's defects
        validate_training_samples([DefectSample(image, path, "crack")])
        _, ours = _load_set([(image, path)], 32, 1, "test")
        _, theirs = _load_set([(image, reference)], 32, 1, "test")
        assert np.array_equal(ours, theirs), name
        (d_ours,), (d_ref,) = (extract_defects([DefectSample(image, p, "crack")]) for p in (path, reference))
        assert np.array_equal(d_ours.mask, d_ref.mask) and np.array_equal(d_ours.patch, d_ref.patch)
    # The half-range rule stays for everything else: a faint grey mask (max 100 of 255) is empty.
    faint = tmp_path / "faint.png"
    Image.fromarray(mask.astype(np.uint8) * 100).save(faint)
    assert not load_mask(faint).any()


def test_an_all_empty_ground_truth_is_refused_naming_a_file(synthetic_pill_root, tmp_path):
    from dualanodiff.evaluate.localization import LocalizationConfig, _prepare_data

    blank = tmp_path / "blank_mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(blank)
    good = sorted((synthetic_pill_root / "pill/test/good").iterdir())[0]
    crack = sorted((synthetic_pill_root / "pill/test/crack").iterdir())[3]
    tests = [DefectSample(good, None, "good"), DefectSample(crack, blank, "crack")]
    normals = sorted((synthetic_pill_root / "pill/train/good").iterdir())[:2]
    with pytest.raises(InputError, match=r"blank_mask.png: all 1 ground-truth masks are empty"):
        _prepare_data(normals, [], tests, LocalizationConfig(resolution=64, num_workers=1))


# ------------------------------------------------------------------------------------------ stale settings


@pytest.mark.slow
def test_a_finished_run_is_reused_only_for_the_same_settings_and_files(tiny_base_dir, one_pair, tmp_path):
    out = tmp_path / "out"
    run_dir = train_adapters(_config(tiny_base_dir, one_pair, out))
    weights = (run_dir / ADAPTER_WEIGHTS).read_bytes()

    assert train_adapters(_config(tiny_base_dir, one_pair, out)) == run_dir  # the same: skipped
    moved = tmp_path / "elsewhere" / "one"
    shutil.copytree(one_pair, moved)
    assert train_adapters(_config(tiny_base_dir, moved, out)) == run_dir  # the same files elsewhere: skipped
    assert (run_dir / ADAPTER_WEIGHTS).read_bytes() == weights

    with pytest.raises(InputError, match="length: 2 steps before, 3 now"):
        train_adapters(_config(tiny_base_dir, one_pair, out, max_steps=3))
    with pytest.raises(InputError, match="mixed_precision: 'no' before, 'bf16' now"):
        train_adapters(_config(tiny_base_dir, one_pair, out, mixed_precision="bf16"))
    with pytest.raises(InputError, match="learning_rate"):
        train_adapters(_config(tiny_base_dir, one_pair, out, learning_rate=1e-3))
    mask = moved / "masks" / "000_mask.png"
    changed = np.asarray(Image.open(mask)).copy()
    changed[:4] = 255
    Image.fromarray(changed).save(mask)
    with pytest.raises(InputError, match="the training images or masks differ"):
        train_adapters(_config(tiny_base_dir, moved, out))
    assert (run_dir / ADAPTER_WEIGHTS).read_bytes() == weights  # refused, never overwritten


# ------------------------------------------------------------------------------------------ base identity


@pytest.mark.slow
def test_adapters_refuse_a_base_with_the_same_architecture_but_other_weights(tiny_base_dir, tmp_path):
    trained_on = build_base("tiny", seed=0, resolution=64)
    other = build_base("tiny", seed=1, resolution=64)
    assert trained_on.unet.config == other.unet.config  # the same architecture
    DualAnoDiffPipeline.from_components(trained_on, AdapterConfig(rank=2)).save_adapters(tmp_path / "ad")
    with pytest.raises(InputError, match="trained on other base weights"):
        DualAnoDiffPipeline.from_components(other).load_adapters(tmp_path / "ad")
    # The fingerprint is that of the weights, not of the precision they are loaded in or the way they came:
    # tiny_base_dir holds build_base("tiny", seed=0, resolution=64), saved and loaded back.
    loaded = load_base(tiny_base_dir)
    assert loaded.weights_fingerprint == trained_on.weights_fingerprint
    assert (
        load_base(tiny_base_dir, torch_dtype=torch.bfloat16).weights_fingerprint == loaded.weights_fingerprint
    )
    DualAnoDiffPipeline.from_components(loaded).load_adapters(tmp_path / "ad")  # the right base: accepted
    meta = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert meta["base"]["weights_fingerprint"] == loaded.weights_fingerprint


# ------------------------------------------------------------------------------------------- evaluation


def test_json_writers_refuse_nan_naming_file_and_key(tmp_path):
    target = tmp_path / "results.json"
    with pytest.raises(InputError, match=r"results.json: not written, types.crack.is is NaN"):
        write_json_atomic(target, {"types": {"crack": {"is": float("nan"), "n": 3}}})
    assert not target.exists()
    with pytest.raises(InputError, match=r"manifest.jsonl: not written, runs\[1\] is NaN or infinite"):
        append_jsonl(tmp_path / "manifest.jsonl", {"runs": [1.0, float("inf")]})
    assert not (tmp_path / "manifest.jsonl").exists()  # the record is checked before the file is opened


def test_an_unreadable_few_shot_image_stops_quality_instead_of_dropping_its_type(
    synthetic_pill_root, tmp_path
):
    from dualanodiff.evaluate.protocol import quality_of_type

    truncated = tmp_path / "000.png"
    truncated.write_bytes((synthetic_pill_root / "pill/test/crack/000.png").read_bytes()[:150])
    images = sorted((synthetic_pill_root / "pill/test/crack").iterdir())[2:5]
    with pytest.raises(InputError, match="000.png: cannot read image"):
        quality_of_type(images, [truncated], None, None, is_splits=10)


def test_settings_recorded_are_the_ones_used(monkeypatch, capsys):
    """The decoder threads recorded for the U-Net and ResNet-34 are at most the cores this process may use (a
    2-core machine recorded 4), and `baseline --help` names the Perlin source the code uses."""
    import os

    from dualanodiff.evaluate.classification import ClassificationConfig
    from dualanodiff.evaluate.localization import LocalizationConfig

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert LocalizationConfig().num_workers == 2 and ClassificationConfig().num_workers == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert LocalizationConfig().num_workers == 4  # more threads than that only contend for the disk
    with pytest.raises(SystemExit):
        main(["baseline", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "noise colours" not in text and "shuffled and flipped" in text
