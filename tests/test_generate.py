"""Generation: the pipeline's sampling loop, bulk generation to disk, resume, sharding, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dualanodiff.cli import main as cli
from dualanodiff.errors import InputError
from dualanodiff.generate import (
    SCHEDULERS,
    GenerateConfig,
    apply_speed_options,
    generate_to_folder,
    make_scheduler,
)
from dualanodiff.io import read_jsonl
from dualanodiff.model.dual_unet import AdapterConfig
from dualanodiff.pipeline import DualAnoDiffPipeline, centred_noise

from rounding import assert_equal_up_to_rounding, pipeline_depth, reduction_depth, rounding_tolerance


@pytest.fixture
def pipe(tiny_base_dir):
    p = DualAnoDiffPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=4))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def adapters(pipe, tmp_path):
    with torch.no_grad():  # non-trivial adapters, so the part branch differs from the whole-image branch
        for proc in pipe.adapter_modules():
            for name, param in proc.named_parameters():
                if name.endswith("up") or name.startswith("lora_B"):
                    param.normal_(0, 0.02)
    return pipe.save_adapters(tmp_path / "adapters")


def test_outputs_shapes_ranges_and_types(pipe):
    out = pipe(num_pairs=2, num_inference_steps=3, seeds=[4, 5], output_type="np")
    assert out.images.shape == (2, 64, 64, 3) and out.parts.shape == (2, 64, 64, 3)
    assert out.images.min() >= 0 and out.images.max() <= 1 and out.seeds == [4, 5]
    pil = pipe(num_pairs=1, num_inference_steps=2, seeds=[4], output_type="pil")
    assert isinstance(pil.images[0], Image.Image) and pil.images[0].size == (64, 64)
    pt = pipe(num_pairs=1, num_inference_steps=2, seeds=[4], output_type="pt")
    assert pt.images.shape == (1, 3, 64, 64)
    masks = pipe(num_pairs=1, num_inference_steps=2, seeds=[4], masker=lambda part: part[..., 0] > 100).masks
    assert masks[0].shape == (64, 64) and masks[0].dtype == bool


@pytest.mark.slow
def test_a_pair_does_not_depend_on_its_batch(pipe, adapters):
    pipe.load_adapters(adapters)
    together = pipe(num_pairs=3, num_inference_steps=3, seeds=[7, 8, 9], output_type="np")
    alone = pipe(num_pairs=1, num_inference_steps=3, seeds=[8], output_type="np")
    # Other batch sizes block the products differently: equal up to rounding through the whole pipeline.
    steps = pipeline_depth(pipe, num_inference_steps=3)
    assert_equal_up_to_rounding(together.images[1], alone.images[0], steps, magnitude=1.0)  # pixels in [0, 1]
    assert_equal_up_to_rounding(together.parts[1], alone.parts[0], steps, magnitude=1.0)
    assert np.abs(together.images[0] - together.images[1]).max() > 1e-2  # seeds matter


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["pndm", "ddim", "dpm++", "unipc", "euler"])
def test_whole_image_branch_equals_diffusers_stable_diffusion(tiny_base_dir, scheduler):
    """SAIM off and zero LoRA: our loop is diffusers' loop, so the global branch is SD's output."""
    from diffusers import StableDiffusionPipeline

    ours = DualAnoDiffPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=4, saim=False))
    ours.scheduler = make_scheduler(scheduler, ours.scheduler.config)
    ours.set_progress_bar_config(disable=True)
    sd = StableDiffusionPipeline.from_pretrained(
        tiny_base_dir, safety_checker=None, requires_safety_checker=False
    )
    sd.scheduler = make_scheduler(scheduler, sd.scheduler.config)
    sd.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    got = ours(
        num_pairs=1, num_inference_steps=6, guidance_scale=2.5, latents=latents, output_type="np"
    ).images
    want = sd(
        "a vfx with sks",
        negative_prompt="",
        num_inference_steps=6,
        guidance_scale=2.5,
        latents=latents[:, 0],
        output_type="np",
    ).images
    # The same maths in another batch layout (a pair of rows against one): up to rounding through 6 steps.
    assert_equal_up_to_rounding(got, want, pipeline_depth(sd, num_inference_steps=6), magnitude=1.0)


@pytest.mark.slow
def test_zero_mean_noise_samples_each_seeds_own_draw_centred(pipe, adapters):
    """The option equals passing the seeds' draws, each map centred by hand, as ``latents``; off, the draws."""
    pipe.load_adapters(adapters)
    seeds = [3, 11]
    draws = torch.stack([torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    mean = draws.mean((-2, -1), keepdim=True)
    by_hand = (draws - mean) / (draws - mean).pow(2).sum((-2, -1), keepdim=True).div(63).sqrt()
    kw = dict(num_pairs=2, num_inference_steps=3, output_type="np")
    centred = pipe(seeds=seeds, zero_mean_noise=True, **kw)
    want = pipe(latents=by_hand, **kw)
    assert (
        np.abs(centred.images - want.images).max() <= 1e-5
        and np.abs(centred.parts - want.parts).max() <= 1e-5
    )
    plain = pipe(seeds=seeds, **kw)
    assert np.abs(plain.parts - pipe(latents=draws, **kw).parts).max() <= 1e-5
    assert np.abs(plain.parts - centred.parts).max() > 1e-3  # the draws' means do matter

    # "part": only the part branch's maps are centred; the whole image keeps its draw.
    part_only = pipe(seeds=seeds, zero_mean_noise="part", **kw)
    half = torch.stack([draws[:, 0], by_hand[:, 1]], 1)
    want = pipe(latents=half, **kw)
    assert np.abs(part_only.images - want.images).max() <= 1e-5
    assert np.abs(part_only.parts - want.parts).max() <= 1e-5
    with pytest.raises(InputError, match="zero_mean_noise must be False, True or 'part', got 'global'"):
        pipe(seeds=seeds, zero_mean_noise="global", **kw)


@pytest.mark.slow
def test_shared_initial_noise_starts_the_part_from_the_whole_draw(pipe, adapters):
    """The option equals passing each seed's whole-branch draw as both branches' ``latents`` (the part's then
    centred under zero_mean_noise="part"); the whole branch's draw is the one it has without the option."""
    pipe.load_adapters(adapters)
    seeds = [3, 11]
    draws = torch.stack([torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    kw = dict(num_pairs=2, num_inference_steps=3, output_type="np")
    shared = pipe(seeds=seeds, shared_initial_noise=True, **kw)
    want = pipe(latents=torch.stack([draws[:, 0], draws[:, 0]], 1), **kw)
    assert np.abs(shared.images - want.images).max() <= 1e-5
    assert np.abs(shared.parts - want.parts).max() <= 1e-5
    assert np.abs(shared.parts - pipe(seeds=seeds, **kw).parts).max() > 1e-3  # the part's start did change

    centred = pipe(seeds=seeds, shared_initial_noise=True, zero_mean_noise="part", **kw)
    want = pipe(latents=torch.stack([draws[:, 0], centred_noise(draws[:, 0])], 1), **kw)
    assert np.abs(centred.images - want.images).max() <= 1e-5
    assert np.abs(centred.parts - want.parts).max() <= 1e-5


def test_guidance_at_most_one_skips_the_unconditional_rows(pipe):
    calls = []
    original = pipe.unet.forward
    pipe.unet.forward = lambda sample, *a, **k: calls.append(sample.shape[0]) or original(sample, *a, **k)
    pipe(num_pairs=2, num_inference_steps=2, guidance_scale=1.0, seeds=[1, 2])
    without = list(calls)
    calls.clear()
    pipe(num_pairs=2, num_inference_steps=2, guidance_scale=2.0, seeds=[1, 2])
    assert set(without) == {4} and set(calls) == {8}  # 2 pairs = 4 rows; CFG doubles them


@pytest.mark.slow
def test_bcm_generation_uses_backgrounds(tiny_base_dir):
    pipe = DualAnoDiffPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=4, bcm=True, saim=False))
    pipe.set_progress_bar_config(disable=True)
    for proc in pipe.adapter_modules():
        if getattr(proc, "bcm", None) is not None:
            proc.bcm.alpha.data.fill_(0.8)
            for layer in proc.bcm.mlp:
                layer.weight.data *= 20  # a strong background signal, so its effect is far above float noise
    bright, dark = torch.ones(1, 3, 64, 64), -torch.ones(1, 3, 64, 64)
    a = pipe(num_pairs=1, num_inference_steps=3, seeds=[1], backgrounds=bright, output_type="np")
    b = pipe(num_pairs=1, num_inference_steps=3, seeds=[1], backgrounds=dark, output_type="np")
    assert np.abs(a.images - b.images).max() > 1e-3  # the background reaches the global branch
    # ... and only it (SAIM off): bitwise, since both calls run the same kernels on the same shapes and only
    # the values of other rows differ.
    assert np.abs(a.parts - b.parts).max() == 0
    with pytest.raises(InputError, match="background"):
        pipe(num_pairs=1, num_inference_steps=2)


def test_bad_arguments_are_clear_errors(pipe):
    with pytest.raises(InputError, match="num_pairs must be at least 1"):
        pipe(num_pairs=0)
    with pytest.raises(InputError, match="3 seeds for 2 pairs"):
        pipe(num_pairs=2, seeds=[1, 2, 3])
    with pytest.raises(InputError, match="num-pairs"):
        GenerateConfig(base="b", adapters="a", out="o", num_pairs=0)


def _config(base, adapters, out, **kw):
    return GenerateConfig(base=str(base), adapters=str(adapters), out=str(out), steps=2, batch_size=2, **kw)


@pytest.mark.slow
def test_generate_writes_layout_and_resumes_identically(tiny_base_dir, adapters, pipe, tmp_path):
    out = tmp_path / "gen"
    cfg = _config(tiny_base_dir, adapters, out, num_pairs=5, max_mask_area=1.0)
    full = tmp_path / "full"
    generate_to_folder(
        _config(tiny_base_dir, adapters, full, num_pairs=5, max_mask_area=1.0),
        show_progress=False,
        process_index=0,
        num_processes=1,
    )
    # An interrupted run: only 2 pairs made, plus a stray temporary file and a torn manifest line.
    generate_to_folder(
        _config(tiny_base_dir, adapters, out, num_pairs=2, max_mask_area=1.0),
        show_progress=False,
        process_index=0,
        num_processes=1,
    )
    (out / "image" / ".00002.png.abc.tmp").write_bytes(b"partial")
    with (out / "manifest.jsonl").open("a") as f:
        f.write('{"name": "00002", "ind')
    summary = generate_to_folder(cfg, show_progress=False, process_index=0, num_processes=1)
    assert summary["written"] == 3 and summary["complete"] == 5
    for kind in ("image", "part", "mask"):  # bitwise: pairs 2-4 come in the same batches from the same files
        for i in range(5):
            assert (out / kind / f"{i:05d}.png").read_bytes() == (full / kind / f"{i:05d}.png").read_bytes()
    records = {r["name"]: r for r in read_jsonl(out / "manifest.jsonl")}
    assert sorted(records) == [f"{i:05d}" for i in range(5)]
    rec = records["00003"]
    assert rec["seed"] == 3 and rec["prompts"] == ["a vfx with sks", "sks"] and rec["scheduler"] == "pndm"
    assert {"mask_area", "kept", "reject_reason", "adapter_identity", "steps", "guidance"} <= set(rec)
    assert rec["anomaly_type"] is None  # these adapters were not made by `train`; trained ones carry it
    assert json.loads((out / "config.json").read_text())["num_pairs"] == 5
    assert generate_to_folder(cfg, show_progress=False, process_index=0, num_processes=1)["written"] == 0


@pytest.mark.slow
def test_processes_split_pairs_disjoint_and_complete(tiny_base_dir, adapters, tmp_path):
    out = tmp_path / "gen"
    cfg = _config(tiny_base_dir, adapters, out, num_pairs=5)
    written = [
        generate_to_folder(cfg, show_progress=False, process_index=r, num_processes=2)["written"]
        for r in (0, 1)
    ]
    assert written == [3, 2]
    names = [r["name"] for r in read_jsonl(out / "manifest.jsonl")]
    assert sorted(names) == [f"{i:05d}" for i in range(5)] and len(set(names)) == 5


@pytest.mark.slow
def test_quality_filter_flags_pairs(tiny_base_dir, adapters, tmp_path):
    out = tmp_path / "gen"
    generate_to_folder(
        _config(tiny_base_dir, adapters, out, num_pairs=2, max_mask_area=1e-4),
        show_progress=False,
        process_index=0,
        num_processes=1,
    )
    recs = read_jsonl(out / "manifest.jsonl")
    assert all(not r["kept"] and r["reject_reason"] for r in recs)


@pytest.mark.slow
def test_cli_errors_for_missing_and_foreign_adapters(tiny_base_dir, tmp_path, capsys):
    def generate(adapters, *extra) -> tuple[int, str]:
        args = [
            "generate",
            "--base",
            str(tiny_base_dir),
            "--adapters",
            str(adapters),
            "--out",
            str(tmp_path / "o"),
        ]
        return cli([*args, *extra]), capsys.readouterr().err

    code, err = generate(tmp_path / "none", "--num-pairs", "1")
    assert code == 2 and "no adapters.safetensors" in err
    from dualanodiff.model.base import build_base, save_base

    other = build_base("tiny", seed=1)
    other.unet = type(other.unet)(**{**other.unet.config, "block_out_channels": (32, 32, 64, 64)})
    save_base(other, tmp_path / "other_base")
    DualAnoDiffPipeline.from_pretrained(tmp_path / "other_base", AdapterConfig(rank=4)).save_adapters(
        tmp_path / "foreign"
    )
    code, err = generate(tmp_path / "foreign", "--num-pairs", "1", "--steps", "1")
    assert code == 2 and "trained for another base" in err
    with pytest.raises(SystemExit) as stop:  # refused while parsing, before anything is read
        generate(tmp_path / "foreign", "--num-pairs", "0")
    assert stop.value.code == 2 and "argument --num-pairs: must be at least 1" in capsys.readouterr().err


def test_every_listed_scheduler_builds():
    from diffusers import PNDMScheduler

    from dualanodiff.model.base import SD15_SCHEDULER_CONFIG

    base = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG).config
    for name in SCHEDULERS:
        make_scheduler(name, base).set_timesteps(5)


@pytest.mark.slow
def test_bcm_generation_switches_backgrounds_every_k_pairs(tiny_base_dir, tmp_path):
    pipe = DualAnoDiffPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=4, bcm=True))
    adapters = pipe.save_adapters(tmp_path / "bcm_adapters")
    good, fg = tmp_path / "good", tmp_path / "fg"
    good.mkdir()
    fg.mkdir()
    for i, value in enumerate((40, 200)):
        Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(good / f"{i:03d}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        Image.fromarray(mask).save(fg / f"{i:03d}.png")
    out = tmp_path / "gen"
    cfg = _config(tiny_base_dir, adapters, out, num_pairs=5, max_mask_area=1.0)
    cfg.backgrounds, cfg.foreground, cfg.background_every = str(good), str(fg), 2
    generate_to_folder(cfg, show_progress=False, process_index=0, num_processes=1)
    used = [r["background"] for r in sorted(read_jsonl(out / "manifest.jsonl"), key=lambda r: r["index"])]
    assert used == ["000.png", "000.png", "001.png", "001.png", "000.png"]
    with pytest.raises(InputError, match="--backgrounds"):
        cfg.backgrounds, cfg.out = None, str(tmp_path / "gen2")
        generate_to_folder(cfg, show_progress=False, process_index=0, num_processes=1)


def test_backgrounds_black_out_the_object(tmp_path):
    from dualanodiff.backgrounds import load_backgrounds

    (tmp_path / "good").mkdir()
    (tmp_path / "fg").mkdir()
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "good" / "a.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    Image.fromarray(mask).save(tmp_path / "fg" / "a.png")
    grey_200 = np.float32(200) / 127.5 - 1.0  # 200 in [-1, 1]
    ((name, image),) = load_backgrounds(tmp_path / "good", tmp_path / "fg", 32)
    assert name == "a.png" and (image[:, :, :16] == -1).all() and (image[:, :, 16:] == grey_200).all()
    ((_, whole),) = load_backgrounds(tmp_path / "good", None, 32)  # textures: the whole image is background
    assert (whole == grey_200).all()


@pytest.mark.slow
def test_a_bcm_pair_does_not_depend_on_its_batch(tiny_base_dir):
    """Under guidance, each pair's grey unconditional background is sampled from its own generator too."""
    pipe = DualAnoDiffPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=4, bcm=True))
    pipe.set_progress_bar_config(disable=True)
    for proc in pipe.adapter_modules():
        if getattr(proc, "bcm", None) is not None:
            proc.bcm.alpha.data.fill_(0.8)
    backgrounds = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kwargs = dict(num_inference_steps=3, guidance_scale=2.5, output_type="np")
    together = pipe(num_pairs=3, seeds=[7, 8, 9], backgrounds=backgrounds, **kwargs)
    alone = pipe(num_pairs=1, seeds=[8], backgrounds=backgrounds[1:2], **kwargs)
    # As without BCM, other batch sizes block differently; the backgrounds also pass the VAE encoder.
    steps = pipeline_depth(pipe, num_inference_steps=3) + reduction_depth(pipe.vae.encoder)
    assert_equal_up_to_rounding(together.images[1], alone.images[0], steps, magnitude=1.0)
    assert_equal_up_to_rounding(together.parts[1], alone.parts[0], steps, magnitude=1.0)


