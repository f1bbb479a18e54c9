"""Make the demo base shipped in `src/dualanodiff/assets/` (deterministic for a seed, CPU).

    python scripts/pretrain_demo_base.py                       # writes src/dualanodiff/assets/demo_base.*
    python scripts/pretrain_demo_base.py --out /tmp/base --stages unet   # retrain the UNet on the saved VAE

Measured run time of the shipped weights: 10.5 minutes on CPU (VAE 257 s, UNet 356 s; `times` in
demo_base.json), one torch thread (`--threads 1`, the default: on 2 cores shared with other work one thread ran
several times faster than two). Every random draw comes from seeded generators; bit-identical reruns need the
same torch version and thread count (CPU float reductions depend on both); a second full run to compare bit for
bit has not been done. `--stages vae` then `--stages unet` is meant to equal one run (the UNet stage sees the
fp16-rounded VAE either way).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dualanodiff.pretrain import PretrainConfig, pretrain_base

ASSETS = Path(__file__).resolve().parents[1] / "src" / "dualanodiff" / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ASSETS), help="folder for demo_base.safetensors/.json")
    parser.add_argument("--stages", default="vae,unet", help="comma list of vae,unet")
    parser.add_argument(
        "--preview", default=None, help="also write a PNG: real / VAE reconstruction / samples"
    )
    parser.add_argument(
        "--preview-only", action="store_true", help="only write --preview from --out's weights"
    )
    for field in dataclasses.fields(PretrainConfig):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default
        )
    args = parser.parse_args()
    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    if not args.preview_only:
        out = pretrain_base(cfg, args.out, stages=tuple(args.stages.split(",")))
        print(f"wrote {out}")
    if args.preview:
        from dualanodiff.demo_base import load_demo_base
        from dualanodiff.io import save_image_atomic
        from dualanodiff.pretrain import preview_grid

        save_image_atomic(args.preview, preview_grid(load_demo_base(args.out)))
        print(f"wrote {args.preview}")


if __name__ == "__main__":
    main()
