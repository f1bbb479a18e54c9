"""A lead for the demo's alignment target: cut the part's mask at half its peak, not at a fixed 16 levels.

    python scripts/demo_half_max_masks.py --study study --out docs/results/demo_alignment/half-max-masks-weave-hole.json

A blurred step edge crosses half its height where the sharp edge was, so a defect blurred by the VAE (and drawn
soft by the part branch) is cut at its true edge by a threshold at half its peak distance from the canvas, where
a fixed low threshold (the `grey-canvas` default, 16 grey levels) takes in the blur. Per seed of a finished
miniature study (``scripts/miniature_study.py``), two checks of the same rule, ``max(16, 0.5 x peak)`` with the
peak taken as the maximum of the (median-filtered) distance map or as its 99.5th percentile:

- against the truth: each real test defect of the demo's type cut out on grey (its part image), passed through
  the demo base's VAE, and masked by each rule; the median IoU with its ground-truth mask;
- on the study's generated pairs: the part images masked again by each rule; the median IoU with the reference
  segmenter's mask of the whole image (the demo's alignment measure), and the median mask area.

The rule with the maximum as the peak is now the tool's ``--method grey-half-max`` (`masks.grey.half_max_mask`)
and the demo's mask; the study measures its downstream effect.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from diffusers import AutoencoderKL

from dualanodiff.data.generated import read_generated
from dualanodiff.data.images import load_mask, load_rgb
from dualanodiff.data.mvtec import anomaly_samples, few_shot_split
from dualanodiff.demo.alignment import cut_out, iou, load_segmenter, segment, through_vae
from dualanodiff.demo.run import DemoConfig, stack
from dualanodiff.io import write_json_atomic
from dualanodiff.masks.grey import DEFAULT_THRESHOLD, grey_distance, grey_mask, half_max_mask


def masks_by_rule(part: np.ndarray) -> dict[str, np.ndarray]:
    """The part's mask under the fixed threshold, under half its peak as the tool cuts it (`half_max_mask`, the
    peak the maximum), and under half the distance map's 99.5th percentile (a variant the tool does not offer)."""
    p995 = 0.5 * float(np.percentile(grey_distance(part, "auto"), 99.5))
    return {
        "fixed 16": grey_mask(part, threshold=DEFAULT_THRESHOLD, min_area=1, grey="auto"),
        "half max": half_max_mask(part, floor=DEFAULT_THRESHOLD, min_area=1, grey="auto"),
        "half p99.5": grey_mask(part, threshold=max(DEFAULT_THRESHOLD, p995), min_area=1, grey="auto"),
    }


def check_seed(demo: Path, cfg: DemoConfig, seg) -> dict:
    vae = AutoencoderKL.from_pretrained(demo / "base" / "vae").eval()
    test = few_shot_split(anomaly_samples(demo / "data", cfg.category, cfg.anomaly)).test
    truth = [load_mask(s.mask) for s in test]
    parts = through_vae(vae, np.stack([cut_out(load_rgb(s.image), m) for s, m in zip(test, truth)]))
    real = [masks_by_rule(p) for p in parts]
    gen_dir = demo / "benchmark" / "generated" / "dualanodiff" / cfg.category / cfg.anomaly
    pairs = read_generated(gen_dir)
    found = segment(seg, [load_rgb(p.image) for p in pairs], seg.threshold)
    generated = [masks_by_rule(load_rgb(p.part)) for p in pairs]
    out = {}
    for rule in real[0]:
        out[rule] = {
            "real_parts_iou_with_truth_median": round(float(np.median([iou(r[rule], t) for r, t in zip(real, truth)])), 3),
            "generated_iou_with_segmenter_median": round(
                float(np.median([iou(g[rule], f) for g, f in zip(generated, found)])), 4
            ),
            "generated_mask_area_median": float(np.median([g[rule].sum() for g in generated])),
        }  # fmt: skip
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
        seeds[seed] = check_seed(Path(args.study) / f"seed-{seed}" / "demo", cfg, seg)
        print(seed, seeds[seed], flush=True)
    write_json_atomic(
        Path(args.out),
        {
            "what": "mask thresholds at half the part's peak (module doc of scripts/demo_half_max_masks.py)",
            "type": f"{cfg.category}/{cfg.anomaly}",
            "seeds": seeds,
            "stack": stack(),
        },
    )


if __name__ == "__main__":
    main()
