"""The reliability promise, fuzzed: command lines drawn from each command's own argparse declarations.

For every command, Hypothesis starts from a small command line that works on the tiny base and the
synthetic data, then replaces or adds options with values drawn by the kind the parser declares: valid
values and choices, boundaries (0, 1, -1), wrong types, NaN and infinities, huge and negative numbers,
names that escape their folder, and paths that are missing, files, empty or read-only folders, or the
wrong kind of folder. Each run must end with

- exit 0 or 2 (never a traceback, never another code), and on 2 exactly one ``error:`` line, the last;
- nothing written outside the output (``--out``, or the folder ``masks`` rewrites): the work folder around
  it and the shared inputs are unchanged, file by file;
- no NaN or infinity in anything written (JSON, CSV, Markdown, TOML, tensors).

Options that size a job (steps, epochs, pairs, resolutions...) are drawn small or invalid, never large and
valid, so each example is bounded. ``app`` (a server that runs until stopped) and ``demo`` (a fixed study of
minutes) are not drawn.

CI runs a few examples per command (about a minute in all, derandomized so it cannot flake). Before a
release, run it longer with fresh random draws::

    DUALANODIFF_FUZZ_EXAMPLES=200 OMP_NUM_THREADS=1 pytest -q tests/test_fuzz.py

In CI a failure prints the command line, shrunk to a small one. A long run instead goes on after a finding and
appends each to ``fuzz-findings.jsonl`` (``DUALANODIFF_FUZZ_LOG``) as it happens, so a run cut short keeps them.
Turn each into a plain regression test beside its fix.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dualanodiff.cli import build_parser, main  # noqa: E402

LONG = os.environ.get("DUALANODIFF_FUZZ_EXAMPLES")
EXAMPLES = int(LONG or 3)
FINDINGS_LOG = os.environ.get("DUALANODIFF_FUZZ_LOG", "fuzz-findings.jsonl")  # a long run's findings
EXAMPLE_SECONDS = 300
EXIT_CODES: dict[
    str, dict[str, int]
] = {}  # per command, how many draws ended with each exit code  # one example longer than this is a finding: an option that was meant to be bounded

# Options whose value sets the size of the job: drawn small or invalid, never large and valid.
SIZE_FLAGS = {
    "--num-pairs", "--steps", "--epochs", "--max-steps", "--batch-size", "--resolution", "--samples-per-epoch",
    "--runs", "--base-channels", "--rank", "--text-encoder-rank", "--train-epochs", "--train-steps",
    "--train-batch-size", "--train-resolution", "--sampler-steps", "--gen-batch-size", "--gen-resolution",
    "--loc-epochs", "--loc-samples-per-epoch", "--loc-batch-size", "--loc-resolution", "--loc-base-channels",
    "--cls-epochs", "--cls-batch-size", "--cls-resolution", "--max-per-type", "--max-per-cluster", "--is-splits",
    "--lpips-size", "--checkpoint-every", "--probe-every", "--background-every", "--ray-shards", "--ray-cpus",
    "--ray-retries", "--keep-checkpoints",
}  # fmt: skip
# Presets and switches that would make the small command lines below large (the paper's step counts).
NEVER = {"--preset", "--train-preset", "--gen-preset", "--quick", "--compile", "--executor", "--ray-address"}
SKIPPED_COMMANDS = {"app", "demo"}
TEXT_SUFFIXES = {".json", ".jsonl", ".csv", ".md", ".toml", ".yaml", ".yml"}
NON_FINITE = re.compile(r"(?<![A-Za-z_])(NaN|nan|-?Infinity|-?inf)(?![A-Za-z_])")


# ------------------------------------------------------------------------------------------ the inputs


@dataclass(frozen=True)
class Inputs:
    base: Path
    data: Path
    adapters: Path
    generated: Path
    normal: Path
    official: Path
    garbage: Path
    with_parts: Path  # a `generate` folder (part images: what `masks` reads)
    inception: Path
    vgg: Path


@pytest.fixture(scope="module")
def inputs(
    tmp_path_factory, tiny_base_dir, synthetic_pill_root, tiny_adapters, random_quality_weights
) -> Inputs:
    """Shared, read-only inputs; each example copies what it may write."""
    from dualanodiff.baselines import run_baseline
    from dualanodiff.pipeline import DualAnoDiffPipeline

    root = tmp_path_factory.mktemp("fuzz_inputs")
    generated = root / "generated"
    run_baseline("crop-paste", synthetic_pill_root, "pill", "crack", 4, generated)
    official = root / "official"
    pipe = DualAnoDiffPipeline.from_pretrained(str(tiny_base_dir))
    pipe.load_adapters(tiny_adapters)
    pipe.save_official_checkpoint(official)
    garbage = root / "garbage.pth"
    garbage.write_bytes(b"not a weights file")
    with_parts = root / "with_parts"
    assert main(["generate", "--base", str(tiny_base_dir), "--adapters", str(tiny_adapters), "--out", str(with_parts),
                 "--num-pairs", "2", "--steps", "1", "--max-area", "1", "--no-progress"]) == 0  # fmt: skip
    inception, vgg = random_quality_weights
    return Inputs(
        base=tiny_base_dir, data=synthetic_pill_root, adapters=tiny_adapters, generated=generated,
        normal=synthetic_pill_root / "pill" / "train" / "good", official=official, garbage=garbage,
        with_parts=with_parts, inception=inception, vgg=vgg,
    )  # fmt: skip


def _small_argv(command: str, i: Inputs, out: Path) -> list[str]:
    """A command line that succeeds quickly on the tiny inputs: the start of every draw."""
    data = ["--data", str(i.data), "--category", "pill"]
    tiny_loc = ["--epochs", "1", "--samples-per-epoch", "4", "--batch-size", "2", "--resolution", "32",
                "--base-channels", "2", "--runs", "1", "--device", "cpu"]  # fmt: skip
    lines = {
        "train": ["train", *data, "--anomaly", "crack", "--base", str(i.base), "--out", str(out), "--rank", "2",
                  "--text-encoder-rank", "2", "--max-steps", "1", "--batch-size", "1", "--checkpoint-every", "1"],
        "generate": ["generate", "--base", str(i.base), "--adapters", str(i.adapters), "--out", str(out),
                     "--num-pairs", "1", "--steps", "1", "--batch-size", "1"],
        "baseline": ["baseline", "crop-paste", *data, "--anomaly", "crack", "--num-pairs", "2", "--out", str(out)],
        "benchmark": ["benchmark", "--data", str(i.data), "--base", str(i.base), "--out", str(out), "--methods",
                      "crop-paste", "--categories", "pill", "--anomalies", "crack", "--no-quality",
                      "--no-classification", "--num-pairs", "2", "--loc-epochs", "1", "--loc-samples-per-epoch",
                      "4", "--loc-batch-size", "2", "--loc-resolution", "32", "--loc-base-channels", "2", "--runs",
                      "1", "--train-steps", "1", "--sampler-steps", "1", "--rank", "2", "--text-encoder-rank", "2"],
        "evaluate quality": ["evaluate", "quality", *data, "--generated", str(i.generated), "--out", str(out),
                             "--is-splits", "2", "--lpips-size", "16", "--device", "cpu", "--inception-weights",
                             str(i.inception), "--lpips-vgg-weights", str(i.vgg)],
        "evaluate localization": ["evaluate", "localization", *data, "--generated", str(i.generated), "--out",
                                  str(out), *tiny_loc],
        "evaluate classification": ["evaluate", "classification", *data, "--generated", str(i.generated),
                                    str(i.generated), "--anomaly-types", "crack", "scratch", "--random-init",
                                    "--out", str(out), "--epochs", "1", "--batch-size", "2", "--resolution",
                                    "32", "--max-per-type", "2", "--device", "cpu"],
        "export anomalib": ["export", "anomalib", "--generated", str(i.generated), "--normal", str(i.normal),
                            "--out", str(out)],
        "export coco": ["export", "coco", "--generated", str(i.generated), "--normal", str(i.normal), "--out",
                        str(out)],
        "export yolo": ["export", "yolo", "--generated", str(i.generated), "--normal", str(i.normal), "--out",
                        str(out)],
        "masks": ["masks", "--generated", str(out)],
        "make-synthetic": ["make-synthetic", "--out", str(out), "--resolution", "32"],
        "make-tiny-base": ["make-tiny-base", "--out", str(out), "--resolution", "32"],
        "official import": ["official", "import", str(i.official), "--base", str(i.base), "--out", str(out)],
        "official export": ["official", "export", "--adapters", str(i.adapters), "--base", str(i.base), "--out",
                            str(out)],
    }  # fmt: skip
    return lines[command]


# ------------------------------------------------------------------------------ the parser, walked


def _commands() -> dict[str, argparse.ArgumentParser]:
    """{"evaluate localization": its parser, ...}: every leaf command of the CLI."""
    leaves: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, name: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            leaves[" ".join(name)] = parser
            return
        for sub, child in subs[0].choices.items():
            walk(child, [*name, sub])

    walk(build_parser(), [])
    return leaves


COMMANDS = _commands()
FUZZED = sorted(c for c in COMMANDS if c.split()[0] not in SKIPPED_COMMANDS)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings
        and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
        and a.option_strings[0] not in NEVER
    ]


def _type_name(action: argparse.Action) -> str:
    return getattr(action.type, "__name__", "") if action.type is not None else ""


# ("1_000" is not here: Python reads it as 1000, a valid size that is not small.)
NUMBERS_INVALID = ["0", "-1", "-1e-4", "nan", "inf", "-inf", "1e400", "1.5", "abc", "", "0x10"]
NUMBERS_HUGE = ["1e30", "1e308", str(2**63), str(10**12), "-1e30"]
NAMES = ["crack", "../escaped", "a/b", ".hidden", "", "x" * 300, "défaut", "good", "foo"]


def _output_flag(command: str) -> str:
    return "--generated" if command == "masks" else "--out"


def _output_values(work: Path) -> list[str]:
    """Where an output may be drawn: inside the work folder only, so that a shared input is never one."""
    return [
        str(work / "out"),
        str(work / "missing" / "nowhere" / "out"),
        str(work / "a_file"),
        str(work / "empty_dir"),
        str(work / "locked_dir" / "out"),
        str(work / "unreadable"),
        "",
    ]


def _path_values(i: Inputs, work: Path) -> list[str]:
    return [
        str(work / "missing" / "nowhere"),  # missing, parent missing
        str(work / "a_file"),  # an existing file
        str(work / "empty_dir"),  # an empty folder
        str(work / "locked_dir"),  # a folder without read or write permission
        str(work / "unreadable"),  # a file without read permission
        str(i.data),  # the wrong kind of folder for most flags
        str(i.generated),
        str(i.base),
        str(i.garbage),
        "",
    ]


@st.composite
def _value(draw, action: argparse.Action, i: Inputs, work: Path, output_flag: str) -> list[str]:
    """The strings that follow one option on the command line, by the kind its parser declares."""
    if action.nargs == 0:
        return []
    flag, kind = action.option_strings[0], _type_name(action)
    if flag == output_flag:
        pool = _output_values(work)
    elif action.choices is not None:
        pool = [str(c) for c in action.choices] + ["", "nonsense", "NONE"]
    elif kind in ("int", "float") or action.type in (int, float) or kind == "seed":
        valid = ["1", "2"] if flag in SIZE_FLAGS else ["0", "1", "2", "0.5", "7"]
        pool = valid + NUMBERS_INVALID + ([] if flag in SIZE_FLAGS else NUMBERS_HUGE)
    elif kind in ("name", "_names", "_csv"):
        pool = NAMES + ["crack,scratch", "pill", "crop-paste", "dualanodiff,none"]
    else:  # a path, a device, a shard, free text
        pool = _path_values(i, work) + ["cpu", "cuda", "gpu0", "0/2", "1/1", "3/2", "-1/2", "nan"]
    count = draw(st.integers(1, 2)) if action.nargs in ("+", "*") else 1
    return [draw(st.sampled_from(pool)) for _ in range(count)]


@st.composite
def command_lines(draw, command: str, i: Inputs, work: Path, out: Path) -> list[str]:
    """The small working command line, then 1-3 options replaced or added with drawn values."""
    argv = _small_argv(command, i, out)
    parser = COMMANDS[command]
    options = _options(parser)
    n = draw(st.integers(0, 3))
    for action in draw(st.lists(st.sampled_from(options), min_size=n, max_size=n, unique_by=id)):
        values = draw(_value(action, i, work, _output_flag(command)))
        argv = _without(argv, action)
        argv += [action.option_strings[0], *values]
    positional = [a for a in parser._actions if not a.option_strings and a.dest not in ("help",)]
    if positional and draw(st.integers(0, 4)) == 0:  # now and then, a positional argument's value too
        action = draw(st.sampled_from(positional))
        if action.choices is None:
            argv = [
                str(draw(st.sampled_from(_path_values(i, work)))) if a == str(i.official) else a for a in argv
            ]
    return argv


def _without(argv: list[str], action: argparse.Action) -> list[str]:
    """``argv`` without ``action``'s option and its values (the drawn one is appended instead)."""
    out, skip = [], False
    for token in argv:
        if token in action.option_strings:
            skip = action.nargs != 0
            continue
        if skip and not token.startswith("--"):
            continue
        skip = False
        out.append(token)
    return out


