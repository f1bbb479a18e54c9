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


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _number(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if isinstance(row.get(key), (int, float)) else "-"


def _status(row: dict) -> str:
    if row["status"] == "ok":
        return "ok"
    return f"{row['status']}: {row.get('error') or row.get('reason', '')}".replace("|", "/")


def gpu_check_tables(results: list[dict]) -> str:
    """The rows of `gpu_check.py`, one table per kind; rows that did not end ok say why."""
    by_kind = {
        kind: [r for r in results if r["kind"] == kind] for kind in ("generation", "reference", "training")
    }
    by_kind["max_batch"] = [r for r in results if r["kind"] == "max_batch"]
    parts = []
    header = ["BCM", "switch", "pairs/call", "s/pair", "pairs/s", "warm-up s", "peak MB", "status"]
    rows = [
        [_on_off(r["bcm"]), "torch.compile" if r.get("compile") else "-", str(r["pairs_per_call"])]
        + [_number(r, "s_per_pair", ".3f"), _number(r, "pairs_per_s", ".2f"), _number(r, "warmup_s", ".1f")]
        + [_number(r, "peak_memory_mb", ".0f"), _status(r)]
        for r in by_kind["generation"]
    ]
    parts.append(_table(header, rows))
    header = [
        "BCM",
        "ours s/step",
        "reference s/step (1 pair)",
        "speed-up per pair",
        "first-step max abs diff",
    ]
    header += ["mean abs diff / mean abs output", "status"]
    rows = [
        [_on_off(r["bcm"]), _number(r, "ours_s_per_step", ".3f") + f" ({r['pairs_per_call']} per call)"]
        + [_number(r, "reference_s_per_step", ".3f"), _number(r, "speedup_per_pair", ".2f")]
        + [_number(r, "first_step_max_abs_diff", ".1e")]
        + [
            f"{_number(r, 'first_step_mean_abs_diff', '.1e')} / {_number(r, 'first_step_output_mean_abs', '.2f')}"
        ]
        + [_status(r)]
        for r in by_kind["reference"]
    ]
    parts.append(_table(header, rows))
    header = ["BCM", "grad. checkpointing", "pairs/step", "s/step", "peak MB", "first loss", "status"]
    rows = [
        [_on_off(r["bcm"]), _on_off(r["gradient_checkpointing"]), str(r["batch_size"])]
        + [
            _number(r, "s_per_step", ".3f"),
            _number(r, "peak_memory_mb", ".0f"),
            _number(r, "first_loss", ".4f"),
        ]
        + [_status(r)]
        for r in by_kind["training"]
    ]
    parts.append(_table(header, rows))
    header = [
        "BCM",
        "memory cap GiB",
        "largest batch",
        "s/step at it",
        "peak MB at it",
        "batches tried",
        "status",
    ]
    rows = [
        [
            _on_off(r["bcm"]),
            f"{r['memory_cap_gib']:g}" + ("" if r.get("memory_cap_applied", True) else " (not applied)"),
        ]
        + [str(r.get("largest_batch", "-")) + (" (the limit)" if r.get("limit_reached") else "")]
        + [_number(r, "s_per_step", ".3f"), _number(r, "peak_memory_mb", ".0f")]
        + [", ".join(f"{t['batch_size']}{'' if t['fits'] else ' (OOM)'}" for t in r.get("tries", [])) or "-"]
        + [_status(r)]
        for r in by_kind["max_batch"]
    ]
    parts.append(_table(header, rows))
    return "\n\n".join(parts)


def adapter_dtype_table(results: list[dict]) -> str:
    header = ["sampling", "adapters saved as", "file MB", "against", "max abs diff image / part"]
    header += [
        "mean abs diff image / part",
        "per-pair max abs diff, min - max",
        "grey-mask IoU, min / median",
    ]
    rows = [
        [
            r["sampling_precision"],
            r["saved_dtype"],
            f"{r['file_mb']:.2f}",
            r["against"],
            f"{r['max_abs_diff_image']:.1e} / {r['max_abs_diff_part']:.1e}",
            f"{r['mean_abs_diff_image']:.1e} / {r['mean_abs_diff_part']:.1e}",
            f"{r['per_pair_max_abs_diff']['min']:.1e} - {r['per_pair_max_abs_diff']['max']:.1e}",
            f"{r['grey_mask_iou']['min']:.3f} / {r['grey_mask_iou']['median']:.3f}",
        ]
        for r in results
    ]
    return _table(header, rows)


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    results, meta = data["results"], data["meta"]
    if meta.get("script") == "gpu_check":
        stack = ", ".join(f"{k} {v}" for k, v in meta["stack"].items() if v)
        where = f"{meta['device']}, base {meta['base']}, {stack}"
        state = "" if meta.get("finished") else ", unfinished"
        return f"`{path.name}` ({where}, {meta['date']}{state})\n\n{gpu_check_tables(results)}\n"
    first = results[0] if results else {}
    if "saved_dtype" in first:
        where = f"{meta['device']}, torch {meta['torch']}, {meta['base']}, adapters {meta['adapters']}"
        return f"`{path.name}` ({where}, seeds {meta['seeds']}, {meta['date']})\n\n{adapter_dtype_table(results)}\n"
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
