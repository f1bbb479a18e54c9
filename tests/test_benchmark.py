"""`dualanodiff benchmark` end to end on a tiny synthetic MVTec-layout tree, resume, and input errors."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dualanodiff.benchmark as bm
from dualanodiff.benchmark import (
    BenchmarkConfig,
    ClassificationSettings,
    GenerateSettings,
    LocalizationSettings,
    TrainSettings,
    run_benchmark,
)
from dualanodiff.cli import main
from dualanodiff.errors import InputError
from dualanodiff.training import resolve_config

from rounding import rounding_tolerance


@pytest.fixture(scope="module")
def data_root(synthetic_pill_root):
    return synthetic_pill_root


@pytest.fixture(scope="module")
def weights(random_quality_weights):
    return random_quality_weights


def tiny_config(data_root, base, out, weights) -> BenchmarkConfig:
    """Every size at its smallest: 2 training steps, 4 pairs, 2 sampler steps, 1 U-Net epoch of 8 samples."""
    return BenchmarkConfig(
        data=str(data_root), base=str(base), out=str(out), anomalies=["crack", "scratch"], device="cpu",
        progress=False,
        train=TrainSettings(max_steps=2, batch_size=2, rank=4, text_encoder_rank=4),
        generate=GenerateSettings(num_pairs=4, steps=2, batch_size=4, max_mask_area=1.0),
        inception_weights=str(weights[0]), lpips_vgg_weights=str(weights[1]), is_splits=2, lpips_size=64,
        localization=LocalizationSettings(epochs=1, samples_per_epoch=8, batch_size=4, resolution=64,
                                          base_channels=4, runs=1),
        classification=ClassificationSettings(epochs=1, batch_size=4, resolution=32, repeats_per_epoch=1,
                                              random_init=True),
    )  # fmt: skip


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _boom(*args, **kwargs):
    raise AssertionError("a finished step ran again")


STEP_FUNCTIONS = (
    "train_adapters", "generate_to_folder", "run_baseline", "load_quality_models", "quality_of_category",
    "localize_category", "classify_category",
)  # fmt: skip


@pytest.mark.slow
def test_benchmark_end_to_end_resumes_and_skips_finished_steps(
    data_root, tiny_base_dir, weights, tmp_path, monkeypatch
):
    out = tmp_path / "bench"
    cfg = tiny_config(data_root, tiny_base_dir, out, weights)

    # A failure in the last step: everything before it is finished and marked.
    real_classify = bm.classify_category

    def fails_for_perlin(root, category, generated, config, out_dir, **kwargs):
        if Path(out_dir).parent.name == "perlin":
            raise RuntimeError("interrupted")
        return real_classify(root, category, generated, config, out_dir, **kwargs)

    monkeypatch.setattr(bm, "classify_category", fails_for_perlin)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_benchmark(cfg)
    assert not (out / "steps" / "classification--perlin--pill.json").exists()
    assert (out / "steps" / "classification--crop-paste--pill.json").is_file()
    monkeypatch.undo()

    # The rerun does only the unfinished step.
    res = run_benchmark(cfg)
    ran = [s["id"] for s in res["steps"] if s["status"] == "done"]
    assert ran == ["classification/perlin/pill"]
    ids = [s["id"] for s in res["steps"]]
    assert ids[:4] == ["train/pill/crack", "generate/dualanodiff/pill/crack", "generate/crop-paste/pill/crack",
                       "generate/perlin/pill/crack"]  # fmt: skip
    assert len(ids) == 2 * 4 + 3 + 4 + 3  # train+3 generators per type; quality, localization, classification
    assert all((out / "steps" / (i.replace("/", "--") + ".json")).is_file() for i in ids)

    # Outputs: adapters, generated folders, per-method results, tables.
    assert (out / "adapters" / "pill" / "crack" / "adapters.safetensors").is_file()
    for method in ("dualanodiff", "crop-paste", "perlin"):
        for kind in ("crack", "scratch"):
            assert len(list((out / "generated" / method / "pill" / kind / "image").glob("*.png"))) == 4
    a = np.asarray(Image.open(out / "generated" / "perlin" / "pill" / "crack" / "image" / "00000.png"))
    b = np.asarray(Image.open(out / "generated" / "perlin" / "pill" / "scratch" / "image" / "00000.png"))
    assert not np.array_equal(a, b)  # per-type seeds: Perlin pairs of two types are not copies
    config = json.loads((out / "config.json").read_text())
    assert config["generate"]["num_pairs"] == 4 and config["profile"] == "paper"
    assert config["train"]["preset"] == "paper" and config["localization"]["runs"] == 1
    assert config["anomaly_types"] == {"pill": ["crack", "scratch"]}

    loc = {r["method"]: r for r in _csv(out / "localization.csv")}
    assert set(loc) == {"dualanodiff", "crop-paste", "perlin", "none"}
    for method, row in loc.items():
        marker = json.loads((out / "steps" / f"localization--{method}--pill.json").read_text())
        written = json.loads((out / "localization" / method / "pill" / "results.json").read_text())
        assert marker["result"]["metrics"] == written["metrics"]
        assert float(row["pixel_auroc"]) == written["metrics"]["pixel_auroc"]  # repr(float) round-trips
        assert 0.0 <= float(row["image_auroc"]) <= 1.0
        counts = written["counts"]
        assert counts["test"] == 2 * 4 + 3  # the chosen types' remaining 2/3 + test/good
        assert counts["train_generated"] + counts["heldout_generated"] == (0 if method == "none" else 8)
    quality = {(r["method"], r["anomaly_type"]): r for r in _csv(out / "quality.csv")}
    assert set(quality) == {
        (m, k) for m in ("dualanodiff", "crop-paste", "perlin") for k in ("crack", "scratch")
    }
    # IS = exp(mean KL) >= 1; the float64 KL over 4 images x 1008 classes may round below 0, a rounding a term.
    floor = 1.0 - rounding_tolerance(1.0, 4 * 1008, np.float64)
    assert all(float(r["is"]) >= floor and r["n_images"] == "4" for r in quality.values())
    cls = {r["method"]: float(r["accuracy"]) for r in _csv(out / "classification.csv")}
    assert set(cls) == {"dualanodiff", "crop-paste", "perlin"} and all(0 <= v <= 1 for v in cls.values())
    assert {r["imagenet_init"] for r in _csv(out / "classification.csv")} == {"False"}  # random_init=True

    summary_md = (out / "summary.md").read_text()
    for heading in ("Downstream localization", "Generation quality", "Anomaly-type classification"):
        assert heading in summary_md
    assert "| perlin (random init: pill) |" in summary_md  # not the paper's protocol, and the table says so
    assert f"| none | {100 * float(loc['none']['pixel_auroc']):.2f} |" in summary_md
    assert "paper:" not in summary_md  # synthetic data, whatever its category names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["localization"]["perlin"]["pill"]["pixel_auroc"] == float(
        loc["perlin"]["pixel_auroc"]
    )

    # A third run touches no step function at all.
    for name in STEP_FUNCTIONS:
        monkeypatch.setattr(bm, name, _boom)
    again = run_benchmark(cfg)
    assert {s["status"] for s in again["steps"]} == {"skipped"}
    assert again["results"] == summary["results"]
    monkeypatch.undo()

    # Other settings in the same folder are refused before anything runs, naming the step and the change.
    with pytest.raises(InputError, match=r"generate/crop-paste/pill/crack \(num_pairs: 4 -> 5"):
        run_benchmark(cfg.with_settings(num_pairs=5))
    with pytest.raises(InputError, match=r"localization/dualanodiff/pill \(epochs: 1 -> 2"):
        run_benchmark(cfg.with_settings(loc_epochs=2))


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_bad_inputs_are_one_line_errors(data_root, weights, tmp_path, capsys, monkeypatch):
    base = ["benchmark", "--data", str(data_root), "--out", str(tmp_path / "b")]
    err = _error([*base, "--categories", "pill,carpet", "--methods", "none"], capsys)
    assert "'carpet' not found" in err and "pill" in err
    err = _error([*base, "--methods", "dualanodiff"], capsys)
    assert "--base is required" in err
    err = _error([*base, "--methods", "none,gan"], capsys)
    assert "--methods" in err and "crop-paste" in err
    err = _error([*base, "--methods", "none", "--anomalies", "dent"], capsys)
    assert "dent" in err and "crack" in err
    err = _error([*base, "--methods", "perlin", "--num-pairs", "4"], capsys)
    assert "--is-splits" in err
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    err = _error([*base, "--methods", "perlin"], capsys)
    assert "--inception-weights" in err
    err = _error(
        ["benchmark", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b"), "--methods", "none"],
        capsys,
    )
    assert "nowhere" in err
    # A type with too few images for the few-shot split is reported before any model is built.
    from dualanodiff.synthetic import make_synthetic

    small = make_synthetic(
        tmp_path / "small", resolution=32, n_train_good=2, n_test_good=1, categories=["pill"],
        defect_counts={"pill": {"crack": 2, "scratch": 3, "spot": 3, "stain": 3}},
    )  # fmt: skip
    err = _error(
        ["benchmark", "--data", str(small), "--out", str(tmp_path / "c"), "--methods", "none"], capsys
    )
    assert "crack" in err and "too few" in err


TINY_CLASSIFICATION = ["--num-pairs", "3", "--loc-epochs", "1", "--loc-samples-per-epoch", "4", "--loc-batch-size",
                       "2", "--loc-resolution", "32", "--loc-base-channels", "2", "--runs", "1", "--cls-epochs", "1",
                       "--cls-batch-size", "2", "--cls-resolution", "32", "--device", "cpu", "--no-progress"]  # fmt: skip


def test_without_imagenet_weights_classification_needs_random_init(data_root, tmp_path, capsys, monkeypatch):
    """The rule of `evaluate classification`: no ResNet-34 ImageNet file (given or in the torch hub cache) and
    no --random-init is refused before anything is written (a --random-init run: the next test)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    out = tmp_path / "b"
    argv = ["benchmark", "--data", str(data_root), "--out", str(out), "--methods", "crop-paste", "--anomalies",
            "crack,scratch", "--no-quality", *TINY_CLASSIFICATION]  # fmt: skip
    err = _error(argv, capsys)
    assert err.startswith("dualanodiff benchmark: error: --imagenet-weights: classification needs") and (
        "--random-init" in err
    ), err
    assert not out.exists()  # refused before the folder was made
    err = _error([*argv, "--random-init", "--imagenet-weights", str(tmp_path / "w.pth")], capsys)
    assert "--random-init: conflicts with --imagenet-weights" in err and not out.exists()
    # No classification step (none asked for, or no generated data to train on): no weights needed.
    for off in (dict(methods=["none"]), dict(methods=["crop-paste"], classification=False)):
        bm.resolve_benchmark_config(
            BenchmarkConfig(data=str(data_root), out=str(out), quality=False).with_settings(**off)
        )


