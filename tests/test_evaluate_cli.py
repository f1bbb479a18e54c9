"""`dualanodiff evaluate`: results files and tables, equivalence with the library metrics, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from dualanodiff.cli import main
from dualanodiff.data.mvtec import anomaly_samples, few_shot_split
from dualanodiff.evaluate.protocol import infer_anomaly_type, paper_figures_apply, paper_milestones
from dualanodiff.evaluate.tables import methods_localization_table, quality_table
from dualanodiff.io import write_json_atomic

from rounding import assert_equal_up_to_rounding, reduction_depth

TINY_LOC = [
    "--epochs", "2", "--samples-per-epoch", "8", "--batch-size", "4", "--resolution", "64",
    "--base-channels", "4", "--runs", "2", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_root(synthetic_pill_root):
    return synthetic_pill_root


@pytest.fixture(scope="module")
def generated(data_root, tmp_path_factory):
    """Crop&Paste folders for two types (the same layout `generate` writes)."""
    from dualanodiff.baselines import run_baseline

    out = tmp_path_factory.mktemp("gen")
    return {
        k: Path(run_baseline("crop-paste", data_root, "pill", k, 10, out / k)["out_dir"])
        for k in ("crack", "scratch")
    }


@pytest.fixture(scope="module")
def weights(random_quality_weights):
    return random_quality_weights


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_localization_writes_json_csv_markdown_and_aggregates_methods(data_root, generated, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "localization", "--data", str(data_root), "--category", "pill", "--out", str(out)]
    assert main([*args, "--generated", *map(str, generated.values()), *TINY_LOC]) == 0
    res = json.loads((out / "localization" / "crop-paste" / "pill" / "results.json").read_text())
    assert res["selection"] == "heldout" and len(res["runs"]) == 2  # both runs reported, the best kept
    best = max(res["runs"], key=lambda r: r["selection_score"])
    assert res["metrics"] == best["test"] and res["best_run"] == best["run"]
    assert res["counts"]["train_generated"] + res["counts"]["heldout_generated"] == 20
    # the real test set: remaining 2/3 of all four types (4 each) + 3 good
    assert res["counts"]["test"] == 4 * 4 + 3 and res["counts"]["test_anomalous"] == 16
    assert res["config"]["lr_milestones"] == [1]  # 80 % / 90 % of 2 epochs, no milestone at epoch 0

    with pytest.raises(SystemExit):  # neither --generated nor --no-generated: never the long default run
        main([*args, *TINY_LOC])
    assert "one of the arguments --generated --no-generated is required" in capsys.readouterr().err
    assert main([*args, "--no-generated", *TINY_LOC]) == 0  # the normal-only floor, same folder
    rows = {r["method"]: r for r in _csv(out / "localization.csv")}
    assert set(rows) == {"crop-paste", "none"}
    none = json.loads((out / "localization" / "none" / "pill" / "results.json").read_text())
    for method, r in (("crop-paste", res), ("none", none)):
        for key, value in r["metrics"].items():
            if key in rows[method] and isinstance(value, float):
                assert float(rows[method][key]) == value  # the CSV writes repr(float), which round-trips
    md = (out / "results.md").read_text()
    assert "| crop-paste |" in md and "| none |" in md
    assert "paper:" not in md  # synthetic data: the paper's MVTec figures would be a false comparison
    assert f"| crop-paste | {100 * res['metrics']['pixel_auroc']:.2f} |" in md
    assert (
        json.loads((out / "results.json").read_text())["localization"]["none"]["pill"]["pixel_auroc"]
        == (none["metrics"]["pixel_auroc"])
    )
    assert "| crop-paste |" in capsys.readouterr().out


def test_select_on_test_says_optimistic(data_root, generated, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "localization", "--data", str(data_root), "--category", "pill", "--out", str(out),
            "--generated", str(generated["crack"]), "--select-on", "test", "--test-types", "crack", *TINY_LOC]  # fmt: skip
    argv[argv.index("--runs") + 1] = "1"
    assert main(argv) == 0
    assert "optimistic" in capsys.readouterr().err
    res = json.loads((out / "localization" / "crop-paste" / "pill" / "results.json").read_text())
    assert res["selection"] == "test (optimistic)"
    assert res["counts"]["test"] == 4 + 3  # --test-types crack: its remaining 2/3 + good
    assert "optimistic" in (out / "results.md").read_text()


@pytest.mark.slow
def test_quality_equals_library_metrics(data_root, generated, weights, tmp_path):
    from dualanodiff.evaluate.quality import ic_lpips, inception_score, load_inception, load_lpips_vgg

    inception, vgg = weights
    out = tmp_path / "eval"
    argv = ["evaluate", "quality", "--data", str(data_root), "--category", "pill", "--out", str(out),
            "--generated", *map(str, generated.values()), "--inception-weights", str(inception),
            "--lpips-vgg-weights", str(vgg), "--is-splits", "5", "--lpips-size", "64", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "quality" / "crop-paste" / "pill.json").read_text())
    inc, lp = load_inception(inception, "cpu"), load_lpips_vgg(vgg, "cpu")
    for kind, folder in generated.items():
        images = sorted((p for p in (folder / "image").iterdir()), key=lambda p: p.name)
        centres = [s.image for s in few_shot_split(anomaly_samples(data_root, "pill", kind)).train]
        ref_is = inception_score(images, splits=5, model=inc)["is_mean"]
        ref_ic = ic_lpips(images, centres, model=lp, size=64)["ic_lpips"]
        # The same networks on the same batches, with their own copies of the weights: up to rounding through
        # the Inception, and through LPIPS' VGG twice (squared feature differences), as in test_quality.
        assert_equal_up_to_rounding(res["types"][kind]["is"], ref_is, reduction_depth(inc))
        assert_equal_up_to_rounding(res["types"][kind]["ic_lpips"], ref_ic, 2 * reduction_depth(lp))
        assert res["types"][kind]["n_images"] == 10
    per_type = [res["types"][k]["is"] for k in generated]
    assert_equal_up_to_rounding(res["is"], np.mean(per_type), len(per_type), np.float64)  # a float64 mean
    rows = _csv(out / "quality.csv")
    assert [(r["anomaly_type"], float(r["is"])) for r in rows] == [
        (k, res["types"][k]["is"]) for k in sorted(generated)
    ]
    assert f"| crop-paste | {res['is']:.2f} | {res['ic_lpips']:.2f} |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_quality_scores_every_generated_image_by_default(data_root, generated, weights, tmp_path):
    """IS and IC-LPIPS over kept and rejected pairs, as the paper; --quality-images kept for the kept only."""
    from dualanodiff.data.generated import GeneratedWriter, read_generated
    from dualanodiff.data.images import load_mask, load_rgb
    from dualanodiff.evaluate.quality import inception_score, load_inception
    from dualanodiff.locking import output_lock

    source = read_generated(generated["crack"])
    folder = tmp_path / "gated"
    with output_lock(folder, "test"):
        writer = GeneratedWriter(folder, {"method": "crop-paste", "anomaly_type": "crack"})
        for i, pair in enumerate(source):
            rejected = i in (1, 4, 7)
            writer.write(i, load_rgb(pair.image), load_mask(pair.mask), kept=not rejected,
                         reject_reason="mask empty" if rejected else None)  # fmt: skip
    inception, vgg = weights
    inc = load_inception(inception, "cpu")
    everything = [p.image for p in read_generated(folder, include_rejected=True)]
    kept = [p.image for p in read_generated(folder)]
    assert (len(everything), len(kept)) == (10, 7)
    for option, images in ((None, everything), ("kept", kept)):
        out = tmp_path / f"eval-{option}"
        argv = ["evaluate", "quality", "--data", str(data_root), "--category", "pill", "--out", str(out),
                "--generated", str(folder), "--inception-weights", str(inception), "--lpips-vgg-weights",
                str(vgg), "--is-splits", "2", "--lpips-size", "64", "--device", "cpu"]  # fmt: skip
        assert main(argv + (["--quality-images", option] if option else [])) == 0
        res = json.loads((out / "quality" / "crop-paste" / "pill.json").read_text())
        assert res["images"] == (option or "all")
        assert res["types"]["crack"]["n_images"] == len(images)
        assert res["types"]["crack"]["n_rejected"] == (3 if option is None else 0)
        ref = inception_score(images, splits=2, model=inc)["is_mean"]
        # The same network on the same images, its own copy of the weights: up to rounding through it.
        assert_equal_up_to_rounding(res["types"]["crack"]["is"], ref, reduction_depth(inc))
        md = (out / "results.md").read_text()
        assert ("kept and rejected" in md) == (option is None) and ("kept pairs only" in md) == (
            option == "kept"
        )
        assert _csv(out / "quality.csv")[0]["images"] == (option or "all")


@pytest.mark.slow
def test_classification_writes_accuracy(data_root, generated, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached ResNet-34 weights
    out = tmp_path / "eval"
    argv = ["evaluate", "classification", "--data", str(data_root), "--category", "pill", "--out", str(out),
            "--generated", *map(str, generated.values()), "--epochs", "1", "--batch-size", "4", "--resolution", "32",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2  # no ImageNet weights: refused, as missing Inception weights are
    assert "--random-init" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--random-init"]) == 0
    res = json.loads((out / "classification" / "crop-paste" / "pill" / "classification.json").read_text())
    assert res["classes"] == ["crack", "scratch"] and res["n_test"] == 8 and res["n_train"] == 20
    row = _csv(out / "classification.csv")[0]
    assert float(row["accuracy"]) == res["accuracy"] and row["category"] == "pill"
    assert "crop-paste (random init: pill)" in (out / "results.md").read_text()


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    return err


def test_bad_inputs_are_one_line_errors(data_root, generated, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(generated["crack"], broken)
    (broken / "mask" / "00003.png").unlink()
    base = ["--data", str(data_root), "--out", str(tmp_path / "o")]
    err = _error(
        ["evaluate", "localization", *base, "--category", "pill", "--generated", str(broken)], capsys
    )
    assert "00003.png" in err and "mask" in err
    err = _error(
        ["evaluate", "localization", *base, "--category", "carpet", "--no-generated", *TINY_LOC], capsys
    )
    assert "'carpet' not found" in err and "pill" in err
    err = _error(
        ["evaluate", "classification", *base, "--category", "pill", "--generated", *map(str, generated.values()),
         "--anomaly-types", "crack"], capsys)  # fmt: skip
    assert "--anomaly-types" in err
    err = _error(
        ["evaluate", "classification", *base, "--category", "pill", "--generated", str(generated["crack"]),
         "--random-init"], capsys)  # fmt: skip
    assert "at least two anomaly types" in err
    err = _error(
        ["evaluate", "localization", *base, "--category", "pill", "--test-types", "dent", "--no-generated",
         *TINY_LOC], capsys)  # fmt: skip
    assert "dent" in err and "crack" in err


def test_help_names_every_flag(capsys):
    for mode, flags in {
        "quality": ["--generated", "--inception-weights", "--lpips-vgg-weights", "--split", "--is-splits"],
        "localization": ["--select-on", "--runs", "--epochs", "--samples-per-epoch", "--batch-size", "--lr",
                         "--resolution", "--paper-compat-f1", "--device", "--test-types"],
        "classification": ["--imagenet-weights", "--epochs", "--max-per-type"],
    }.items():  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", mode, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for flag in flags:
            assert flag in text, (mode, flag)


def test_anomaly_type_of_a_generate_folder_comes_from_its_adapters(tmp_path):
    """`generate` records no anomaly_type per pair; its config names the adapters, whose config names the type."""
    from dualanodiff.data.generated import GeneratedPair

    adapters = tmp_path / "adapters"
    write_json_atomic(adapters / "train_config.json", {"anomaly": "scratch"})
    folder = tmp_path / "gen" / "whatever"
    write_json_atomic(folder / "config.json", {"adapters": str(adapters)})
    pair = GeneratedPair("00000", folder / "image" / "00000.png", folder / "mask" / "00000.png", None, {})
    assert infer_anomaly_type(folder, [pair]) == "scratch"
    write_json_atomic(folder / "config.json", {})
    assert infer_anomaly_type(folder, [pair]) == "whatever"
    tagged = GeneratedPair("00000", pair.image, pair.mask, None, {"anomaly_type": "crack"})
    assert infer_anomaly_type(folder, [tagged]) == "crack"


def test_tables_and_paper_figures(data_root):
    assert paper_figures_apply(None, ["pill", "screw"]) and not paper_figures_apply(None, ["pill", "weave"])
    assert not paper_figures_apply(data_root, ["pill"])  # the synthetic stand-in borrows the name
    assert paper_milestones(200) == (160, 180) and paper_milestones(1) == ()
    q = quality_table(
        {"dualanodiff": {"pill": {"is": 2.0, "ic_lpips": 0.5}, "screw": {"is": 1.0, "ic_lpips": None}}}, True
    )
    assert "| dualanodiff | 2.00 | 0.50 | 1.00 | n/a | 1.50 | 0.50 |" in q
    assert "| paper: DualAnoDiff |" in q and "1.93 | 0.38 |" in q
    m = {
        k: 0.5 for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "image_auroc", "image_ap", "image_f1_max")
    }
    t = methods_localization_table(
        {"none": {"pill": {**m, "pixel_aupro": 0.25}, "screw": {**m, "pixel_aupro": 0.75}}}
    )
    assert "| none | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 2 |" in t
    assert not paper_figures_apply(None, [])
