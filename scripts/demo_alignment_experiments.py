"""Why the demo's two branches do not align: training variants, and a direct test of SAIM's coupling.

    python scripts/demo_alignment_experiments.py --out docs/results/demo_alignment/experiments   # CPU, 1 thread
    python scripts/demo_alignment_experiments.py --type weave/hole --out docs/results/demo_alignment/experiments-weave-hole

Each variant trains the adapters of one type (``--type``, default ``pill/spot``) on the demo's data (300 steps, lr
1e-3, rank 16, batch 4 unless it says otherwise), samples 32 pairs as the demo does (DPM-Solver++ 20 steps,
guidance 2.5) and measures them as `demo_alignment_diagnosis.py` does (mask gate, segmenter IoU, part match rank),
with the mask cut from mid-grey and from the part's own canvas colour. Then the **coupling test**:
SAIM is what should make the part the part *of that* whole image, so force one branch to a real image and see
whether the other follows. For each real test image of the type, the global branch's latent is replaced
after every step of the demo's sampler (DPM-Solver++, 20 steps, guidance 2.5) by that image's latent noised to
the next timestep, while the part branch samples freely; if the branches are coupled, the part draws its mark
at the image's real defect. Measured by the part's rank there (`truth_rank`: its distance from the grey canvas
under the true mask, against the mask moved 16 px in 8 directions), set against the same figure for a free run
of the same seeds: marks and real defects both sit on or near the pill, so chance is not 0.5, and the free run
is the null. The reverse: the part branch forced to the real part image, and the whole image's
`part_match_rank` at the real defect, forced against free. Each forced branch itself reaches 1.0 there, so the
test sees a defect where there is one. (Mask IoUs are recorded too; the grey mask of a part drawn beside a
forced branch is noisy, so the ranks are the figures to read.)

Some variants are not options of the tool: a defect-weighted loss for the global rows (each latent position
weighted ``1 + w`` under the defect, ``w`` the variant's ``defect_weight``), noise shared between the branches
(in training, and from the same seed in sampling) and a separate learning rate for SAIM. They are made here by
patching the training loop for the run (`_patched_training`), because they are experiments, not the method.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dualanodiff.data.images import load_mask, load_rgb
from dualanodiff.demo.alignment import MATCH_SHIFTS, iou, load_segmenter, part_match_rank, segment
from dualanodiff.demo.base import demo_base_folder
from dualanodiff.demo.run import stack
from dualanodiff.io import save_image_atomic, write_json_atomic
from dualanodiff.masks import build_masker
from dualanodiff.masks.grey import grey_mask
from dualanodiff.masks.quality import judge_mask
from dualanodiff.model.encode import encode_latents
from dualanodiff.pipeline import centred_noise, to_uint8
from dualanodiff.report import image_grid, overlay_mask

CATEGORY, ANOMALY, GATE_MAX_AREA = "pill", "spot", 0.5
DEFAULTS = dict(
    steps=300, lr=1e-3, saim=True, saim_zero_init=False, saim_lr_factor=1.0, defect_weight=0.0,
    shared_noise=False, centred="both", independent_t=0.0,
    shared_start=False, batch=4,
)  # fmt: skip
# name: (what it tests, settings that differ from DEFAULTS). "centred": which branches' initial noise is centred
# ("both" is the demo's --zero-mean-noise; "part": the global branch keeps its noise's mean colour).
VARIANTS: dict[str, tuple[str, dict]] = {
    "demo": ("the demo's recipe until weave/hole: 300 steps of 4 pairs, noise centred in both branches", {}),
    "no-saim": ("no SAIM at all: what the branches do uncoupled", {"saim": False}),
    "centred-part": ("initial noise centred in the part branch only", {"centred": "part"}),
    "long": ("5 times longer training (1,500 steps)", {"steps": 1500, "centred": "part"}),
    "defect-weight-10": (
        "global rows' loss weighted 11x under the defect (2-4 % of the pixels)",
        {"defect_weight": 10.0, "centred": "part"},
    ),
    "defect-weight-10-long": (
        "defect-weighted loss, SAIM zero-initialised, 1,500 steps",
        {"defect_weight": 10.0, "saim_zero_init": True, "steps": 1500, "centred": "part"},
    ),
    "longer": ("10 times longer training (3,000 steps)", {"steps": 3000, "centred": "part"}),
    "defect-weight-10-longer": (
        "defect-weighted loss, SAIM zero-initialised, 3,000 steps",
        {"defect_weight": 10.0, "saim_zero_init": True, "steps": 3000, "centred": "part"},
    ),
    "saim-zero-lr-10x": (
        "SAIM zero-initialised with 10x the learning rate",
        {"saim_zero_init": True, "saim_lr_factor": 10.0, "centred": "part"},
    ),
    "shared-noise": (
        "the same noise in both branches, in training and sampling",
        {"shared_noise": True, "centred": "both"},
    ),
    "centred-part-600": (
        "initial noise centred in the part branch only, 600 steps",
        {"centred": "part", "steps": 600},
    ),
    "centred-part-600-lr-2e-3": (
        "initial noise centred in the part branch only, 600 steps at lr 2e-3",
        {"centred": "part", "steps": 600, "lr": 2e-3},
    ),
    "centred-part-1000": (
        "initial noise centred in the part branch only, 1,000 steps",
        {"centred": "part", "steps": 1000},
    ),
    "centred-part-1200-batch-2": (
        "initial noise centred in the part branch only, 1,200 steps of 2 pairs",
        {"centred": "part", "steps": 1200, "batch": 2},
    ),
    "demo-2": (
        "the demo's recipe since weave/hole: 750 steps of 2 pairs, initial noise centred in the part only",
        {"centred": "part", "steps": 750, "batch": 2},
    ),
    "shared-start": (
        "the demo's training; in sampling, the same initial noise in both branches",
        {"shared_start": True},
    ),
    "independent-t": (
        "half the pairs trained with the part's timestep drawn apart from the whole image's",
        {"independent_t": 0.5},
    ),
    "independent-t-all": (
        "every pair trained with the part's timestep drawn apart from the whole image's",
        {"independent_t": 1.0},
    ),
}


@contextlib.contextmanager
def _patched_training(settings: dict):
    """The variants the tool does not offer, patched into `training.loop` for one run (see the module doc)."""
    from dualanodiff.training import loop

    trainer, adamw, randn = loop.AdapterTrainer, torch.optim.AdamW, torch.randn
    step_loss, load_pipeline = trainer.step_loss, loop._load_pipeline
    names: dict[int, str] = {}

    def load(config):
        pipe = load_pipeline(config)
        names.update({id(p): n for n, p in pipe.unet.named_parameters()})
        return pipe

    def optimizer(params, lr, **kw):
        params = list(params)
        saim = [p for p in params if ".saim." in names.get(id(p), "")]
        rest = [p for p in params if ".saim." not in names.get(id(p), "")]
        groups = [{"params": rest, "lr": lr}, {"params": saim, "lr": lr * settings["saim_lr_factor"]}]
        return adamw([g for g in groups if g["params"]], lr=lr, **kw)

    def shared_randn(*args, **kw):  # the loop's training noise is the only torch.randn call without dtype
        z = randn(*args, **kw)
        if settings["shared_noise"] and "dtype" not in kw and z.dim() == 4:
            z[1::2] = z[0::2]  # rows interleaved [g0, p0, g1, p1, ...]
        return z

    def weighted_step_loss(self, step):
        mask = self._batch(step)[1]["mask"].float()  # the same batch step_loss draws (deterministic)
        mse = F.mse_loss

        def weighted(pred, target, reduction="mean"):
            under = F.adaptive_max_pool2d(mask.reshape(-1, 1, *mask.shape[-2:]), pred.shape[-2:])
            w = torch.ones_like(pred)
            w[0::2] += settings["defect_weight"] * under
            return (w * (pred - target) ** 2).sum() / w.sum()

        add_noise = self.noise_scheduler.add_noise

        def add_noise_apart(latents, noise, t_rows):
            # The loop passes the same t_rows tensor on to the UNet: changing it here changes both.
            if settings["independent_t"] and t_rows.numel() == latents.shape[0]:
                g = torch.Generator().manual_seed(10_000 + step)
                pairs = t_rows.numel() // 2
                apart = torch.rand(pairs, generator=g) < settings["independent_t"]
                t_part = torch.randint(
                    0, self.noise_scheduler.config.num_train_timesteps, (pairs,), generator=g
                )
                t_rows[1::2] = torch.where(apart, t_part, t_rows[1::2].cpu()).to(t_rows.device)
            return add_noise(latents, noise, t_rows)

        loop.F.mse_loss = weighted if settings["defect_weight"] else mse
        torch.randn = shared_randn
        self.noise_scheduler.add_noise = add_noise_apart
        try:
            return step_loss(self, step)
        finally:
            loop.F.mse_loss, torch.randn = mse, randn
            del self.noise_scheduler.add_noise

    loop._load_pipeline, torch.optim.AdamW, trainer.step_loss = load, optimizer, weighted_step_loss
    try:
        yield
    finally:
        loop._load_pipeline, torch.optim.AdamW, trainer.step_loss = load_pipeline, adamw, step_loss


def train(settings: dict, base_dir: Path, data: Path, run: Path) -> tuple[Path, list[float]]:
    from dualanodiff.training import TrainConfig, read_loss_log, train_adapters

    config = TrainConfig(
        base=str(base_dir), out=str(run), data=str(data), category=CATEGORY, anomaly=ANOMALY,
        max_steps=settings["steps"], batch_size=settings["batch"], learning_rate=settings["lr"], rank=16, text_encoder_rank=16,
        resolution=64, seed=0, progress=False, checkpoint_every=0, saim=settings["saim"],
        saim_zero_init=settings["saim_zero_init"],
    )  # fmt: skip
    with _patched_training(settings):
        adapter_dir = train_adapters(config)
    return adapter_dir, [r["loss"] for r in read_loss_log(adapter_dir)]


def initial_noise(seeds: list[int], settings: dict) -> torch.Tensor:
    """The pipeline's per-seed draw (num_pairs, 2, 4, 16, 16), shared and centred as the variant says."""
    z = torch.stack([torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(s)) for s in seeds])
    if settings["shared_noise"] or settings["shared_start"]:
        z[:, 1] = z[:, 0]
    if settings["centred"] == "both":
        return centred_noise(z)
    return torch.stack([z[:, 0], centred_noise(z[:, 1])], 1)


