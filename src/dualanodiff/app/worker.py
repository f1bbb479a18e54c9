"""The process that runs one background job of the app: ``python -m dualanodiff.app.worker WORK/jobs/<kind>``.

It reads ``job.json``, calls the library function the CLI calls for that work (`train_adapters`,
`generate_to_folder`, the localization study of `evaluation`), and records in ``status.json`` its stage and
how it ended, the way the CLI would say it: an `InputError` as its one-line message, Ctrl-C (the app's Stop)
as "stopped, everything kept". Its progress bars go to ``log.txt``, where the pages read them.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import read_json_object, write_json_atomic
from ..locking import STATE_DIR, output_lock
from .jobs import JOB_FILE, STATUS_FILE, now
from .workspace import Workspace


class StatusFile:
    """``status.json`` of a job, rewritten atomically at each change."""

    def __init__(self, job_dir: Path):
        self.path = job_dir / STATUS_FILE
        self.state: dict[str, Any] = {"state": "running", "stage": "starting", "started": now()}
        self._write()

    def stage(self, text: str) -> None:
        print(f"[{text}]", flush=True)
        self.state["stage"] = text
        self._write()

    def finish(self, state: str, message: str = "", result: dict[str, Any] | None = None) -> None:
        self.state.update(state=state, message=message, result=result, finished=now())
        self._write()

    def _write(self) -> None:
        write_json_atomic(self.path, self.state)


def discard_generated(folder: str | Path) -> None:
    """Empty a generated folder (its pairs, manifest and config) before a run with other settings."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    with output_lock(folder, "dualanodiff app (discard pairs)"):
        for child in folder.iterdir():
            if child.name == STATE_DIR:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def run_train(params: dict[str, Any], workspace: Workspace, status: StatusFile) -> dict[str, Any]:
    from ..training import TrainConfig, train_adapters

    config = TrainConfig.from_dict(params["config"])
    status.stage("training")
    return {"adapters": str(train_adapters(config)), "base": config.base}


def run_generate(params: dict[str, Any], workspace: Workspace, status: StatusFile) -> dict[str, Any]:
    from ..generate import GenerateConfig, generate_to_folder

    config = GenerateConfig(**params["config"])
    if params.get("discard"):
        status.stage("discarding the earlier pairs")
        discard_generated(config.out)
    status.stage("generating")
    return generate_to_folder(config, process_index=0, num_processes=1, show_progress=True)


def run_evaluate(params: dict[str, Any], workspace: Workspace, status: StatusFile) -> dict[str, Any]:
    from .evaluation import StudyRequest, run_study

    return run_study(StudyRequest.from_dict(params), stage=status.stage)


RUNNERS: dict[str, Callable[[dict[str, Any], Workspace, StatusFile], dict[str, Any]]] = {
    "train": run_train,
    "generate": run_generate,
    "evaluate": run_evaluate,
}

DONE_MESSAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "train": lambda r: f"adapters saved in {r['adapters']}",
    "generate": lambda r: f"{r['complete']} pairs: {r['kept']} kept, {r['rejected']} rejected",
    "evaluate": lambda r: f"report written to {r['report']}",
}


def stopped_message(kind: str, params: dict[str, Any]) -> str:
    """What a stop leaves, said truly: a training run resumes only from a checkpoint it has written."""
    if kind != "train":
        return "stopped; everything written so far is kept: start it again to resume"
    return f"stopped; {resume_note(params)}"


def resume_note(params: dict[str, Any]) -> str:
    """What starting a training job again does: resume from its last checkpoint, or begin at step 0 when it
    wrote none (a stop or a crash before the first checkpoint keeps nothing of the run)."""
    from ..training import TrainConfig
    from ..training.checkpoint import list_checkpoints

    config = TrainConfig.from_dict(params["config"])
    found = list_checkpoints(config.output_dir())
    if found:
        return f"start it again to resume from the checkpoint of step {found[-1][0]}"
    every = config.checkpoint_every
    when = f"every {every} steps" if every else "none were asked for"
    return f"no checkpoint was written yet ({when}): starting again begins at step 0"


def main(job_dir: str) -> int:
    from ..progress import quiet_libraries

    # Stop is SIGINT (`Jobs.stop`). A process started from a background job (`nohup dualanodiff app &`, a script's
    # `&`) inherits SIGINT ignored, and Python then leaves it ignored: the job would run on to its end. Take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    folder = Path(job_dir)
    job = read_json_object(folder / JOB_FILE)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("diffusers", "transformers", "accelerate", "peft", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    quiet_libraries()
    status = StatusFile(folder)
    try:
        if job.get("threads"):
            import torch

            torch.set_num_threads(int(job["threads"]))
        result = RUNNERS[job["kind"]](job["params"], Workspace(job["workspace"]), status)
    except InputError as err:
        print(f"error: {err}", flush=True)
        status.finish("failed", str(err))
        return 2
    except KeyboardInterrupt:
        print("stopped", flush=True)
        status.finish("stopped", stopped_message(job["kind"], job["params"]))
        return 130
    except BaseException as err:  # a bug or out of memory: say so in one line, the traceback goes to the log
        traceback.print_exc()
        status.finish("failed", f"{type(err).__name__}: {err} (the log has the details)")
        return 1
    status.finish("done", DONE_MESSAGES[job["kind"]](result), result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