@pytest.mark.slow
def test_a_random_init_run_names_it_in_its_tables(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    argv = ["benchmark", "--data", str(data_root), "--out", str(tmp_path / "r"), "--methods", "crop-paste",
            "--anomalies", "crack,scratch", "--no-quality", *TINY_CLASSIFICATION, "--random-init"]  # fmt: skip
    assert main(argv) == 0
    assert "| crop-paste (random init: pill) |" in capsys.readouterr().out
    (row,) = _csv(tmp_path / "r" / "classification.csv")
    assert row["imagenet_init"] == "False"
    assert json.loads((tmp_path / "r" / "config.json").read_text())["classification"]["random_init"] is True


def test_profiles_fill_only_unset_sizes(data_root, tmp_path, capsys):
    base = dict(data=str(data_root), out=str(tmp_path / "b"), methods=["none"], quality=False)
    paper = bm.resolve_benchmark_config(BenchmarkConfig(**base))
    assert (paper.generate.num_pairs, paper.localization.epochs, paper.localization.runs, paper.train.max_steps) == (
        1000, 200, 3, None)  # fmt: skip
    assert paper.categories == ["pill"]
    quick = bm.resolve_benchmark_config(BenchmarkConfig(**base, quick=True).with_settings(loc_epochs=7))
    assert (quick.generate.num_pairs, quick.localization.epochs, quick.localization.runs, quick.train.max_steps) == (
        100, 7, 1, 500)  # fmt: skip
    assert quick.train.preset == "official-code" and quick.setting("train_preset") == "official-code"
    by_epochs = bm.resolve_benchmark_config(
        BenchmarkConfig(**base, quick=True, train=TrainSettings(epochs=3))
    )
    assert (by_epochs.train.epochs, by_epochs.train.max_steps) == (3, None)
    # The generation preset fills pairs and steps, and per category the guidance and background switching.
    official_code = GenerateSettings(preset="official-code")
    official = bm.resolve_benchmark_config(BenchmarkConfig(**base, generate=official_code, bcm=True))
    gen = official.generate
    assert (gen.num_pairs, gen.steps, gen.guidance) == (500, 50, None)
    bench = bm._Benchmark(official, {"pill": ["crack"]})
    screw, pill = bench.generate_config("screw", "tip"), bench.generate_config("pill", "crack")
    assert (screw.guidance, screw.background_every, screw.background_noise) == (1.2, 10, "independent")
    assert (pill.guidance, pill.background_every, pill.steps) == (2.0, 50, 50)
    # BCM foregrounds: the dataset's foreground/ folder for training and, on train/good, for generation.
    assert resolve_config(bench.train_config("pill", "crack")).foreground == str(
        data_root / "pill" / "foreground"
    )
    assert pill.foreground == str(data_root / "pill" / "foreground" / "train" / "good")
    auto = bm._Benchmark(replace(official, foreground="auto"), {"pill": ["crack"]})
    assert resolve_config(auto.train_config("pill", "crack")).foreground == "auto"
    assert auto.generate_config("pill", "crack").foreground == "auto"
    plain = bm.resolve_benchmark_config(BenchmarkConfig(**base, generate=replace(official_code, steps=7)))
    assert (plain.generate.num_pairs, plain.generate.steps) == (500, 7)
    assert bm._Benchmark(plain, {"pill": ["crack"]}).generate_config("pill", "crack").guidance == 2.5
    # --trim reaches the placed pairs only; the free ones are never trimmed (GenerateConfig would refuse it).
    trimmed = bm._Benchmark(plain.with_settings(trim=True), {"pill": ["crack"]})
    assert trimmed.generate_config("pill", "crack", True).trim is True
    assert trimmed.generate_config("pill", "crack").trim is False
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--base", "--out", "--categories", "--anomalies", "--methods", "--quick", "--num-pairs",
                 "--sampler-steps", "--train-steps", "--loc-epochs", "--loc-samples-per-epoch", "--runs",
                 "--select-on", "--cls-epochs", "--no-quality", "--no-classification", "--gen-preset",
                 "--quality-images"):  # fmt: skip
        assert flag in text, flag


