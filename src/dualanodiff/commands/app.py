"""`dualanodiff app`: the web app (Gradio) over the same library functions as the other commands."""

from __future__ import annotations

from ..checks import int_arg

_DESCRIPTION = """\
Start the web app: upload a few defect images with their masks (or paint the masks in the browser, or point at
an MVTec AD folder), train the adapters (the built-in demo base works offline on a laptop; a Stable Diffusion 1.5
folder or hub id on a GPU machine), generate pairs and look at them (whole image, anomaly part, mask) keeping
or rejecting them by hand, download the dataset as a zip or as an anomalib export, and run a quick
localization study with its HTML report. Needs the [app] extra: pip install "dualanodiff[app]".

Everything lands in --workspace in the layouts the command line reads (adapters for `dualanodiff generate`,
generated folders for `evaluate` and `export`). Training, generation and the study run in background
processes whose state is on disk: a page reload or a second tab shows them where they are, and two tabs never
write one folder at once.

The app listens on 127.0.0.1 (this machine only) unless --host says otherwise. It has no login: serve it to
other machines (--host 0.0.0.0) only on a network you trust.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app",
        help="start the web app: upload defects, paint masks, train, generate, review, download, evaluate",
        description=_DESCRIPTION,
    )
    p.add_argument(
        "--workspace",
        default="dualanodiff-app",
        help="working folder: uploads, adapters, generated pairs, exports, job states (created if missing)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 serves every network interface (no login: trusted networks only)",
    )
    p.add_argument("--port", type=int_arg(1, 65535), default=7860, help="port to listen on")
    p.add_argument(
        "--threads",
        type=int_arg(0, 1024),
        default=1,
        help="torch CPU threads of the background jobs (default 1, as the demo: on a few cores shared with the "
        "app's own server, two threads stall each other, measured 9x slower per training step); 0 for torch's "
        "own choice",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checks import check_output_dir
    from ..errors import InputError

    check_output_dir(args.workspace, "--workspace")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError('the app needs the [app] extra (gradio): pip install "dualanodiff[app]"') from None
    from ..app import launch

    try:
        launch(args.workspace, host=args.host, port=args.port, threads=args.threads or None)
    except OSError as err:  # the port is taken, or the address is not one of this machine's
        raise InputError(f"--host {args.host} --port {args.port}: cannot listen there ({err})") from None
    return 0
