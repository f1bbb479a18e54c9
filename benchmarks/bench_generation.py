"""Generation speed and memory: our path against the authors' structure, at equal outputs.

Ours: all pairs of a batch and both branches in one UNet call, SDPA, per-branch LoRA folded into the
projections, the BCM reference pass folded into the same call, optional bf16, channels-last, torch.compile,
VAE slicing. Reference: the authors' structure (`common.REFERENCE_STRUCTURE`), one pair per pipeline call as
their generation scripts do it. A third path, the same reference structure at our batch size, separates what
batching pairs gains from what the attention structure gains. All paths run the same random non-zero
adapters and seeds, each in its own fresh process; every row records the speed-ups and the max abs
difference of the generated images against the reference.

    python benchmarks/bench_generation.py --base tiny --threads 1 --out benchmarks/results/generation-cpu.json
    python benchmarks/bench_generation.py --base sd15 --device cuda --precision bf16 --batch-size 8 \\
        --out benchmarks/results/generation-gpu.json          # SD 1.5 shapes, random weights, 512 px
    python benchmarks/bench_generation.py --base tiny --sampler-study --out benchmarks/results/samplers-cpu.json
"""

from __future__ import annotations

import json

import torch
from common import (
    benchmark_parser,
    build_pipe,
    memory_stats,
    resident_mb,
    run_isolated,
    set_threads,
    timed,
    write_results,
)

from dualanodiff.generate import SCHEDULERS, apply_speed_options, make_scheduler
from dualanodiff.model.reference import use_loop_reference

SWITCHES = ("channels_last", "compile", "vae_slicing", "vae_tiling")  # each measured on its own


