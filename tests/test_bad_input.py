"""Bad input, command by command: exit code 2, one line on stderr naming the flag or file and the problem, no
traceback, nothing written where the output would go. Run in-process through `dualanodiff.cli.main`; a few
cases also as real processes, where the exit path itself is what is tested."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dualanodiff.cli import main

KEEP = "keep me\n"


@dataclass(frozen=True)
class Ctx:
    base: Path
    data: Path
    adapters: Path
    generated: Path
    out: Path  # does not exist: every case must leave it so
    file: Path  # an existing file, given where a folder is expected
    garbage: Path  # not a weights file
    hollow_base: Path  # a base folder whose unet/ is empty
    bad_mask_data: Path  # a dataset whose few-shot crack mask has the wrong size
    empty_test_mask_data: Path  # a dataset whose last crack test image has an all-zero mask
    missing_image: Path  # a generated folder whose manifest lists a pair whose image is gone
    pickled: Path  # a torch.save of a module: tensors only cannot read it


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_base_dir, synthetic_pill_root) -> dict[str, Path]:
    """Everything but the per-test output paths: built once, never written by the cases."""
    from dualanodiff.baselines import run_baseline
    from dualanodiff.model.base import load_base
    from dualanodiff.model.dual_unet import AdapterConfig
    from dualanodiff.pipeline import DualAnoDiffPipeline

    root = tmp_path_factory.mktemp("bad_input")
    adapters = root / "adapters"
    DualAnoDiffPipeline.from_components(
        load_base(tiny_base_dir), AdapterConfig(rank=2, text_encoder_rank=2)
    ).save_adapters(adapters)
    generated = root / "generated"
    run_baseline("crop-paste", synthetic_pill_root, "pill", "crack", 4, generated)
    garbage = root / "garbage.pth"
    garbage.write_bytes(b"this is not a weights file")
    hollow = root / "hollow_base"
    shutil.copytree(tiny_base_dir, hollow, ignore=lambda d, names: names if Path(d).name == "unet" else [])
    bad = root / "bad_mask_data"
    shutil.copytree(synthetic_pill_root / "pill", bad / "pill")
    mask = bad / "pill" / "ground_truth" / "crack" / "000_mask.png"
    Image.open(mask).resize((32, 32)).save(mask)
    empty = root / "empty_test_mask_data"
    shutil.copytree(synthetic_pill_root / "pill", empty / "pill")
    last = sorted((empty / "pill" / "ground_truth" / "crack").iterdir())[-1]  # in the test split
    Image.fromarray(np.zeros(Image.open(last).size[::-1], np.uint8)).save(last)
    pickled = root / "pytorch_lora_weights.bin"
    torch.save({"unet.x": torch.nn.Linear(2, 2)}, pickled)
    missing = root / "missing_image"
    shutil.copytree(generated, missing)
    (missing / "image" / "00001.png").unlink()
    return dict(
        base=tiny_base_dir, data=synthetic_pill_root, adapters=adapters, generated=generated,
        garbage=garbage, hollow_base=hollow, bad_mask_data=bad, empty_test_mask_data=empty,
        missing_image=missing, pickled=pickled,
    )  # fmt: skip


@pytest.fixture
def ctx(inputs, tmp_path) -> Ctx:
    existing = tmp_path / "a_file"
    existing.write_text(KEEP)
    return Ctx(**inputs, out=tmp_path / "out", file=existing)


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse refuses while parsing
        code = stop.code
    return code, capsys.readouterr().err


def _train(c: Ctx, *extra: str) -> list[str]:
    return ["train", "--data", str(c.data), "--category", "pill", "--anomaly", "crack", "--base", str(c.base),
            "--out", str(c.out), "--rank", "2", "--text-encoder-rank", "2", "--max-steps", "1", *extra]  # fmt: skip


def _generate(c: Ctx, *extra: str) -> list[str]:
    return ["generate", "--base", str(c.base), "--adapters", str(c.adapters), "--out", str(c.out),
            "--num-pairs", "2", "--steps", "1", *extra]  # fmt: skip


def _evaluate(c: Ctx, mode: str, *extra: str) -> list[str]:
    return ["evaluate", mode, "--data", str(c.data), "--category", "pill", "--out", str(c.out), *extra]


def _baseline(c: Ctx, *extra: str, data: Path | None = None) -> list[str]:
    return ["baseline", "crop-paste", "--data", str(data or c.data), "--category", "pill", "--anomaly", "crack",
            "--num-pairs", "2", "--out", str(c.out), *extra]  # fmt: skip


def _benchmark(c: Ctx, *extra: str) -> list[str]:
    return ["benchmark", "--data", str(c.data), "--base", str(c.base), "--out", str(c.out), "--methods",
            "dualanodiff", "--categories", "pill", "--anomalies", "crack", "--no-quality", "--no-classification",
            *extra]  # fmt: skip


GEN = ("--generated",)
NO_CUDA = not torch.cuda.is_available()

# (id, argv from the context, the fragments the one error line must hold)
CASES = [
    # train
    ("train-lr-negative", lambda c: _train(c, "--lr", "-1e-4"), ["argument --lr", "greater than 0", "-0.0001"]),
    ("train-lr-nan", lambda c: _train(c, "--lr=nan"), ["argument --lr", "finite"]),
    ("train-seed-negative", lambda c: _train(c, "--seed", "-1"), ["argument --seed", "at least 0"]),
    ("train-batch-zero", lambda c: _train(c, "--batch-size", "0"), ["argument --batch-size", "at least 1"]),
    ("train-resolution-60", lambda c: _train(c, "--resolution", "60"), ["--resolution", "multiple of 8", "64"]),
    ("train-resolution-huge", lambda c: _train(c, "--resolution", "80000"), ["--resolution", "at most 4096"]),
    ("train-rank-huge", lambda c: _train(c, "--rank", "1000000"), ["--rank", "1000000", "full rank"]),
    ("train-anomaly-escapes", lambda c: _train(c, "--anomaly", "../../escaped"), ["--anomaly", "not a plain name"]),
    ("train-out-is-file", lambda c: _train(c, "--out", str(c.file)), ["--out", "a_file", "is a file"]),
    ("train-out-under-file", lambda c: _train(c, "--out", str(c.file / "x")), ["--out", "a_file is a file"]),
    ("train-hollow-base", lambda c: _train(c, "--base", str(c.hollow_base)), ["unet/config.json", "missing"]),
    # generate
    ("generate-resolution-60", lambda c: _generate(c, "--resolution", "60"), ["--resolution", "multiple of 8"]),
    ("generate-resolution-0", lambda c: _generate(c, "--resolution", "0"), ["argument --resolution", "at least 8"]),
    ("generate-resolution-neg", lambda c: _generate(c, "--resolution", "-64"), ["--resolution", "at least 8"]),
    ("generate-resolution-huge", lambda c: _generate(c, "--resolution", "80000"), ["--resolution", "4096"]),
    ("generate-max-area", lambda c: _generate(c, "--max-area", "-1"), ["argument --max-area", "greater than 0"]),
    ("generate-threshold", lambda c: _generate(c, "--threshold", "300"), ["--threshold", "at most 255"]),
    ("generate-pairs-huge", lambda c: _generate(c, "--num-pairs", "1000000000"), ["--num-pairs", "1000000"]),
    ("generate-out-is-file", lambda c: _generate(c, "--out", str(c.file)), ["--out", "is a file"]),
    ("generate-no-adapters", lambda c: _generate(c, "--adapters", str(c.out.parent / "nope")), ["--adapters", "nope"]),
    ("generate-type-escapes", lambda c: _generate(c, "--anomaly-type", "../x"), ["--anomaly-type", "plain name"]),
    ("generate-zero-mean-noise", lambda c: _generate(c, "--zero-mean-noise", "global"), ["--zero-mean-noise", "global"]),
    ("generate-mask-method", lambda c: _generate(c, "--method", "gray"), ["argument --method", "grey-canvas"]),
    pytest.param(
        "generate-no-gpu", lambda c: _generate(c, "--device", "cuda"), ["--device cuda", "no CUDA GPU"],
        marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has a GPU"),
    ),  # fmt: skip
    ("generate-bad-device", lambda c: _generate(c, "--device", "gpu0"), ["--device", "gpu0"]),
    ("generate-backgrounds-without-bcm", lambda c: _generate(c, "--backgrounds", str(c.out.parent / "nope")),
     ["--backgrounds", "without BCM", "drop --backgrounds"]),
    ("generate-background-every-without-bcm", lambda c: _generate(c, "--background-every", "3"),
     ["--background-every", "without BCM"]),
    ("generate-fp16-on-cpu", lambda c: _generate(c, "--mixed-precision", "fp16", "--device", "cpu"),
     ["--mixed-precision fp16 needs a GPU", "bf16"]),
    # evaluate
    ("quality-is-splits-0", lambda c: _evaluate(c, "quality", *GEN, str(c.generated), "--is-splits", "0"),
     ["argument --is-splits", "at least 1"]),
    ("quality-garbage-inception", lambda c: _evaluate(c, "quality", *GEN, str(c.generated), "--inception-weights",
     str(c.garbage)), ["garbage.pth", "cannot read torch-fidelity's Inception"]),
    ("quality-method-escapes", lambda c: _evaluate(c, "quality", *GEN, str(c.generated), "--method", "../up"),
     ["argument --method", "plain name"]),
    ("localization-needs-choice", lambda c: _evaluate(c, "localization"), ["--generated --no-generated"]),
    ("localization-epochs-0", lambda c: _evaluate(c, "localization", "--no-generated", "--epochs", "0"),
     ["argument --epochs", "at least 1"]),
    ("localization-resolution-100", lambda c: _evaluate(c, "localization", "--no-generated", "--resolution", "100"),
     ["--resolution", "multiple of 32"]),
    ("localization-batch-1", lambda c: _evaluate(c, "localization", "--no-generated", "--batch-size", "1"),
     ["argument --batch-size", "at least 2"]),
    ("localization-out-is-file", lambda c: _evaluate(c, "localization", "--no-generated", "--out", str(c.file)),
     ["--out", "is a file"]),
    ("classification-epochs-0", lambda c: _evaluate(c, "classification", *GEN, str(c.generated), "--epochs", "0"),
     ["argument --epochs", "at least 1"]),
    ("classification-per-type-0", lambda c: _evaluate(c, "classification", *GEN, str(c.generated),
     "--max-per-type", "0"), ["argument --max-per-type", "at least 1"]),
    ("classification-out-is-file", lambda c: _evaluate(c, "classification", *GEN, str(c.generated), "--out",
     str(c.file)), ["--out", "is a file"]),
    ("localization-missing-image", lambda c: _evaluate(c, "localization", *GEN, str(c.missing_image)),
     ["image/00001.png", "not found", "manifest.jsonl"]),
    ("localization-empty-test-mask", lambda c: ["evaluate", "localization", "--data", str(c.empty_test_mask_data),
     "--category", "pill", "--out", str(c.out), "--no-generated"], ["005_mask.png", "mask is empty", "'crack'"]),
    ("localization-unknown-types", lambda c: _evaluate(c, "localization", *GEN, str(c.generated), str(c.generated),
     "--anomaly-types", "foo", "bar"), ["--anomaly-types", "bar, foo", "not found", "crack"]),
    ("classification-no-resnet-weights", lambda c: _evaluate(c, "classification", *GEN, str(c.generated),
     str(c.generated), "--anomaly-types", "crack", "scratch"), ["--imagenet-weights", "--random-init"]),
    ("classification-random-init-and-weights", lambda c: _evaluate(c, "classification", *GEN, str(c.generated),
     str(c.generated), "--anomaly-types", "crack", "scratch", "--random-init", "--imagenet-weights",
     str(c.garbage)), ["--random-init", "conflicts"]),
    # baseline
    ("baseline-anomaly-escapes", lambda c: _baseline(c, "--anomaly", "../../escaped"), ["--anomaly", "plain name"]),
    ("baseline-pairs-huge", lambda c: _baseline(c, "--num-pairs", "1000000000"), ["--num-pairs", "at most"]),
    ("baseline-crop-paste-anomaly-source", lambda c: _baseline(c, "--anomaly-source", str(c.data)),
     ["--anomaly-source", "only perlin"]),
    ("baseline-anomaly-too-long", lambda c: _baseline(c, "--anomaly", "x" * 300), ["--anomaly", "300 bytes long"]),
    ("baseline-out-is-file", lambda c: _baseline(c, "--out", str(c.file)), ["--out", "is a file"]),
    ("baseline-wrong-size-mask", lambda c: _baseline(c, data=c.bad_mask_data),
     ["000_mask.png", "mask size 32x32 differs from image", "000.png size 64x64"]),
    # masks
    ("masks-max-area", lambda c: ["masks", "--generated", str(c.out), "--max-area", "-1"], ["--max-area"]),
    ("masks-generated-is-file", lambda c: ["masks", "--generated", str(c.file)], ["--generated", "is a file"]),
    # benchmark
    ("benchmark-rank-huge", lambda c: _benchmark(c, "--rank", "1000000"), ["--rank", "full rank"]),
    ("benchmark-loc-epochs-0", lambda c: _benchmark(c, "--loc-epochs", "0"), ["argument --loc-epochs"]),
    ("benchmark-category-escapes", lambda c: _benchmark(c, "--categories", "../x"), ["--categories", "plain name"]),
    ("benchmark-out-is-file", lambda c: _benchmark(c, "--out", str(c.file)), ["--out", "is a file"]),
    # found by tests/test_fuzz.py
    ("localization-out-empty", lambda c: _evaluate(c, "localization", "--no-generated", "--out", ""),
     ["argument --out: empty value"]),
    ("export-anomalib-out-empty", lambda c: ["export", "anomalib", "--generated", str(c.generated), "--normal",
     str(c.data / "pill" / "train" / "good"), "--out", ""], ["argument --out: empty value"]),
    ("export-coco-seed-negative", lambda c: ["export", "coco", "--generated", str(c.generated), "--out", str(c.out),
     "--seed", "-1"], ["argument --seed", "at least 0"]),
    ("localization-one-sample", lambda c: _evaluate(c, "localization", *GEN, str(c.generated), "--samples-per-epoch",
     "1"), ["argument --samples-per-epoch", "at least 2"]),
    # official
    ("official-import-pickle", lambda c: ["official", "import", str(c.pickled), "--base", str(c.base), "--out",
     str(c.out)], ["pytorch_lora_weights.bin: cannot read", "torch.nn.modules.linear.Linear", "not unpickled"]),
    ("official-import-category-escapes", lambda c: ["official", "import", str(c.pickled), "--base", str(c.base),
     "--out", str(c.out), "--category", "3/2"], ["argument --category", "plain name"]),
    ("official-import-out-is-file", lambda c: ["official", "import", str(c.pickled), "--base", str(c.base),
     "--out", str(c.file)], ["--out", "a_file", "is a file"]),
    ("official-export-out-under-file", lambda c: ["official", "export", "--adapters", str(c.adapters), "--base",
     str(c.base), "--out", str(c.file / "sub")], ["--out", "a_file is a file"]),
    # the small commands
    ("synthetic-resolution", lambda c: ["make-synthetic", "--out", str(c.out), "--resolution", "80000"],
     ["argument --resolution", "at most"]),
    ("synthetic-out-is-file", lambda c: ["make-synthetic", "--out", str(c.file)], ["--out", "is a file"]),
    ("tiny-base-resolution", lambda c: ["make-tiny-base", "--out", str(c.out), "--resolution", "60"],
     ["--resolution", "multiple of 8"]),
    ("demo-seed", lambda c: ["demo", "--out", str(c.out), "--seed", "-1"], ["argument --seed"]),
    ("demo-out-is-file", lambda c: ["demo", "--out", str(c.file)], ["--out", "is a file"]),
]  # fmt: skip


def _ids(cases):
    return [c.values[0] if hasattr(c, "values") else c[0] for c in cases]


@pytest.mark.parametrize("name, argv, expected", CASES, ids=_ids(CASES))
def test_bad_input_is_one_line_and_writes_nothing(ctx, capsys, name, argv, expected):
    code, err = run_in_process(argv(ctx), capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"
    assert "weights_only" not in err  # torch's advice to unpickle an untrusted file is never passed on
    assert not ctx.out.exists(), f"{name} wrote {sorted(ctx.out.rglob('*'))}"
    assert ctx.file.read_text() == KEEP


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write a read-only folder")
def test_read_only_output_folder_is_refused_before_work(ctx, capsys):
    locked = ctx.out.parent / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = run_in_process(_baseline(ctx, "--out", str(locked / "out")), capsys)
    finally:
        locked.chmod(0o700)
    assert code == 2 and "not writable" in err and err.count("\n") == 1
    assert list(locked.iterdir()) == []


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def test_a_weights_file_is_never_unpickled_into_code(ctx, capsys, tmp_path):
    """A pickle that would run code when loaded is refused as a weights file, and the code does not run."""
    ran = tmp_path / "code-ran"

    class Hostile:
        def __reduce__(self):
            return (Path.touch, (ran,))

    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(pickle.dumps({"x": Hostile()}))
    argv = _evaluate(ctx, "quality", "--generated", str(ctx.generated), "--inception-weights", str(hostile))
    with warnings.catch_warnings():  # warnings printed as a user's shell shows them: none may add a line
        warnings.simplefilter("always")
        warnings.showwarning = _print_warning
        code, err = run_in_process(argv, capsys)
    assert code == 2 and "hostile.pth: cannot read" in err and err.count("\n") == 1
    assert not ran.exists()


def _run_process(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "dualanodiff.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            lambda c: _generate(c, "--resolution", "60"),
            "--resolution: must be a multiple of 8",
        ),  # library check
        (lambda c: _train(c, "--lr", "-1e-4"), "argument --lr: must be greater than 0"),  # while parsing
    ],
    ids=["library", "parser"],
)
def test_bad_input_exits_2_from_a_real_process(ctx, argv, expected):
    done = _run_process(argv(ctx), ctx.out.parent)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not ctx.out.exists()


def test_garbage_inputs_name_the_file_in_training(ctx, capsys, tmp_path):
    """A mask that is not an image (and an all-zero mask) is named, one line each, before any model loads."""
    images, masks = tmp_path / "mine" / "images", tmp_path / "mine" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    rgb = np.full((64, 64, 3), 128, np.uint8)
    for name in ("a", "b"):
        Image.fromarray(rgb).save(images / f"{name}.png")
    (masks / "a.png").write_bytes(b"not a png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(masks / "b.png")
    argv = [
        "train",
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--base",
        str(ctx.base),
        "--out",
        str(ctx.out),
    ]
    code, err = run_in_process(argv, capsys)
    assert code == 2 and "a.png: cannot read image" in err and err.count("\n") == 1
    assert not ctx.out.exists()


def test_many_problems_are_still_one_line(ctx, capsys, tmp_path):
    """Several bad training pairs, and test images without masks: one line naming the first few, then a count."""
    images, masks = tmp_path / "mine" / "images", tmp_path / "mine" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for name in "abcde":
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(images / f"{name}.png")
        (masks / f"{name}.png").write_bytes(b"not a png")
    argv = [
        "train",
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--base",
        str(ctx.base),
        "--out",
        str(ctx.out),
    ]
    code, err = run_in_process(argv, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "problems with the training data" in err and "a.png" in err and "and 3 more" in err

    data = tmp_path / "data"
    shutil.copytree(ctx.data / "pill", data / "pill")
    for mask in sorted((data / "pill" / "ground_truth" / "crack").iterdir())[:2]:
        mask.unlink()
    code, err = run_in_process(
        _evaluate(ctx, "localization", "--no-generated") + ["--data", str(data)], capsys
    )
    assert code == 2 and err.count("\n") == 1, err
    assert "2 defect image(s) without a mask" in err and "000_mask.png" in err
    assert not ctx.out.exists()
