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


def add_split_argument(parser) -> None:
    parser.add_argument(
        "--split",
        choices=["strict", "paper-compat"],
        default="strict",
        help="few-shot split: strict = first floor(n/3) images of each type train the generator, the rest are "
        "test (default); paper-compat = the authors' rule, one more image when floor(n/3) is not a multiple "
        "of 3, which then is also a test image",
    )
