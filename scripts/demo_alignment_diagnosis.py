"""Why the demo's pairs fail the mask gate or misalign: each link of the chain measured on its own.

    python scripts/demo_alignment_diagnosis.py --out docs/results/demo_alignment   # CPU, one thread

The chain, and what is measured for each link (everything written to OUT/diagnosis.json, pictures beside it):

1. **The base's prior** (no adapters): samples of each prompt the base learned ("pill", "weave", "mark") and of
   the method's prompts (``"a vfx with sks"``, ``"sks"``, unseen in pretraining). For each, the canvas tint: the
   largest per-channel distance of the image's median colour from mid-grey, in levels of 255. The part branch
   must end on a mid-grey canvas (the grey mask keeps what differs from 127.5 by more than 16 levels), so a
   prior whose "mark" canvases are tinted gives the adapters that much more to unlearn.
2. **The measure's ceiling**: the reference segmenter against the ground truth of the real test images, raw
   and passed through the base's VAE (what a perfect generator would output).
3. **The adapters** (per training variant): the loss at the start and end of training, then pairs from fixed
   seeds with the demo's sampler and variants of it (guidance, PNDM 50). Per pair: the part's canvas tint; the
   grey mask (canvas 127.5, the method's) and the same mask against the part's own median colour ("auto"), each
   through the demo's gate (non-empty, at most half the image); the segmenter's mask on the whole image; the
   IoU of the two. The segmenter is also run on defect-free generated images (the base's category prompt): what
   it finds there is false, and says how far its IoU can be trusted on this base's images. So a failure is
   attributed: a tinted part canvas (gate fails with 127.5 but passes with the
   median), a part with no defect, a whole image with no defect the segmenter sees, or both present but apart.
   A second, segmenter-free measure: the part branch draws the defect as it should look in the whole image, so
   where the two are aligned the whole image under the mask resembles the part's defect pixels more than the
   image under the same mask moved elsewhere ("part match rank", 1 = best at the mask's place, 0.5 = chance).
   The same seeds are also sampled from their initial noise without its per-channel mean ("zero-mean"; both
   branches, or the part branch only): SD's schedule lets the UNet read an image's mean colour from the noise,
   and on 16x16 latents that mean is large (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
   are Flawed").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dualanodiff.demo.alignment import cut_out, iou, load_segmenter, part_match_rank, segment, through_vae
from dualanodiff.demo.base import demo_base_folder, load_demo_base
from dualanodiff.demo.pretrain import PROMPTS
from dualanodiff.demo.run import stack
from dualanodiff.io import save_image_atomic, write_json_atomic
from dualanodiff.masks.grey import canvas_level, grey_mask
from dualanodiff.masks.quality import judge_mask
from dualanodiff.model.encode import GLOBAL_PROMPT, PART_PROMPT, encode_prompts
from dualanodiff.pipeline import centred_noise
from dualanodiff.report import image_grid, overlay_mask

GATE_MAX_AREA = 0.5  # the demo's max_mask_area
# name, scheduler, steps, guidance, initial noise (`initial_noise`); "(demo)": the demo's sampler, steps and
# guidance with plain noise, as before `zero_mean_noise` (the demo now samples as "dpm++20-g2.5 zero-mean")
SAMPLERS = [
    ("dpm++20-g2.5 (demo)", "dpm++", 20, 2.5, "plain"),
    ("dpm++20-g2.5 zero-mean", "dpm++", 20, 2.5, "zero-mean"),
    ("dpm++20-g2.5 zero-mean part", "dpm++", 20, 2.5, "zero-mean part"),
    ("dpm++20-g1.0", "dpm++", 20, 1.0, "plain"),
    ("pndm50-g2.5", "pndm", 50, 2.5, "plain"),
]


def tint(image: np.ndarray) -> float:
    """Largest per-channel distance of the image's median colour from mid-grey (levels of 255)."""
    return float(np.abs(canvas_level(image) - 127.5).max())


def spread(values) -> dict:
    v = np.asarray(values, float)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4)}


