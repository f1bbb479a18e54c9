"""`dualanodiff export yolo`: the label files fill back every mask (holes aside, by a measured loss), and
Ultralytics' own dataset checker and loader read the export, offline, and give back those instances.
Skipped without OpenCV / Ultralytics (`[yolo]`)."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
from export_data import sources
from scipy import ndimage

from dualanodiff.cli import main as cli
from dualanodiff.data.images import load_mask
from dualanodiff.export.instances import rasterise

pytest.importorskip("cv2")


def _export(tmp_path: Path, capsys) -> tuple[Path, dict, str]:
    s = sources(tmp_path)
    out = tmp_path / "yolo"
    args = ["export", "yolo", "--generated", *map(str, s["generated"]), "--real", str(s["real"])]
    assert cli([*args, "--normal", str(s["normal"]), "--out", str(out)]) == 0
    return out, json.loads((out / "export.json").read_text()), capsys.readouterr().out


def _expected_iou(mask: np.ndarray) -> float:
    """A polygon keeps a component's outline and fills its holes: IoU = area / (area + holes). A hole is
    background 4-connected only to itself (the dual of 8-connected blobs): a pocket open by a diagonal is one."""
    return mask.sum() / ndimage.binary_fill_holes(mask).sum()


def test_labels_fill_back_every_mask_but_its_holes(tmp_path: Path, capsys) -> None:
    out, record, printed = _export(tmp_path, capsys)
    assert printed.strip() == record["train_command"]
    assert printed.startswith(f"yolo segment train data={out.resolve() / 'data.yaml'} model=yolo11n-seg.yaml")
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "crack", 1: "hole", 2: "scratch"},
    }
    ious, holes = [], 0
    for rel, source in record["files"].items():
        image = out / rel
        label = out / "labels" / image.parent.name / f"{image.stem}.txt"
        lines = label.read_text().splitlines()
        if source["origin"] == "normal":
            assert lines == []  # a background image
            continue
        mask = load_mask(source["mask"])
        assert len(lines) == ndimage.label(mask, np.ones((3, 3)))[1] == source["instances"]
        class_id = next(k for k, name in data["names"].items() if name == source["category"])
        assert {int(line.split()[0]) for line in lines} == {class_id}
        polygons = [np.array(line.split()[1:], float).reshape(-1, 2) for line in lines]
        assert all(len(p) >= 3 and (p > 0).all() and (p < 1).all() for p in polygons)
        iou = (
            np.logical_and(filled := rasterise(polygons, *mask.shape[::-1]), mask).sum()
            / (filled | mask).sum()
        )
        assert iou == pytest.approx(_expected_iou(mask), abs=1e-12)
        ious.append(iou)
        holes += bool(iou < 1.0)
    assert holes >= 3  # the rings (and holes among the random blobs) are filled ...
    assert (
        sum(i == 1.0 for i in ious) == record["polygon_iou"]["exact"] == len(ious) - holes
    )  # ... nothing else
    assert record["polygon_iou"]["mean"] == pytest.approx(np.mean(ious), abs=1e-6)


@pytest.fixture(scope="module")
def ultralytics_offline_dir(tmp_path_factory):
    if importlib.util.find_spec("ultralytics") is None:  # not importorskip: the import must come after
        pytest.skip("ultralytics is not installed (pip install 'dualanodiff[yolo]')")
    from dualanodiff.export.ultralytics_offline import ultralytics_offline

    folder = tmp_path_factory.mktemp("ultralytics_config")
    ultralytics_offline(folder)
    return folder


def test_ultralytics_reads_the_export_offline(
    tmp_path: Path, capsys, monkeypatch, ultralytics_offline_dir
) -> None:
    out, record, _ = _export(tmp_path, capsys)
    attempts: list = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset, polygon2mask

    data = check_det_dataset(str(out / "data.yaml"))  # the checker `yolo train` runs first
    assert data["nc"] == 3 and data["names"] == {0: "crack", 1: "hole", 2: "scratch"}
    seen = 0
    for split in ("train", "val"):
        dataset = YOLODataset(img_path=data[split], data=data, task="segment", imgsz=32, augment=False)
        assert len(dataset.labels) == sum(f"images/{split}/" in rel for rel in record["files"])
        for label in dataset.labels:
            source = record["files"][str(Path(label["im_file"]).relative_to(out.resolve()))]
            assert len(label["segments"]) == len(label["cls"]) == source.get("instances", 0)
            if source["origin"] == "normal":
                continue
            mask = load_mask(source["mask"])
            h, w = label["shape"]
            assert (h, w) == mask.shape
            filled = np.logical_or.reduce(
                [polygon2mask((h, w), [(s * (w, h)).ravel()]).astype(bool) for s in label["segments"]]
            )
            assert (filled & mask).sum() / (filled | mask).sum() == pytest.approx(
                _expected_iou(mask), abs=1e-12
            )
            seen += 1
    assert seen == 8 + 4 + 3
    assert attempts == []  # nothing reached for the network (the font check included)


def test_class_names_yaml_would_read_as_other_types_stay_strings(tmp_path: Path) -> None:
    """Found by the fuzzer: a defect type named "nan" (or "true", "1", "null") must reach Ultralytics as that
    name, not as a float, bool, int or None."""
    from dualanodiff.export.yolo import data_yaml

    names = ["nan", ".nan", "true", "1", "null", "crack"]
    assert yaml.safe_load(data_yaml(tmp_path, names))["names"] == dict(enumerate(names))
