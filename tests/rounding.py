"""How far apart two float computations of one value may be: a bound derived from the computation, not a guess.

Equal in exact arithmetic is not equal in floating point once a kernel sums in another order, and kernels do: a
BLAS blocks a matrix product by its shape (one pair against a batch of three), by the memory alignment of its
operands (MKL's sgemm takes another path for a weight that is not 64-byte aligned, as a safetensors-loaded one is
not: the stock UNet and its own deep copy differ by about 1e-6, and agree bit for bit under MKL_CBWR=COMPATIBLE),
by thread count, by CPU and by library version. So a comparison is bitwise (``torch.equal``) only where both sides
run the same kernels on the same buffers; anywhere else it allows

    CONFIDENCE x sqrt(steps) x u(dtype) x magnitude,    u = eps / 2, the unit roundoff

``magnitude`` is the size of the compared values (of the terms, where a sum cancels); ``steps`` is the number of
roundings in sequence that may come out differently: the terms of one sum taken in another order, or, through a
network, its layers (`reduction_depth`), each of which passes its output on rounded once more. Each step moves the
value by at most about one unit roundoff at its magnitude, with either sign and independently of the others, so
the steps add up like a random walk: their sum stays below CONFIDENCE standard deviations but for a chance of
about 1e-9 (the probabilistic rounding error analysis of Higham and Mary, SIAM J. Sci. Comput. 2019, which also
shows the worst case, linear in steps, to be far too pessimistic for long computations). Measured on this suite
(three CPU instruction sets, MKL paths included) every difference stays below a quarter of its bound, while a
routing error in one layer or a 1e-3 leak between pairs exceeds it several times over.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

CONFIDENCE = 6.0  # standard deviations of the random walk of rounding errors


def eps(dtype) -> float:
    """Machine epsilon of a torch or numpy float dtype."""
    return float(torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) else np.finfo(dtype).eps)


def rounding_tolerance(magnitude: float, steps: int, dtype=torch.float32) -> float:
    """The largest difference rounding explains: ``steps`` independent roundings at ``magnitude``."""
    return CONFIDENCE * math.sqrt(steps) * eps(dtype) / 2 * float(magnitude)


def reduction_depth(*modules: nn.Module) -> int:
    """Reductions in sequence through the modules, counted from above.

    Every linear and convolution layer, plus two matrix products (scores, then the weighted sum) per attention
    layer. Parallel layers (to_q, to_k, to_v; a ResNet's shortcut) are counted too, which only overestimates.
    Normalisation layers reduce per sample along one axis, the same way whatever the batch: not counted.
    """
    from diffusers.models.attention_processor import Attention

    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)
    return sum(isinstance(m, layers) + 2 * isinstance(m, Attention) for mod in modules for m in mod.modules())


def pipeline_depth(pipe, num_inference_steps: int) -> int:
    """Reductions in sequence from the prompt to a decoded pair: text encoder, one UNet call per step, VAE."""
    unet = reduction_depth(pipe.unet)
    return reduction_depth(pipe.text_encoder) + num_inference_steps * unet + reduction_depth(pipe.vae.decoder)


def _as_array(x) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def max_abs_diff(actual, expected) -> float:
    """max |actual - expected| over tensors, arrays or numbers, in float64."""
    a, b = _as_array(actual), _as_array(expected)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max()) if a.size else 0.0


def assert_equal_up_to_rounding(actual, expected, steps: int, dtype=torch.float32, magnitude=None) -> None:
    """max |actual - expected| <= rounding_tolerance(magnitude, steps, dtype); magnitude: max |expected|.

    The message gives the difference and the bound with its factors.
    """
    if magnitude is None:
        magnitude = float(np.abs(_as_array(expected)).max())
    tol = rounding_tolerance(magnitude, steps, dtype)
    diff = max_abs_diff(actual, expected)
    assert diff <= tol, (
        f"max |actual - expected| = {diff:.3g} > {tol:.3g} = {CONFIDENCE:g} x sqrt({steps} steps) x "
        f"u {eps(dtype) / 2:.3g} x magnitude {magnitude:.3g}: more than rounding explains"
    )


def assert_masks_equal_up_to_rounding(actual, expected, probability, threshold: float, tol: float) -> None:
    """Two masks thresholded from probabilities that agree up to ``tol``: they may differ only at pixels whose
    probability lies within ``tol`` of the threshold (rounding may put those on either side)."""
    differ = np.asarray(actual) != np.asarray(expected)
    near = np.abs(np.asarray(probability, np.float64) - threshold) <= tol
    far = differ & ~near
    assert not far.any(), f"{int(far.sum())} pixels differ more than {tol:.3g} away from the threshold"
