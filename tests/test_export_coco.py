"""`dualanodiff export coco`, read back by pycocotools (every mask exactly, holes and border blobs included)
and by torchvision's COCO wrapper through the printed snippet. Skipped without pycocotools (`[coco]`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from export_data import sources
from scipy import ndimage

from dualanodiff.cli import main as cli
from dualanodiff.data.generated import read_generated
from dualanodiff.data.images import load_mask

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402


def _export(tmp_path: Path, capsys, out: Path) -> tuple[dict, str]:
    s = sources(tmp_path)
    args = ["export", "coco", "--generated", *map(str, s["generated"]), "--real", str(s["real"])]
    assert cli([*args, "--normal", str(s["normal"]), "--seed", "3", "--out", str(out)]) == 0
    return s, capsys.readouterr().out


def test_pycocotools_gives_back_every_mask_exactly(tmp_path: Path, capsys) -> None:
    out = tmp_path / "coco"
    s, printed = _export(tmp_path, capsys, out)
    record = json.loads((out / "export.json").read_text())
    assert record["complete"] and printed.strip() == record["train_snippet"]
    files = record["files"]
    kept = {str(p.image.resolve()) for g in s["generated"] for p in read_generated(g)}
    assert {f["image"] for f in files.values() if f["origin"] == "generated"} == kept  # rejected: never

    seen = 0
    for split in ("train", "val"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["crack", "hole", "scratch"]
        for image_id, info in coco.imgs.items():
            source = files[f"images/{info['file_name']}"]
            assert source["split"] == split
            assert (out / "images" / info["file_name"]).read_bytes() == Path(source["image"]).read_bytes()
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            if source["origin"] == "normal":
                assert anns == []
                continue
            mask = load_mask(source["mask"])
            assert (info["height"], info["width"]) == mask.shape
            decoded = [coco.annToMask(a).astype(bool) for a in anns]
            assert np.array_equal(np.logical_or.reduce(decoded), mask)  # IoU 1.0, holes kept
            assert len(anns) == ndimage.label(mask, np.ones((3, 3)))[1] == source["instances"]
            for a, m in zip(anns, decoded):
                ys, xs = np.nonzero(m)
                assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert a["area"] == m.sum() and a["iscrowd"] == 0
                assert coco.cats[a["category_id"]]["name"] == source["category"]
            seen += 1
    assert seen == 8 + 4 + 3
    assert record["counts"]["val_crack"] == 2 and record["counts"]["val_hole"] == 1  # round(0.2 n) per type
    ids = [
        a["id"]
        for split in ("train", "val")
        for a in json.loads((out / "annotations" / f"instances_{split}.json").read_text())["annotations"]
    ]
    assert sorted(ids) == list(range(1, len(ids) + 1))  # unique across both files


def test_the_printed_snippet_loads_the_targets_torchvision_trains_on(tmp_path: Path, capsys) -> None:
    out = tmp_path / "coco"
    _, printed = _export(tmp_path, capsys, out)
    namespace: dict = {}
    exec(printed, namespace)  # the code the export prints, as a user copies it
    train, val = namespace["train"], namespace["val"]
    files = json.loads((out / "export.json").read_text())["files"]
    assert len(train) + len(val) == len(files)
    checked = 0
    for dataset in (train, val):
        for i in range(len(dataset)):
            _, target = dataset[i]
            info = dataset.coco.imgs[dataset.ids[i]]
            source = files[f"images/{info['file_name']}"]
            if source["origin"] == "normal":
                continue
            masks = target["masks"].numpy().astype(bool)
            assert np.array_equal(masks.any(0), load_mask(source["mask"]))
            checked += 1
    assert checked == 15


def test_a_rerun_replaces_an_earlier_or_interrupted_export(tmp_path: Path, capsys) -> None:
    out = tmp_path / "coco"
    _export(tmp_path, capsys, out)
    first = (out / "annotations" / "instances_train.json").read_bytes()
    record = json.loads((out / "export.json").read_text())
    record["complete"] = False  # as a killed export leaves it
    (out / "export.json").write_text(json.dumps(record))
    (out / "images" / "stray.png").write_bytes(b"half")
    s = {k: v for k, v in sources(tmp_path / "again").items()}
    args = ["export", "coco", "--generated", *map(str, s["generated"]), "--real", str(s["real"])]
    assert cli([*args, "--normal", str(s["normal"]), "--seed", "3", "--out", str(out)]) == 0
    assert not (out / "images" / "stray.png").exists()
    assert json.loads((out / "export.json").read_text())["complete"]
    again = json.loads((out / "annotations" / "instances_train.json").read_text())
    assert again == json.loads(first)  # same sources, same seed: the same dataset
