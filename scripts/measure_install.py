"""What the README's two commands cost on a fresh venv: install time and size, the test command's time.

    python3 scripts/measure_install.py                  # install, sizes, test command (about 10 min on 2 cores)
    python3 scripts/measure_install.py --demo           # also time `dualanodiff demo` (about 4 min more)
    python3 scripts/measure_install.py --skip-tests     # install and sizes only
    python3 scripts/measure_install.py --readme         # print the README's install paragraph from the results

Each venv is new (`python3 -m venv`, in a temporary folder) and pip runs as for any user of the machine (its
pip configuration, recorded in the results). Besides the default install it tries PyTorch's CPU-only build
(`pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu`, then `pip install -e .`)
and records whether that index was reachable. Writes benchmarks/results/install.json with the stack and the
machine. Wall-clock times are only meaningful on an idle machine: the load average is recorded before and after.
Sizes are in GB of 10^9 bytes. Standard library only, so the system's python3 runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "install.json"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Distributions that only a GPU uses: NVIDIA's CUDA libraries, the CUDA bindings, and Triton (GPU kernels).
GPU_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
STACK = ["torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "numpy"]

# Run by the venv's own python: bytes on disk per installed distribution, and the stack's versions.
PROBE = """
import json, os, platform
from importlib.metadata import distributions, version
sizes = {}
for d in distributions():
    total = 0
    for f in d.files or []:
        try:
            total += os.path.getsize(d.locate_file(f))
        except OSError:
            pass
    sizes[d.metadata["Name"].lower().replace("_", "-")] = total
