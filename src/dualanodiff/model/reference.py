"""The authors' structure, for benchmarks: each branch its own attention call, classic (non-SDPA) attention.

`LoopBranchAttnProcessor` reads the parameters of a `DualBranchAttnProcessor` and computes the same layer the
way the official code does: rows of each branch gathered and sent through their own q/k/v/out projections
and their own attention product (diffusers' classic `AttnProcessor` maths), then SAIM. Its outputs must agree
with the fast path (the benchmarks report the max abs difference); it exists only to be measured against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from .adapters import BranchLoRA
from .processor import DualBranchAttnProcessor, pair_rows


def _lora(module: BranchLoRA, x: torch.Tensor, branch: int) -> torch.Tensor:
    return x @ module.down[branch].to(x.dtype).T @ module.up[branch].to(x.dtype).T * module.scale


def _saim_classic(saim, y: torch.Tensor) -> torch.Tensor:
    """SAIM with a generic softmax attention over the two branch tokens (bmm, softmax, bmm)."""
    n, length, channels = y.shape
    u = saim.proj_in(saim.norm(y)).unflatten(0, (n // 2, 2)).transpose(1, 2).reshape(-1, 2, channels)
    q, k, v = saim.to_q(u), saim.to_k(u), saim.to_v(u)
    probs = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * channels**-0.5, dim=-1)
    mixed = saim.proj_out(torch.bmm(probs, v))
    return y + mixed.reshape(n // 2, length, 2, channels).transpose(1, 2).reshape(n, length, channels)


class LoopBranchAttnProcessor(nn.Module):
    """Per-branch loop over one dual processor's weights (the official code's structure)."""

    def __init__(self, dual: DualBranchAttnProcessor, sdpa: bool = False):
        super().__init__()
        self.dual = dual
        self.sdpa = sdpa  # False: diffusers' classic attention maths, as in the official code

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        background_rows: int = 0,
        record_background: dict | None = None,
        background_states: dict | None = None,
    ) -> torch.Tensor:
        d = self.dual
        if record_background is not None:  # reference pass: one branch, global LoRA, no SAIM
            if d.is_self_attention:
                record_background[d.name] = hidden_states
            text = encoder_hidden_states
            return self._branch(attn, hidden_states, hidden_states if text is None else text, 0)
        pairs = pair_rows(hidden_states.shape[0], background_rows)
        out = torch.empty_like(hidden_states[:pairs])
        for branch in (0, 1):
            x = hidden_states[branch:pairs:2]
            kv = x if encoder_hidden_states is None else encoder_hidden_states[branch:pairs:2]
            if branch == 0 and d.bcm is not None and encoder_hidden_states is None:
                h_bg = d._background_for(hidden_states, background_rows, background_states)
                if h_bg is not None:
                    kv = d.bcm(x, h_bg)
            out[branch::2] = self._branch(attn, x, kv, branch)
        if d.saim is not None:
            out = _saim_classic(d.saim, out)
        if background_rows:
            bg = hidden_states[pairs:]
            bg_text = None if encoder_hidden_states is None else encoder_hidden_states[pairs:]
            out = torch.cat([out, self._branch(attn, bg, bg if bg_text is None else bg_text, 0)])
        return out

    def _branch(self, attn, x: torch.Tensor, kv: torch.Tensor, branch: int) -> torch.Tensor:
        """One branch's attention (x: queries, kv: key/value input), as diffusers' classic AttnProcessor."""
        d = self.dual
        q = attn.to_q(x) + _lora(d.to_q_lora, x, branch)
        k = attn.to_k(kv) + _lora(d.to_k_lora, kv, branch)
        v = attn.to_v(kv) + _lora(d.to_v_lora, kv, branch)
        q, k, v = attn.head_to_batch_dim(q), attn.head_to_batch_dim(k), attn.head_to_batch_dim(v)
        if self.sdpa:
            o = attn.batch_to_head_dim(F.scaled_dot_product_attention(q, k, v))
        else:
            o = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(q, k, None), v))
        return attn.to_out[1](attn.to_out[0](o) + _lora(d.to_out_lora, o, branch))


def use_loop_reference(unet: UNet2DConditionModel, sdpa: bool = False) -> dict:
    """Swap every dual processor for its loop reference (same weights); returns the originals to restore."""
    originals = dict(unet.attn_processors)
    unet.set_attn_processor(
        {
            name: LoopBranchAttnProcessor(p, sdpa) if isinstance(p, DualBranchAttnProcessor) else p
            for name, p in originals.items()
        }
    )
    return originals
