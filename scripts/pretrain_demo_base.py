"""Make the demo base shipped in `src/dualanodiff/assets/` (deterministic for a seed, CPU).

    python scripts/pretrain_demo_base.py --preview docs/demo_base_preview.png   # all stages, then the preview
    python scripts/pretrain_demo_base.py --stages segmenter                     # redo one stage on the saved rest
    python scripts/pretrain_demo_base.py --preview-only --preview p.png         # only the preview

Stages (`dualanodiff.demo.pretrain`): the VAE, the UNet, and the reference segmenters of the mask-alignment
measure; each is written to --out as it finishes, and a stage left out is read from --out. Run times (wall and
CPU per stage) and the stack are recorded in demo_base.json. One torch thread by default: on 2 cores shared with
other work one thread ran several times faster than two. Every random draw comes from seeded generators;
bit-identical reruns need the same torch version and thread count (CPU float reductions depend on both).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dualanodiff.demo.pretrain import STAGES, PretrainConfig, pretrain_base

ASSETS = Path(__file__).resolve().parents[1] / "src" / "dualanodiff" / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ASSETS), help="folder for demo_base.safetensors/.json")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {','.join(STAGES)}")
    parser.add_argument("--preview", default=None, help="also write a PNG: renders, reconstructions, samples")
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
        import torch

        from dualanodiff.demo.base import load_demo_base
        from dualanodiff.demo.pretrain import preview_grid
        from dualanodiff.io import save_image_atomic

        torch.set_num_threads(cfg.threads)
        save_image_atomic(args.preview, preview_grid(load_demo_base(args.out)))
        print(f"wrote {args.preview}")


if __name__ == "__main__":
    main()
