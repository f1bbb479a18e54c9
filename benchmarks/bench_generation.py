"""Generation speed and memory: our path against the authors' structure, at equal outputs.

Ours: both branches and all pairs in one UNet call, SDPA, the BCM reference pass folded into the same call.
Reference: each branch its own attention call with diffusers' classic attention maths, BCM as a separate
forward (`dualanodiff.model.reference`). Both run on the same weights (random, non-zero adapters) and seeds;
every configuration records the speed-up and the max abs difference of the generated images.

    python benchmarks/bench_generation.py --base tiny --out benchmarks/results/generation-cpu.json
    python benchmarks/bench_generation.py --base sd15 --device cuda --precision bf16 --batch-size 8 \\
        --out benchmarks/results/generation-h100.json          # SD 1.5 shapes, random weights, 512 px
    python benchmarks/bench_generation.py --base tiny --sampler-study --out benchmarks/results/samplers-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from dualanodiff.io import write_json_atomic
from dualanodiff.model.base import build_base, load_base
from dualanodiff.model.dual_unet import AdapterConfig, dual_processors
from dualanodiff.model.reference import use_loop_reference
from dualanodiff.pipeline import DualAnoDiffPipeline

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_pipe(base: str, bcm: bool, precision: str, device: str, seed: int = 0) -> DualAnoDiffPipeline:
    """A pipeline with random, non-zero adapters (so LoRA, SAIM and BCM all contribute)."""
    components = build_base(base, seed=seed) if base in ("tiny", "sd15") else load_base(base)
    pipe = DualAnoDiffPipeline.from_components(
        components, AdapterConfig(rank=32 if base != "tiny" else 4, bcm=bcm)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for proc in dual_processors(pipe.unet).values():
            for name, param in proc.named_parameters():
                if name.endswith(".up"):
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
                elif name == "bcm.alpha":
                    param.fill_(0.3)
    pipe.to(device, PRECISIONS[precision])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def meta_of(args) -> dict:
    """Where and how the figures were measured."""
    cuda = args.device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name()
        if cuda
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "base": args.base,
        "date": time.strftime("%Y-%m-%d"),
    }


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def timed(fn, device: str, repeats: int):
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up, and the last result."""
    fn()
    times, result = [], None
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_memory_mb(device), result


def run_config(pipe, args, cfg: dict) -> dict:
    bcm = pipe.adapter_config.bcm
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    bg = torch.rand(cfg["batch_size"], 3, res, res, generator=torch.Generator().manual_seed(1)) * 2 - 1
    kwargs = dict(
        num_pairs=cfg["batch_size"],
        num_inference_steps=cfg["steps"],
        guidance_scale=cfg["guidance"],
        seeds=list(range(cfg["batch_size"])),
        backgrounds=bg if bcm else None,
        output_type="pt",
    )
    if cfg["channels_last"]:
        pipe.unet.to(memory_format=torch.channels_last)
    if cfg["vae_slicing"]:
        pipe.vae.enable_slicing()
    unet_forward = pipe.unet.forward
    if cfg["compile"]:
        pipe.unet.forward = torch.compile(unet_forward)
    t_ours, mem_ours, ours = timed(lambda: pipe(bcm_mode="folded", **kwargs), args.device, args.repeats)
    pipe.unet.forward = unet_forward
    originals = use_loop_reference(pipe.unet, sdpa=False)
    t_ref, mem_ref, ref = timed(lambda: pipe(bcm_mode="two-pass", **kwargs), args.device, args.repeats)
    pipe.unet.set_attn_processor(originals)
    if cfg["channels_last"]:
        pipe.unet.to(memory_format=torch.contiguous_format)
    if cfg["vae_slicing"]:
        pipe.vae.disable_slicing()
    diff = max((ours.images - ref.images).abs().max().item(), (ours.parts - ref.parts).abs().max().item())
    b = cfg["batch_size"]
    return {
        **cfg,
        "ours": {"s_per_pair": t_ours / b, "pairs_per_s": b / t_ours, "peak_memory_mb": mem_ours},
        "reference": {"s_per_pair": t_ref / b, "pairs_per_s": b / t_ref, "peak_memory_mb": mem_ref},
        "speedup": t_ref / t_ours,
        "max_abs_diff": diff,
    }


def sampler_study(args) -> list[dict]:
    """How far fewer-step samplers move the outputs from the 50-step PNDM reference, on the same seeds."""
    from dualanodiff.generate import make_scheduler

    pipe = build_pipe(args.base, False, args.precision[0], args.device)
    base_config = pipe.scheduler.config
    kwargs = dict(num_pairs=args.batch_size[0], seeds=list(range(args.batch_size[0])), output_type="pt")
    pipe.scheduler = make_scheduler("pndm", base_config)
    t_ref, _, ref = timed(lambda: pipe(num_inference_steps=50, **kwargs), args.device, 1)
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
        t, _, out = timed(lambda s=steps: pipe(num_inference_steps=s, **kwargs), args.device, 1)
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="tiny", help="tiny | sd15 (random weights) | a diffusers folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    parser.add_argument("--batch-size", nargs="+", type=int, default=[4], help="pairs per call")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.5)
    parser.add_argument("--bcm", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--channels-last", action="store_true", help="also measure channels-last")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the UNet")
    parser.add_argument("--vae-slicing", action="store_true", help="also measure VAE slicing")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sampler-study", action="store_true", help="fewer-step samplers vs 50-step PNDM")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    meta = meta_of(args)
    if args.sampler_study:
        results = sampler_study(args)
    else:
        results = []
        switches = [{}]
        switches += [{"channels_last": True}] if args.channels_last else []
        switches += [{"compile": True}] if args.compile else []
        switches += [{"vae_slicing": True}] if args.vae_slicing else []
        for bcm in args.bcm:
            for precision in args.precision:
                pipe = build_pipe(args.base, bcm == "on", precision, args.device)
                for batch in args.batch_size:
                    for switch in switches:
                        cfg = {
                            "bcm": bcm == "on",
                            "precision": precision,
                            "batch_size": batch,
                            "steps": args.steps,
                        }
                        cfg |= {"guidance": args.guidance, "scheduler": "pndm", "channels_last": False}
                        cfg |= {"compile": False, "vae_slicing": False, **switch}
                        row = run_config(pipe, args, cfg)
                        print(json.dumps(row))
                        results.append(row)
    write_json_atomic(Path(args.out), {"meta": meta, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
