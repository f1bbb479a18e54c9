"""`dualanodiff demo`: DualAnoDiff end to end on CPU, on built-in data, with a report a person can look at.

- `config`: its settings (`DemoConfig`, the sizes per mode, the method labels);
- `run`: the demo itself (`run_demo`), on the protocol runner at toy sizes;
- `base`: the shipped demo base (a small SD 1.5-structured model, 16x16 latents) and its diffusers folder;
- `pretrain` and `marks`: how that base was made (``scripts/pretrain_demo_base.py``);
- `alignment`: the reference segmenter that measures whether generated masks fit generated defects;
- `expected`: the miniature study's spread, to tell a normal run from a broken one;
- `report`: the HTML report.
"""

from __future__ import annotations

__all__ = ["MODES", "DemoConfig", "load_results", "run_demo"]


def __getattr__(name: str):
    # Lazy, so that `dualanodiff --help` (which reads the demo's measured times) does not import torch.
    if name in ("MODES", "DemoConfig"):
        from . import config

        return getattr(config, name)
    if name in __all__:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