@pytest.mark.slow
def test_speed_options_keep_the_pairs_and_may_change_on_resume(tiny_base_dir, adapters, tmp_path):
    run = dict(show_progress=False, process_index=0, num_processes=1)
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    generate_to_folder(_config(tiny_base_dir, adapters, plain, num_pairs=3, max_mask_area=1.0), **run)
    speed = dict(channels_last=True, vae_slicing=True)
    generate_to_folder(_config(tiny_base_dir, adapters, fast, num_pairs=2, max_mask_area=1.0, **speed), **run)
    # The resume changes batch size and speed switches: accepted, since they do not change the pairs.
    cfg = GenerateConfig(
        base=str(tiny_base_dir), adapters=str(adapters), out=str(fast), steps=2, batch_size=1,
        num_pairs=3, max_mask_area=1.0,
    )  # fmt: skip
    assert generate_to_folder(cfg, **run)["written"] == 1
    for kind in ("image", "part"):
        for i in range(3):
            a = np.asarray(Image.open(plain / kind / f"{i:05d}.png"), dtype=np.int16)
            b = np.asarray(Image.open(fast / kind / f"{i:05d}.png"), dtype=np.int16)
            # Float pixels equal up to rounding (about 1e-4, far below one level, 1/255) can still fall on
            # either side of a level's boundary: one level at most.
            assert np.abs(a - b).max() <= 1
    for changes_pairs in (dict(guidance=3.0), dict(vae_tiling=True)):  # these still refuse a resume
        with pytest.raises(InputError, match="other settings"):
            generate_to_folder(_config(tiny_base_dir, adapters, fast, num_pairs=3, **changes_pairs), **run)


