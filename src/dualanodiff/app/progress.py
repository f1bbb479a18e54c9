"""How far a job is, read from the files its library call writes (so a job started from the command line into
the same folders shows too), and the HTML the pages draw it with."""

from __future__ import annotations

import html
from pathlib import Path

from ..data.generated import manifest_records
from ..errors import InputError
from ..io import read_json_object
from ..training.checkpoint import read_loss_log
from .jobs import JobStatus


def training_progress(run_dir: str | Path) -> tuple[int, int | None, float | None]:
    """(steps done, total steps or None, last loss or None) of a training run folder."""
    run_dir = Path(run_dir)
    total = read_json_object(run_dir / "train_config.json").get("total_steps")
    log = read_loss_log(run_dir)
    return (log[-1]["step"] if log else 0), total, (log[-1]["loss"] if log else None)


def generation_progress(folder: str | Path, num_pairs: int) -> int:
    """Pairs of ``range(num_pairs)`` the manifest of a generated folder lists."""
    try:
        records = manifest_records(folder)
    except InputError:
        return 0
    return sum(1 for r in records.values() if isinstance(r.get("index"), int) and r["index"] < num_pairs)


_COLOURS = {"done": "#2e7d32", "failed": "#c62828", "lost": "#c62828", "stopped": "#ef6c00"}


def progress_html(done: float, total: float | None, text: str) -> str:
    """A progress bar (indeterminate when the total is unknown) with a line of text."""
    bar = f'<progress value="{done}" max="{total}"></progress>' if total else "<progress></progress>"
    return (
        '<div class="dad-progress" style="display:flex;gap:.75em;align-items:center">'
        f'<span style="flex:0 0 40%">{bar}</span><span>{html.escape(text)}</span></div>'
    )


def status_html(status: JobStatus, done: float = 0, total: float | None = None, detail: str = "") -> str:
    """One job's state for a page: a progress bar while it runs, how it ended otherwise."""
    if status.state == "none":
        return '<div class="dad-status">Not started yet.</div>'
    if status.running:
        what = "stopping" if status.state == "stopping" else (status.stage or "running")
        text = f"{what}: {detail}" if detail else what
        line = html.escape(status.last_line)
        return (
            progress_html(done, total, text)
            + f'<div class="dad-line" style="font-family:monospace;font-size:.85em">{line}</div>'
        )
    colour = _COLOURS.get(status.state, "inherit")
    message = status.message or {"done": "finished"}.get(status.state, status.state)
    when = f" ({status.finished})" if status.finished else ""
    return (
        f'<div class="dad-status dad-{status.state}" style="color:{colour}">'
        f"<b>{html.escape(status.state)}</b>{html.escape(when)}: {html.escape(message)}"
        + (f" {html.escape(detail)}" if detail else "")
        + "</div>"
    )
