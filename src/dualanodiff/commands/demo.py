"""`dualanodiff demo`: the whole method on CPU in a few minutes, ending in an HTML report."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole method on a synthetic dataset on CPU and write an HTML report (start here)",
        description=(
            "Make a synthetic defect dataset, take the shipped tiny base (pretrained on its normal images), train "
            "DualAnoDiff adapters for one defect type from its few-shot split, generate (image, part, mask) "
            "pairs, train a downstream detector on DualAnoDiff pairs, Crop&Paste pairs and no generated data, and "
            "write report.html. About 5-10 minutes on a 2-core CPU; --quick takes about a minute (toy sizes). "
            "A rerun in the same --out resumes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="dualanodiff-demo", help="folder for the data, models and report")
    p.add_argument("--quick", action="store_true", help="toy sizes (the test suite's mode): checks it runs")
    p.add_argument("--category", default="pill", help="synthetic category: pill or weave")
    p.add_argument("--anomaly", default="spot", help="defect type of the category")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default); 2 is faster only on cores nothing else uses",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            out=args.out,
            quick=args.quick,
            category=args.category,
            anomaly=args.anomaly,
            seed=args.seed,
            threads=args.threads or None,
        )
    )
    return 0
