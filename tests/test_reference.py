"""The per-branch loop reference (the official structure, used by the benchmarks) agrees with the fast path."""

from __future__ import annotations

import pytest
import torch

from dualanodiff.model.dual_unet import AdapterConfig, dual_processors
from dualanodiff.model.reference import use_loop_reference
from dualanodiff.pipeline import DualAnoDiffPipeline

from rounding import assert_equal_up_to_rounding, pipeline_depth, reduction_depth


@pytest.mark.slow
@pytest.mark.parametrize("sdpa", [False, True])
def test_loop_reference_generates_the_same_pairs(tiny_components, sdpa):
    pipe = DualAnoDiffPipeline.from_components(tiny_components, AdapterConfig(rank=4, bcm=True))
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for proc in dual_processors(pipe.unet).values():
            for name, param in proc.named_parameters():
                if name.endswith(".up") or name == "bcm.alpha":
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.05 + 0.2 * (name == "bcm.alpha"))
    bg = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    kwargs = dict(num_pairs=2, num_inference_steps=3, seeds=[1, 2], backgrounds=bg, output_type="pt")
    ours = pipe(**kwargs)
    originals = use_loop_reference(pipe.unet, sdpa=sdpa)
    theirs = pipe(bcm_mode="two-pass", **kwargs)
    pipe.unet.set_attn_processor(originals)
    # Other batch layouts and attention kernels (one branch at a time, BCM as its own pass): the same maths,
    # other summation orders, so equal up to rounding through the pipeline and the backgrounds' VAE encoder.
    steps = pipeline_depth(pipe, num_inference_steps=3) + reduction_depth(pipe.vae.encoder)
    assert_equal_up_to_rounding(ours.images, theirs.images, steps, magnitude=1.0)  # pixels in [0, 1]
    assert_equal_up_to_rounding(ours.parts, theirs.parts, steps, magnitude=1.0)
    assert (ours.images - ours.parts).abs().max() > 1e-3  # the two branches really differ