def test_every_train_and_generate_option_that_changes_a_result_reaches_the_benchmark(data_root, tmp_path):
    """Each option of `train` and `generate` is borrowed by the benchmark (the same declaration), declared by it
    under its own name, or named as not applying; the borrowed ones reach the task configs, and unset they
    give the tasks' own defaults."""
    import argparse

    from dualanodiff.commands import benchmark as command
    from dualanodiff.training import TrainConfig

    for name in ("train", "generate"):
        dests = set(command.command_actions(name))
        groups = [set(command.BORROWED[name]), set(command.OWN[name]), command.NOT_FOR_BENCHMARK[name]]
        assert sum(map(len, groups)) == len(set().union(*groups)), f"{name}: an option classified twice"
        assert dests == set().union(*groups), f"{name}: unclassified {dests - set().union(*groups)}"

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    common = ["benchmark", "--data", str(data_root), "--out", str(tmp_path / "b")]
    given = ["--no-saim", "--probe-every", "3", "--zero-mean-noise", "part", "--shared-initial-noise", "--alpha",
             "8", "--saim-zero-init", "--background-scaling", "official", "--no-flips", "--save-dtype", "bf16",
             "--mask-threshold", "20", "--background-every", "5", "--background-noise", "shared", "--vae-tiling",
             "--rank", "4", "--mixed-precision", "bf16"]  # fmt: skip
    cfg = command.config_from_args(parser.parse_args([*common, *given]))
    bench = bm._Benchmark(bm.resolve_benchmark_config(replace(cfg, methods=["none"])), {"pill": ["crack"]})
    train, gen = bench.train_config("pill", "crack"), bench.generate_config("pill", "crack")
    assert (train.saim, train.probe_every, train.alpha, train.saim_zero_init, train.background_latent_scaling,
            train.flips, train.save_dtype, train.rank, train.mixed_precision) == (
        False, 3, 8.0, True, "official", False, "bf16", 4, "bf16")  # fmt: skip
    assert (gen.zero_mean_noise, gen.shared_initial_noise, gen.mask_threshold, gen.background_every,
            gen.background_noise, gen.vae_tiling, gen.mixed_precision) == (
        "part", True, 20.0, 5, "shared", True, "bf16")  # fmt: skip
    assert bench.train_key("pill", "crack")["saim"] is False  # a setting of the training step's key

    unset = command.config_from_args(parser.parse_args(common))
    assert unset == BenchmarkConfig(data=str(data_root), out=str(tmp_path / "b"))
    bench = bm._Benchmark(bm.resolve_benchmark_config(replace(unset, methods=["none"])), {"pill": ["crack"]})
    train, defaults = bench.train_config("pill", "crack"), TrainConfig(base="b", out="o")
    for dest in command.BORROWED["train"]:
        assert getattr(train, dest) == getattr(defaults, dest), dest


