"""The trainable pieces of DualAnoDiff, as plain modules: branch LoRA, SAIM, and the BCM fusion.

They know nothing about diffusers; `processor.py` applies them inside a UNet's attention layers.
Shapes use N = rows in the UNet batch, L = tokens, C = channels.
"""

from __future__ import annotations

import torch
from torch import nn

GLOBAL_BRANCH = 0
PART_BRANCH = 1
NUM_BRANCHES = 2


class BranchLoRA(nn.Module):
    """Low-rank deltas for one projection, one (down, up) set per branch, routed by row.

    peft cannot route batch rows to different adapters during training, hence this small module.
    ``down[b]`` is (rank, in), ``up[b]`` is (out, rank), as the weights of ``nn.Linear(in, rank)`` and
    ``nn.Linear(rank, out)`` (the official checkpoints' ``to_q_lora.<b>.down.weight`` layout).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float | None = None):
        super().__init__()
        self.rank = rank
        self.scale = (alpha if alpha is not None else rank) / rank
        # METHOD 3: down ~ N(0, (1/r)^2), up = 0, so each branch starts as the pretrained layer.
        self.down = nn.Parameter(torch.randn(NUM_BRANCHES, rank, in_features) / rank)
        self.up = nn.Parameter(torch.zeros(NUM_BRANCHES, out_features, rank))

    def forward(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """x: (N, L, in); branch: (N,) long with values in {0, 1}. Returns the delta, (N, L, out)."""
        down = self.down[branch].to(x.dtype)  # (N, rank, in)
        up = self.up[branch].to(x.dtype)  # (N, out, rank)
        return torch.bmm(torch.bmm(x, down.transpose(1, 2)), up.transpose(1, 2)) * self.scale


def two_token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head softmax attention over sequences of two tokens, (M, 2, C) each, scale 1/sqrt(C).

    With two keys, softmax([s0, s1])[0] = sigmoid(s0 - s1), so each query needs one dot product:
    out = v1 + sigmoid(q . (k0 - k1) / sqrt(C)) * (v0 - v1). Exact, and far cheaper than a generic attention
    kernel on M length-2 sequences (which, at SD widths up to C = 1280, also misses the fused GPU kernels).
    """
    scale = q.shape[-1] ** -0.5
    weight0 = torch.sigmoid((q * (k[:, 0:1] - k[:, 1:2])).sum(-1, keepdim=True) * scale)  # (M, 2, 1)
    return v[:, 1:2] + weight0 * (v[:, 0:1] - v[:, 1:2])


class SelfAttentionInteraction(nn.Module):
    """SAIM: each spatial token of a pair attends over its two branch tokens (global, part).

    Input and output (2B, L, C) with pairs interleaved [g0, p0, g1, p1, ...]; the result is added to the input.
    """

    def __init__(self, channels: int, zero_init_output: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)
        if zero_init_output:  # SAIM starts as the identity (the official code uses PyTorch's default init)
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        n, length, channels = y.shape
        u = self.proj_in(self.norm(y))
        # (2B, L, C) -> (B, 2, L, C) -> (B, L, 2, C) -> (B*L, 2, C): a 2-token sequence per pair and token.
        u = u.unflatten(0, (n // 2, 2)).transpose(1, 2).reshape(-1, 2, channels)
        q, k, v = self.to_q(u), self.to_k(u), self.to_v(u)
        mixed = self.proj_out(two_token_attention(q, k, v))
        mixed = mixed.reshape(n // 2, length, 2, channels).transpose(1, 2).reshape(n, length, channels)
        return y + mixed


class BackgroundFusion(nn.Module):
    """BCM: mixes background features into the key/value input of a global-branch self-attention.

    ``(1 - a) * h + a * MLP(h_bg)``, with ``a`` one learned scalar initialised to 0 (so BCM starts as a no-op).
    """

    def __init__(self, channels: int, hidden: int = 320):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.Linear(hidden, channels))
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor, h_background: torch.Tensor) -> torch.Tensor:
        """h: (G, L, C) global-branch rows; h_background: (G, L, C) or (1, L, C). Returns (G, L, C)."""
        a = self.alpha.to(h.dtype)
        return (1 - a) * h + a * self.mlp(h_background.to(h.dtype))
