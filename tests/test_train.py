"""Training: presets, data order, overfitting one pair, exact resume, bf16 on CPU, checkpointing, CLI errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dualanodiff.cli import main
from dualanodiff.errors import InputError
from dualanodiff.pipeline import DualAnoDiffPipeline
from dualanodiff.training import (
    TrainConfig,
    batch_indices,
    list_checkpoints,
    read_loss_log,
    resolve_config,
    total_steps,
    train_adapters,
)
from dualanodiff.training.loop import AdapterTrainer, complete_config
from dualanodiff.training.sources import training_samples

from rounding import assert_equal_up_to_rounding, reduction_depth

# Few-shot training images per type: crack 2, the others 1 (first floor(n/3) of each type).
COUNTS = {"pill": {"crack": 6, "scratch": 3, "spot": 3, "stain": 3}}
TINY = dict(rank=2, text_encoder_rank=2, resolution=64, progress=False)


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    from dualanodiff.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("mvtec")
    return make_synthetic(
        root, resolution=64, n_train_good=2, n_test_good=1, categories=("pill",), defect_counts=COUNTS
    )


def weights(run_dir):
    return load_file(str(run_dir / "adapters.safetensors"))


# --- configuration ------------------------------------------------------------------------------------------


def test_presets_resolve_to_method_numbers(tiny_base_dir):
    base = dict(base="b", out="o", data="d", category="c", anomaly="a")
    paper = resolve_config(TrainConfig(**base))
    assert (paper.learning_rate, paper.epochs, paper.max_steps, paper.batch_size) == (5e-6, 5000, None, 4)
    paper_bcm = resolve_config(TrainConfig(**base, bcm=True))
    assert (paper_bcm.learning_rate, paper_bcm.epochs, paper_bcm.batch_size) == (5e-6, 2000, 4)
    code = resolve_config(TrainConfig(**base, preset="official-code"))
    assert (code.learning_rate, code.epochs, code.max_steps, code.batch_size) == (2e-5, None, 5000, 4)
    code_bcm = resolve_config(TrainConfig(**base, preset="official-code", bcm=True))
    assert (code_bcm.max_steps, code_bcm.batch_size) == (5000, 2)
    # Explicit options win over the preset.
    mine = resolve_config(
        TrainConfig(**base, preset="official-code", epochs=7, batch_size=3, learning_rate=1e-4)
    )
    assert (mine.epochs, mine.max_steps, mine.batch_size, mine.learning_rate) == (7, None, 3, 1e-4)
    # 5 images, 4 per batch: 2 steps per epoch.
    assert total_steps(paper, num_samples=5) == 10000
    assert total_steps(code, num_samples=5) == 5000
    with pytest.raises(InputError, match="either --epochs or --max-steps"):
        resolve_config(TrainConfig(**base, epochs=1, max_steps=1))
    with pytest.raises(InputError, match="multiple of 8"):  # the VAE's factor, read from the base's config
        complete_config(resolve_config(TrainConfig(**{**base, "base": str(tiny_base_dir)}, resolution=60)))
    with pytest.raises(InputError, match="^--lr: must be greater than 0"):
        resolve_config(TrainConfig(**base, learning_rate=-1.0))


def test_batch_order_covers_each_epoch_and_is_seeded():
    seen = [batch_indices(3, step, 5, 2) for step in range(6)]  # 3 steps per epoch, last one short
    assert [e for e, _ in seen] == [0, 0, 0, 1, 1, 1]
    for epoch in (0, 1):
        idx = sum((i for e, i in seen if e == epoch), [])
        assert sorted(idx) == list(range(5))
    assert [i for _, i in seen[:3]] != [i for _, i in seen[3:]]  # reshuffled each epoch
    assert seen == [batch_indices(3, step, 5, 2) for step in range(6)]
    # Two processes: full batches, disjoint within a step.
    a = batch_indices(0, 0, 5, 2, num_processes=2, process_index=0)[1]
    b = batch_indices(0, 0, 5, 2, num_processes=2, process_index=1)[1]
    assert len(a) == len(b) == 2 and not set(a) & set(b)


# --- the loop -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_overfit_one_pair_loss_falls(mvtec_root, tiny_base_dir, tmp_path):
    folder = tmp_path / "one"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    shutil.copy(mvtec_root / "pill/test/crack/000.png", folder / "images/000.png")
    shutil.copy(mvtec_root / "pill/ground_truth/crack/000_mask.png", folder / "masks/000_mask.png")
    steps = 240
    config = TrainConfig(
        base=str(tiny_base_dir),
        out=str(tmp_path / "out"),
        images=str(folder / "images"),
        masks=str(folder / "masks"),
        max_steps=steps,
        batch_size=1,
        learning_rate=3e-3,
        flips=False,
        checkpoint_every=0,
        **{**TINY, "rank": 4, "text_encoder_rank": 4},
    )
    run_dir = train_adapters(config)
    assert run_dir == tmp_path / "out" / "custom" / "one"
    losses = np.array([r["loss"] for r in read_loss_log(run_dir)])
    assert len(losses) == steps and np.isfinite(losses).all()
    first, last = losses[:40].mean(), losses[-40:].mean()
    print(f"overfit one pair: mean loss of steps 1-40 {first:.3f}, of steps {steps - 39}-{steps} {last:.3f}")
    assert last < 0.85 * first
    # The saved adapters load into a fresh pipeline and are the trained ones (non-zero LoRA up-projections).
    pipe = DualAnoDiffPipeline.from_pretrained(tiny_base_dir)
    meta = pipe.load_adapters(run_dir)
    assert meta["adapter"]["rank"] == 4 and meta["training"]["learning_rate"] == 3e-3
    ups = [p for n, p in pipe.unet.named_parameters() if n.endswith("_lora.up")]
    assert ups and all(p.abs().sum() > 0 for p in ups)


class Interrupt(Exception):
    pass


def bcm_config(root, base, out, **kw) -> TrainConfig:
    return TrainConfig(
        base=str(base),
        out=str(out),
        data=str(root),
        category="pill",
        anomaly="crack",
        **{
            "bcm": True,
            "max_steps": 5,
            "batch_size": 1,  # 2 training images: 2 steps per epoch, so the run crosses epochs
            "learning_rate": 1e-3,
            "checkpoint_every": 2,
            **TINY,
            **kw,
        },
    )


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(mvtec_root, tiny_base_dir, tmp_path, monkeypatch):
    straight = train_adapters(bcm_config(mvtec_root, tiny_base_dir, tmp_path / "a"))
    assert not (straight / "checkpoints").exists()  # removed once the final adapters are written

    def stop_at_4(step, loss):
        if step == 4:
            raise Interrupt

    config = bcm_config(mvtec_root, tiny_base_dir, tmp_path / "b")
    with pytest.raises(Interrupt):
        train_adapters(config, on_step=stop_at_4)
    run_dir = config.output_dir()
    assert [s for s, _ in list_checkpoints(run_dir)] == [4]  # steps 2 and 4 written, only the newest kept
    # Resuming with other settings is refused, naming them.
    with pytest.raises(InputError, match="learning_rate"):
        train_adapters(bcm_config(mvtec_root, tiny_base_dir, tmp_path / "b", learning_rate=2e-3))
    resumed = train_adapters(config)

    # Bitwise: the resumed run reloads the same files, restores adapters, optimizer and random state exactly,
    # then runs the same kernels on the same shapes as the straight run.
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and any(k.endswith("bcm.alpha") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = read_loss_log(straight), read_loss_log(resumed)
    assert [r["step"] for r in log_b] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in log_b] == [0, 0, 1, 1, 2]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]

    # A finished run is a no-op: no model is loaded, nothing is rewritten.
    mtime = (resumed / "adapters.safetensors").stat().st_mtime_ns

    def no_load(*a, **k):
        raise AssertionError("a finished run must not load the model")

    monkeypatch.setattr(DualAnoDiffPipeline, "from_pretrained", no_load)
    assert train_adapters(config) == resumed
    assert (resumed / "adapters.safetensors").stat().st_mtime_ns == mtime


def trainer(root, base, out, **kw) -> AdapterTrainer:
    config = complete_config(resolve_config(bcm_config(root, base, out, **kw)))
    return AdapterTrainer(config, training_samples(config), config.output_dir())


@pytest.mark.slow
def test_bf16_on_cpu_keeps_trainable_weights_fp32(mvtec_root, tiny_base_dir, tmp_path):
    t = trainer(mvtec_root, tiny_base_dir, tmp_path, mixed_precision="bf16", max_steps=2)
    frozen = [p for n, p in t.pipe.unet.named_parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert t.pipe.vae.dtype == torch.bfloat16
    assert t.trainable and all(p.dtype == torch.float32 for p in t.trainable)
    before = [p.detach().clone() for p in t.trainable]
    losses = []
    t.run(lambda step, loss: losses.append(loss))
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert all(p.dtype == torch.float32 for p in t.trainable)
    assert any(not torch.equal(p, q) for p, q in zip(t.trainable, before))


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients(mvtec_root, tiny_base_dir, tmp_path):
    grads = []
    for checkpointing in (False, True):
        t = trainer(mvtec_root, tiny_base_dir, tmp_path, gradient_checkpointing=checkpointing)
        _, loss = t.step_loss(0)
        loss.backward()
        grads.append([p.grad.clone() for p in t.trainable])
    assert all(g is not None for g in grads[1])
    # Recomputed activations are the same, but checkpointing reorders the backward graph, and with it the order
    # in which gradients of a shared input accumulate: up to rounding through forward and backward.
    steps = 2 * reduction_depth(t.pipe.unet, t.pipe.text_encoder)
    for g0, g1 in zip(*grads):
        assert_equal_up_to_rounding(g1, g0, steps)


# --- several types, and the command line ----------------------------------------------------------------------


def cli_args(root, base, out, anomaly, *extra) -> list[str]:
    return [
        "train", "--data", str(root), "--category", "pill", "--anomaly", anomaly, "--base", str(base),
        "--out", str(out), "--epochs", "1", "--batch-size", "1", "--rank", "2", "--text-encoder-rank", "2",
        "--no-progress", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_cli_trains_all_types_and_skips_finished(mvtec_root, tiny_base_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(cli_args(mvtec_root, tiny_base_dir, out, "spot")) == 0
    spot = out / "pill" / "spot"
    mtime = (spot / "adapters.safetensors").stat().st_mtime_ns
    assert main(cli_args(mvtec_root, tiny_base_dir, out, "all")) == 0
    assert "stain" in capsys.readouterr().out
    for kind, n_train in (("crack", 2), ("scratch", 1), ("spot", 1), ("stain", 1)):
        assert (out / "pill" / kind / "adapter_config.json").is_file()
        assert len(read_loss_log(out / "pill" / kind)) == n_train  # one epoch, batch 1
    assert (spot / "adapters.safetensors").stat().st_mtime_ns == mtime

    # The adapters carry their training masks (the shapes `generate --where auto` draws), equal to the data's.
    from dualanodiff.data.images import load_mask

    crack = out / "pill" / "crack"
    samples = training_samples(
        TrainConfig(
            base=str(tiny_base_dir), out=str(out), data=str(mvtec_root), category="pill", anomaly="crack"
        )
    )
    copies = sorted((crack / "fewshot_masks").iterdir())
    assert [p.name for p in copies] == [f"{k:03d}_{s.image.stem}.png" for k, s in enumerate(samples)]
    for copy, sample in zip(copies, samples):
        assert np.array_equal(np.asarray(Image.open(copy)) > 0, load_mask(sample.mask))


def broken_copy(root, tmp_path, damage):
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    damage(copy / "pill")
    return copy


def truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def resize(path):
    Image.open(path).resize((32, 32)).save(path)


def blank(path):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: (c / "ground_truth/crack/001_mask.png").unlink(), "001.png: mask not found"),
        (lambda c: truncate(c / "test/crack/000.png"), "000.png: cannot read image"),
        (lambda c: resize(c / "ground_truth/crack/000_mask.png"), "differs from image"),
        (lambda c: blank(c / "ground_truth/crack/001_mask.png"), "001_mask.png: mask is empty"),
    ],
)
def test_cli_bad_data_fails_before_loading_the_model(
    mvtec_root, tiny_base_dir, tmp_path, capsys, monkeypatch, damage, message
):
    def no_load(*a, **k):
        raise AssertionError("the data must be validated before the model is loaded")

    monkeypatch.setattr(DualAnoDiffPipeline, "from_pretrained", no_load)
    root = broken_copy(mvtec_root, tmp_path, damage)
    assert main(cli_args(root, tiny_base_dir, tmp_path / "out", "crack")) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "anomaly, extra, message",
    [
        ("dent", [], "--anomaly dent: not an anomaly type of 'pill'"),
        ("crack", ["--resolution", "60"], "--resolution: must be a multiple of 8"),
        ("crack", ["--lr", "0"], "argument --lr: must be greater than 0"),
    ],
)
def test_cli_bad_options(mvtec_root, tiny_base_dir, tmp_path, capsys, anomaly, extra, message):
    try:
        code = main(cli_args(mvtec_root, tiny_base_dir, tmp_path, anomaly, *extra))
    except SystemExit as stop:  # options refused while parsing
        code = stop.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused on the CPU only")
def test_cli_fp16_on_cpu_is_refused(mvtec_root, tiny_base_dir, tmp_path, capsys):
    argv = cli_args(mvtec_root, tiny_base_dir, tmp_path, "spot", "--mixed-precision", "fp16")
    assert main(argv) == 2
    assert "fp16 needs a GPU" in capsys.readouterr().err


def test_cli_missing_base_and_folder_masks(mvtec_root, tmp_path, capsys):
    assert main(cli_args(mvtec_root, tmp_path / "nope", tmp_path / "out", "crack")) == 2
    assert "base model folder not found" in capsys.readouterr().err
    images = tmp_path / "mine" / "images"
    images.mkdir(parents=True)
    (tmp_path / "mine" / "masks").mkdir()
    shutil.copy(mvtec_root / "pill/test/crack/000.png", images / "a.png")
    argv = ["train", "--images", str(images), "--masks", str(tmp_path / "mine" / "masks"), "--base", "x"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "a.png: mask not found" in capsys.readouterr().err


# --- BCM foregrounds -----------------------------------------------------------------------------------------


def test_bcm_foreground_source_defaults_to_the_dataset_folder_and_is_part_of_the_identity(
    mvtec_root, tmp_path
):
    from dualanodiff.training import identity

    resolved = resolve_config(bcm_config(mvtec_root, "b", tmp_path))
    assert resolved.foreground == str(mvtec_root / "pill" / "foreground")  # the synthetic data ships masks
    assert identity(resolved)["foreground_source"] == "folder"
    auto = resolve_config(bcm_config(mvtec_root, "b", tmp_path, foreground="auto"))
    assert auto.foreground == "auto" and identity(auto)["foreground_source"] == "auto"
    no_bcm = resolve_config(bcm_config(mvtec_root, "b", tmp_path, bcm=False))
    assert no_bcm.foreground is None and "foreground_source" not in identity(no_bcm)
    with pytest.raises(InputError, match="--u2net-weights"):
        resolve_config(bcm_config(mvtec_root, "b", tmp_path, foreground="u2net"))


@pytest.mark.slow
def test_bcm_training_with_estimated_foregrounds_records_the_source(mvtec_root, tiny_base_dir, tmp_path):
    import json

    from dualanodiff.data.images import load_mask

    run_dir = train_adapters(
        bcm_config(mvtec_root, tiny_base_dir, tmp_path, foreground="auto", max_steps=1, checkpoint_every=0)
    )
    meta = json.loads((run_dir / "adapter_config.json").read_text())
    assert meta["training"]["foreground"] == "auto"
    for name in ("000.png", "001.png"):  # the two few-shot images of crack, against their exact foregrounds
        estimated = load_mask(run_dir / "foreground" / name)
        exact = load_mask(mvtec_root / "pill" / "foreground" / "test" / "crack" / name)
        # The synthetic pill is lit, shaded and casts a shadow on a grained table (issue 14's scenes): the
        # plain-background estimate reaches 0.89 IoU on these two (an empty one: 0; the whole image: the pill's share).
        assert (estimated & exact).sum() / (estimated | exact).sum() >= 0.85


def test_bcm_folder_foregrounds_match_stem_mask_names_and_none_may_be_missing(mvtec_root, tmp_path):
    mine = tmp_path / "mine"
    for sub in ("images", "masks", "fg"):
        (mine / sub).mkdir(parents=True)
    for name in ("000", "001"):
        shutil.copy(mvtec_root / f"pill/test/crack/{name}.png", mine / "images" / f"{name}.png")
        shutil.copy(
            mvtec_root / f"pill/ground_truth/crack/{name}_mask.png", mine / "masks" / f"{name}_mask.png"
        )
        shutil.copy(mvtec_root / f"pill/foreground/test/crack/{name}.png", mine / "fg" / f"{name}_mask.png")
    config = TrainConfig(base="b", out=str(tmp_path / "o"), images=str(mine / "images"), masks=str(mine / "masks"),
                         foreground=str(mine / "fg"), bcm=True, anomaly="crack")  # fmt: skip
    samples = training_samples(resolve_config(config))
    assert [s.foreground.name for s in samples] == ["000_mask.png", "001_mask.png"]
    (mine / "fg" / "001_mask.png").unlink()
    with pytest.raises(InputError, match="1 training image.s. have no foreground mask"):
        training_samples(resolve_config(config))
