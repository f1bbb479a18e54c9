"""What the demo's DualAnoDiff pairs are worth to a supervised segmenter: Ultralytics YOLO, trained on them.

    python scripts/yolo_demo_study.py                      # docs/results/yolo_demo/results.json (~20 min CPU)
    python scripts/yolo_demo_study.py --quick --work W --out R   # toy sizes: checks that it runs

Runs `dualanodiff demo` (resumes in WORK/demo), then exports three training sets with `export yolo`'s library
call, each with the demo's normal train images as background images:

- ``dualanodiff``: the demo's kept DualAnoDiff pairs;
- ``crop-paste``: the demo's Crop&Paste pairs;
- ``few-shot``: the few-shot real images alone (the images the adapters were trained on);

and validates all three on the same set: the demo's real test defects (the 2/3 of the type that no generator
saw) and its normal test images. A YOLO segmentation model built from ``yolo11n-seg.yaml`` (no pretrained
weights) is trained on CPU per set and seed; the few-shot set, being smaller, gets proportionally more epochs, so
that every model sees the same number of images. The figure is mask mAP50 on the real test set
(Ultralytics' ``metrics.seg.map50``), beside box mAP50 and mask mAP50-95. Also measured: the polygons' loss
against the masks (the IoU of each exported polygon set filled back as Ultralytics fills it; and as pycocotools
fills the same outlines, the loss a COCO polygon export would have). Every run resumes from WORK/runs.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "dualanodiff": "DualAnoDiff pairs",
    "crop-paste": "Crop&Paste pairs",
    "few-shot": "few-shot images only",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="yolo-demo-study", help="folder for the demo, exports and runs")
    p.add_argument(
        "--demo",
        help="the demo's folder (default: WORK/demo); a finished `dualanodiff demo --out DIR` is reused",
    )
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "yolo_demo"), help="results folder")
    p.add_argument("--seeds", default="0,1", help="YOLO training seeds, comma-separated (default: 0,1)")
    p.add_argument("--epochs", type=int, default=20, help="epochs on the generated sets (default: 20)")
    p.add_argument("--imgsz", type=int, default=64, help="YOLO image size; the demo's images are 64 px")
    p.add_argument("--batch", type=int, default=8, help="8: more steps for the same CPU time (default: 8)")
    p.add_argument(
        "--normals", type=int, default=8, help="normal train images added to every training set (default: 8)"
    )
    p.add_argument(
        "--mosaic",
        type=float,
        default=0.0,
        help="Ultralytics' mosaic probability; 0 (default): at 64 px a mosaic shrinks each image to 32 px",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="training sets to run now, comma-separated (default: all; few-shot alone needs no pairs yet)",
    )
    p.add_argument("--quick", action="store_true", help="the demo's --quick and 1 epoch: checks that it runs")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give integers separated by commas")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.methods or set(args.methods) - set(METHODS):
        p.error(f"--methods: choose from {', '.join(METHODS)}")
    if not args.seeds or args.epochs < 1 or args.imgsz < 32 or args.imgsz % 32:
        p.error("--seeds needs one seed or more, --epochs 1 or more, --imgsz a multiple of 32")
    return args


def make_exports(
    work: Path, demo: Path, quick: bool, normals: int, methods: list[str]
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The demo's pairs (made or reused), then one YOLO export per training set, all with the same val set."""
    from dualanodiff.data.generated import read_generated
    from dualanodiff.data.mvtec import (
        anomaly_samples,
        few_shot_split,
        normal_test_samples,
        normal_train_samples,
    )
    from dualanodiff.demo.run import DemoConfig, generated_dir
    from dualanodiff.export import Item, write_yolo

    cfg = DemoConfig(out=str(demo), quick=quick, progress=False).resolved()
    t0 = time.perf_counter()
    generated = [m for m in ("dualanodiff", "crop-paste") if m in methods]
    data = demo_pairs(cfg, pairs=bool(generated))
    split = few_shot_split(anomaly_samples(data, cfg.category, cfg.anomaly))
    val = [Item(s.image, s.mask, cfg.anomaly, "real", "val") for s in split.test] + [
        Item(s.image, None, None, "normal", "val") for s in normal_test_samples(data, cfg.category)
    ]
    background = [
        Item(s.image, None, None, "normal", "train")
        for s in normal_train_samples(data, cfg.category)[:normals]
    ]
    defects = {
        method: [
            Item(p.image, p.mask, cfg.anomaly, "generated", "train", {"seed": p.record.get("seed")})
            for p in read_generated(generated_dir(demo, cfg, method))
        ]
        for method in generated
    }
    defects["few-shot"] = [Item(s.image, s.mask, cfg.anomaly, "real", "train") for s in split.train]
    exports = {}
    for method, items in defects.items():
        if method not in methods:
            continue
        exports[method] = work / "exports" / method
        write_yolo([*items, *background, *val], exports[method], val_fraction=0.0)
    real_test = val[: len(split.test)]
    info = {
        "demo": {
            "category": cfg.category,
            "anomaly": cfg.anomaly,
            "seed": cfg.seed,
            "mode": cfg.mode,
            "pairs": {
                m: len(read_generated(generated_dir(demo, cfg, m), include_rejected=True)) for m in generated
            },
            "kept": {m: len(defects[m]) for m in generated},
            "num_pairs": cfg.num_pairs,
            "train_steps": cfg.train_steps,
            "seconds": round(time.perf_counter() - t0, 1),
        },
        "train_images": {
            m: {"defect": len(d), "normal": len(background)} for m, d in defects.items() if m in methods
        },
        "val_images": {"real defects": len(split.test), "normal": len(val) - len(split.test)},
        "polygon_iou": {
            **{METHODS[m]: polygon_loss(defects[m]) for m in generated},
            "real test defects": polygon_loss(real_test),
        },
    }
    return exports, info


