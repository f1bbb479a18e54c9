"""The generated-data reader: kept/rejected from the manifest, part images, and each input error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualanodiff.data.generated import GeneratedWriter, read_generated
from dualanodiff.errors import InputError
from dualanodiff.locking import output_lock


def _image(seed: int, size: tuple[int, int] = (16, 12)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _mask(size: tuple[int, int] = (16, 12)) -> np.ndarray:
    m = np.zeros((size[1], size[0]), dtype=bool)
    m[2:6, 3:9] = True
    return m


def _plain_folder(root: Path, names: list[str], size: tuple[int, int] = (16, 12)) -> Path:
    """A hand-made folder: image/ and mask/ only, no manifest."""
    for k, name in enumerate(names):
        (root / "image").mkdir(parents=True, exist_ok=True)
        (root / "mask").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(k, size)).save(root / "image" / f"{name}.png")
        Image.fromarray(_mask(size).astype(np.uint8) * 255).save(root / "mask" / f"{name}.png")
    return root


def test_manifest_decides_kept_and_rejected(tmp_path: Path) -> None:
    with output_lock(tmp_path, "test"):
        w = GeneratedWriter(tmp_path, {"seed": 3})
        w.write(0, _image(0), _mask(), part=_image(10), prompt="a vfx with sks")
        w.write(1, _image(1), _mask(), part=_image(11), kept=False, reject_reason="empty mask")
        w.write(2, _image(2), _mask(), part=_image(12))
    kept = read_generated(tmp_path)
    assert [p.name for p in kept] == ["00000", "00002"]
    assert kept[0].part == tmp_path / "part" / "00000.png"
    assert kept[0].record["prompt"] == "a vfx with sks"
    assert kept[0].record["seed"] == 3 and kept[1].record["seed"] == 5
    everything = read_generated(tmp_path, include_rejected=True)
    assert [p.name for p in everything] == ["00000", "00001", "00002"]
    assert everything[1].record["reject_reason"] == "empty mask"
    # A later record for the same name overrides the earlier one.
    with (tmp_path / "manifest.jsonl").open("a") as f:
        f.write(json.dumps({"name": "00001", "kept": True}) + "\n")
        f.write(json.dumps({"name": "00002", "kept": False, "reject_reason": "manual"}) + "\n")
    assert [p.name for p in read_generated(tmp_path)] == ["00000", "00001"]


def test_image_without_record_is_an_unfinished_pair(tmp_path: Path) -> None:
    with output_lock(tmp_path, "test"):
        GeneratedWriter(tmp_path, {"seed": 0}).write(0, _image(0), _mask())
    # Files of pair 1 written, then the run died before its manifest record.
    Image.fromarray(_image(1)).save(tmp_path / "image" / "00001.png")
    assert [p.name for p in read_generated(tmp_path, include_rejected=True)] == ["00000"]


def test_without_manifest_every_pair_with_a_mask_counts(tmp_path: Path) -> None:
    _plain_folder(tmp_path, ["b", "a", "c"])
    pairs = read_generated(tmp_path)
    assert [p.name for p in pairs] == ["a", "b", "c"]
    assert all(p.part is None and p.mask == tmp_path / "mask" / f"{p.name}.png" for p in pairs)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere: generated-data folder not found"):
        read_generated(tmp_path / "nowhere")


def test_no_image_folder(tmp_path: Path) -> None:
    (tmp_path / "mask").mkdir()
    with pytest.raises(InputError, match=r"no image/ folder"):
        read_generated(tmp_path)


def test_empty_image_folder(tmp_path: Path) -> None:
    (tmp_path / "image").mkdir()
    with pytest.raises(InputError, match=r"image: no images"):
        read_generated(tmp_path)


def test_image_without_mask_names_both_files(tmp_path: Path) -> None:
    _plain_folder(tmp_path, ["a", "b"])
    (tmp_path / "mask" / "b.png").unlink()
    with pytest.raises(InputError) as err:
        read_generated(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "image" / "b.png") in msg and "no matching mask" in msg
    assert str(tmp_path / "mask" / "b.png") in msg


def test_mask_size_mismatch_names_mask_and_sizes(tmp_path: Path) -> None:
    _plain_folder(tmp_path, ["a"])
    Image.fromarray(np.zeros((5, 7), dtype=np.uint8)).save(tmp_path / "mask" / "a.png")
    with pytest.raises(InputError) as err:
        read_generated(tmp_path)
    msg = str(err.value)
    assert msg.startswith(str(tmp_path / "mask" / "a.png"))
    assert "7x5" in msg and "16x12" in msg


def test_all_rejected_is_an_error_unless_included(tmp_path: Path) -> None:
    with output_lock(tmp_path, "test"):
        GeneratedWriter(tmp_path, {"seed": 0}).write(0, _image(0), _mask(), kept=False, reject_reason="x")
    with pytest.raises(InputError, match="no kept pairs"):
        read_generated(tmp_path)
    assert len(read_generated(tmp_path, include_rejected=True)) == 1