# -------------------------------------------------------------------------------------- the checks


def _snapshot(*roots: Path, skip: Path | None = None) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, mode) of every file and folder under ``roots`` except ``skip`` and what is below it."""
    seen: dict[str, tuple[int, int, int]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            if skip is not None and (here == skip or skip in here.parents):
                dirnames[:] = []
                continue
            for name in [*dirnames, *filenames]:
                path = here / name
                if skip is not None and (path == skip or skip in path.parents):
                    continue
                st_ = path.lstat()
                seen[str(path)] = (
                    st_.st_size if not stat.S_ISDIR(st_.st_mode) else 0,
                    st_.st_mtime_ns,
                    st_.st_mode,
                )
    return seen


def _non_finite_values(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite_values(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite_values(v) for v in value)
    return False


def _text_has_non_finite(path: Path) -> bool:
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        return _non_finite_values(json.loads(text))  # Python's json reads NaN and Infinity as floats
    if path.suffix == ".jsonl":
        return any(_non_finite_values(json.loads(line)) for line in text.splitlines() if line.strip())
    if path.suffix in (".yaml", ".yml"):  # by value, as JSON: a class named "nan" is the string 'nan'
        import yaml

        return _non_finite_values(yaml.safe_load(text))
    if path.suffix == ".csv":
        return any(
            NON_FINITE.fullmatch(cell.strip()) for line in text.splitlines() for cell in line.split(",")
        )
    return any(
        NON_FINITE.fullmatch(cell.strip()) for line in text.splitlines() for cell in re.split(r"[|=:]", line)
    )


def _non_finite_in(folder: Path) -> list[str]:
    """Files under ``folder`` that hold NaN or an infinity: JSON by value, tables by cell, tensors by value."""
    found = []
    if not folder.is_dir():
        return found
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES:
            try:
                if _text_has_non_finite(path):
                    found.append(str(path))
            except json.JSONDecodeError:
                pass  # a torn last line of a killed writer is not this check's business
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            bad = [
                k for k, v in load_file(str(path)).items() if v.is_floating_point() and not v.isfinite().all()
            ]
            if bad:
                found.append(f"{path}: {bad[:3]}")
    return found


class _TooLong(Exception):
    pass


def _alarm(signum, frame):
    raise _TooLong


def _run(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``dualanodiff ARGV`` in this process: (exit code, stderr). A traceback propagates (and fails)."""
    err = io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(EXAMPLE_SECONDS)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as stop:  # argparse: --help, or a refused option while parsing
                code = stop.code
    except _TooLong:
        pytest.fail(f"took over {EXAMPLE_SECONDS} s, an unbounded option? {argv}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(before)
    return (0 if code is None else code), err.getvalue()


def _work_folder(root: Path, i: Inputs, command: str) -> tuple[Path, Path]:
    """A fresh folder with the path kinds the draws name, and the output path (a copy to rewrite for masks)."""
    if root.exists():
        _unlock(root)
        shutil.rmtree(root)
    (root / "cwd").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("keep me\n")
    (root / "unreadable").write_text("secret\n")
    (root / "unreadable").chmod(0)
    (root / "locked_dir").mkdir()
    (root / "locked_dir").chmod(0)
    out = root / "out"
    if command == "masks":
        shutil.copytree(i.with_parts, out)
    return root, out


def _unlock(root: Path) -> None:
    for path in (root / "unreadable", root / "locked_dir"):
        if path.exists():
            path.chmod(0o700)


def _output_of(argv: list[str], command: str) -> Path:
    """The output folder the command line names (the last value of its output flag)."""
    flag = _output_flag(command)
    at = len(argv) - 1 - argv[::-1].index(flag)
    return Path(os.path.abspath(argv[at + 1])) if at + 1 < len(argv) else Path("/nonexistent")


def check_command_line(argv: list[str], i: Inputs, work: Path, command: str) -> None:
    out = _output_of(argv, command)
    shared = [
        i.base,
        i.data,
        i.adapters,
        i.generated,
        i.official,
        i.garbage.parent,
        i.inception.parent,
        i.with_parts,
    ]
    before_shared, before_work = _snapshot(*shared), _snapshot(work, skip=out)
    code, err = _run(argv, work / "cwd")
    counts = EXIT_CODES.setdefault(command, {})
    counts[str(code)] = counts.get(str(code), 0) + 1
    after_work = _snapshot(work, skip=out)  # before unlocking: that changes the modes
    _unlock(work)
    for made in set(after_work) - set(before_work):  # the output's missing parents: made like `mkdir -p`
        if Path(made) in out.parents and stat.S_ISDIR(after_work[made][2]):
            del after_work[made]
    for parent in out.parents:  # and the parent it was made in has a new entry: its mtime moved
        if str(parent) in after_work and str(parent) in before_work:
            after_work[str(parent)] = before_work[str(parent)]
    shown = f"\n  dualanodiff {' '.join(argv)}\n  exit {code}, stderr:\n{err}"
    assert "Traceback" not in err, shown
    assert code in (0, 2), shown
    if code == 2:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line]
        assert len(errors) == 1 and lines[-1] == errors[0], f"not one error line:{shown}"
    assert after_work == before_work, (
        f"wrote outside --out: {sorted(set(after_work) ^ set(before_work))}{shown}"
    )
    assert _snapshot(*shared) == before_shared, f"changed a shared input{shown}"
    bad = _non_finite_in(out) if out.is_dir() and os.access(out, os.R_OK | os.X_OK) else []
    assert not bad, f"non-finite values written: {bad}{shown}"


