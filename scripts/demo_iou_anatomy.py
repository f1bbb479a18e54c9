"""Where the demo's alignment IoU is lost: the sizes and overlap of the two masks it compares, and how much IoU
a defect of this size loses to a misplacement of a fraction of a latent cell.

    python scripts/demo_iou_anatomy.py --study study --out docs/results/demo_alignment/iou-anatomy-weave-hole.json

For each seed of a finished miniature study (``scripts/miniature_study.py``), over the demo's kept DualAnoDiff
pairs: the median area of the pair's mask (cut from the part image) and of the reference segmenter's mask of
the whole image, the median share of the segmenter's mask that lies inside the pair's mask, and the median IoU
(the demo's figure). Then, on the same seed's real test defects of the demo's type, the IoU of each ground-truth
mask with itself moved by 1, 2 and 4 px (one latent cell of the demo base is 4 px) and grown by 1 and 2 px: what
a perfect drawing, misplaced or blurred by that much, would score.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from scipy import ndimage

from dualanodiff.data.generated import read_generated
from dualanodiff.data.images import load_mask, load_rgb
from dualanodiff.data.mvtec import anomaly_samples, few_shot_split
from dualanodiff.demo.alignment import iou, load_segmenter, segment
from dualanodiff.demo.run import DemoConfig, stack
from dualanodiff.io import write_json_atomic

SHIFTS = (1, 2, 4)
GROWTH = (1, 2)


def pairs_anatomy(seg, folder: Path) -> dict:
    pairs = read_generated(folder)
    images = [load_rgb(p.image) for p in pairs]
    masks = [load_mask(p.mask, size=(im.shape[1], im.shape[0])) for p, im in zip(pairs, images)]
    found = segment(seg, images, seg.threshold)
    inside = [float((f & m).sum() / f.sum()) for f, m in zip(found, masks) if f.any()]
    return {
        "pairs": len(pairs),
        "mask_area_median": float(np.median([m.sum() for m in masks])),
        "segmenter_area_median": float(np.median([f.sum() for f in found])),
        "segmenter_inside_mask_median": round(float(np.median(inside)), 3) if inside else None,
        "iou_median": round(float(np.median([iou(f, m) for f, m in zip(found, masks)])), 4),
    }


def real_tolerance(data: Path, cfg: DemoConfig) -> dict:
    """IoU of each real test defect's mask with itself moved (4 directions, averaged) or grown."""
    test = few_shot_split(anomaly_samples(data, cfg.category, cfg.anomaly)).test
    masks = [load_mask(s.mask) for s in test]
    out: dict = {"defects": len(masks), "area_median": float(np.median([m.sum() for m in masks]))}
    for d in SHIFTS:
        moved = [
            np.mean([iou(m, np.roll(m, shift, axis)) for shift in (-d, d) for axis in (0, 1)]) for m in masks
        ]
        out[f"shift_{d}px_iou_median"] = round(float(np.median(moved)), 3)
    for g in GROWTH:
        grown = [iou(m, ndimage.binary_dilation(m, iterations=g)) for m in masks]
        out[f"grow_{g}px_iou_median"] = round(float(np.median(grown)), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--study", required=True, help="a miniature study's output folder (seed-<s>/demo/...)"
    )
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    cfg = DemoConfig().resolved()
    seg = load_segmenter(cfg.category, None, cfg.anomaly)
    seeds = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        demo = Path(args.study) / f"seed-{seed}" / "demo"
        gen = demo / "benchmark" / "generated" / "dualanodiff" / cfg.category / cfg.anomaly
        seeds[seed] = {"pairs": pairs_anatomy(seg, gen), "real_defects": real_tolerance(demo / "data", cfg)}
        print(seed, seeds[seed], flush=True)
    keys = ("mask_area_median", "segmenter_area_median", "segmenter_inside_mask_median", "iou_median")
    result = {
        "what": "the demo's alignment IoU taken apart (module doc of scripts/demo_iou_anatomy.py)",
        "type": f"{cfg.category}/{cfg.anomaly}",
        "segmenter_threshold": seg.threshold,
        "seeds": seeds,
        "means": {k: round(statistics.fmean(s["pairs"][k] for s in seeds.values()), 3) for k in keys},
        "stack": stack(),
    }
    write_json_atomic(Path(args.out), result)


if __name__ == "__main__":
    main()