def test_the_benchmark_config_is_the_task_configs_settings_under_their_names(tmp_path):
    """Each section holds fields of its task's config under their names, with that config's defaults (None: the
    profile's; the sampling the benchmark sets the paper's way), and a few of the benchmark's own; every setting
    has one flat name, the dest of its flag, by which `with_settings` replaces it in a copy."""
    import argparse
    from dataclasses import MISSING, fields

    from dualanodiff.commands import benchmark as command
    from dualanodiff.generate import PAPER_NOISE_AND_MASK

    own = {"generate": {"perlin_source"}, "classification": {"enabled", "imagenet_weights"}}
    chosen = {("generate", name) for name in PAPER_NOISE_AND_MASK}  # the benchmark samples the paper's way
    for section, (settings, task) in bm.SECTIONS.items():
        defaults = {f.name: f.default for f in fields(task) if f.default is not MISSING}
        for f in fields(settings):
            if f.name in own.get(section, ()):
                assert f.name not in defaults, (section, f.name)
            elif f.default is not None and (section, f.name) not in chosen:
                assert f.default == defaults[f.name], (section, f.name)
            else:
                assert f.name in {g.name for g in fields(task)}, (section, f.name)

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    dests = {a.dest for a in sub.choices["benchmark"]._actions} - {"help"}
    assert dests - set(bm.SETTINGS) == {"executor", "ray_address", "ray_cpus", "ray_retries"}
    # the authors' protocol constant, which `evaluate classification` does not take either
    assert set(bm.SETTINGS) - dests == {"cls_repeats_per_epoch"}
    for table in (command.BORROWED, command.OWN):
        for name, to in (
            (n, t[1] if isinstance(t, tuple) else t) for c in table.values() for n, t in c.items()
        ):
            assert to in bm.SETTINGS, (name, to)

    cfg = BenchmarkConfig(data="d", out=str(tmp_path))
    changed = cfg.with_settings(
        loc_runs=2, train_lr=1e-5, guidance=3.0, classification=False, seed=4, bcm=True
    )
    assert (changed.localization.runs, changed.train.learning_rate, changed.generate.guidance,
            changed.classification.enabled, changed.seed, changed.bcm) == (2, 1e-5, 3.0, False, 4, True)  # fmt: skip
    assert cfg == BenchmarkConfig(data="d", out=str(tmp_path))  # a copy: the original is as it was
    same = ("loc_runs", "train_lr", "guidance", "classification", "seed", "bcm")
    assert [n for n in bm.SETTINGS if changed.setting(n) != cfg.setting(n)] == [
        n for n in bm.SETTINGS if n in same
    ]
    with pytest.raises(TypeError, match="no setting 'loc_epoch'"):
        cfg.with_settings(loc_epoch=3)