@pytest.mark.slow
def test_vae_tiling_decodes_in_tiles_above_the_native_size(pipe, monkeypatch):
    tiled = []
    original = pipe.vae.tiled_decode
    monkeypatch.setattr(pipe.vae, "tiled_decode", lambda z, **k: tiled.append(z.shape) or original(z, **k))
    apply_speed_options(pipe, vae_tiling=True)
    out = pipe(num_pairs=1, num_inference_steps=2, seeds=[3], height=64, width=64, output_type="np")
    assert not tiled and out.images.shape == (1, 64, 64, 3)  # the tiny VAE's native size: no tiles
    out = pipe(num_pairs=1, num_inference_steps=2, seeds=[3], height=128, width=128, output_type="np")
    assert tiled and out.images.shape == (1, 128, 128, 3) and np.isfinite(out.images).all()


def test_presets_follow_the_paper_and_the_authors_inference():
    """METHOD section 7's table."""
    from dualanodiff.generate import preset_settings

    def sampler(preset, bcm, category=None):
        s = preset_settings(preset, bcm, category)
        return s["scheduler"], s["steps"], s["guidance"], s["num_pairs"], s["background_every"]

    assert sampler("paper", False) == sampler("paper", True, "screw") == ("pndm", 50, 2.5, 1000, 50)
    assert sampler("official-code", False) == ("pndm", 100, 2.5, 500, 50)
    assert sampler("official-code", True, "hazelnut") == ("pndm", 50, 2.0, 500, 50)
    assert sampler("official-code", True, "screw") == ("pndm", 50, 1.2, 500, 10)
    assert preset_settings("paper", True)["background_noise"] == "shared"
    assert preset_settings("official-code", True)["background_noise"] == "independent"
    with pytest.raises(InputError, match="--preset"):
        GenerateConfig(base="b", adapters="a", out="o", preset="fast")