@torch.no_grad()
def sample_prompt(base, prompt: str, n: int, steps: int, guidance: float, seed: int, zero_mean: bool):
    """``n`` uint8 samples of ``prompt`` from the base alone (DPM-Solver++, classifier-free guidance)."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler.from_config(base.scheduler.config, algorithm_type="dpmsolver++")
    sched.set_timesteps(steps)
    size = base.unet.config.sample_size
    z = torch.randn((n, 4, size, size), generator=torch.Generator().manual_seed(seed))
    if zero_mean:  # the initial noise without its per-channel mean: no colour for the UNet to read from it
        z = (z - z.mean((2, 3), keepdim=True)) / z.std((2, 3), keepdim=True)
    text = encode_prompts(base.tokenizer, base.text_encoder, [prompt, ""])
    emb = torch.cat([text[1:2].expand(n, -1, -1), text[0:1].expand(n, -1, -1)])
    for t in sched.timesteps:
        u, c = base.unet(torch.cat([z, z]), t, emb).sample.chunk(2)
        z = sched.step(u + guidance * (c - u), t, z).prev_sample
    img = base.vae.decode(z / base.vae.config.scaling_factor).sample
    return ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def prior(base, seg, args, out: Path) -> dict:
    results, rows = {}, []
    for prompt in (*PROMPTS, GLOBAL_PROMPT, PART_PROMPT):
        for zero_mean in (False, True):
            images = sample_prompt(base, prompt, args.prior_samples, 20, 2.5, args.seed, zero_mean)
            tints = [tint(im) for im in images]
            key = f"{prompt!r}" + (", zero-mean noise" if zero_mean else "")
            results[key] = {
                "tint": spread(tints),
                "share_tint_below_10": round(float(np.mean(np.asarray(tints) < 10)), 3),
            }
            if prompt == args.category:  # defect-free generated images: what the segmenter finds is false
                found = segment(seg, list(images), seg.threshold)
                results[key]["segmenter_false_area"] = spread([m.mean() for m in found])
                results[key]["segmenter_any_false_share"] = round(float(np.mean([m.any() for m in found])), 3)
            rows.append(images[:8])
            print("prior", key, results[key], flush=True)
    save_image_atomic(out / "prior.png", image_grid([im for row in rows for im in row], 8))
    return results


def ceiling(base, seg, data: Path, category: str, anomaly: str) -> dict:
    from dualanodiff.data.images import load_mask, load_rgb
    from dualanodiff.data.mvtec import anomaly_samples, few_shot_split

    test = few_shot_split(anomaly_samples(data, category, anomaly)).test
    images = np.stack([load_rgb(s.image) for s in test])
    masks = [load_mask(s.mask) > 0 for s in test]
    result = {"ground-truth area": spread([m.mean() for m in masks])}
    # The part-match measure on perfectly aligned pairs: each real test image with its defect cut onto mid-grey.
    parts = [cut_out(im, m) for im, m in zip(images, masks)]
    ranks = [part_match_rank(im, part, grey_mask(part)) for im, part in zip(images, parts)]
    result["part match rank, real test images and their cut-out defects"] = spread(
        [r for r in ranks if r is not None]
    )
    for name, ims in (
        ("real test images", images),
        ("real test images through the VAE", through_vae(base.vae, images)),
    ):
        pred = segment(seg, list(ims), seg.threshold)
        result[name] = {
            "iou": spread([iou(p, m) for p, m in zip(pred, masks)]),
            "area": spread(pred.mean((1, 2))),
        }
    return result


def pair_rows(seg, images: np.ndarray, parts: np.ndarray) -> list[dict]:
    found = segment(seg, list(images), seg.threshold)
    rows = []
    for part, seg_mask in zip(parts, found):
        row = {"part_tint": round(tint(part), 2), "segmenter_area": round(float(seg_mask.mean()), 4)}
        for name, grey in (("grey", 127.5), ("auto", "auto")):
            mask = grey_mask(part, grey=grey)
            quality = judge_mask(mask, max_area_fraction=GATE_MAX_AREA)
            row[f"{name}_area"] = round(quality.area, 4)
            row[f"{name}_kept"] = quality.kept
            row[f"{name}_iou"] = round(iou(seg_mask, mask), 4)
        rows.append(row)
    for k, (image, part) in enumerate(zip(images, parts)):
        mask = grey_mask(part)
        rows[k]["part_match_rank"] = part_match_rank(image, part, mask)
        # The null: this part against the next pair's whole image (unrelated, so no better than elsewhere).
        rows[k]["part_match_rank_unrelated"] = part_match_rank(images[(k + 1) % len(images)], part, mask)
    return rows


def summarize(rows: list[dict]) -> dict:
    kept = [r for r in rows if r["grey_kept"]]
    auto_kept = [r for r in rows if r["auto_kept"]]
    return {
        "pairs": len(rows),
        "kept_share": round(len(kept) / len(rows), 3),
        "iou_of_kept": spread([r["grey_iou"] for r in kept]),
        "part_tint": spread([r["part_tint"] for r in rows]),
        "rejected_tinted_canvas": sum(1 for r in rows if not r["grey_kept"] and r["part_tint"] >= 10),
        "rejected_empty_part": sum(1 for r in rows if r["grey_area"] == 0),
        "whole_image_no_defect_found": sum(1 for r in rows if r["segmenter_area"] == 0),
        "segmenter_area": spread([r["segmenter_area"] for r in rows]),
        "part_match_rank_of_kept": spread([r["part_match_rank"] for r in kept]),
        "part_match_rank_unrelated": spread([r["part_match_rank_unrelated"] for r in kept]),
        "part_match_best_share_of_kept": round(float(np.mean([r["part_match_rank"] == 1.0 for r in kept])), 3)
        if kept
        else None,
        "grey_mask_area": spread([r["grey_area"] for r in rows]),
        "with_median_canvas": {
            "kept_share": round(len(auto_kept) / len(rows), 3),
            "iou_of_kept": spread([r["auto_iou"] for r in auto_kept]),
        },
    }


def initial_noise(pipe, seeds: list[int], noise: str) -> torch.Tensor:
    """The pipeline's initial noise of each seed (its own draw, `DualAnoDiffPipeline.__call__`), (N, 2, C, h, w);
    "zero-mean": each branch's channels without their spatial mean; "zero-mean part": the part branch's only."""
    size = pipe.unet.config.sample_size
    z = torch.stack(
        [torch.randn((2, 4, size, size), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    centred = centred_noise(z)  # what ``zero_mean_noise=True`` samples
    if noise == "zero-mean":
        return centred
    if noise == "zero-mean part":
        return torch.stack([z[:, 0], centred[:, 1]], 1)
    return z


def adapters(args, base_dir: Path, data: Path, seg, out: Path, steps: int, lr: float) -> dict:
    from dualanodiff.generate import make_scheduler
    from dualanodiff.pipeline import DualAnoDiffPipeline
    from dualanodiff.training import TrainConfig, read_loss_log, train_adapters

    run = out / f"adapters-{steps}-{lr:g}"
    cpu = time.process_time()
    adapter_dir = train_adapters(
        TrainConfig(
            base=str(base_dir), out=str(run), data=str(data), category=args.category, anomaly=args.anomaly,
            max_steps=steps, batch_size=4, learning_rate=lr, rank=16, text_encoder_rank=16, resolution=64,
            seed=args.seed, progress=False, checkpoint_every=0,
        )
    )  # fmt: skip
    train_cpu = time.process_time() - cpu
    losses = [r["loss"] for r in read_loss_log(adapter_dir)]
    w = max(1, min(50, len(losses) // 4))
    result = {
        "train_steps": steps,
        "lr": lr,
        "train_cpu_s": round(train_cpu, 1),
        "loss_first": round(float(np.mean(losses[:w])), 5),
        "loss_last": round(float(np.mean(losses[-w:])), 5),
        "samplers": {},
    }
    pipe = DualAnoDiffPipeline.from_pretrained(base_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_adapters(adapter_dir)
    for name, scheduler, sampler_steps, guidance, noise in args.samplers:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
        cpu = time.process_time()
        images, parts = [], []
        for start in range(0, args.pairs, 16):
            seeds = list(range(start, min(args.pairs, start + 16)))
            o = pipe(
                num_pairs=len(seeds), num_inference_steps=sampler_steps, guidance_scale=guidance, seeds=seeds,
                latents=initial_noise(pipe, seeds, noise), height=64, width=64, output_type="np",
            )  # fmt: skip
            images.append(o.images)
            parts.append(o.parts)
        images = (np.concatenate(images) * 255).round().astype(np.uint8)
        parts = (np.concatenate(parts) * 255).round().astype(np.uint8)
        rows = pair_rows(seg, images, parts)
        result["samplers"][name] = {
            "sampler": scheduler, "steps": sampler_steps, "guidance": guidance, "noise": noise,
            "gen_cpu_s": round(time.process_time() - cpu, 1), **summarize(rows), "per_pair": rows,
        }  # fmt: skip
        print(
            steps,
            lr,
            name,
            {k: v for k, v in result["samplers"][name].items() if k != "per_pair"},
            flush=True,
        )
        grid = []
        found = segment(seg, list(images[:16]), seg.threshold)
        for image, part, seg_mask in zip(images[:16], parts[:16], found):
            grid += [
                image,
                part,
                overlay_mask(image, grey_mask(part)),
                overlay_mask(image, seg_mask, (0, 255, 0)),
            ]
        slug = name.replace("+", "p").replace(" ", "-").replace("(", "").replace(")", "")
        save_image_atomic(out / f"pairs-{steps}-{lr:g}-{slug}.png", image_grid(grid, 8))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", required=True, help="folder for diagnosis.json, the pictures and the work files"
    )
    parser.add_argument(
        "--base-weights", help="folder with demo_base.safetensors/.json (default: the shipped)"
    )
    parser.add_argument("--category", default="pill")
    parser.add_argument("--anomaly", default="spot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--prior-samples", type=int, default=16)
    parser.add_argument(
        "--train", nargs="+", default=["300:1e-3"], help="training variants STEPS:LR (the demo's: 300:1e-3)"
    )
    parser.add_argument(
        "--samplers",
        nargs="+",
        default=[s[0] for s in SAMPLERS],
        help="sampler variants to run (default: all)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.samplers = [s for s in SAMPLERS if s[0] in args.samplers]
    torch.set_num_threads(args.threads)
    from dualanodiff.synthetic import make_synthetic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = load_demo_base(args.base_weights)
    base_dir = demo_base_folder(out / "work" / "base", args.base_weights)
    data = make_synthetic(out / "work" / "data", seed=args.seed, resolution=64, categories=[args.category])
    seg = load_segmenter(args.category, args.base_weights, args.anomaly)
    result = {
        "what": __doc__.split("\n\n")[0],
        "settings": {k: v for k, v in vars(args).items()},
        "base_meta": json.loads((Path(base_dir) / "demo_base.json").read_text())
        if (Path(base_dir) / "demo_base.json").is_file()
        else None,
        "stack": stack(),
        "segmenter_threshold": seg.threshold,
        "ceiling": ceiling(base, seg, data, args.category, args.anomaly),
    }
    print("ceiling", result["ceiling"], flush=True)
    result["prior"] = prior(base, seg, args, out)
    write_json_atomic(out / "diagnosis.json", result)
    result["adapters"] = []
    for variant in args.train:
        steps, lr = variant.split(":")
        result["adapters"].append(adapters(args, base_dir, data, seg, out, int(steps), float(lr)))
        result["seconds"] = round(time.perf_counter() - started, 1)
        write_json_atomic(out / "diagnosis.json", result)
    print(f"wrote {out / 'diagnosis.json'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
