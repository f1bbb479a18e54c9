"""`dualanodiff app`: a web app (Gradio, the ``[app]`` extra) over the library, for people who would rather
not use a terminal: data with masks (uploaded or painted), training, generation with review by hand,
downloads in the generated-data layout and for anomalib, and the quick localization study.

Modules: `workspace` (the working folder's layout, safe names), `dataset` (uploads and masks), `jobs` and
`worker` (background processes with their state on disk), `handlers` (every action, without Gradio), `fields`
(the Train, Generate and Evaluate pages' settings, by name), `review` (keep/reject by hand, zips), `evaluation`
(the study and its report), `timings` (how long a job takes: measured costs, the time left), `gallery`,
`progress`, and `ui` (the page).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serving_note(host: str, port: int) -> str:
    """Where the app listens, said plainly: this machine only, or every machine that can reach it."""
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if host in LOOPBACK:
        return f"Serving on {url}, on this machine only (127.0.0.1); `--host 0.0.0.0` serves other machines."
    return (
        f"Serving on {host}:{port} ({url} here): every machine that can reach this one can use the app, and it "
        "has no login. Use it on a network you trust."
    )


def launch(
    workspace: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 7860,
    threads: int | None = None,
    block: bool = True,
):
    """Build the app on ``workspace`` and serve it; returns the Gradio app (``block=False``: at once).

    Where it listens (`serving_note`) and the working folder are logged (INFO) before it serves: the command
    line shows them on stderr, as it shows every command's progress."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline tool
    from .handlers import AppHandlers
    from .ui import CSS, build_app

    handlers = AppHandlers(workspace, threads=threads)
    note = serving_note(host, port)
    app = build_app(handlers, banner=note)
    log.info("dualanodiff app: %s\nworking folder: %s", note, handlers.workspace.folder)
    app.queue(default_concurrency_limit=4)
    app.launch(
        server_name=host,
        server_port=port,
        allowed_paths=[str(handlers.workspace.folder)],
        prevent_thread_lock=not block,
        quiet=True,
        show_error=True,
        css=CSS,
    )
    return app