def load_pipe(base_dir: Path, adapter_dir: Path):
    """The base with the variant's adapters and the demo's sampler (DPM-Solver++)."""
    from dualanodiff.generate import make_scheduler
    from dualanodiff.pipeline import DualAnoDiffPipeline

    pipe = DualAnoDiffPipeline.from_pretrained(base_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_adapters(adapter_dir)
    pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
    return pipe


def free_pairs(pipe, seg, settings: dict, pairs: int, out: Path) -> dict:
    """The demo's sampling and measures on ``pairs`` seeds."""
    seeds = list(range(pairs))
    o = pipe(
        num_pairs=pairs, num_inference_steps=20, guidance_scale=2.5, seeds=seeds,
        latents=initial_noise(seeds, settings), height=64, width=64, output_type="np",
    )  # fmt: skip
    images, parts = to_uint8(o.images), to_uint8(o.parts)
    found = segment(seg, list(images), seg.threshold)
    result = {"whole_images_without_defect_found": int(sum(1 for f in found if not f.any()))}
    # Masks cut as `dualanodiff generate` cuts them: "grey" (from mid-grey, the demo's method until the default
    # type became weave/hole) and "grey-canvas" (from the part's own canvas colour, the demo's method since).
    for method in ("grey", "grey-canvas"):
        masker = build_masker(method)
        masks = [masker(p) for p in parts]
        kept = [k for k, m in enumerate(masks) if judge_mask(m, max_area_fraction=GATE_MAX_AREA).kept]
        rank = [part_match_rank(images[k], parts[k], masks[k]) for k in kept]
        unrelated = [part_match_rank(images[(k + 1) % pairs], parts[k], masks[k]) for k in kept]
        suffix = "" if method == "grey" else "_canvas_mask"
        result |= {
            f"kept_share{suffix}": round(len(kept) / pairs, 3),
            f"median_iou_of_kept{suffix}": _median([iou(found[k], masks[k]) for k in kept]),
            f"median_part_match_rank_of_kept{suffix}": _median(rank),
            f"median_part_match_rank_unrelated{suffix}": _median(unrelated),
        }
        grid = []
        for image, part, mask, seg_mask in list(zip(images, parts, masks, found))[:16]:
            grid += [image, part, overlay_mask(image, mask), overlay_mask(image, seg_mask, (0, 255, 0))]
        save_image_atomic(out / f"pairs{suffix.replace('_', '-')}.png", image_grid(grid, 8))
    return result


def coupling(pipe, seg, data: Path, settings: dict, out: Path) -> dict:
    """Teacher forcing on the 16 real test images (module doc): does one branch follow the other?"""
    folder = data / CATEGORY
    files = sorted((folder / "test" / ANOMALY).glob("*.png"))
    images = np.stack([load_rgb(f) for f in files])
    truth = np.stack([load_mask(folder / "ground_truth" / ANOMALY / f"{f.stem}_mask.png") for f in files])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        targets = {
            0: encode_latents(pipe.vae, x, torch.Generator().manual_seed(0)).float(),
            1: encode_latents(pipe.vae, x * torch.from_numpy(truth)[:, None].float(), torch.Generator().manual_seed(1)).float(),
        }  # fmt: skip
    n, step = len(files), pipe.scheduler.step
    result = {}
    for forced, name in ((None, "free"), (0, "whole forced"), (1, "part forced")):
        fixed = torch.randn(targets[0].shape, generator=torch.Generator().manual_seed(7))

        def forcing_step(pred, t, latents, forced=forced, fixed=fixed, **kw):
            o = step(pred, t, latents, **kw)
            if forced is not None:
                ts = pipe.scheduler.timesteps
                i = int((ts == t).nonzero())
                z = targets[forced]
                nxt = pipe.scheduler.add_noise(z, fixed, ts[i + 1].repeat(n)) if i + 1 < len(ts) else z
                o.prev_sample[forced::2] = nxt
            return o

        pipe.scheduler.step = forcing_step
        try:
            seeds = list(range(n))
            z = initial_noise(seeds, settings)
            if forced is not None:
                z[:, forced] = fixed
            o = pipe(
                num_pairs=n, num_inference_steps=20, guidance_scale=2.5, seeds=seeds, latents=z, height=64,
                width=64, output_type="np",
            )  # fmt: skip
        finally:
            pipe.scheduler.step = step
        wholes, parts = to_uint8(o.images), to_uint8(o.parts)
        masks = [grey_mask(p) for p in parts]
        found = segment(seg, list(wholes), seg.threshold)
        real_parts = np.where(truth[..., None], images, 128).astype(np.uint8)
        result[name] = {
            "part_truth_rank": _median([truth_rank(p, t) for p, t in zip(parts, truth)]),
            "part_truth_rank_another_image": _median([truth_rank(p, truth[(k + 1) % n]) for k, p in enumerate(parts)]),
            "whole_match_rank": _median([part_match_rank(w, r, t) for w, r, t in zip(wholes, real_parts, truth)]),
            "part_mask_vs_truth": _median([iou(m, t) for m, t in zip(masks, truth)]),
            "part_mask_vs_another_image_truth": _median([iou(m, truth[(k + 1) % n]) for k, m in enumerate(masks)]),
            "whole_segmented_vs_truth": _median([iou(f, t) for f, t in zip(found, truth)]),
            "whole_segmented_vs_part_mask": _median([iou(f, m) for f, m in zip(found, masks)]),
        }  # fmt: skip
        grid = []
        for k in range(8):
            grid += [
                wholes[k],
                parts[k],
                overlay_mask(wholes[k], masks[k]),
                overlay_mask(wholes[k], truth[k], (0, 255, 0)),
            ]
        save_image_atomic(out / f"coupling-{name.replace(' ', '-')}.png", image_grid(grid, 8))
    return result


def truth_rank(part: np.ndarray, truth: np.ndarray) -> float | None:
    """Is the part's drawing (its distance from the grey canvas) strongest under ``truth``, more than under
    ``truth`` moved 16 px in each of 8 directions? The share of moves with less; 0.5 is chance, 1.0 best.
    Robust to a noisy canvas, unlike the grey mask's IoU."""
    if not truth.any():
        return None
    ink = np.abs(part.astype(float) - 127.5).sum(-1)
    here = ink[truth].mean()
    return float(
        np.mean([ink[np.roll(truth, (dy, dx), axis=(0, 1))].mean() < here for dy, dx in MATCH_SHIFTS])
    )


def _median(values) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.median(v)), 4) if v else None


