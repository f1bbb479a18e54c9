"""Per-pair randomness for the pipelines: one CPU generator per pair, so a pair is the same whatever batch
it is made in, and the noise maps drawn from them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError

# How the two background rows of a pair are noised under guidance (BCM; see `_background_noise`).
BACKGROUND_NOISE = ("shared", "independent")

ZERO_MEAN_NOISE = (False, True, "part")  # `DualAnoDiffPipeline.__call__`'s choices


def centred_noise(noise: torch.Tensor) -> torch.Tensor:
    """Noise maps (..., h, w) with each map's mean removed and its std set to 1."""
    return (noise - noise.mean((-2, -1), keepdim=True)) / noise.std((-2, -1), keepdim=True)


def pair_generators(
    num_pairs: int, generator: torch.Generator | Sequence[torch.Generator] | None, seeds: Sequence[int] | None
) -> tuple[list[torch.Generator], list[int]]:
    """One CPU generator per pair, and the seed it was made from (recorded in every output)."""
    if seeds is None:
        if isinstance(generator, Sequence):
            if len(generator) != num_pairs:
                raise InputError(f"got {len(generator)} generators for {num_pairs} pairs")
            seeds = [int(g.initial_seed()) for g in generator]
        else:
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            seeds = torch.randint(0, 2**31 - 1, (num_pairs,), generator=gen).tolist()
    elif len(seeds) != num_pairs:
        raise InputError(f"got {len(seeds)} seeds for {num_pairs} pairs")
    return [torch.Generator().manual_seed(int(s)) for s in seeds], [int(s) for s in seeds]


def background_noise(shape, generators, do_cfg: bool, mode: str) -> torch.Tensor:
    """This step's noise for the background rows, [uncond..., cond...] under guidance, from each pair's generator.

    "shared": one draw per pair, used by both of its rows; "independent": the unconditional row's draw, then the
    conditional row's (the authors' inference noises its two background rows with one `randn_like`).
    """
    if mode == "independent" and do_cfg:
        draws = [torch.randn((2, *shape), generator=g) for g in generators]
        return torch.cat([torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws])])
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
    return torch.cat([noise] * (2 if do_cfg else 1))
