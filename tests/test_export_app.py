"""The app's Generate page offers the COCO and YOLO exports as zips that load wherever they are unpacked:
the handler behind its buttons, without a browser."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from export_data import generated, normals

from dualanodiff.app.handlers import AppHandlers
from dualanodiff.app.workspace import Project
from dualanodiff.data.generated import read_generated
from dualanodiff.data.images import load_mask
from dualanodiff.errors import InputError


@pytest.fixture
def handlers(tmp_path: Path) -> AppHandlers:
    h = AppHandlers(tmp_path / "work")
    project = h.workspace.set_project(Project(str(tmp_path / "data"), "pill", "crack"))
    generated(h.workspace.generated_dir(project), "crack", 5, rejected=(2,))
    normals(project.normal_train_dir, 3)
    return h


def _unzip(archive: Path, where: Path) -> Path:
    with zipfile.ZipFile(archive) as z:
        z.extractall(where)
    return where / "pill"


def test_the_coco_zip_holds_the_kept_pairs_exactly(handlers: AppHandlers, tmp_path: Path) -> None:
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    archive, call = handlers.training_export("coco")
    assert archive.name == "pill-coco.zip"
    assert "CocoDetection('pill/images', 'pill/annotations/instances_train.json')" in call  # beside the unzip
    out = _unzip(archive, tmp_path / "unzipped")
    files = json.loads((out / "export.json").read_text())["files"]
    kept = {str(p.image.resolve()): p for p in read_generated(handlers.generated_folder())}
    checked = 0
    for split in ("train", "val"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        for image_id, info in coco.imgs.items():
            source = files[f"images/{info['file_name']}"]
            assert (out / "images" / info["file_name"]).is_file()
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            if source["origin"] == "normal":
                assert not anns
                continue
            masks = [coco.annToMask(a).astype(bool) for a in anns]
            assert np.array_equal(np.logical_or.reduce(masks), load_mask(kept[source["image"]].mask))
            checked += 1
    assert checked == len(kept) == 4  # the rejected pair is not exported


def test_the_yolo_zip_loads_from_where_it_is_unpacked(handlers: AppHandlers, tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    archive, call = handlers.training_export("yolo")
    assert call.startswith("yolo segment train data=pill/data.yaml model=yolo11n-seg.yaml")
    out = _unzip(archive, tmp_path / "unzipped")
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert "path" not in data  # Ultralytics then reads train/val beside data.yaml, wherever that is
    assert data["names"] == {0: "crack"}
    images = sorted(p.relative_to(out) for p in (out / "images").rglob("*.png"))
    labels = sorted(p.relative_to(out) for p in (out / "labels").rglob("*.txt"))
    assert len(images) == 4 + 3
    assert [str(p.with_suffix("")).replace("images", "labels", 1) for p in images] == [
        str(p.with_suffix("")) for p in labels
    ]


def test_no_kept_pairs_is_said_in_one_line(handlers: AppHandlers, tmp_path: Path) -> None:
    folder = handlers.generated_folder()
    for name in ("00000", "00001", "00003", "00004"):
        handlers.set_verdict(name, keep=False)
    with pytest.raises(InputError, match=f"{folder}: no kept pairs") as err:
        handlers.training_export("coco")
    assert "\n" not in str(err.value)