# ------------------------------------------------------------------------------------------- the test


@pytest.mark.slow
@pytest.mark.parametrize("command", FUZZED)
def test_fuzzed_command_lines_exit_0_or_2_with_one_line_and_write_only_the_output(
    command, inputs, tmp_path_factory
):
    base = tmp_path_factory.mktemp(command.replace(" ", "_"))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not LONG,  # CI: the same draws every run; a long run: fresh ones
        # A long run logs its findings instead of shrinking them (which reruns commands, for minutes).
        phases=tuple(Phase) if not LONG else (Phase.explicit, Phase.generate),
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(data=st.data())
    def one(data):
        work, out = _work_folder(base / "work", inputs, command)
        argv = data.draw(command_lines(command, inputs, work, out), label="argv")
        if not LONG:
            check_command_line(argv, inputs, work, command)
            return
        try:  # a long run goes on after a finding, to find the others, and logs each as it happens
            check_command_line(argv, inputs, work, command)
        except (Exception, pytest.fail.Exception) as finding:  # noqa: BLE001 - a traceback is a finding too
            findings.append(f"{type(finding).__name__}: {finding}")
            with open(FINDINGS_LOG, "a", encoding="utf-8") as log:
                log.write(json.dumps({"command": command, "argv": argv, "finding": findings[-1]}) + "\n")

    findings: list[str] = []
    one()
    if LONG:  # what the draws did: a run whose every line is refused tests the refusals only
        with open(FINDINGS_LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps({"command": command, "exit_codes": EXIT_CODES.pop(command, {})}) + "\n")
    assert not findings, f"{len(findings)} finding(s), logged in {FINDINGS_LOG}; the first: {findings[0]}"


def test_every_command_is_fuzzed_or_said_why_not():
    """A new command is fuzzed from the day it is added: it needs a small working command line here."""
    assert {c.split()[0] for c in COMMANDS} - SKIPPED_COMMANDS == {c.split()[0] for c in FUZZED}
    dummy = Inputs(*(Path("/nowhere"),) * 10)
    for command in FUZZED:
        _small_argv(command, dummy, Path("/nowhere/out"))  # a KeyError names a command without one


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The fuzzer's own checks find a NaN in a written file and a file written beside the output."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"auroc": math.nan}))
    assert _non_finite_in(out)
    (out / "results.json").write_text(json.dumps({"auroc": 0.5, "note": "inf", "nan": 1}))
    assert not _non_finite_in(out)  # the words, as keys or text, are not values
    (out / "results.md").write_text("| method | auroc |\n| a | nan |\n")
    assert _non_finite_in(out)
    before = _snapshot(tmp_path, skip=out)
    (out / "more.json").write_text("{}")
    assert _snapshot(tmp_path, skip=out) == before
    (tmp_path / "beside").write_text("x")
    assert _snapshot(tmp_path, skip=out) != before