stack = {n: version(n) for n in NAMES}
import torch
stack["torch_build"] = torch.__version__
stack["torch_cuda"] = torch.version.cuda
stack["python"] = platform.python_version()
print(json.dumps({"sizes": sizes, "stack": stack}))
""".replace("NAMES", repr(STACK))


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    """Run a command to completion; return (seconds, its output). Stops the script with the output on failure."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"measure_install: `{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return seconds, proc.stdout


def folder_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def gb(n_bytes: float) -> float:
    return round(n_bytes / 1e9, 2)


def venv_env(venv: Path) -> dict:
    """The environment of a shell with the venv activated (and no model downloads)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    return env | {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"}


def describe_venv(venv: Path) -> dict:
    _, out = run([str(venv / "bin" / "python"), "-c", PROBE], ROOT, venv_env(venv))
    probe = json.loads(out.strip().splitlines()[-1])
    sizes = probe["sizes"]
    gpu_only = sum(size for name, size in sizes.items() if GPU_ONLY.match(name))
    return {
        "stack": probe["stack"],
        "venv_gb": gb(folder_bytes(venv)),
        "gpu_only_gb": gb(gpu_only),
        "nvidia_gb": gb(sum(s for n, s in sizes.items() if n.startswith("nvidia-"))),
        "torch_gb": gb(sizes.get("torch", 0)),
        "largest": {n: gb(s) for n, s in sorted(sizes.items(), key=lambda kv: -kv[1])[:8]},
    }


def new_venv(parent: Path, name: str) -> Path:
    venv = parent / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return venv


def measure_default(parent: Path, tests: bool, demo: bool) -> dict:
    """The README's commands in one fresh venv: `pip install -e .` (+ demo), then `pip install -e ".[test,ray,app]"` + tests."""
    venv = new_venv(parent, "default")
    env = venv_env(venv)
    result: dict = {
        "commands": [
            "pip install -e .",
            'pip install -e ".[test,ray,app]"',
            "HF_HUB_OFFLINE=1 python3 -m pytest",
        ]
    }
    result["install_s"], _ = run(["pip", "install", "-q", "-e", "."], ROOT, env)
    result |= describe_venv(venv)
    if demo:
        with tempfile.TemporaryDirectory() as cwd:
            result["demo_s"], _ = run(["dualanodiff", "demo"], Path(cwd), env)
    result["install_test_extras_s"], _ = run(["pip", "install", "-q", "-e", ".[test,ray,app]"], ROOT, env)
    if tests:
        result["tests_s"], out = run(["python3", "-m", "pytest"], ROOT, env)  # the README's test command
        result["tests_summary"] = out.strip().splitlines()[-1].strip("= ")
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


def index_reachable(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"{url}/torch/", timeout=20) as response:
            return response.status == 200, f"HTTP {response.status}"
    except OSError as e:
        return False, str(e)


def measure_cpu_torch(parent: Path) -> dict:
    """PyTorch's CPU-only build first, then the README's `pip install -e .` (which then keeps that torch)."""
    reachable, why = index_reachable(CPU_INDEX)
    commands = [f"pip install torch torchvision --index-url {CPU_INDEX}", "pip install -e ."]
    if not reachable:
        return {"commands": commands, "index_reachable": False, "why": why}
    venv = new_venv(parent, "cpu")
    env = venv_env(venv)
    torch_s, _ = run(["pip", "install", "-q", "torch", "torchvision", "--index-url", CPU_INDEX], ROOT, env)
    project_s, _ = run(["pip", "install", "-q", "-e", "."], ROOT, env)
    return {"commands": commands, "index_reachable": True, "install_s": round(torch_s + project_s, 1)} | (
        describe_venv(venv)
    )


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    mem = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    pip_config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], stdout=subprocess.PIPE, text=True, check=False
    ).stdout.splitlines()
    constraints = {}
    for line in pip_config:
        if ".constraint=" in line:
            path = Path(line.split("=", 1)[1].strip("'\""))
            constraints[str(path)] = [s for s in path.read_text().splitlines() if s and not s.startswith("#")]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem * 1024 / 1e9, 1),  # /proc/meminfo counts KiB
        "os": platform.platform(),
        "python": platform.python_version(),
        "pip_config": pip_config,
        "pip_constraints": constraints,
    }


def readme_paragraph(results: dict) -> str:
    """The README's install facts, in markdown (prose wrapped like the README's), from the results file."""
    d, m, cpu = results["default"], results["machine"], results["cpu_torch"]
    s = d["stack"]
    load = max(results["load_average_before"][0], results["load_average_after"][0])
    facts = (
        "**What the install costs.** "
        f"`pip install -e .` brings PyTorch's default Linux build, which carries CUDA: {d['nvidia_gb']:.1f} GB of "
        f"NVIDIA libraries ({d['gpu_only_gb']:.1f} GB with Triton) in a {d['venv_gb']:.1f} GB venv, also for the "
        f"CPU-only demo. It took {d['install_s'] / 60:.1f} min on a {m['cores']}-core {m['cpu']}"
    )
    if any("find-links" in line or "index-url" in line for line in m["pip_config"]):
        facts += (
            " (from this machine's local wheels and package mirrors, as its pip configuration in the results file"
            " says; downloading adds the time to fetch them)"
        )
    if "tests_s" in d:
        passed = re.search(r"\d+ passed", d["tests_summary"])
        facts += (
            f", and the test command {d['tests_s'] / 60:.1f} min ({passed.group() if passed else 'failed'})"
        )
    facts += (
        f", at a load average up to {load:.1f} (Python {s['python']}, torch {s['torch_build']}, "
        f"{results['date'][:10]}; `python3 scripts/measure_install.py`, benchmarks/results/install.json). "
        "A CPU-only torch leaves the CUDA libraries out: install it first, and `pip install -e .` keeps it:"
    )
    command = "```bash\n" + " && ".join(cpu["commands"]) + "\n```"
    if cpu["index_reachable"]:
        cpu_facts = (
            f"That venv is {cpu['venv_gb']:.1f} GB (torch {cpu['stack']['torch_build']}); the install took "
            f"{cpu['install_s'] / 60:.1f} min."
        )
    else:
        cpu_facts = (
            "Not measured: PyTorch's CPU index was not reachable from the machine that measured the above."
        )
    return "\n\n".join([textwrap.fill(facts, 115), command, textwrap.fill(cpu_facts, 115)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", action="store_true", help="also time `dualanodiff demo` after the install")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the test command")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default: {RESULTS})")
    parser.add_argument(
        "--readme", action="store_true", help="print the README paragraph from --out and stop"
    )
    args = parser.parse_args()
    if args.readme:
        print(readme_paragraph(json.loads(args.out.read_text())))
        return
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="dualanodiff-install-") as parent:
        results["default"] = measure_default(Path(parent), not args.skip_tests, args.demo)
        shutil.rmtree(Path(parent) / "default")  # room for the next venv
        results["cpu_torch"] = measure_cpu_torch(Path(parent))
    results["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps(results, indent=2))
    print("\n" + readme_paragraph(results))


if __name__ == "__main__":
    main()
