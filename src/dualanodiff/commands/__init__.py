"""One module per `dualanodiff` subcommand; each defines ``register(subparsers)``.

Options every long-running command shares are added here, so they read the same everywhere.
"""

from __future__ import annotations


def add_progress_argument(parser) -> None:
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="hide every progress bar (this command's and those of the steps it runs)",
    )