def demo_pairs(cfg, pairs: bool = True) -> Path:
    """The demo's data, adapters and pairs, made as `dualanodiff demo` makes them (its dataset, its base, its
    protocol runner's training and generation steps, same settings and seeds, so a finished `dualanodiff
    demo --out WORK/demo` is reused as it is), without the demo's U-Net detectors, which this study does not
    read. Returns the dataset's root; with ``pairs`` False only the dataset is made."""
    import torch

    from dualanodiff.benchmark import (
        anomaly_types_by_category,
        benchmark_steps,
        resolve_benchmark_config,
        run_step,
    )
    from dualanodiff.demo.base import demo_base_folder
    from dualanodiff.demo.run import benchmark_config
    from dualanodiff.locking import output_lock
    from dualanodiff.synthetic import make_synthetic

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    data = make_synthetic(
        out / "data", seed=cfg.seed, resolution=cfg.resolution, categories=[cfg.category], progress=False
    )
    if not pairs:
        return Path(data)
    base = demo_base_folder(out / "base", cfg.base_weights)
    bench = resolve_benchmark_config(benchmark_config(cfg, data, base, out / "benchmark"))
    types = anomaly_types_by_category(bench)
    with output_lock(out / "benchmark", "yolo_demo_study"):
        for step in benchmark_steps(bench, types):
            if step.action in ("train", "generate") and not step.marker(out / "benchmark").is_file():
                print(f"[yolo study] demo step {step.id}", flush=True)
                run_step(bench, types, step)
    return Path(data)


def polygon_loss(items) -> dict[str, Any]:
    """IoU of each mask against its exported polygons filled back: as Ultralytics fills them (the YOLO
    export's loss), and as pycocotools fills the same outlines (COCO's coordinates: pixel x spans [x, x + 1),
    so the traced pixel centres sit at +0.5), the loss a COCO export with polygons instead of RLE would have."""
    from pycocotools import mask as mask_utils

    from dualanodiff.export.instances import components, polygon
    from dualanodiff.export.sources import load_defect_mask
    from dualanodiff.export.yolo import label_lines

    yolo, coco = [], []
    for item in items:
        mask = load_defect_mask(item)
        h, w = mask.shape
        yolo.append(label_lines(mask, 0)[1])
        outlines = [(polygon(c) + 0.5).ravel().tolist() for c in components(mask)]
        filled = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(outlines, h, w))).astype(bool)
        coco.append(float((filled & mask).sum() / (filled | mask).sum()))

    def stats(values: list[float]) -> dict[str, Any]:
        v = np.array(values)
        return {
            "mean": round(float(v.mean()), 4),
            "min": round(float(v.min()), 4),
            "exact": int((v == 1).sum()),
        }

    return {"masks": len(items), "ultralytics": stats(yolo), "pycocotools": stats(coco)}


