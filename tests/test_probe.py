"""The probe loss: its fixed set, that it leaves training untouched, that it falls as adapters fit, that it
resumes with the run, and its CLI flag."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dualanodiff.cli import main
from dualanodiff.training import TrainConfig, read_loss_log, train_adapters
from dualanodiff.training.probe import (
    PROBE_LOG,
    build_probe_set,
    probe_summary,
    probe_timesteps,
    read_probe_log,
    row_losses,
)

TINY = dict(rank=2, text_encoder_rank=2, resolution=64, progress=False)


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    from dualanodiff.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("mvtec")
    counts = {"pill": {"crack": 6, "scratch": 3, "spot": 3, "stain": 3}}
    return make_synthetic(
        root, resolution=64, n_train_good=2, n_test_good=1, categories=("pill",), defect_counts=counts
    )


def test_probe_set_holds_every_pair_at_every_timestep_with_fixed_noise():
    n, c, h = 3, 4, 2
    # Row r of the few-shot latents is filled with r: rows 2i and 2i+1 are pair i's whole image and part.
    latents = torch.arange(2 * n, dtype=torch.float32)[:, None, None, None].expand(2 * n, c, h, h).clone()
    steps = probe_timesteps(1000)
    assert steps == [100, 300, 500, 700, 900]
    probe = build_probe_set(latents, 1000, torch.Generator().manual_seed(0))
    k = len(steps)
    assert probe.pairs == n * k and probe.latents.shape == (2 * n * k, c, h, h)
    # Pair-major: pair 0 at each timestep, then pair 1, ...; every pair keeps its [whole, part] rows together.
    rows = probe.latents[:, 0, 0, 0].tolist()
    assert rows == [v for i in range(n) for _ in range(k) for v in (2 * i, 2 * i + 1)]
    assert probe.timesteps.tolist() == steps * n
    assert probe.background is None
    again = build_probe_set(latents, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(probe.noise, again.noise)
    # With BCM, one background per pair, repeated like its pair.
    bg = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, c, h, h).clone()
    with_bg = build_probe_set(latents, 1000, torch.Generator().manual_seed(0), bg)
    assert with_bg.background[:, 0, 0, 0].tolist() == [i for i in range(n) for _ in range(k)]
    assert with_bg.background_noise.shape == with_bg.background.shape


def test_row_losses_split_whole_image_and_part_rows():
    noise = torch.zeros(4, 1, 2, 2)
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None, None].expand(4, 1, 2, 2)
    got = row_losses(pred, noise)
    assert got == pytest.approx({"loss": 7.5, "global_loss": 5.0, "part_loss": 10.0})  # (1+9)/2, (4+16)/2
    rows = [{"step": 0, **got}, {"step": 8, "loss": 6.0, "global_loss": 4.0, "part_loss": 8.0}]
    assert probe_summary(rows)["fall_pct"] == 20.0 and probe_summary(rows[:1]) == {}


def one_pair_config(root, base, folder, out, **kw) -> TrainConfig:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    shutil.copy(root / "pill/test/crack/000.png", folder / "images/000.png")
    shutil.copy(root / "pill/ground_truth/crack/000_mask.png", folder / "masks/000_mask.png")
    return TrainConfig(
        base=str(base),
        out=str(out),
        images=str(folder / "images"),
        masks=str(folder / "masks"),
        batch_size=1,
        learning_rate=3e-3,
        flips=False,
        checkpoint_every=0,
        **{**TINY, "rank": 4, "text_encoder_rank": 4},
        **kw,
    )


@pytest.mark.slow
def test_probe_falls_as_the_adapters_fit_and_leaves_training_untouched(mvtec_root, tiny_base_dir, tmp_path):
    """Overfitting one pair: the probe (fixed draws) falls; and a run with the probe trains exactly what a run
    without it trains (the probe draws from its own seed and puts the models back in training mode)."""
    probed = train_adapters(
        one_pair_config(
            mvtec_root, tiny_base_dir, tmp_path / "d", tmp_path / "a", max_steps=160, probe_every=40
        )
    )
    plain = train_adapters(
        one_pair_config(mvtec_root, tiny_base_dir, tmp_path / "d", tmp_path / "b", max_steps=160)
    )
    rows = read_probe_log(probed)
    assert [r["step"] for r in rows] == [0, 40, 80, 120, 160]
    losses = np.array([r["loss"] for r in rows])
    print(f"probe loss of one pair: {np.round(losses, 4).tolist()}")
    assert losses[-1] < 0.85 * losses[0]
    assert not (plain / PROBE_LOG).exists()
    a, b = load_file(str(probed / "adapters.safetensors")), load_file(str(plain / "adapters.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_loss_log(probed)] == [r["loss"] for r in read_loss_log(plain)]


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_probe_log_resumes_with_the_run_with_bcm(mvtec_root, tiny_base_dir, tmp_path):
    def config(out):
        return TrainConfig(
            base=str(tiny_base_dir), out=str(out), data=str(mvtec_root), category="pill", anomaly="crack",
            bcm=True, max_steps=5, batch_size=1, learning_rate=1e-3, checkpoint_every=2, probe_every=2, **TINY,
        )  # fmt: skip

    straight = train_adapters(config(tmp_path / "a"))

    def stop_at_3(step, loss):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_adapters(config(tmp_path / "b"), on_step=stop_at_3)
    run_dir = config(tmp_path / "b").output_dir()
    assert [r["step"] for r in read_probe_log(run_dir)] == [0, 2]
    resumed = train_adapters(config(tmp_path / "b"))
    a, b = read_probe_log(straight), read_probe_log(resumed)
    assert [r["step"] for r in b] == [0, 2, 4, 5]  # every N steps and the last one, none twice
    assert a == b


def test_cli_refuses_a_negative_probe_interval(mvtec_root, tiny_base_dir, tmp_path, capsys):
    argv = ["train", "--base", str(tiny_base_dir), "--out", str(tmp_path), "--data", str(mvtec_root)]
    argv += ["--category", "pill", "--anomaly", "crack", "--probe-every", "-1"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "argument --probe-every: must be at least 0, got -1" in capsys.readouterr().err
