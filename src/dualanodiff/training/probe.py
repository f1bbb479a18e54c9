"""The probe loss: the epsilon MSE on one fixed set of (few-shot pair, timestep, noise), every N steps.

Why: the training loss draws a new timestep and new noise for every pair at every step, and how hard a
timestep is differs far more than what the adapters learn over a run, so on a few-shot set the logged loss is
flat noise even while the adapters learn (docs/demo.md). Holding the draws fixed takes that noise out: the
probe changes only because the weights do, and falls as they fit the few-shot pairs. It is a training-set
loss (there is nothing to hold out of five images), so it shows learning, not generalisation.

The probe set: every few-shot pair, unflipped, at each of `PROBE_TIMESTEP_FRACTIONS` of the schedule, with
VAE samples, noise (and, with BCM, background rows) drawn once from the run's seed. The log,
``probe_log.csv``, holds the step, the mean over all rows, and the means over the whole-image rows and the
part rows; step 0 is the base before any training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import atomic_path

PROBE_LOG = "probe_log.csv"
PROBE_HEADER = "step,loss,global_loss,part_loss"
# Spread over the schedule so that no single noise level dominates; each pair is probed at all of them.
PROBE_TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass
class ProbeSet:
    """The fixed inputs of the probe, as pairs (rows interleaved [g0, p0, g1, p1, ...] like a training batch):
    ``latents`` and ``noise`` (2P, C, h, w), ``timesteps`` (P,), and with BCM ``background`` and
    ``background_noise`` (P, C, h, w)."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    background: torch.Tensor | None = None
    background_noise: torch.Tensor | None = None

    @property
    def pairs(self) -> int:
        return int(self.timesteps.shape[0])


def probe_timesteps(num_train_timesteps: int) -> list[int]:
    """The probe's timesteps for a schedule of ``num_train_timesteps``."""
    return [min(num_train_timesteps - 1, round(f * num_train_timesteps)) for f in PROBE_TIMESTEP_FRACTIONS]


def build_probe_set(
    latents: torch.Tensor,
    num_train_timesteps: int,
    generator: torch.Generator,
    background: torch.Tensor | None = None,
) -> ProbeSet:
    """The probe set of ``latents`` (2N, C, h, w), the few-shot pairs' rows interleaved: every pair at every
    probe timestep (pair-major: pair 0 at all timesteps, then pair 1, ...), with noise from ``generator``."""
    steps = probe_timesteps(num_train_timesteps)
    n, k = latents.shape[0] // 2, len(steps)
    # (2N, ...) -> (N, 2, ...) -> each pair repeated k times -> (2Nk, ...), rows still [g, p] per pair.
    paired = latents.unflatten(0, (n, 2)).repeat_interleave(k, dim=0).flatten(0, 1)
    timesteps = torch.tensor(steps, dtype=torch.long).repeat(n)
    noise = torch.randn(paired.shape, generator=generator, dtype=paired.dtype)
    bg = bg_noise = None
    if background is not None:
        bg = background.repeat_interleave(k, dim=0)
        bg_noise = torch.randn(bg.shape, generator=generator, dtype=bg.dtype)
    return ProbeSet(paired, noise, timesteps, bg, bg_noise)


def row_losses(pred: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
    """The probe's figures from the predicted and true noise of its rows (interleaved [g, p, ...])."""
    per_row = (pred.float() - noise.float()).pow(2).flatten(1).mean(1)
    return {
        "loss": float(per_row.mean()),
        "global_loss": float(per_row[0::2].mean()),
        "part_loss": float(per_row[1::2].mean()),
    }


def _row(step: int, figures: dict[str, float]) -> str:
    """One line of the log (no newline), in `PROBE_HEADER`'s order."""
    return f"{step},{figures['loss']:.6g},{figures['global_loss']:.6g},{figures['part_loss']:.6g}"


def append_probe_row(run_dir: Path, step: int, figures: dict[str, float]) -> None:
    """Add one probe row (the header first, when the log is new)."""
    path = Path(run_dir) / PROBE_LOG
    new = not path.is_file()
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(PROBE_HEADER + "\n")
        f.write(_row(step, figures) + "\n")


def read_probe_log(run_dir: Path) -> list[dict]:
    """The probe log as a list of {step, loss, global_loss, part_loss} ([] when there is none)."""
    path = Path(run_dir) / PROBE_LOG
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split(",")
        if len(parts) == 4 and parts[0].isdigit():
            out.append(
                {"step": int(parts[0]), **dict(zip(PROBE_HEADER.split(",")[1:], map(float, parts[1:])))}
            )
    return out


def truncate_probe_log(run_dir: Path, last_step: int) -> None:
    """Keep the rows up to ``last_step`` (a resumed run probes again from there); no log: nothing to do."""
    path = Path(run_dir) / PROBE_LOG
    if not path.is_file():
        return
    rows = [r for r in read_probe_log(run_dir) if r["step"] <= last_step]
    lines = [PROBE_HEADER] + [_row(r["step"], r) for r in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def probe_summary(rows: list[dict]) -> dict:
    """First and last probe loss and the fall between them, in percent of the first ({} without rows)."""
    if len(rows) < 2:
        return {}
    first, last = rows[0], rows[-1]
    return {
        "steps": [first["step"], last["step"]],
        "first": round(first["loss"], 5),
        "last": round(last["loss"], 5),
        "fall_pct": round(100.0 * (1 - last["loss"] / first["loss"]), 1) if first["loss"] else None,
        "global_first": round(first["global_loss"], 5),
        "global_last": round(last["global_loss"], 5),
        "part_first": round(first["part_loss"], 5),
        "part_last": round(last["part_loss"], 5),
    }
