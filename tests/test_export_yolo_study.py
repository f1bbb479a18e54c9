"""scripts/yolo_demo_study.py at toy size (the demo's --quick, one epoch, one seed): it makes the three exports,
trains and validates a YOLO model on each offline, writes its results file, and a rerun resumes instead of
training again. Skipped without Ultralytics and pycocotools (`[yolo]`, `[coco]`)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ultralytics") is None or importlib.util.find_spec("pycocotools") is None,
    reason="needs ultralytics and pycocotools (pip install 'dualanodiff[yolo,coco]')",
)
def test_the_study_runs_offline_and_resumes(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "results"
    command = [sys.executable, str(ROOT / "scripts" / "yolo_demo_study.py"), "--quick", "--seeds", "0"]
    command += ["--work", str(work), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    assert set(results["summary"]) == {"dualanodiff", "crop-paste", "few-shot"}
    for row in results["runs"]:
        assert row["seed"] == 0 and row["epochs"] >= 1
        assert all(0.0 <= row[k] <= 1.0 for k in ("mask_map50", "mask_map50_95", "box_map50"))
    assert results["val_images"] == {"real defects": 10, "normal": 10}  # the demo's real test set
    assert results["train_images"]["few-shot"] == {"defect": 5, "normal": 8}
    for exported in ("dualanodiff", "crop-paste", "few-shot"):
        data = work / "exports" / exported / "data.yaml"
        assert data.is_file() and len(list((work / "exports" / exported / "images" / "val").iterdir())) == 20
    for loss in results["polygon_iou"].values():
        assert 0.0 < loss["pycocotools"]["mean"] <= loss["ultralytics"]["mean"] <= 1.0
    assert results["stack"]["ultralytics"] and results["stack"]["commit"]
    assert (work / "ultralytics" / "Ultralytics" / "settings.json").is_file()  # its settings stay in WORK

    log = (work / "runs.jsonl").read_text()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (work / "runs.jsonl").read_text() == log  # every run was done: none trained again
    assert "[yolo study]" not in again.stdout
