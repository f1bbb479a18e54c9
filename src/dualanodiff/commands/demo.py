"""`dualanodiff demo`: the whole method on CPU in a few minutes, ending in an HTML report."""

from __future__ import annotations

from ..checks import int_arg, name_arg, seed_arg
from . import add_progress_argument


def _measured_times() -> str:
    """The run times measured by benchmarks/bench_demo.py, as shipped in the demo's reference file."""
    from ..demo.expected import read_expected

    times = (read_expected() or {}).get("times", {})
    if "full" not in times or "quick" not in times:
        return "(Run times not measured for this version.)"
    full, quick = times["full"], times["quick"]
    return (
        f"Measured on a {full['machine']} with one thread: {full['wall_s'] / 60:.1f} minutes "
        f"({full['cpu_s']:.0f} s CPU); --quick {quick['wall_s']:.0f} s."
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole method on a synthetic dataset on CPU and write an HTML report (start here)",
        description=(
            "Make a synthetic defect dataset, take the shipped small base (pretrained on synthetic images and "
            "generic marks), train DualAnoDiff adapters for one defect type from its few-shot split, generate "
            "(image, part, mask) pairs, train a downstream detector on DualAnoDiff pairs, Crop&Paste pairs and no "
            "generated data, and write report.html, which sets the run beside the miniature study's range. "
            f"{_measured_times()} A rerun in the same --out resumes."
        ),
    )
    p.add_argument("--out", default="dualanodiff-demo", help="folder for the data, models and report")
    p.add_argument("--quick", action="store_true", help="toy sizes (the test suite's mode): checks it runs")
    from ..synthetic.render import DEFECT_TYPES

    p.add_argument(
        "--category",
        type=name_arg,
        default="weave",
        help=f"synthetic category: {' or '.join(DEFECT_TYPES)} (default: weave)",
    )
    p.add_argument(
        "--anomaly",
        type=name_arg,
        default="hole",
        help="defect type of the category: "
        + "; ".join(f"{c}: {', '.join(kinds)}" for c, kinds in DEFECT_TYPES.items())
        + " (default: hole)",
    )
    p.add_argument(
        "--seed", type=seed_arg, default=0, help="seed of the data, the training and the generation"
    )
    p.add_argument(
        "--threads",
        type=int_arg(0, 1024),
        default=1,
        help="torch CPU threads (0: torch's default); 2 is faster only on cores nothing else uses",
    )
    add_progress_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checks import check_output_dir
    from ..demo import DemoConfig, run_demo
    from ..demo.run import finished_line

    check_output_dir(args.out)
    result = run_demo(
        DemoConfig(
            out=args.out,
            quick=args.quick,
            category=args.category,
            anomaly=args.anomaly,
            seed=args.seed,
            threads=args.threads or None,
            progress=args.progress,
        )
    )
    print(finished_line(result))  # the stages before it are log lines (stderr)
    return 0
