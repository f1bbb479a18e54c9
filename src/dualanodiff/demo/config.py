"""The demo's settings (`DemoConfig`), its sizes per mode and its method labels: plain data that the run, the
report and the study scripts share, without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

# Sizes per mode: "full" is what `dualanodiff demo` runs, "quick" the test suite's (checks that it runs).
MODES: dict[str, dict[str, Any]] = {
    "full": dict(
        train_steps=750,
        num_pairs=64,
        sampler_steps=20,
        loc_epochs=20,
        loc_samples_per_epoch=128,
        loc_base_channels=16,
        max_mask_area=0.5,
        probe_every=50,
    ),
    "quick": dict(
        train_steps=12,
        num_pairs=8,
        sampler_steps=4,
        loc_epochs=2,
        loc_samples_per_epoch=16,
        loc_base_channels=8,
        max_mask_area=1.0,  # toy training leaves whole-image masks: keep them, or nothing reaches the detector
        probe_every=4,
    ),
}
METHOD_LABELS = {"dualanodiff": "DualAnoDiff", "crop-paste": "Crop&Paste", "none": "no generated data"}


@dataclass
class DemoConfig:
    """The demo's settings; sizes left None come from the mode (`MODES`)."""

    out: str = "dualanodiff-demo"
    quick: bool = False
    # weave/hole: the type on which the two branches were seen to follow each other at this scale (docs/demo.md,
    # "Where the demo stands", item 7); on pill/spot, a faint pit, they do not (items 1-6).
    category: str = "weave"
    anomaly: str = "hole"
    seed: int = 0
    resolution: int = 64
    train_lr: float = 1e-3
    train_rank: int = 16
    # 2 pairs a step: a step of 2 costs 0.61 of a step of 4 here (fixed costs weigh at this size;
    # benchmarks/results/training-demo-base-cpu.json), and 1,200 steps of 2 pairs align the pairs as well as
    # 1,000 to 1,500 steps of 4 (docs/demo.md, item 7).
    train_batch_size: int = 2
    saim: bool = True
    bcm: bool = False
    scheduler: str = "dpm++"
    # 5, not the paper's 2.5: on the study's adapters it raised the pairs' median mask IoU from 0.40 to 0.45 (mean
    # of 3 seeds; 4 and 6 lower; docs/results/demo_alignment/guidance-weave-hole); the study's `guidance-2.5`
    # variant measures what it does to the detector.
    guidance: float = 5.0
    # The noise's mean colour tints the part branch's grey canvas on 16x16 latents: 27 of 32 pairs failed the mask
    # gate without centring, 1 of 32 with it (docs/results/demo_alignment/diagnosis.json). Only the part branch's
    # noise is centred, so the whole images keep their colour from the noise, as the real images vary in colour.
    zero_mean_noise: bool | str = "part"
    # The part branch starts from the whole branch's noise draw (then centred), where the authors draw one per
    # branch: the two then agree better on where the hole goes (median mask IoU 0.51 -> 0.64 on the study's
    # adapters, mean of 3 seeds; docs/results/demo_alignment/initial-noise-weave-hole; the study's
    # `independent-noise` variant).
    shared_initial_noise: bool = True
    # The part's canvas drifts off mid-grey as the adapters train, and the part draws its defect soft-edged: cut
    # the mask where the part departs from its own canvas colour by more than half its peak distance
    # (`masks.grey.half_max_mask`; docs/demo.md, "Where the demo stands").
    mask_method: str = "grey-half-max"
    # torch CPU threads (None: torch's default). 1 by default: on 2 cores shared with any other work, two
    # OpenMP threads stall each other (measured 2-8 s per training step against 0.25 s with one thread).
    threads: int | None = 1
    train_steps: int | None = None
    num_pairs: int | None = None
    sampler_steps: int | None = None
    loc_epochs: int | None = None
    loc_samples_per_epoch: int | None = None
    loc_base_channels: int | None = None
    max_mask_area: float | None = None
    # steps between probe-loss evaluations (`training.probe`): the learning curve the report shows, since the
    # training loss itself stays noisy (docs/demo.md)
    probe_every: int | None = None
    progress: bool = True
    base_weights: str | None = None  # folder with demo_base.safetensors/.json; None: the shipped ones
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> DemoConfig:
        sizes = MODES["quick" if self.quick else "full"]
        return replace(self, **{k: v for k, v in sizes.items() if getattr(self, k) is None})

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


def sampling_recipe() -> dict[str, Any]:
    """The demo's sampling and mask settings (full mode), written beside the demo base so that adapters trained
    on it (`dualanodiff train`, the app) are sampled by a plain `dualanodiff generate` as the demo samples them."""
    demo = DemoConfig()
    return {
        "scheduler": demo.scheduler,
        "steps": MODES["full"]["sampler_steps"],
        "guidance": demo.guidance,
        "zero_mean_noise": demo.zero_mean_noise,
        "shared_initial_noise": demo.shared_initial_noise,
        "mask_method": demo.mask_method,
    }