def table(summary: dict) -> str:
    """The docs' table, from summary.json: free-run figures, then the coupling test (chance in brackets)."""
    lines = [
        "| variant | loss, first to last 50 steps | pairs kept | median IoU | pairs kept, canvas mask | median IoU, "
        "canvas mask | part match rank (unrelated) | "
        "part follows a forced whole: part's rank at the real defect, forced (free) | whole follows a forced "
        "part: whole's match rank at the real defect, forced (free) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in (n for n in VARIANTS if n in summary["variants"]):
        r = summary["variants"][name]
        p, c = r["pairs"], r["coupling"]

        def f(v):
            return "-" if v is None else f"{v:.3f}"

        def share(v):
            return "-" if v is None else f"{100 * v:.0f} %"

        lines.append(
            f"| `{name}`: {r['what']} | {r['loss_first_last'][0]:.3f} to {r['loss_first_last'][1]:.3f} | "
            f"{100 * p['kept_share']:.0f} % | {f(p['median_iou_of_kept'])} | "
            f"{share(p.get('kept_share_canvas_mask'))} | {f(p.get('median_iou_of_kept_canvas_mask'))} | "
            f"{f(p['median_part_match_rank_of_kept'])} ({f(p['median_part_match_rank_unrelated'])}) | "
            f"{f(c['whole forced']['part_truth_rank'])} ({f(c['free']['part_truth_rank'])}) | "
            f"{f(c['part forced']['whole_match_rank'])} ({f(c['free']['whole_match_rank'])}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder: one subfolder per variant, summary.json")
    parser.add_argument(
        "--base-weights", help="folder with demo_base.safetensors/.json (default: the shipped)"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--type", default="pill/spot", help="CATEGORY/ANOMALY (default pill/spot)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--table", action="store_true", help="print the table of OUT/summary.json; run nothing"
    )
    args = parser.parse_args()
    if args.table:
        print(table(json.loads((Path(args.out) / "summary.json").read_text())), end="")
        return
    torch.set_num_threads(args.threads)
    global CATEGORY, ANOMALY
    CATEGORY, ANOMALY = args.type.split("/")
    from dualanodiff.synthetic import make_synthetic

    out = Path(args.out)
    data = make_synthetic(out / "work" / "data", seed=0, resolution=64, categories=[CATEGORY])
    base_dir = demo_base_folder(out / "work" / "base", args.base_weights)
    seg = load_segmenter(CATEGORY, args.base_weights, ANOMALY)
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"variants": {}}
    summary.update(
        stack=stack(),
        base_weights=args.base_weights or "shipped",
        what=__doc__.split("\n\n")[0],
        type=args.type,
    )
    for name in args.variants:
        what, changes = VARIANTS[name]
        settings = {**DEFAULTS, **changes}
        run = out / name
        run.mkdir(parents=True, exist_ok=True)
        earlier = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else {}
        started = time.process_time()
        adapter_dir, losses = train(settings, base_dir, data, run / "adapters")
        train_cpu = round(time.process_time() - started, 1)
        w = max(1, min(50, len(losses) // 4))
        result = {
            "what": what,
            "settings": settings,
            # A rerun finds the adapters trained (train_adapters resumes): keep the time of the run that trained.
            "train_cpu_s": earlier.get("train_cpu_s") if train_cpu < 5 and earlier else train_cpu,
            "loss_first_last": [round(float(np.mean(losses[:w])), 4), round(float(np.mean(losses[-w:])), 4)],
        }
        pipe = load_pipe(base_dir, adapter_dir)  # one load serves both: set_timesteps resets the sampler
        result["pairs"] = free_pairs(pipe, seg, settings, args.pairs, run)
        result["coupling"] = coupling(pipe, seg, data, settings, run)
        write_json_atomic(run / "result.json", result)
        summary["variants"][name] = result
        write_json_atomic(summary_file, summary)
        print(name, json.dumps({k: result[k] for k in ("loss_first_last", "pairs", "coupling")}), flush=True)


if __name__ == "__main__":
    main()