@pytest.mark.slow
def test_preset_fills_unset_settings_and_config_records_the_resolved_values(tiny_base_dir, tmp_path):
    pipe = DualAnoDiffPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=4, bcm=True))
    adapters = pipe.save_adapters(
        tmp_path / "bcm", extra={"training": {"category": "screw", "anomaly": "tip"}}
    )
    good = tmp_path / "good"
    good.mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good / "000.png")
    out = tmp_path / "gen"
    argv = ["generate", "--base", str(tiny_base_dir), "--adapters", str(adapters), "--out", str(out),
            "--preset", "official-code", "--num-pairs", "2", "--steps", "2", "--backgrounds", str(good),
            "--foreground", "none", "--max-area", "1", "--device", "cpu"]  # fmt: skip
    assert cli(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "official-code" and config["category"] == "screw"
    assert (config["num_pairs"], config["steps"]) == (2, 2)  # explicit options win
    assert (config["guidance"], config["background_every"], config["scheduler"]) == (1.2, 10, "pndm")
    assert config["background_noise"] == "independent"
    records = read_jsonl(out / "manifest.jsonl")
    assert {r["guidance"] for r in records} == {1.2} and {r["steps"] for r in records} == {2}


@pytest.mark.slow
def test_cli_shared_initial_noise_is_recorded_only_when_on(tiny_base_dir, adapters, tmp_path):
    """--shared-initial-noise reaches the pipeline (the parts change) and the folder's config; off, the key is
    absent, so folders made before the option resume."""
    runs = {}
    for name, flag in (("plain", []), ("shared", ["--shared-initial-noise"])):
        out = tmp_path / name
        argv = ["generate", "--base", str(tiny_base_dir), "--adapters", str(adapters), "--out", str(out),
                "--num-pairs", "2", "--steps", "2", "--max-area", "1", "--device", "cpu", *flag]  # fmt: skip
        assert cli(argv) == 0
        runs[name] = (json.loads((out / "config.json").read_text()), out)
    assert "shared_initial_noise" not in runs["plain"][0]
    assert runs["shared"][0]["shared_initial_noise"] is True
    parts = [np.asarray(Image.open(out / "part" / "00000.png"), float) for _, out in runs.values()]
    assert np.abs(parts[0] - parts[1]).max() > 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shared", "independent"])
def test_background_noise_of_the_guidance_rows(tiny_base_dir, monkeypatch, mode):
    """independent: the grey and the real background row of a pair get their own draws; shared: one. Both seeded
    per pair, so a pair still does not depend on its batch."""
    from diffusers import DDPMScheduler

    pipe = DualAnoDiffPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=4, bcm=True))
    pipe.set_progress_bar_config(disable=True)
    for proc in pipe.adapter_modules():
        if getattr(proc, "bcm", None) is not None:
            proc.bcm.alpha.data.fill_(0.8)
    noises = []
    add_noise = DDPMScheduler.add_noise
    monkeypatch.setattr(
        DDPMScheduler, "add_noise", lambda self, x, n, t: noises.append(n) or add_noise(self, x, n, t)
    )
    backgrounds = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kwargs = dict(num_inference_steps=2, guidance_scale=2.0, output_type="np", background_noise=mode)
    together = pipe(num_pairs=3, seeds=[7, 8, 9], backgrounds=backgrounds, **kwargs)
    uncond, cond = noises[0].chunk(2)
    assert torch.equal(uncond, cond) == (mode == "shared")
    alone = pipe(num_pairs=1, seeds=[8], backgrounds=backgrounds[1:2], **kwargs)
    # Other batch sizes: up to rounding through the pipeline and the backgrounds' VAE encoder.
    steps = pipeline_depth(pipe, num_inference_steps=2) + reduction_depth(pipe.vae.encoder)
    assert_equal_up_to_rounding(together.images[1], alone.images[0], steps, magnitude=1.0)
    other = pipe(
        num_pairs=1, seeds=[8], backgrounds=backgrounds[1:2], **{**kwargs, "background_noise": "shared"}
    )
    moved = np.abs(other.images[0] - alone.images[0]).max() > rounding_tolerance(1.0, steps)
    assert moved == (mode == "independent")  # other noise moves pixels by more than rounding; the same, not