def measure(task: dict) -> dict:
    """One path of one configuration (run in its own process): time and memory per pair, and the pairs."""
    set_threads(task["threads"])
    pipe = build_pipe(task["base"], task["bcm"], task["precision"], task["device"])
    pipe.scheduler = make_scheduler(task["scheduler"], pipe.scheduler.config)
    rss_before = resident_mb()
    if task["path"] == "ours":
        bcm_mode = "folded"
        apply_speed_options(pipe, **{key: task[key] for key in SWITCHES})  # as `dualanodiff generate` does
    else:
        bcm_mode = "two-pass"
        use_loop_reference(pipe.unet, sdpa=False)
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    num_pairs, per_call = task["pairs"], task["pairs_per_call"]
    backgrounds = torch.rand(num_pairs, 3, res, res, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def generate() -> tuple[torch.Tensor, torch.Tensor]:
        images, parts = [], []
        for first in range(0, num_pairs, per_call):
            seeds = list(range(first, min(first + per_call, num_pairs)))
            out = pipe(
                num_pairs=len(seeds),
                num_inference_steps=task["steps"],
                guidance_scale=task["guidance"],
                seeds=seeds,
                backgrounds=backgrounds[seeds[0] : seeds[-1] + 1] if task["bcm"] else None,
                bcm_mode=bcm_mode,
                output_type="pt",
            )
            images.append(out.images.float().cpu())
            parts.append(out.parts.float().cpu())
        return torch.cat(images), torch.cat(parts)

    timing = timed(generate, task["device"], task["repeats"])
    seconds, peak, (images, parts) = timing.seconds, timing.peak_memory_mb, timing.last
    stats = {"s_per_pair": seconds / num_pairs, "pairs_per_s": num_pairs / seconds}
    stats |= memory_stats(task["device"], peak, rss_before)
    return {"stats": stats, "images": images, "parts": parts}


def max_abs_diff(a: dict, b: dict) -> float:
    """Over the pairs both paths generated (the same seeds, 0, 1, ...)."""
    n = min(len(a["images"]), len(b["images"]))
    return max(
        (a["images"][:n] - b["images"][:n]).abs().max().item(),
        (a["parts"][:n] - b["parts"][:n]).abs().max().item(),
    )


def measure_configurations(args) -> list[dict]:
    """For each BCM setting and batch size: the two references once (fp32), then ours per precision and switch."""
    switches = [{}] + [{key: True} for key in SWITCHES if getattr(args, key)]
    results = []
    for bcm in args.bcm:
        for batch in args.batch_size:
            task = {
                "base": args.base,
                "device": args.device,
                "threads": args.threads,
                "bcm": bcm == "on",
                "pairs": batch,
                "steps": args.steps,
                "guidance": args.guidance,
                "scheduler": args.scheduler,
                "repeats": args.repeats,
                **dict.fromkeys(SWITCHES, False),
            }
            ref_task = {**task, "precision": "fp32"}
            # One pair per call costs the same per pair at any batch: the first few pairs are enough (GPU time).
            ref_pairs = min(batch, args.reference_pairs or batch)
            reference = run_isolated(
                measure, {**ref_task, "path": "reference", "pairs": ref_pairs, "pairs_per_call": 1}
            )
            batched = run_isolated(
                measure, {**ref_task, "path": "reference_batched", "pairs_per_call": batch}
            )
            for precision in args.precision:
                for switch in switches:
                    ours_task = {
                        **task,
                        "path": "ours",
                        "precision": precision,
                        "pairs_per_call": batch,
                        **switch,
                    }
                    ours = run_isolated(measure, ours_task)
                    row = {
                        key: ours_task[key] for key in ("bcm", "precision", "steps", "guidance", "scheduler")
                    }
                    row |= {"batch_size": batch}
                    row |= {key: ours_task[key] for key in SWITCHES}
                    row |= {
                        "ours": ours["stats"],
                        "reference": {**reference["stats"], "pairs": ref_pairs, "pairs_per_call": 1},
                        "reference_batched": {**batched["stats"], "pairs_per_call": batch},
                        "speedup": reference["stats"]["s_per_pair"] / ours["stats"]["s_per_pair"],
                        "speedup_over_batched_reference": batched["stats"]["s_per_pair"]
                        / ours["stats"]["s_per_pair"],
                        "max_abs_diff": max_abs_diff(ours, reference),
                        "max_abs_diff_batched_reference": max_abs_diff(ours, batched),
                    }
                    print(json.dumps(row), flush=True)
                    results.append(row)
    return results


def sampler_study(args) -> list[dict]:
    """How far fewer-step samplers move the outputs from the 50-step PNDM reference, on the same seeds."""
    pipe = build_pipe(args.base, False, args.precision[0], args.device)
    base_config = pipe.scheduler.config
    kwargs = dict(num_pairs=args.batch_size[0], seeds=list(range(args.batch_size[0])), output_type="pt")
    pipe.scheduler = make_scheduler("pndm", base_config)
    t_ref, _, _, ref, _ = timed(lambda: pipe(num_inference_steps=50, **kwargs), args.device, 1)
    rows = [{"scheduler": "pndm", "steps": 50, "s_per_pair": t_ref / kwargs["num_pairs"], "reference": True}]
    for name, steps in (
        ("pndm", 25),
        ("ddim", 50),
        ("dpm++", 20),
        ("dpm++", 25),
        ("unipc", 20),
        ("unipc", 25),
    ):
        pipe.scheduler = make_scheduler(name, base_config)
        t, _, _, out, _ = timed(lambda s=steps: pipe(num_inference_steps=s, **kwargs), args.device, 1)
        d_img, d_part = (out.images - ref.images).abs(), (out.parts - ref.parts).abs()
        rows.append(
            {
                "scheduler": name,
                "steps": steps,
                "s_per_pair": t / kwargs["num_pairs"],
                "speedup": t_ref / t,
                "mean_abs_diff_image": d_img.mean().item(),
                "max_abs_diff_image": d_img.max().item(),
                "mean_abs_diff_part": d_part.mean().item(),
            }
        )
    return rows


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch-size", nargs="+", type=int, default=[4], help="pairs per call")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.5)
    parser.add_argument("--scheduler", default="pndm", choices=list(SCHEDULERS), help="sampler of every path")
    parser.add_argument("--bcm", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--channels-last", action="store_true", help="also measure channels-last")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the UNet")
    parser.add_argument("--vae-slicing", action="store_true", help="also measure VAE slicing")
    parser.add_argument("--vae-tiling", action="store_true", help="also measure VAE tiling")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--reference-pairs", type=int, default=None, help="pairs the one-pair-per-call reference makes (all)"
    )
    parser.add_argument("--sampler-study", action="store_true", help="fewer-step samplers vs 50-step PNDM")
    args = parser.parse_args()
    set_threads(args.threads)
    write_results(args, sampler_study(args) if args.sampler_study else measure_configurations(args))


if __name__ == "__main__":
    main()
