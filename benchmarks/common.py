"""What both benchmark scripts share: the model under test, timing, memory, and one fresh process per path.

Every measured path (ours, the reference, ...) runs in its own freshly spawned process, so its peak memory
is its own (a process's peak RSS only ever grows, so measuring paths one after another in one process would
report the largest of them all for every later one) and no path inherits another's caches or compiled code.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dualanodiff.io import write_json_atomic
from dualanodiff.model.base import build_base, load_base
from dualanodiff.model.dual_unet import AdapterConfig, dual_processors
from dualanodiff.pipeline import DualAnoDiffPipeline

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# The authors' structure, as their scripts run it (METHOD sections 2, 5 and 6; their inference scripts call the
# pipeline once per pair in a Python loop, in fp32, and their BCM UNet wrapper runs the background pass as a
# second forward): what every speed-up is measured against.
REFERENCE_STRUCTURE = (
    "authors' structure: per-branch attention loop with classic (non-SDPA) attention maths, generic SAIM "
    "attention, BCM background pass as a separate UNet forward, fp32"
)


def adapter_config(base: str, bcm: bool) -> AdapterConfig:
    """The adapters every benchmark measures: rank 32 (the paper's) on real shapes, 4 on the tiny base."""
    return AdapterConfig(rank=32 if base != "tiny" else 4, bcm=bcm)


def randomize_adapters(pipe: DualAnoDiffPipeline, seed: int = 0) -> None:
    """Non-zero LoRA up-projections and BCM gates, so LoRA, SAIM and BCM all contribute to every output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for proc in dual_processors(pipe.unet).values():
            for name, param in proc.named_parameters():
                if name.endswith(".up"):
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
                elif name == "bcm.alpha":
                    param.fill_(0.3)


def install_random_adapters(pipe: DualAnoDiffPipeline, base: str, bcm: bool, seed: int = 0) -> None:
    """Replace the installed adapters by the random ones `build_pipe` makes for ``seed`` (on the model's device)."""
    torch.manual_seed(seed)  # SAIM's linears use PyTorch's default initialisation (METHOD section 4)
    with torch.device(pipe.unet.device):
        pipe.configure_adapters(adapter_config(base, bcm))
    randomize_adapters(pipe, seed)


def build_pipe(
    base: str, bcm: bool, precision: str, device: str, seed: int = 0, resolution: int | None = None
) -> DualAnoDiffPipeline:
    """A pipeline with random, non-zero adapters, the same in every process on one device.

    The random bases are built on ``device`` directly (SD 1.5 on a GPU in about a second, no CPU copy).
    """
    if base in ("tiny", "sd15"):
        components = build_base(base, seed=seed, resolution=resolution, device=device)
    else:
        components = load_base(base)
    torch.manual_seed(seed)  # SAIM's linears use PyTorch's default initialisation (METHOD section 4)
    with torch.device(components.unet.device):
        pipe = DualAnoDiffPipeline.from_components(components, adapter_config(base, bcm))
    randomize_adapters(pipe, seed)
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
        "cpu_threads": args.threads or torch.get_num_threads(),
        "base": args.base,
        "date": time.strftime("%Y-%m-%d"),
        "reference": REFERENCE_STRUCTURE,
        "memory": "torch.cuda.max_memory_allocated" if cuda else "peak RSS of the path's own process",
    }


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def resident_mb() -> float | None:
    """Current resident memory of this process (Linux), to separate the model's memory from the run's."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return None
    return int(statm.read_text().split()[1]) * resource.getpagesize() / 2**20


def memory_stats(device: str, peak: float, rss_before: float | None) -> dict:
    """Peak memory; on the CPU also the RSS before the measured runs, since peak RSS includes imports and model."""
    stats = {"peak_memory_mb": peak}
    if not device.startswith("cuda") and rss_before is not None:
        stats["rss_before_run_mb"] = rss_before
    return stats


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


class Timing(NamedTuple):
    seconds: float  # median wall time of the measured runs
    peak_memory_mb: float  # over the measured runs (GPU); the process's peak RSS (CPU)
    first: Any  # the warm-up run's result
    last: Any  # the last measured run's result
    warmup_seconds: float  # the warm-up run alone: allocations, autotuning, `torch.compile`'s compilation


def timed(fn: Callable[[], Any], device: str, repeats: int) -> Timing:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up (timed apart), and peak memory."""
    cuda = device.startswith("cuda")
    start = time.perf_counter()
    first = fn()  # warm-up: allocations, autotuning, compilation
    if cuda:
        torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), peak_memory_mb(device), first, result, warmup)


def run_isolated(fn: Callable[..., dict], *args) -> dict:
    """``fn(*args)`` in a freshly spawned process (``fn`` must be a module-level function)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The options both scripts share; each adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="tiny", help="tiny | sd15 (random weights) | a diffusers folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    return parser


def write_results(args: argparse.Namespace, results: list[dict]) -> None:
    write_json_atomic(Path(args.out), {"meta": meta_of(args), "results": results})
    print(f"wrote {args.out}")