@pytest.mark.slow
def test_bcm_generation_uses_the_adapters_foreground_source(tiny_base_dir, tmp_path, monkeypatch):
    from dualanodiff.synthetic import synthetic_sample

    pipe = DualAnoDiffPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=4, bcm=True))
    adapters = pipe.save_adapters(
        tmp_path / "ad", extra={"training": {"foreground": "auto", "category": "pill"}}
    )
    good, fg = tmp_path / "good", tmp_path / "fg"
    good.mkdir()
    fg.mkdir()
    s = synthetic_sample("pill", "train", "good", 0, resolution=64)
    Image.fromarray(s.image).save(good / "000.png")
    Image.fromarray(s.foreground.astype(np.uint8)[:48] * 255).save(fg / "000_mask.png")  # the wrong size
    run = dict(show_progress=False, process_index=0, num_processes=1)
    cfg = _config(tiny_base_dir, adapters, tmp_path / "gen", num_pairs=1, max_mask_area=1.0)
    cfg.backgrounds = str(good)
    generate_to_folder(cfg, **run)
    config = json.loads((tmp_path / "gen" / "config.json").read_text())
    assert config["foreground"] == "auto" and config["foreground_in_training"] == "auto"

    def no_load(*a, **k):
        raise AssertionError("the backgrounds must be checked before the model is loaded")

    monkeypatch.setattr(DualAnoDiffPipeline, "from_pretrained", no_load)
    cfg.foreground, cfg.out = str(fg), str(tmp_path / "gen2")
    with pytest.raises(InputError, match="000_mask.png: foreground mask size 64x48 differs from image"):
        generate_to_folder(cfg, **run)


