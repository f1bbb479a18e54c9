"""`dualanodiff export anomalib`: the tree anomalib's Folder reads, checked by Folder's own reading rules
(tests/anomalib_folder.py) and, where anomalib is installed, by anomalib itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from anomalib_folder import folder_samples
from PIL import Image

from dualanodiff.cli import main as cli
from dualanodiff.data.generated import GeneratedWriter, read_generated
from dualanodiff.data.images import load_mask
from dualanodiff.data.mvtec import anomaly_samples, normal_test_samples, normal_train_samples
from dualanodiff.errors import InputError
from dualanodiff.export import export_anomalib, folder_call, split_normals
from dualanodiff.locking import output_lock

SIZE = 20


def _generated(out: Path, kind: str, n: int, rejected=(1,)) -> Path:
    """A generated folder of one anomaly type: n pairs, those in ``rejected`` rejected (with huge masks)."""
    with output_lock(out, "test"):
        writer = GeneratedWriter(out, {"seed": len(kind), "anomaly_type": kind})
        for i in range(n):
            rng = np.random.default_rng([len(kind), i])
            image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            mask = np.zeros((SIZE, SIZE), bool)
            mask[2 : 4 + i, 3:9] = True
            if i in rejected:
                mask[:] = True
            writer.write(
                i, image, mask, kept=i not in rejected, reject_reason="too large" if i in rejected else None
            )
    return out


def _normals(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((SIZE, SIZE, 3), 10 * i, np.uint8)).save(folder / f"n{i:02d}.png")
    return folder


@pytest.fixture
def sources(tmp_path: Path) -> tuple[list[Path], Path]:
    gens = [
        _generated(tmp_path / "gen" / "crack", "crack", 12),
        _generated(tmp_path / "gen" / "hole", "hole", 3, ()),
    ]
    return gens, _normals(tmp_path / "good", 10)


def _check_abnormal(out: Path, gens: list[Path], pairs: list[tuple[str, str]]) -> None:
    """Each (image, mask) is a kept generated pair's image with that pair's own mask."""
    files = json.loads((out / "export.json").read_text())["files"]
    kept = {str(p.image.resolve()): p for g in gens for p in read_generated(g)}
    for image, mask in pairs:
        source = kept[files[str(Path(image).relative_to(out.resolve()))]["image"]]
        assert Path(image).read_bytes() == source.image.read_bytes()
        assert np.array_equal(load_mask(mask), load_mask(source.mask))
        assert Path(mask).parent.name == Path(image).parent.name == source.image.parents[1].name  # the type


def test_the_export_is_what_anomalibs_folder_reads(sources, tmp_path: Path, capsys) -> None:
    gens, normals = sources
    out = tmp_path / "export"
    assert (
        cli(
            [
                "export",
                "anomalib",
                "--generated",
                *map(str, gens),
                "--normal",
                str(normals),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.strip()
    record = json.loads((out / "export.json").read_text())
    arguments = record["folder_arguments"]
    assert printed == record["folder_call"] == folder_call(arguments)
    assert (
        printed.startswith("from anomalib.data import Folder") and f"root={str(out.resolve())!r}" in printed
    )

    seen = folder_samples(**{k: v for k, v in arguments.items() if k != "name"})
    assert len(seen["train"]) == 8  # 10 normals, 20% to test
    abnormal = [(i, m) for i, m in seen["test"] if m is not None]
    assert len(abnormal) == 11 + 3 and len(seen["test"]) == 14 + 2  # rejected pairs are never exported
    _check_abnormal(out, gens, abnormal)
    assert record["counts"] == {"train_good": 8, "test_good": 2, "test_crack": 11, "test_hole": 3}

    # It is MVTec AD's layout too: this project's reader takes the export's parent as a root.
    assert len(anomaly_samples(tmp_path, "export", "crack")) == 11
    assert (
        len(normal_train_samples(tmp_path, "export")) == 8
        and len(normal_test_samples(tmp_path, "export")) == 2
    )


def test_normals_are_split_by_a_seeded_permutation(tmp_path: Path) -> None:
    normals = _normals(tmp_path / "good", 9)
    a, b = split_normals(normals, seed=3), split_normals(normals, seed=3)
    assert a == b and len(a.test) == 2 and len(a.train) == 7  # round(0.2 * 9) = 2
    assert sorted(a.train + a.test) == sorted(normals.iterdir())
    others = {tuple(split_normals(normals, seed=s).test) for s in range(6)}
    assert len(others) > 1  # the seed decides which
    assert len(split_normals(normals, test_fraction=0.01).test) == 1  # at least one ...
    assert len(split_normals(normals, test_fraction=0.99).train) == 1  # ... and never all
    given = split_normals(normals, normal_test=_normals(tmp_path / "test_good", 2))
    assert len(given.train) == 9 and [p.name for p in given.test] == ["n00.png", "n01.png"]
    with pytest.raises(InputError, match="--test-fraction"):
        split_normals(normals, test_fraction=1.0)
    with pytest.raises(InputError, match="one image cannot be split"):
        split_normals(_normals(tmp_path / "one", 1))


def test_an_export_replaces_an_earlier_one_and_nothing_else(sources, tmp_path: Path) -> None:
    gens, normals = sources
    out = tmp_path / "export"
    export_anomalib(gens, normals, out, seed=0)
    summary = export_anomalib(gens[:1], normals, out, normal_test=normals)
    assert summary["complete"] and summary["counts"] == {"train_good": 10, "test_good": 10, "test_crack": 11}
    assert not (out / "test" / "hole").exists() and not (out / "ground_truth" / "hole").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"busy: not empty \(notes.txt\) and not an earlier export"):
        export_anomalib(gens, normals, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    with pytest.raises(InputError, match="anomaly type 'good' cannot name a folder"):
        export_anomalib(gens[:1], normals, tmp_path / "x", anomaly_types=["good"])
    assert not (tmp_path / "x").exists()


def test_anomalib_folder_loads_the_export(sources, tmp_path: Path) -> None:
    """anomalib itself: runs where it is installed (it is heavy, and no dependency of this project)."""
    pytest.importorskip("anomalib")
    import pandas as pd
    from anomalib.data import Folder

    gens, normals = sources
    out = tmp_path / "export"
    datamodule = Folder(**export_anomalib(gens, normals, out)["folder_arguments"], num_workers=0)
    datamodule.setup()
    train = datamodule.train_data.samples
    # Folder moves half of the test set to validation by default: together they are the test images.
    datasets = [datamodule.test_data] + ([datamodule.val_data] if hasattr(datamodule, "val_data") else [])
    test = pd.concat([d.samples for d in datasets])
    assert len(train) == 8 and (train.label_index == 0).all()
    abnormal = test[test.label_index == 1]
    assert len(abnormal) == 14 and (test.label_index == 0).sum() == 2
    _check_abnormal(out, gens, list(zip(abnormal.image_path, abnormal.mask_path)))
    for dataset in datasets:  # anomalib's own reading of each mask agrees with the pair's mask
        for k, (image, mask) in enumerate(zip(dataset.samples.image_path, dataset.samples.mask_path)):
            if mask:
                assert np.array_equal(dataset[k].gt_mask.numpy().astype(bool), load_mask(mask)), image
