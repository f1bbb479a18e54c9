"""The method in miniature: DualAnoDiff vs Crop&Paste vs no generated data, and DualAnoDiff with SAIM off.

    python scripts/miniature_study.py --out study            # pill/stain, the demo's full sizes
    python scripts/miniature_study.py --out study --category weave --anomaly hole

Runs `dualanodiff demo` (full sizes) in ``OUT/demo``, then trains adapters of the same type with SAIM off
(all else equal), generates the same number of pairs, trains the same downstream U-Net on them, and measures
mask alignment with the same reference segmenter. Writes ``OUT/study.json`` and prints a markdown table
(the one in docs/demo.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dualanodiff.data.generated import read_generated
from dualanodiff.demo import DemoConfig, _localization_rows, run_demo
from dualanodiff.demo_alignment import SegmenterConfig, pairs_alignment, train_segmenter
from dualanodiff.evaluate.localization import LocalizationConfig
from dualanodiff.evaluate.protocol import localize_category, paper_milestones
from dualanodiff.generate import GenerateConfig, generate_to_folder
from dualanodiff.io import write_json_atomic
from dualanodiff.train import TrainConfig, train_adapters


def saim_off(cfg: DemoConfig, out: Path) -> dict:
    """The demo's DualAnoDiff step with ``saim=False``: adapters, pairs, detector, alignment."""
    demo = Path(cfg.out)
    data, base = demo / "data", demo / "base"
    started = time.perf_counter()
    adapters = train_adapters(
        TrainConfig(
            base=str(base),
            out=str(out / "adapters"),
            data=str(data),
            category=cfg.category,
            anomaly=cfg.anomaly,
            preset="official-code",
            max_steps=cfg.train_steps,
            batch_size=cfg.train_batch_size,
            learning_rate=cfg.train_lr,
            rank=cfg.train_rank,
            text_encoder_rank=cfg.train_rank,
            saim=False,
            resolution=cfg.resolution,
            seed=cfg.seed,
        )
    )
    import zlib

    gen_dir = out / "generated" / cfg.category / cfg.anomaly
    generate_to_folder(
        GenerateConfig(
            base=str(base),
            adapters=str(adapters),
            out=str(gen_dir),
            num_pairs=cfg.num_pairs,
            batch_size=16,
            steps=cfg.sampler_steps,
            guidance=cfg.guidance,
            seed=(cfg.seed + zlib.crc32(f"{cfg.category}/{cfg.anomaly}".encode()))
            % 2**31,  # as the benchmark
            resolution=cfg.resolution,
            max_mask_area=cfg.max_mask_area,
            device="cpu",
        ),
        process_index=0,
        num_processes=1,
    )
    pairs = read_generated(gen_dir)
    loc = localize_category(
        str(data),
        cfg.category,
        {cfg.anomaly: pairs},
        LocalizationConfig(
            epochs=cfg.loc_epochs,
            samples_per_epoch=cfg.loc_samples_per_epoch,
            lr_milestones=paper_milestones(cfg.loc_epochs),
            resolution=cfg.resolution,
            base_channels=cfg.loc_base_channels,
            runs=1,
            seed=cfg.seed,
            device="cpu",
        ),
        out / "localization",
        anomaly_types=[cfg.anomaly],
    )
    seg = train_segmenter(cfg.category, cfg.resolution, SegmenterConfig(steps=cfg.seg_steps, seed=cfg.seed))
    return {
        "metrics": loc["metrics"],
        "alignment": pairs_alignment(seg, pairs),
        "kept": len(pairs),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--category", default="pill")
    p.add_argument("--anomaly", default="spot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cfg = DemoConfig(
        out=str(out / "demo"),
        category=args.category,
        anomaly=args.anomaly,
        seed=args.seed,
        threads=args.threads,
    ).resolved()
    demo = run_demo(cfg)
    off = saim_off(cfg, out / "saim-off")
    rows = demo["localization"]
    rows.append(
        {
            "training data": "DualAnoDiff, SAIM off",
            **_localization_rows(
                {"results": {"localization": {"dualanodiff": {cfg.category: off["metrics"]}}}}, cfg
            )[0],
        }
    )
    rows[-1]["training data"] = "DualAnoDiff, SAIM off"
    align = {**demo["alignment"], "dualanodiff, SAIM off": off["alignment"]}
    write_json_atomic(
        out / "study.json", {"localization": rows, "alignment": align, "timings": demo["timings"]}
    )
    names = {"dualanodiff": "DualAnoDiff", "crop-paste": "Crop&Paste", "real test images": "real test images"}
    print(f"\n{cfg.category}/{cfg.anomaly}, seed {cfg.seed}\n")
    print("| training data | pixel AP | pixel AUROC | AU-PRO | image AUROC | mask IoU (mean) |")
    print("|---|---|---|---|---|---|")
    keys = {
        "DualAnoDiff": "dualanodiff",
        "Crop&Paste": "crop-paste",
        "DualAnoDiff, SAIM off": "dualanodiff, SAIM off",
    }
    for r in rows:
        a = align.get(keys.get(r["training data"], ""), {})
        print(
            f"| {r['training data']} | {r['pixel AP']} | {r['pixel AUROC']} | {r['AU-PRO']} | {r['image AUROC']} | "
            f"{a.get('iou_mean', '-')} |"
        )
    print(f"| (reference segmenter on real test images) | | | | | {align['real test images']['iou_mean']} |")
    print(json.dumps({names.get(k, k): v for k, v in align.items()}))


if __name__ == "__main__":
    main()
