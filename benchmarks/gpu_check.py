"""One GPU check that fits a short GPU loan: SD 1.5-shaped speed and memory, one process, at most 8 minutes.

The model is SD 1.5 with random weights (speed and memory do not depend on the values), built straight on the
GPU in a few seconds (no CPU initialisation, no download), with rank-32 per-branch LoRA, SAIM and (where a row
says so) BCM adapters, all non-zero. Rows, in priority order, each written to the JSON file as soon as it ends:

1. ``generation``: ours, bf16, 8 pairs per call, 50 PNDM steps, guidance 2.5: s/pair and peak memory, BCM off/on.
2. ``reference``: the authors' structure (one pair per call, each branch its own classic attention call, BCM as a
   second forward, fp32) for a few steps of the same 50-step schedule on the same seeds and weights: its s/step
   per pair against ours, and the max abs difference of the first step's guided noise prediction.
3. ``training``: a full optimizer step at batch 4 (bf16 base, fp32 adapters under autocast, AdamW), BCM off/on,
   gradient checkpointing off/on: s/step and peak memory.
4. ``max_batch``: the largest training batch that fits a 24 GB card with gradient checkpointing (the allocator
   capped with ``torch.cuda.set_per_process_memory_fraction``; doubling, then bisection, OOMs caught).
5. ``generation`` with ``torch.compile``, if time remains (compilation time recorded apart as ``warmup_s``).

A hard wall-clock budget (``--budget-s``, counted from the process start) is checked between rows and interrupts
a row that runs past it; a row that fails records its error and the next one runs (`check_runner`).

    python benchmarks/gpu_check.py          # CUDA GPU: at most 7.5 min; writes benchmarks/results/gpu-check.json
    python benchmarks/gpu_check.py --smoke      # the same code on the CPU, tiny base, 1-2 minutes
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from bench_training import make_step
from check_runner import Budget, ResultsFile, Row, largest_fitting, run_rows
from common import PRECISIONS, build_pipe, install_random_adapters, peak_memory_mb, timed
from diffusers.utils import logging as diffusers_logging

from dualanodiff.model.dual_unet import adapter_state_dict
from dualanodiff.model.reference import use_loop_reference

RESULTS = Path(__file__).resolve().parent / "results"

# The full check (a CUDA GPU) and the smoke run (the same code on the CPU at toy sizes). Options given win.
PROFILES: dict[str, dict] = {
    "full": dict(
        base="sd15",
        device="cuda",
        resolution=None,  # the base's own: 512 px for SD 1.5
        precision="bf16",
        pairs=8,
        steps=50,
        repeats=2,
        reference_pairs=2,
        reference_steps=4,
        train_batch=4,
        train_repeats=5,
        max_batch=64,
        budget_s=450.0,  # 7.5 minutes, start-up included
        compile_backend="inductor",
        threads=None,
        out=RESULTS / "gpu-check.json",
    ),
    "smoke": dict(
        base="tiny",
        device="cpu",
        resolution=64,
        precision="bf16",
        pairs=2,
        steps=3,
        repeats=1,
        reference_pairs=2,
        reference_steps=2,
        train_batch=2,
        train_repeats=1,
        max_batch=2,  # one try: the search itself is tested on its own
        budget_s=900.0,  # a rehearsal on a possibly busy CPU: only a guard against hanging
        compile_backend="eager",  # dynamo traces the same graphs; inductor's CPU code generation takes minutes
        threads=1,
        out=Path(tempfile.gettempdir()) / "gpu-check-smoke.json",  # a rehearsal: nothing to keep
    ),
}


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


class DenoisingProbe:
    """Watches a pipeline's denoising loop through its scheduler, leaving the pipeline untouched.

    Per pipeline call: the first step's model output (the guided noise prediction, on the CPU) and the end time
    of every step (after a CUDA sync), so that the time between steps is one loop iteration, without the text
    encoder and the VAE. ``max_steps``: each call runs only the first steps of its schedule (the 50-step
    timesteps, cut), so the authors' slow structure is timed on a few steps of the very schedule ours runs.
    """

    def __init__(self, scheduler, cuda: bool, max_steps: int | None = None):
        self.scheduler, self.cuda, self.max_steps = scheduler, cuda, max_steps
        self.calls: list[dict] = []

    def __enter__(self) -> DenoisingProbe:
        sched = self.scheduler
        set_timesteps, step = sched.set_timesteps, sched.step

        def probed_set_timesteps(*args, **kwargs):
            set_timesteps(*args, **kwargs)
            if self.max_steps:
                sched.timesteps = sched.timesteps[: self.max_steps]
            self.calls.append({"first_output": None, "ends": []})

        def probed_step(model_output, *args, **kwargs):
            out = step(model_output, *args, **kwargs)
            if self.cuda:
                torch.cuda.synchronize()
            call = self.calls[-1]
            if call["first_output"] is None:
                call["first_output"] = model_output.detach().float().cpu()
            call["ends"].append(time.perf_counter())
            return out

        sched.set_timesteps, sched.step = probed_set_timesteps, probed_step
        return self

    def __exit__(self, *exc) -> None:
        del self.scheduler.set_timesteps, self.scheduler.step  # the class's methods again

    def first_outputs(self) -> torch.Tensor:
        return torch.cat([call["first_output"] for call in self.calls])

    def step_seconds(self) -> float:
        """Median time between successive steps, over all calls."""
        gaps = [b - a for call in self.calls for a, b in zip(call["ends"], call["ends"][1:])]
        return float(torch.tensor(gaps).median())


class GpuCheck:
    """The model (built once), and one method per kind of row; each fills the record it is given."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cuda = args.device.startswith("cuda")
        self.dtype = PRECISIONS[args.precision]
        self.pipe = None

    # ---- state shared by the rows -----------------------------------------------------------------------
    def build(self, record: dict) -> None:
        """SD 1.5 shapes with random weights, built on the device, with BCM adapters to count every parameter."""
        a = self.args
        start = time.perf_counter()
        self.pipe = build_pipe(a.base, True, a.precision, a.device, seed=a.seed, resolution=a.resolution)
        self._sync()
        record["build_s"] = time.perf_counter() - start
        record["resolution"] = self.resolution
        record["trainable_parameters"] = self._parameter_counts()
        record["memory_mb"] = self._memory_now()

    @property
    def resolution(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def _parameter_counts(self) -> dict[str, int]:
        groups = {"lora": "_lora.", "saim": ".saim.", "bcm": ".bcm.", "text_lora": "text_encoder."}
        counts = dict.fromkeys(groups, 0)
        for key, value in adapter_state_dict(self.pipe.unet, self.pipe.text_encoder).items():
            group = next(g for g, marker in reversed(groups.items()) if marker in key)
            counts[group] += value.numel()
        return counts | {"total": sum(counts.values())}

    def _require_model(self) -> None:
        if self.pipe is None:
            raise RuntimeError("no model: the build row failed")

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _memory_now(self) -> float:
        return torch.cuda.memory_allocated() / 2**20 if self.cuda else peak_memory_mb("cpu")

    def _start_row(self, bcm: bool, train: bool = False) -> None:
        """Fresh random adapters (the same for a seed), the base in the check's precision, memory peak reset."""
        self._require_model()
        if self.pipe.unet.dtype != self.dtype:
            self.pipe.to(self.dtype)
        install_random_adapters(self.pipe, self.args.base, bcm, seed=self.args.seed)
        self.pipe.unet.train(train)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def release(self) -> None:
        """Between rows and between tries: drop what a row left behind (gradients, cached blocks)."""
        if self.pipe is not None:
            for p in self.pipe.adapter_parameters():
                p.grad = None
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def _backgrounds(self, pairs: int) -> torch.Tensor:
        res = self.resolution
        return torch.rand(pairs, 3, res, res, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def _generate(self, first_seed: int, pairs: int, bcm: bool, reference: bool = False):
        seeds = list(range(first_seed, first_seed + pairs))
        backgrounds = self._backgrounds(first_seed + pairs)[first_seed:] if bcm else None
        return self.pipe(
            num_pairs=pairs,
            num_inference_steps=self.args.steps,
            guidance_scale=self.args.guidance,
            seeds=seeds,
            backgrounds=backgrounds,
            bcm_mode="two-pass" if reference else "folded",
            output_type="pt",
        )

    # ---- rows -------------------------------------------------------------------------------------------
    def generation(self, record: dict, bcm: bool, compile: bool = False) -> None:
        """Ours: ``pairs`` pairs per call, the full schedule; with ``compile`` the first call compiles."""
        a = self.args
        self._start_row(bcm)
        try:
            if compile:
                torch._dynamo.reset()
                self.pipe.unet.forward = torch.compile(self.pipe.unet.forward, backend=a.compile_backend)
            timing = timed(lambda: self._generate(0, a.pairs, bcm), a.device, a.repeats)
        finally:
            if compile:
                del self.pipe.unet.forward  # the class's forward again
                torch._dynamo.reset()
        images, parts = timing.last.images, timing.last.parts
        record |= {"s_per_pair": timing.seconds / a.pairs, "pairs_per_s": a.pairs / timing.seconds}
        record |= {"warmup_s": timing.warmup_seconds, "peak_memory_mb": timing.peak_memory_mb}
        record["outputs_finite"] = bool(torch.isfinite(images).all() and torch.isfinite(parts).all())

    def reference(self, record: dict, bcm: bool) -> None:
        """The authors' structure against ours on the first ``reference_steps`` steps of the same schedule."""
        a = self.args
        self._start_row(bcm)
        pipe, pairs, ref_pairs = self.pipe, a.pairs, min(a.reference_pairs, a.pairs)
        self._generate(0, pairs, bcm)  # warm-up of ours at these shapes (and a check that it runs)
        with DenoisingProbe(pipe.scheduler, self.cuda, a.reference_steps) as ours:
            self._generate(0, pairs, bcm)
        record["ours_s_per_step"] = ours.step_seconds()
        record["ours_peak_memory_mb"] = peak_memory_mb(a.device)
        pipe.to(torch.float32)  # the same weights (bf16 values are exact in fp32)
        originals = use_loop_reference(pipe.unet, sdpa=False)
        try:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            self._generate(0, 1, bcm, reference=True)  # warm-up of the fp32 kernels
            with DenoisingProbe(pipe.scheduler, self.cuda, a.reference_steps) as ref:
                for seed in range(ref_pairs):
                    self._generate(seed, 1, bcm, reference=True)
            record["reference_peak_memory_mb"] = peak_memory_mb(a.device)
        finally:
            pipe.unet.set_attn_processor(originals)
            pipe.to(self.dtype)
        record["reference_s_per_step"] = ref.step_seconds()
        # Per pair: ours advances `pairs` pairs per step, the reference one.
        record["speedup_per_pair"] = record["reference_s_per_step"] / (record["ours_s_per_step"] / pairs)
        ours_first, ref_first = ours.first_outputs()[: 2 * ref_pairs], ref.first_outputs()
        diff = (ours_first - ref_first).abs()
        record["first_step_max_abs_diff"] = diff.max().item()
        record["first_step_mean_abs_diff"] = diff.mean().item()
        record["first_step_output_mean_abs"] = ref_first.abs().mean().item()  # the differences' scale

    def training(self, record: dict, bcm: bool, checkpointing: bool) -> None:
        """One full optimizer step at ``train_batch`` pairs: VAE encode, text LoRA, UNet forward and backward,
        clipping, AdamW (bf16 base, fp32 trainable weights under autocast, as `dualanodiff train` does)."""
        a = self.args
        self._start_row(bcm, train=True)
        if checkpointing:
            self.pipe.unet.enable_gradient_checkpointing()
        try:
            step = make_step(self.pipe, a.train_batch, bcm, a.precision, a.device, two_pass=False)
            seconds, peak, (loss, grad_norm), _, warmup = timed(step, a.device, a.train_repeats)
        finally:
            self.pipe.unet.disable_gradient_checkpointing()
        record |= {"s_per_step": seconds, "steps_per_s": 1 / seconds, "warmup_s": warmup}
        record |= {"peak_memory_mb": peak, "first_loss": loss, "first_grad_norm": grad_norm}
        record["finite"] = _finite(loss, grad_norm)

    def max_batch(self, record: dict, bcm: bool) -> None:
        """The largest batch whose training steps (two: the second one with AdamW's moments) fit the cap."""
        a = self.args
        self._start_row(bcm, train=True)
        cap = a.memory_cap_gib * 2**30
        if self.cuda:
            self.release()  # cached blocks count against the cap
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        record["memory_cap_applied"] = self.cuda  # the CPU has no allocator cap: the search only runs
        self.pipe.unet.enable_gradient_checkpointing()

        def try_batch(batch: int) -> dict:
            step = make_step(self.pipe, batch, bcm, a.precision, a.device, two_pass=False)
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            step()
            self._sync()
            start = time.perf_counter()
            step()
            self._sync()
            return {"s_per_step": time.perf_counter() - start, "peak_memory_mb": peak_memory_mb(a.device)}

        tries: list[dict] = []
        record["tries"] = tries  # filled as the search goes: an interrupted search keeps its tries
        try:
            largest = largest_fitting(try_batch, a.train_batch, a.max_batch, tries, self.release)
        finally:
            self.pipe.unet.disable_gradient_checkpointing()
            if self.cuda:
                torch.cuda.set_per_process_memory_fraction(1.0)
        record["largest_batch"] = largest
        record["limit_reached"] = largest >= a.max_batch
        fitted = [t for t in tries if t["fits"] and t["batch_size"] == largest]
        if fitted:
            record |= {key: fitted[-1][key] for key in ("s_per_step", "peak_memory_mb")}


ROW_GROUPS = ("generation", "reference", "training", "max_batch", "compile")  # in priority order


def rows_of(check: GpuCheck, args: argparse.Namespace) -> list[Row]:
    """Every row, in priority order; those switched off by ``--only`` or ``--no-compile`` are skipped."""
    rows = [Row("build", "build", check.build, {"base": args.base})]

    def add(group: str, name: str, kind: str, run, settings: dict) -> None:
        skip = None
        if group not in args.only:
            skip = f"not selected (--only {' '.join(args.only)})"
        elif group == "compile" and not args.compile:
            skip = "switched off (--no-compile)"
        rows.append(Row(name, kind, run, settings, skip=skip))

    gen = {"precision": args.precision, "pairs_per_call": args.pairs, "steps": args.steps}
    gen |= {"guidance": args.guidance, "scheduler": "pndm", "resolution_px": args.resolution}
    train = {"precision": args.precision, "batch_size": args.train_batch, "resolution_px": args.resolution}
    ref = {"reference_pairs": args.reference_pairs, "steps_run": args.reference_steps}
    cap = {"gradient_checkpointing": True, "memory_cap_gib": args.memory_cap_gib, "max_batch": args.max_batch}
    for bcm in (False, True):
        on = f"BCM {'on' if bcm else 'off'}"
        add(
            "generation",
            f"generation, {on}",
            "generation",
            partial(check.generation, bcm=bcm),
            gen | {"bcm": bcm},
        )
        add(
            "reference",
            f"reference, {on}",
            "reference",
            partial(check.reference, bcm=bcm),
            gen | ref | {"bcm": bcm},
        )
    for bcm in (False, True):
        for ckpt in (False, True):
            name = f"training, BCM {'on' if bcm else 'off'}, checkpointing {'on' if ckpt else 'off'}"
            settings = train | {"bcm": bcm, "gradient_checkpointing": ckpt}
            add("training", name, "training", partial(check.training, bcm=bcm, checkpointing=ckpt), settings)
    for bcm in (False, True):
        name = f"largest training batch in {args.memory_cap_gib:g} GiB, BCM {'on' if bcm else 'off'}"
        add("max_batch", name, "max_batch", partial(check.max_batch, bcm=bcm), train | cap | {"bcm": bcm})
    for bcm in (False, True):
        name = f"generation, BCM {'on' if bcm else 'off'}, torch.compile"
        settings = gen | {"bcm": bcm, "compile": True, "compile_backend": args.compile_backend}
        add("compile", name, "generation", partial(check.generation, bcm=bcm, compile=True), settings)
    return rows


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except Exception:
        return None


def header(args: argparse.Namespace, budget: Budget) -> dict:
    """Where, with what, and how: the device, the software stack, the settings."""
    cuda = args.device.startswith("cuda")
    device = f"cpu ({platform.processor() or platform.machine()})"
    gpu = {}
    if cuda:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        device = torch.cuda.get_device_name()
        gpu = {
            "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    stack = {"python": platform.python_version(), "torch": torch.__version__}
    stack |= {name: _version(name) for name in ("diffusers", "transformers", "peft", "accelerate", "numpy")}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {
        "script": "gpu_check",
        "device": device,
        "gpu": gpu,
        "stack": stack,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "base": args.base,
        "date": time.strftime("%Y-%m-%d"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(budget.started)),
        "git_commit": _git_commit(),
        "argv": sys.argv[1:],
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,  # others' work skews times
        "settings": settings,
        "memory": "torch.cuda.max_memory_allocated per row"
        if cuda
        else "peak RSS of the whole process (it only grows: on the CPU, not per row)",
        "finished": False,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU, tiny base, toy sizes")
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON file (default benchmarks/results/gpu-check.json; with --smoke $TMPDIR/gpu-check-smoke.json)",
    )
    parser.add_argument("--base", choices=["sd15", "tiny"], help="random-weight base (default sd15)")
    parser.add_argument("--device", help="default cuda (cpu with --smoke)")
    parser.add_argument("--resolution", type=int, help="image size in px (default: the base's, 512)")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="ours (default bf16)")
    parser.add_argument("--pairs", type=int, help="pairs per generation call (default 8)")
    parser.add_argument("--steps", type=int, help="PNDM steps (default 50)")
    parser.add_argument("--guidance", type=float, default=2.5, help="guidance scale (default 2.5)")
    parser.add_argument("--repeats", type=int, help="timed generation calls after the warm-up (default 2)")
    parser.add_argument("--reference-pairs", type=int, help="pairs the reference makes (default 2)")
    parser.add_argument("--reference-steps", type=int, help="steps of the schedule it runs (default 4)")
    parser.add_argument("--train-batch", type=int, help="pairs per training step (default 4)")
    parser.add_argument(
        "--train-repeats", type=int, help="timed training steps after the warm-up (default 5)"
    )
    parser.add_argument(
        "--memory-cap-gib",
        type=float,
        default=23.0,
        help="allocator cap of the largest-batch search (default 23: a 24 GB card less the CUDA context)",
    )
    parser.add_argument("--max-batch", type=int, help="largest batch the search tries (default 64)")
    parser.add_argument(
        "--budget-s", type=float, help="wall-clock budget from the process start (default 450: 7.5 min)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=ROW_GROUPS,
        default=list(ROW_GROUPS),
        help="run only these groups of rows (default all; the model is built in any case)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile rows, if time remains",
    )
    parser.add_argument(
        "--compile-backend", help="torch.compile backend (default inductor; eager with --smoke)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default torch's; 1 with --smoke)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and adapters (default 0)")
    args = parser.parse_args(argv)
    for key, value in PROFILES["smoke" if args.smoke else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.resolution = args.resolution or (512 if args.base == "sd15" else 64)
    for name in ("pairs", "steps", "repeats", "reference_pairs", "train_batch", "max_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 2 <= args.reference_steps <= args.steps:
        parser.error("--reference-steps must be at least 2 (a time between steps) and at most --steps")
    if args.resolution % 8:
        parser.error(f"--resolution must be a multiple of 8, got {args.resolution}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible (use --smoke to rehearse on the CPU)")
    return args


def _summary(record: dict) -> str:
    figures = [
        f"{key}={record[key]:.4g}" if isinstance(record[key], float) else f"{key}={record[key]}"
        for key in (
            "s_per_pair",
            "s_per_step",
            "warmup_s",
            "peak_memory_mb",
            "speedup_per_pair",
            "first_step_max_abs_diff",
            "largest_batch",
            "build_s",
        )
        if key in record
    ]
    why = record.get("error") or record.get("reason") or ""
    return f"[{record['elapsed_s']:6.1f} s] {record['name']}: {record['status']} {' '.join(figures)} {why}".rstrip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    diffusers_logging.set_verbosity_error()  # not a warning per dtype switch of the shared model
    if args.threads:
        torch.set_num_threads(args.threads)
    results = ResultsFile(args.out, header(args, budget))
    print(
        f"gpu_check: {results.meta['device']}, budget {args.budget_s:.0f} s, writing {args.out}", flush=True
    )
    check = GpuCheck(args)
    run_rows(
        rows_of(check, args),
        budget,
        results,
        after_row=check.release,
        report=lambda r: print(_summary(r), flush=True),
    )
    results.meta |= {"finished": True, "elapsed_s": budget.elapsed()}
    if hasattr(os, "getloadavg"):
        results.meta["load_average_at_end"] = os.getloadavg()
    results.write()
    from tables import render

    print(render(args.out))
    return 1 if any(row["status"] == "error" for row in results.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
