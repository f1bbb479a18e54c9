"""What `export coco` and `export yolo` share, without their libraries: masks into instances, the seeded
split, and the one-line refusals (exit 2, before anything is written)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from export_data import H, W, generated, normals, real, sources, tricky_mask
from PIL import Image
from scipy import ndimage

from dualanodiff.cli import main as cli
from dualanodiff.export.instances import components
from dualanodiff.export.sources import collect_items, split_items
from dualanodiff.locking import output_lock


@pytest.mark.parametrize("i", range(8))
def test_components_partition_the_mask(i: int) -> None:
    mask = tricky_mask(i)
    parts = components(mask)
    assert np.array_equal(np.logical_or.reduce(parts), mask)  # nothing lost, holes kept
    assert sum(int(p.sum()) for p in parts) == int(mask.sum())  # disjoint
    assert all(ndimage.label(p, np.ones((3, 3)))[1] == 1 for p in parts)  # each one 8-connected blob
    assert [int(p.sum()) for p in parts] == sorted((int(p.sum()) for p in parts), reverse=True)
    assert len(components(tricky_mask(1))) == 3  # corner contact joins; the pixel and the line are apart


def test_the_split_is_seeded_per_type_and_keeps_forced_halves(tmp_path) -> None:
    s = sources(tmp_path)
    items = collect_items(
        s["generated"], real=[s["real"]], val_real=[real(tmp_path / "dent", 2)], normal=s["normal"]
    )
    a, b = split_items(items, 0.4, seed=1), split_items(items, 0.4, seed=1)
    assert a == b
    assert len({tuple(split_items(items, 0.4, seed=k)) for k in range(6)}) > 1  # the seed decides which
    for kind, n in (("crack", 8), ("hole", 4), ("scratch", 3), (None, 5)):
        halves = [sp for it, sp in zip(items, a) if it.category == kind]
        assert len(halves) == n and halves.count("val") == min(round(0.4 * n), n - 1)
    assert [sp for it, sp in zip(items, a) if it.category == "dent"] == ["val", "val"]  # --val-real
    zero = split_items(items, 0.0, seed=0)  # with --val-real, 0 puts everything else in train
    assert zero.count("val") == 2


def _fails(capsys, *args: str) -> str:
    assert cli(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_bad_input_is_one_line_and_nothing_is_written(fmt: str, tmp_path, capsys) -> None:
    s = sources(tmp_path)
    out = tmp_path / "out"
    gen = [str(g) for g in s["generated"]]

    empty = generated(tmp_path / "gen_empty" / "crack", "crack", 3)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(empty / "mask" / "00001.png")
    assert "00001.png: empty mask" in _fails(
        capsys, "export", fmt, "--generated", str(empty), "--out", str(out)
    )

    wrong = real(tmp_path / "wrong" / "scratch", 2, size=(16, 12))
    err = _fails(capsys, "export", fmt, "--real", str(wrong), "--out", str(out))
    assert "r0_mask.png" in err and "16x12" in err

    none_kept = generated(tmp_path / "gen_rejected" / "crack", "crack", 2, rejected=(0, 1))
    assert "no kept pairs" in _fails(capsys, "export", fmt, "--generated", str(none_kept), "--out", str(out))

    inside = s["generated"][0] / "export"
    assert "overlaps the input folder" in _fails(
        capsys, "export", fmt, "--generated", *gen, "--out", str(inside)
    )
    assert "no defect images" in _fails(
        capsys, "export", fmt, "--normal", str(s["normal"]), "--out", str(out)
    )
    assert "no image goes to val" in _fails(
        capsys, "export", fmt, "--generated", *gen, "--val-fraction", "0", "--out", str(out)
    )
    assert "--val-fraction must be" in _fails(
        capsys, "export", fmt, "--generated", *gen, "--val-fraction", "1", "--out", str(out)
    )
    assert not out.exists() and not inside.exists()  # all refused before writing

    other = normals(tmp_path / "not_an_export", 1)
    assert "not empty" in _fails(capsys, "export", fmt, "--generated", *gen, "--out", str(other))
    anomalib = tmp_path / "anomalib"
    assert (
        cli(["export", "anomalib", "--generated", *gen, "--normal", str(s["normal"]), "--out", str(anomalib)])
        == 0
    )
    capsys.readouterr()
    assert "another format" in _fails(capsys, "export", fmt, "--generated", *gen, "--out", str(anomalib))

    # The writer's library is checked at writing, after the inputs and before the lock: without it (CI installs
    # no extras) the refusal names the extra; with it, a folder another writer holds is refused.
    library = {"coco": "pycocotools", "yolo": "cv2"}[fmt]
    with output_lock(out, "test"):
        err = _fails(capsys, "export", fmt, "--generated", *gen, "--out", str(out))
    if importlib.util.find_spec(library) is None:
        assert f"pip install 'dualanodiff[{fmt}]'" in err
    else:
        assert "already being written" in err
    assert not (out / "export.json").exists()


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_a_missing_writer_library_is_named_before_anything_is_written(
    fmt: str, tmp_path, capsys, monkeypatch
) -> None:
    # None in sys.modules makes `import` raise ImportError, as on a machine without the extra.
    for name in {"coco": ("pycocotools", "pycocotools.mask"), "yolo": ("cv2",)}[fmt]:
        monkeypatch.setitem(sys.modules, name, None)
    s = sources(tmp_path)
    out = tmp_path / "out"
    err = _fails(capsys, "export", fmt, "--generated", *[str(g) for g in s["generated"]], "--out", str(out))
    assert "not installed" in err and f"pip install 'dualanodiff[{fmt}]'" in err
    assert not out.exists()