def train_and_validate(export: Path, run_dir: Path, seed: int, epochs: int, args) -> dict[str, Any]:
    from ultralytics import YOLO

    data = str(export / "data.yaml")
    t0 = time.perf_counter()
    model = YOLO("yolo11n-seg.yaml", task="segment")  # built from its config: no weights to fetch
    model.train(
        data=data,
        epochs=epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        workers=0,
        seed=seed,
        deterministic=True,
        mosaic=args.mosaic,
        pretrained=False,
        amp=False,
        plots=False,
        val=False,
        project=str(run_dir.parent),
        name=run_dir.name,
        exist_ok=True,
        verbose=False,
    )
    train_s = time.perf_counter() - t0
    trained = YOLO(str(run_dir / "weights" / "last.pt"))
    metrics = trained.val(
        data=data,
        split="val",
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        workers=0,
        plots=False,
        project=str(run_dir.parent),
        name=f"{run_dir.name}-val",
        exist_ok=True,
        verbose=False,
    )
    return {
        "mask_map50": round(float(metrics.seg.map50), 4),
        "mask_map50_95": round(float(metrics.seg.map), 4),
        "box_map50": round(float(metrics.box.map50), 4),
        "train_s": round(train_s, 1),
    }


def stack_info(args) -> dict[str, Any]:
    import torch
    import ultralytics

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", None
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'})",
        "threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
        "commit": commit,
        "src_modified": dirty,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: each figure's mean and sample standard deviation over the seeds."""
    out = {}
    for method in METHODS:
        rows = [r for r in runs if r["method"] == method]
        if not rows:
            continue
        out[method] = {"label": METHODS[method], "seeds": [r["seed"] for r in rows]}
        for key in ("mask_map50", "mask_map50_95", "box_map50"):
            values = np.array([r[key] for r in rows], float)
            std = float(values.std(ddof=1)) if len(values) > 1 else None
            out[method][key] = {
                "mean": round(float(values.mean()), 4),
                "std": None if std is None else round(std, 4),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    work, out = Path(args.work).resolve(), Path(args.out)
    epochs = 1 if args.quick else args.epochs
    demo = Path(args.demo) if args.demo else work / "demo"
    exports, info = make_exports(work, demo, args.quick, args.normals, args.methods)

    from dualanodiff.export.ultralytics_offline import ultralytics_offline

    ultralytics_offline(work / "ultralytics")
    log = work / "runs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    key = {
        "epochs": epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "normals": args.normals,
        "mosaic": args.mosaic,
        "quick": args.quick,
    }
    runs = [r for r in done if r["settings"] == key]
    # Every model sees as many training images as one trained `epochs` on a full set of generated pairs
    # (num_pairs + the normals): the few-shot set is repeated more.
    full = info["demo"]["num_pairs"] + args.normals
    for seed in args.seeds:
        for method in args.methods:
            if any(r["method"] == method and r["seed"] == seed for r in runs):
                continue
            n_epochs = max(1, round(epochs * full / sum(info["train_images"][method].values())))
            print(f"[yolo study] {method}, seed {seed}: {n_epochs} epochs", flush=True)
            result = train_and_validate(
                exports[method], work / "runs" / f"{method}-seed{seed}", seed, n_epochs, args
            )
            row = {"method": method, "seed": seed, "epochs": n_epochs, "settings": key, **result}
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            runs.append(row)
            print(f"[yolo study] {method}, seed {seed}: mask mAP50 {result['mask_map50']:.3f}", flush=True)

    from dualanodiff.io import write_json_atomic

    results = {
        "what": "YOLO segmentation (yolo11n-seg.yaml, no pretrained weights) trained on the demo's data, "
        "validated on its real test defects and normal test images",
        "settings": {
            **key,
            "seeds": args.seeds,
            "epochs_per_method": {r["method"]: r["epochs"] for r in runs},
        },
        **info,
        "summary": summarise(runs),
        "runs": sorted(runs, key=lambda r: (list(METHODS).index(r["method"]), r["seed"])),
        "stack": stack_info(args),
    }
    write_json_atomic(out / "results.json", results)
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