def test_the_adapters_recipe_fills_what_the_call_leaves_unset_and_a_preset_overrides_it():
    """`--preset adapters` (the default): the adapters' sampling recipe, the paper's preset for the rest;
    explicit settings win; `--preset paper` ignores the recipe; adapters without one are the paper's, recorded
    as "paper" (so folders made before recipes existed resume)."""
    from dualanodiff.generate import resolve_generate_config

    recipe = {"scheduler": "dpm++", "steps": 20, "guidance": 5.0, "zero_mean_noise": "part",
              "shared_initial_noise": True, "mask_method": "grey-half-max"}  # fmt: skip
    plain = GenerateConfig(base="b", adapters="a", out="o")
    got = resolve_generate_config(plain, bcm=False, recipe=recipe)
    assert got.preset == "adapters" and got.num_pairs == 1000  # the paper's where the recipe is silent
    assert {k: getattr(got, k) for k in recipe} == recipe
    mine = GenerateConfig(base="b", adapters="a", out="o", guidance=2.0, shared_initial_noise=False,
                          zero_mean_noise=False, mask_method="grey")  # fmt: skip
    got = resolve_generate_config(mine, bcm=False, recipe=recipe)
    assert (got.guidance, got.shared_initial_noise, got.zero_mean_noise, got.mask_method) == (
        2.0, False, False, "grey")  # fmt: skip
    assert got.steps == 20
    paper = resolve_generate_config(
        GenerateConfig(base="b", adapters="a", out="o", preset="paper"), bcm=False, recipe=recipe
    )
    none = resolve_generate_config(plain, bcm=False, recipe=None)
    for got in (paper, none):
        assert got.preset == "paper"
        assert (got.scheduler, got.steps, got.guidance) == ("pndm", 50, 2.5)
        assert (got.zero_mean_noise, got.shared_initial_noise, got.mask_method) == (False, False, "auto")


