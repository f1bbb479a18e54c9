"""`--help` of every command (every option explained, each default shown once, none that is not a default)
and what commands print while they run (our bars, switched off by --no-progress; no library bars)."""

from __future__ import annotations

import argparse
import re

import pytest

from dualanodiff.cli import build_parser, main


def _leaf_parsers(parser: argparse.ArgumentParser, path=()):
    """(command path, parser) of every command that runs something (evaluate's modes, not evaluate)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, (*path, name))


COMMANDS = list(_leaf_parsers(build_parser()))


def _option_help(text: str) -> dict[str, str]:
    """{option: its help text, joined over its wrapped lines} from a rendered help page."""
    out: dict[str, str] = {}
    current: list[str] = []
    for line in text.splitlines():
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(.*))?$", line)
        if m:
            current = re.findall(r"(?<![\w-])--?[\w][\w-]*", m[1])
            for option in current:
                out[option] = m[2] or ""
        elif current and line.startswith("   "):
            for option in current:
                out[option] += " " + line.strip()
        else:
            current = []
    return out


def test_every_command_is_covered():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"train", "generate", "masks", "baseline", "benchmark", "demo", "make-synthetic"} <= names
    assert {"evaluate quality", "evaluate localization", "evaluate classification", "make-tiny-base"} <= names


@pytest.mark.parametrize("path, parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_has_help_and_one_true_default(path, parser):
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and action.help.strip(), f"{' '.join(path)} {name}: no help"
    assert "default: None" not in text
    assert "default: []" not in text
    helps = _option_help(text)
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        shown = next((helps[o] for o in action.option_strings if o in helps), None)
        assert shown is not None, f"{' '.join(path)} {action.option_strings}: not found in the help page"
        defaults = len(re.findall(r"\bdefault\b", shown, re.IGNORECASE))
        assert defaults <= 1, (
            f"{' '.join(path)} {action.option_strings}: default shown {defaults} times: {shown}"
        )
        if action.required:
            assert defaults == 0, f"{' '.join(path)} {action.option_strings} is required yet shows a default"
        if (
            defaults == 0
            and not action.required
            and action.default not in (None, False, True, [], argparse.SUPPRESS)
        ):
            pytest.fail(f"{' '.join(path)} {action.option_strings}: default {action.default!r} not shown")


LONG_RUNNING = ["train", "generate", "masks", "baseline", "benchmark", "demo", "make-synthetic", "evaluate quality",
                "evaluate localization", "evaluate classification"]  # fmt: skip


@pytest.mark.parametrize("command", LONG_RUNNING)
def test_long_running_commands_can_hide_every_progress_bar(command):
    parser = dict((" ".join(path), p) for path, p in COMMANDS)[command]
    assert "--no-progress" in {o for a in parser._actions for o in a.option_strings}


def test_help_keeps_tables_and_wraps_paragraphs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "  paper          learning rate 5e-6" in text  # the preset table keeps its columns
    assert max(len(line) for line in text.splitlines() if "--" in line) < 130


def test_negative_numbers_are_values_not_flags(capsys):
    # argparse alone reads "-1e-4" as an unknown flag ("expected one argument"); the value must be judged.
    with pytest.raises(SystemExit) as stop:
        main(["train", "--base", "b", "--out", "o", "--lr", "-1e-4"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "argument --lr: must be greater than 0, got -0.0001" in err


@pytest.mark.slow
def test_no_progress_hides_every_bar_and_library_bars_never_show(
    synthetic_pill_root, tiny_base_dir, tmp_path, capsys
):
    argv = ["baseline", "crop-paste", "--data", str(synthetic_pill_root), "--category", "pill", "--anomaly",
            "crack", "--num-pairs", "3"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "crop-paste: 100%" in capsys.readouterr().err  # our bar
    assert main([*argv, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    # Inside a step (the benchmark runs the baselines), a run without progress hides the step's bars too.
    from dualanodiff.baselines import run_baseline
    from dualanodiff.progress import progress_shown

    with progress_shown(False):
        run_baseline("crop-paste", synthetic_pill_root, "pill", "crack", 3, tmp_path / "c")
    assert capsys.readouterr().err == ""
    # transformers' "Writing model shards" and "Loading weights" bars are not ours: a command never shows them.
    assert main(["make-tiny-base", "--out", str(tmp_path / "base")]) == 0
    train = ["train", "--data", str(synthetic_pill_root), "--category", "pill", "--anomaly", "crack", "--base",
             str(tmp_path / "base"), "--out", str(tmp_path / "ad"), "--max-steps", "1", "--rank", "2",
             "--text-encoder-rank", "2"]  # fmt: skip
    assert main(train) == 0
    err = capsys.readouterr().err
    assert "train pill/crack: 100%" in err
    assert "Writing model shards" not in err and "Loading weights" not in err


def test_a_bar_written_to_a_file_shows_its_first_and_last_state_only():
    import io

    from dualanodiff.progress import progress_bar

    log = io.StringIO()  # not a terminal: a redirected stderr
    for _ in progress_bar(range(5000), desc="steps", file=log):
        pass
    states = [s for s in log.getvalue().split("\r") if s.strip()]
    assert len(states) == 2, states
    assert states[0].startswith("steps:   0%") and states[-1].startswith("steps: 100%")


def test_demo_help_lists_every_category_and_type(capsys):
    from dualanodiff.synthetic import DEFECT_TYPES

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for category, kinds in DEFECT_TYPES.items():
        assert f"{category}: {', '.join(kinds)}" in text
