"""How long `dualanodiff demo` takes: the default run and ``--quick``, each in a fresh process and a fresh folder.

    python benchmarks/bench_demo.py                                    # both modes, 1 thread, one run each
    python benchmarks/bench_demo.py --modes quick --repeats 3 --out results/demo-quick.json

Per run: wall time (what a user waits), CPU time (user + system of the demo's process: what the run costs; with
one thread it equals the wall time on an idle machine, and it is the better guide on a busy one), the demo's own
stage times, and the load average before and after (a load above the core count means the wall time is
inflated by other work). The figures in README.md, docs/demo.md and `dualanodiff demo --help` come from this
file: `python scripts/miniature_tables.py STUDY.json --times results/demo-cpu.json` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dualanodiff.io import write_json_atomic

HERE = Path(__file__).resolve().parent


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_demo(mode: str, threads: int, folder: Path) -> dict:
    """Run the demo once in ``folder`` (fresh) in a child process; its wall and CPU time."""
    command = [
        sys.executable,
        "-m",
        "dualanodiff.cli",
        "demo",
        "--out",
        str(folder),
        "--threads",
        str(threads),
    ]
    if mode == "quick":
        command.append("--quick")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    load_before = os.getloadavg()[0]
    cpu0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"the demo failed ({mode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    results = json.loads((folder / "demo_results.json").read_text())
    return {
        "mode": mode,
        "threads": threads,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "stages_s": results["timings"],
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default="full,quick", help="comma list of full,quick")
    parser.add_argument("--threads", type=int, default=1, help="the demo's --threads (its default is 1)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "demo-cpu.json"))
    args = parser.parse_args()
    runs = []
    for mode in args.modes.split(","):
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(time_demo(mode, args.threads, Path(tmp) / "demo"))
                print(json.dumps(runs[-1]), flush=True)
    meta = {
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json_atomic(args.out, {"meta": meta, "results": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
