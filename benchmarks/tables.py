"""Markdown tables from benchmark JSON files, so the figures in the READMEs are the measured ones.

python benchmarks/tables.py benchmarks/results/generation-cpu.json benchmarks/results/training-cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _switch(row: dict) -> str:
    names = {
        "channels_last": "channels-last",
        "compile": "torch.compile",
        "vae_slicing": "VAE slicing",
        "vae_tiling": "VAE tiling",
    }
    return ", ".join(label for key, label in names.items() if row.get(key)) or "-"


def _memory(row: dict) -> str:
    """Peak GPU memory, or on the CPU how far the path's peak RSS rose above its RSS once the model was built."""

    def one(stats: dict) -> float:
        return stats["peak_memory_mb"] - stats.get("rss_before_run_mb", 0)

    return f"{one(row['ours']):.0f} / {one(row['reference']):.0f}"


def _memory_header(results: list[dict]) -> str:
    on_cpu = bool(results) and "rss_before_run_mb" in results[0]["ours"]
    return "RSS growth MB ours / ref" if on_cpu else "peak MB ours / ref"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def generation_table(results: list[dict]) -> str:
    header = ["BCM", "pairs/call", "precision", "switch", "ours s/pair", "reference s/pair", "speed-up"]
    header += ["same structure batched s/pair", "speed-up over it", "max abs diff", _memory_header(results)]
    rows = [
        [
            "on" if r["bcm"] else "off",
            str(r["batch_size"]),
            r["precision"],
            _switch(r),
            f"{r['ours']['s_per_pair']:.3f}",
            f"{r['reference']['s_per_pair']:.3f}",
            f"**{r['speedup']:.2f}**",
            f"{r['reference_batched']['s_per_pair']:.3f}",
            f"{r['speedup_over_batched_reference']:.2f}",
            f"{r['max_abs_diff']:.1e}",
            _memory(r),
        ]
        for r in results
    ]
    return _table(header, rows)


def training_table(results: list[dict]) -> str:
    header = ["BCM", "pairs/step", "precision", "grad. checkpointing", "ours s/step", "reference s/step"]
    header += ["speed-up", "first-loss diff", "grad-norm rel. diff", _memory_header(results)]
    rows = [
        [
            "on" if r["bcm"] else "off",
            str(r["batch_size"]),
            r["precision"],
            "on" if r["gradient_checkpointing"] else "off",
            f"{r['ours']['s_per_step']:.3f}",
            f"{r['reference']['s_per_step']:.3f}",
            f"**{r['speedup']:.2f}**",
            f"{r['max_abs_diff']:.1e}",
            f"{r['grad_norm_rel_diff']:.1e}",
            _memory(r),
        ]
        for r in results
    ]
    return _table(header, rows)


def sampler_table(results: list[dict]) -> str:
    header = ["sampler", "steps", "s/pair", "speed-up", "mean abs diff", "max abs diff"]
    rows = [
        [
            r["scheduler"] + (" (reference)" if r.get("reference") else ""),
            str(r["steps"]),
            f"{r['s_per_pair']:.3f}",
            f"{r.get('speedup', 1.0):.2f}",
            f"{r.get('mean_abs_diff_image', 0):.4f}",
            f"{r.get('max_abs_diff_image', 0):.3f}",
        ]
        for r in results
    ]
    return _table(header, rows)


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    results, meta = data["results"], data["meta"]
    first = results[0] if results else {}
    if "s_per_step" in first.get("ours", {}):
        table = training_table(results)
    elif "scheduler" in first and "ours" not in first:
        table = sampler_table(results)
    else:
        table = generation_table(results)
    where = (
        f"{meta['device']}, torch {meta['torch']}, {meta['cpu_threads']} CPU thread(s), base {meta['base']}"
    )
    return f"`{path.name}` ({where}, {meta['date']})\n\n{table}\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="+", type=Path, help="JSON files written by the benchmark scripts")
    for path in parser.parse_args().files:
        print(render(path))


if __name__ == "__main__":
    main()
