"""What saving adapters in bf16 or fp16 changes in the pairs they generate, against the same adapters in fp32.

The adapters are saved three times (``--save-dtype fp32|bf16|fp16`` of `dualanodiff train`, i.e.
``pipe.save_adapters(dtype=...)``), each file is loaded into the same base (the loader casts to the model's
precision), and the same seeds generate the same pairs; images and parts are compared in [0, 1] with those of
the fp32 file, for sampling in fp32 and in bf16, together with the grey masks of the parts (IoU).

By default the adapters are trained here with the demo's recipe (the shipped demo base, synthetic pill/spot,
400 steps at lr 1e-3, rank 16): trained weights, not random ones. ``--base DIR --adapters DIR`` measures yours.

    python benchmarks/adapter_dtype.py --out benchmarks/results/adapter-dtype.json       # CPU, ~5 minutes
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import PRECISIONS, meta_of, set_threads

from dualanodiff.io import write_json_atomic
from dualanodiff.masks import build_masker
from dualanodiff.model.dual_unet import ADAPTER_WEIGHTS, SAVE_DTYPES
from dualanodiff.pipeline import DualAnoDiffPipeline, to_uint8


def train_demo_adapters(work: Path, steps: int) -> tuple[Path, Path]:
    """(base folder, adapter folder): the demo's base and recipe, one anomaly type, fp32 adapters."""
    from dualanodiff.demo.base import demo_base_folder
    from dualanodiff.synthetic import make_synthetic
    from dualanodiff.training import TrainConfig, train_adapters

    data = make_synthetic(work / "data", resolution=64, categories=["pill"])
    base = demo_base_folder(work / "base")
    config = TrainConfig(
        base=str(base), out=str(work / "adapters"), data=str(data), category="pill", anomaly="spot",
        max_steps=steps, learning_rate=1e-3, rank=16, text_encoder_rank=16, batch_size=4, resolution=64,
        checkpoint_every=0,
    )  # fmt: skip
    return base, train_adapters(config)


def generate(pipe: DualAnoDiffPipeline, pairs: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    backgrounds = None
    if pipe.adapter_config.bcm:
        backgrounds = torch.rand(pairs, 3, res, res, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = pipe(
        num_pairs=pairs, num_inference_steps=steps, seeds=list(range(pairs)), backgrounds=backgrounds,
        output_type="pt",
    )  # fmt: skip
    return out.images.float(), out.parts.float()


def mask_iou(parts_a: torch.Tensor, parts_b: torch.Tensor) -> list[float]:
    """IoU of the grey masks (the default mask method) of two sets of part images, per pair."""
    masker = build_masker("grey")
    ious = []
    for a, b in zip(parts_a, parts_b):
        ma = masker(to_uint8(a.permute(1, 2, 0).numpy())).astype(bool)
        mb = masker(to_uint8(b.permute(1, 2, 0).numpy())).astype(bool)
        union = np.logical_or(ma, mb).sum()
        ious.append(float(np.logical_and(ma, mb).sum() / union) if union else 1.0)
    return ious


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def difference(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """How far pairs ``a`` are from pairs ``b`` (images and parts in [0, 1]), and their grey masks' IoU."""
    d_img, d_part = (a[0] - b[0]).abs(), (a[1] - b[1]).abs()
    per_pair_max = torch.maximum(d_img.flatten(1).amax(1), d_part.flatten(1).amax(1)).tolist()
    return {
        "max_abs_diff_image": d_img.max().item(),
        "mean_abs_diff_image": d_img.mean().item(),
        "max_abs_diff_part": d_part.max().item(),
        "mean_abs_diff_part": d_part.mean().item(),
        "per_pair_max_abs_diff": spread(per_pair_max),
        "grey_mask_iou": spread(mask_iou(a[1], b[1])),
    }


def measure(args) -> list[dict]:
    pipe = DualAnoDiffPipeline.from_pretrained(args.base)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_adapters(args.adapters)
    rows, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        saved = {dtype: pipe.save_adapters(Path(tmp) / dtype, dtype=dtype) for dtype in SAVE_DTYPES}
        sizes = {d: (path / ADAPTER_WEIGHTS).stat().st_size / 2**20 for d, path in saved.items()}
        for precision in args.precision:
            pipe.to(PRECISIONS[precision])
            for dtype, path in saved.items():
                pipe.load_adapters(path)
                outputs[precision, dtype] = generate(pipe, args.pairs, args.steps)
                row = {"sampling_precision": precision, "saved_dtype": dtype, "file_mb": sizes[dtype]}
                row["against"] = f"{precision} sampling, fp32-saved adapters"
                rows.append(row | difference(outputs[precision, dtype], outputs[precision, "fp32"]))
                print(rows[-1], flush=True)
    if {"fp32", "bf16"} <= set(args.precision):  # the yardstick: what bf16 sampling itself changes
        row = {"sampling_precision": "bf16", "saved_dtype": "fp32", "file_mb": sizes["fp32"]}
        row["against"] = "fp32 sampling, fp32-saved adapters"
        rows.append(row | difference(outputs["bf16", "fp32"], outputs["fp32", "fp32"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", help="diffusers folder of the base (default: the demo base)")
    parser.add_argument("--adapters", help="adapter folder (default: train the demo's recipe here)")
    parser.add_argument("--train-steps", type=int, default=400, help="steps of the default training")
    parser.add_argument("--pairs", type=int, default=16, help="pairs generated per file and precision")
    parser.add_argument("--steps", type=int, default=50, help="PNDM steps")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument(
        "--work", type=Path, help="folder for the default data, base and adapters (kept; reused when rerun)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    set_threads(args.threads)
    started = time.perf_counter()
    if (args.base is None) != (args.adapters is None):
        parser.error("give both --base and --adapters, or neither (the demo's recipe)")
    if args.adapters is None:
        work = args.work or Path(tempfile.mkdtemp(prefix="adapter-dtype-"))
        base, adapters = train_demo_adapters(work, args.train_steps)  # returns at once if already trained
        args.base, args.adapters = str(base), str(adapters)
        source = f"trained here: synthetic pill/spot, {args.train_steps} steps, rank 16, lr 1e-3, 64 px"
        base_name = "the shipped demo base"
    else:
        source, base_name = args.adapters, args.base
    rows = measure(args)
    args.device = "cpu"
    meta = {key: meta_of(args)[key] for key in ("device", "torch", "cpu_threads", "date")}
    meta |= {"base": base_name, "adapters": source, "steps": args.steps, "seeds": f"0..{args.pairs - 1}"}
    meta["seconds"] = time.perf_counter() - started
    write_json_atomic(Path(args.out), {"meta": meta, "results": rows})
    print(f"wrote {args.out} ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