@pytest.mark.slow
def test_adapters_trained_on_a_base_with_a_recipe_are_sampled_with_it(
    tiny_base_dir, synthetic_pill_root, tmp_path
):
    """A base folder's sampling recipe travels into the adapters `train` writes, and a plain `generate` uses
    it (recorded in config.json); a flag still wins; a broken recipe file stops `train` before it trains."""
    import shutil

    from dualanodiff.model.base import SAMPLING_RECIPE

    base = tmp_path / "base"
    shutil.copytree(tiny_base_dir, base)
    recipe = {"scheduler": "ddim", "steps": 2, "guidance": 3.0, "zero_mean_noise": "part",
              "shared_initial_noise": True, "mask_method": "grey-half-max"}  # fmt: skip
    (base / SAMPLING_RECIPE).write_text(json.dumps(recipe))
    train = ["train", "--data", str(synthetic_pill_root), "--category", "pill", "--anomaly", "spot", "--base", str(base),
             "--out", str(tmp_path / "adapters"), "--max-steps", "1", "--batch-size", "1", "--rank", "2",
             "--text-encoder-rank", "2", "--no-progress"]  # fmt: skip
    assert cli(train) == 0
    adapters = tmp_path / "adapters" / "pill" / "spot"
    assert json.loads((adapters / "adapter_config.json").read_text())["sampling"] == recipe
    for name, flags in (("plain", []), ("flag", ["--guidance", "1.5", "--no-shared-initial-noise"])):
        out = tmp_path / name
        argv = ["generate", "--base", str(base), "--adapters", str(adapters), "--out", str(out),
                "--num-pairs", "2", "--max-area", "1", "--device", "cpu", "--no-progress", *flags]  # fmt: skip
        assert cli(argv) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["preset"] == "adapters"
        assert (config["scheduler"], config["steps"], config["mask_method"]) == ("ddim", 2, "grey-half-max")
        assert config["zero_mean_noise"] == "part"
    assert config["guidance"] == 1.5 and "shared_initial_noise" not in config  # the flags won (off: absent)
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["guidance"] == 3.0

    (base / SAMPLING_RECIPE).write_text("{not json")
    assert cli([*train[:-1], "--out", str(tmp_path / "again"), "--no-progress"]) == 2
    assert not (tmp_path / "again" / "pill" / "spot" / "adapters.safetensors").exists()


def test_the_demo_base_carries_the_demos_recipe(tmp_path):
    from dualanodiff.demo.base import demo_base_folder
    from dualanodiff.demo.config import DemoConfig, sampling_recipe
    from dualanodiff.model.base import SAMPLING_RECIPE, read_sampling_recipe

    folder = demo_base_folder(tmp_path / "demo")
    demo = DemoConfig().resolved()
    assert read_sampling_recipe(folder) == sampling_recipe()
    assert sampling_recipe() == {"scheduler": demo.scheduler, "steps": demo.sampler_steps,
                                 "guidance": demo.guidance, "zero_mean_noise": demo.zero_mean_noise,
                                 "shared_initial_noise": demo.shared_initial_noise,
                                 "mask_method": demo.mask_method}  # fmt: skip
    (folder / SAMPLING_RECIPE).unlink()  # a folder written before bases carried one gets it on next use
    assert read_sampling_recipe(demo_base_folder(folder)) == sampling_recipe()
