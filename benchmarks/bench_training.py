"""Training speed and memory: one optimizer step of the dual UNet (ours) against the per-branch loop reference.

A step is what `dualanodiff train` does per batch: VAE-encode the pair images, encode the two prompts through
the text encoder's LoRA, the dual UNet forward and backward, gradient clipping and AdamW. Random images and
random adapters; both paths share the weights, so the losses must agree.

    python benchmarks/bench_training.py --base tiny --out benchmarks/results/training-cpu.json
    python benchmarks/bench_training.py --base sd15 --device cuda --precision bf16 --batch-size 4 \\
        --gradient-checkpointing off on --out benchmarks/results/training-h100.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_generation import PRECISIONS, build_pipe, meta_of, peak_memory_mb
from diffusers import DDPMScheduler

from dualanodiff.io import write_json_atomic
from dualanodiff.model.encode import encode_latents, pair_prompt_embeddings
from dualanodiff.model.reference import use_loop_reference


def make_step(pipe, batch: int, bcm: bool, precision: str, device: str):
    """A closure running one training step; returns the loss."""
    dtype = PRECISIONS[precision]
    trainable = pipe.adapter_parameters()
    for p in trainable:
        p.data = p.data.float()
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=1e-2)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(2 * batch, 3, res, res, generator=gen) * 2 - 1).to(device)
    backgrounds = (torch.rand(batch, 3, res, res, generator=gen) * 2 - 1).to(device)
    use_autocast = dtype != torch.float32

    def step() -> float:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            latents = encode_latents(pipe.vae, images.to(pipe.vae.dtype)).float()
            bg = encode_latents(pipe.vae, backgrounds.to(pipe.vae.dtype)).float() if bcm else None
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        noise = torch.randn(latents.shape, generator=g).to(device)
        t_rows = t.repeat_interleave(2)
        noisy = noise_scheduler.add_noise(latents, noise, t_rows)
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=use_autocast):
            text = pair_prompt_embeddings(pipe.tokenizer, pipe.text_encoder, batch)
            kwargs = None
            if bcm:
                noisy = torch.cat(
                    [noisy, noise_scheduler.add_noise(bg, torch.randn(bg.shape, generator=g).to(device), t)]
                )
                t_rows = torch.cat([t_rows, t])
                text = torch.cat([text, text[0::2]])
                kwargs = {"background_rows": batch}
            pred = pipe.unet(noisy, t_rows, text, cross_attention_kwargs=kwargs).sample
        loss = F.mse_loss(pred[: 2 * batch].float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def timed_steps(step, device: str, repeats: int) -> tuple[float, float, float]:
    first_loss = step()  # warm-up (allocations, autotuning); also the loss before any update of this path
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_memory_mb(device), first_loss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="tiny", help="tiny | sd15 (random weights) | a diffusers folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    parser.add_argument("--batch-size", nargs="+", type=int, default=[4], help="pairs per step")
    parser.add_argument("--bcm", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--gradient-checkpointing", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for bcm in args.bcm:
        for precision in args.precision:
            for ckpt in args.gradient_checkpointing:
                for batch in args.batch_size:
                    row = {"bcm": bcm == "on", "precision": precision, "batch_size": batch}
                    row["gradient_checkpointing"] = ckpt == "on"
                    for path in ("ours", "reference"):
                        # A fresh model per path: both start from the same weights, so the first losses agree.
                        pipe = build_pipe(args.base, bcm == "on", "fp32", args.device)
                        pipe.vae.to(PRECISIONS[precision])
                        if ckpt == "on":
                            pipe.unet.enable_gradient_checkpointing()
                        pipe.unet.train()
                        if path == "reference":
                            use_loop_reference(pipe.unet)
                        seconds, memory, loss = timed_steps(
                            make_step(pipe, batch, bcm == "on", precision, args.device),
                            args.device,
                            args.repeats,
                        )
                        row[path] = {
                            "s_per_step": seconds,
                            "steps_per_s": 1 / seconds,
                            "peak_memory_mb": memory,
                        }
                        row[f"{path}_first_loss"] = loss
                    row["speedup"] = row["reference"]["s_per_step"] / row["ours"]["s_per_step"]
                    row["max_abs_diff"] = abs(row["ours_first_loss"] - row["reference_first_loss"])
                    print(json.dumps(row))
                    results.append(row)
    write_json_atomic(Path(args.out), {"meta": meta_of(args), "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
