"""Training checkpoints: adapter weights, AdamW moments and the step, as tensors and JSON (no pickles).

A checkpoint is a folder ``checkpoints/step-<N>``, written under a temporary name and renamed when complete,
so a crash mid-write leaves no folder that looks finished. Randomness needs no saved state: every random draw
of step s derives from (seed, s) and the data order from (seed, epoch), so (weights, moments, step) is the
whole state of a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..io import atomic_path, write_json_atomic

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoint:
    step: int
    adapters: dict[str, torch.Tensor]
    optimizer: dict
    state: dict  # step, elapsed_s, identity, parameter names, grad-scaler state


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def optimizer_tensors(optimizer_state: dict) -> dict[str, torch.Tensor]:
    """Flatten ``optimizer.state_dict()["state"]`` to ``"<param index>.<name>"`` tensors."""
    out = {}
    for index, per_param in optimizer_state["state"].items():
        for key, value in per_param.items():
            out[f"{index}.{key}"] = _cpu(value if torch.is_tensor(value) else torch.tensor(value))
    return out


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": param_groups}


def save_checkpoint(
    run_dir: Path, step: int, adapters: dict[str, torch.Tensor], optimizer_state: dict, state: dict, keep: int
) -> Path:
    """Write ``run_dir/checkpoints/step-<step>`` atomically, then drop all but the newest ``keep``."""
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        save_file({k: _cpu(v) for k, v in adapters.items()}, str(tmp / "adapters.safetensors"))
        save_file(optimizer_tensors(optimizer_state), str(tmp / "optimizer.safetensors"))
        write_json_atomic(tmp / "state.json", {**state, "step": step})
        os.chmod(tmp, 0o755)
        if final.exists():  # the same step written by an earlier session: identical by construction
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old[1], ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temporary folders of a crashed write are ignored)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def load_checkpoint(path: Path, param_groups: list[dict]) -> Checkpoint:
    try:
        state = json.loads((path / "state.json").read_text())
        adapters = load_file(str(path / "adapters.safetensors"))
        optimizer = optimizer_state_from_tensors(load_file(str(path / "optimizer.safetensors")), param_groups)
    except Exception as err:  # a damaged checkpoint: say which, instead of a safetensors traceback
        raise InputError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); delete it to resume "
            "from the one before"
        ) from err
    return Checkpoint(step=int(state["step"]), adapters=adapters, optimizer=optimizer, state=state)


def remove_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)


# --- the loss log -------------------------------------------------------------------------------------------

LOSS_LOG = "loss_log.csv"
LOSS_HEADER = "step,epoch,loss,lr,elapsed_s"


def truncate_loss_log(run_dir: Path, last_step: int) -> None:
    """Keep the rows up to ``last_step`` (later ones were computed after the checkpoint and will be redone)."""
    path = run_dir / LOSS_LOG
    rows = [LOSS_HEADER]
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            parts = line.split(",")
            if len(parts) == 5 and parts[0].isdigit() and int(parts[0]) <= last_step:
                rows.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")


def read_loss_log(run_dir: Path) -> list[dict]:
    """The loss log as a list of {step, epoch, loss, lr, elapsed_s}."""
    path = Path(run_dir) / LOSS_LOG
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split(",")
        if len(parts) == 5:
            step, epoch, loss, lr, elapsed = parts
            out.append(
                {
                    "step": int(step),
                    "epoch": int(epoch),
                    "loss": float(loss),
                    "lr": float(lr),
                    "elapsed_s": float(elapsed),
                }
            )
    return out