def test_an_out_of_range_size_names_its_flag(data_root, tmp_path):
    cfg = BenchmarkConfig(data=str(data_root), out=str(tmp_path / "b"), methods=["none"], quality=False)
    with pytest.raises(InputError, match=r"^--runs must be at least 1, got 0$"):
        bm.resolve_benchmark_config(cfg.with_settings(loc_runs=0))
    with pytest.raises(InputError, match=r"^--loc-epochs must be at least 1"):
        bm.resolve_benchmark_config(cfg.with_settings(loc_epochs=0))


@pytest.mark.slow
def test_no_pair_through_the_gate_then_a_higher_max_mask_area_regates_the_same_pairs(
    data_root, tiny_base_dir, weights, tmp_path
):
    """The benchmark's advice when the mask gate keeps nothing ("raise --max-mask-area") can be followed in
    the same --out: the pairs already made are judged again, not made again; a change the folder cannot
    take is refused before the top-level config.json is touched."""
    out = tmp_path / "bench"
    cfg = tiny_config(data_root, tiny_base_dir, out, weights).with_settings(
        anomalies=["crack"], methods=["dualanodiff"], quality=False, classification=False, max_mask_area=2e-4)  # fmt: skip
    with pytest.raises(InputError, match="none of the 4 generated pairs passed the mask quality gate"):
        run_benchmark(cfg)
    folder = out / "generated" / "dualanodiff" / "pill" / "crack"
    made = {p.name: p.read_bytes() for p in (folder / "rejected" / "image").iterdir()}
    assert len(made) == 4 and not list(folder.glob("image/*.png"))
    top = (out / "config.json").read_text()

    with pytest.raises(InputError, match=r"generate/dualanodiff/pill/crack \(steps: 2 -> 3"):
        run_benchmark(cfg.with_settings(sampler_steps=3))
    assert (out / "config.json").read_text() == top  # refused before the config was rewritten

    result = run_benchmark(cfg.with_settings(max_mask_area=1.0))
    assert {s["id"]: s["status"] for s in result["steps"]}["generate/dualanodiff/pill/crack"] == "done"
    kept = {p.name: p.read_bytes() for p in (folder / "image").iterdir()}
    assert kept and all(kept[name] == made[name] for name in kept)  # the same pairs, judged again
    records = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in records) == sorted(p.removesuffix(".png") for p in made)
    assert json.loads((folder / "config.json").read_text())["max_mask_area"] == 1.0
    assert json.loads((out / "config.json").read_text())["generate"]["max_mask_area"] == 1.0
