"""Training speed and memory: one optimizer step of the dual UNet (ours) against the authors' structure.

A step is what `dualanodiff train` does per batch: VAE-encode the pair images, encode the two prompts through
the text encoder's LoRA, the dual UNet forward and backward, gradient clipping and AdamW. Ours: both branches in
one attention call, SDPA, the BCM background pass folded into the same UNet call, optional bf16 autocast.
Reference: `common.REFERENCE_STRUCTURE` at the same batch (their training batches pairs too), with the BCM
background pass as its own forward, gradients flowing through it. Random images and random adapters; each path
runs in its own fresh process from the same weights, so the first losses and gradient norms must agree.

    python benchmarks/bench_training.py --base tiny --threads 1 --out benchmarks/results/training-cpu.json
    python benchmarks/bench_training.py --base sd15 --device cuda --precision bf16 --batch-size 4 \\
        --bcm off on --gradient-checkpointing off on --out benchmarks/results/training-gpu.json
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from common import (
    PRECISIONS,
    benchmark_parser,
    build_pipe,
    memory_stats,
    resident_mb,
    run_isolated,
    set_threads,
    timed,
    write_results,
)
from diffusers import DDPMScheduler

from dualanodiff.model.encode import encode_latents, pair_prompt_embeddings
from dualanodiff.model.reference import use_loop_reference


def make_step(pipe, batch: int, bcm: bool, precision: str, device: str, two_pass: bool):
    """A closure running one training step; returns the loss and the gradient norm before clipping."""
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

    def step() -> tuple[float, float]:
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
                noisy_bg = noise_scheduler.add_noise(bg, torch.randn(bg.shape, generator=g).to(device), t)
                if two_pass:  # the authors' structure: the background pass is its own forward
                    recorded = {}
                    pipe.unet(noisy_bg, t, text[0::2], cross_attention_kwargs={"record_background": recorded})
                    kwargs = {"background_states": recorded}
                else:  # ours: the background rows ride in the same call
                    noisy, t_rows = torch.cat([noisy, noisy_bg]), torch.cat([t_rows, t])
                    text = torch.cat([text, text[0::2]])
                    kwargs = {"background_rows": batch}
            pred = pipe.unet(noisy, t_rows, text, cross_attention_kwargs=kwargs).sample
        loss = F.mse_loss(pred[: 2 * batch].float(), noise)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item(), grad_norm.item()

    return step


def measure(task: dict) -> dict:
    """One path of one configuration (run in its own process): time and memory per step, first loss."""
    set_threads(task["threads"])
    reference = task["path"] == "reference"
    pipe = build_pipe(task["base"], task["bcm"], "fp32", task["device"])
    pipe.vae.to(PRECISIONS[task["precision"]])
    if task["gradient_checkpointing"]:
        pipe.unet.enable_gradient_checkpointing()
    pipe.unet.train()
    if reference:
        use_loop_reference(pipe.unet)
    rss_before = resident_mb()
    step = make_step(pipe, task["batch_size"], task["bcm"], task["precision"], task["device"], reference)
    # The warm-up step is the first step from the shared weights: its loss and gradient norm are compared.
    seconds, peak, (loss, grad_norm), _, _ = timed(step, task["device"], task["repeats"])
    stats = {"s_per_step": seconds, "steps_per_s": 1 / seconds} | memory_stats(
        task["device"], peak, rss_before
    )
    return {"stats": stats, "first_loss": loss, "first_grad_norm": grad_norm}


def measure_configurations(args) -> list[dict]:
    """Per BCM setting, checkpointing and batch: the fp32 reference once, then ours per precision."""
    results = []
    for bcm in args.bcm:
        for ckpt in args.gradient_checkpointing:
            for batch in args.batch_size:
                task = {"base": args.base, "device": args.device, "threads": args.threads}
                task |= {"bcm": bcm == "on", "gradient_checkpointing": ckpt == "on", "batch_size": batch}
                task |= {"repeats": args.repeats}
                reference = run_isolated(measure, {**task, "path": "reference", "precision": "fp32"})
                for precision in args.precision:
                    ours = run_isolated(measure, {**task, "path": "ours", "precision": precision})
                    row = {key: task[key] for key in ("bcm", "batch_size", "gradient_checkpointing")}
                    row |= {
                        "precision": precision,
                        "ours": ours["stats"],
                        "reference": {**reference["stats"], "precision": "fp32"},
                        "speedup": reference["stats"]["s_per_step"] / ours["stats"]["s_per_step"],
                        "ours_first_loss": ours["first_loss"],
                        "reference_first_loss": reference["first_loss"],
                        "max_abs_diff": abs(ours["first_loss"] - reference["first_loss"]),
                        "grad_norm_rel_diff": abs(ours["first_grad_norm"] - reference["first_grad_norm"])
                        / reference["first_grad_norm"],
                    }
                    print(json.dumps(row), flush=True)
                    results.append(row)
    return results


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch-size", nargs="+", type=int, default=[4], help="pairs per step")
    parser.add_argument("--bcm", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--gradient-checkpointing", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    set_threads(args.threads)
    write_results(args, measure_configurations(args))


if __name__ == "__main__":
    main()
