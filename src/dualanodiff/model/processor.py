"""The dual-branch attention processor, installed into an unmodified diffusers UNet.

Row layout of a UNet batch (METHOD section 2): pairs first, interleaved ``[g0, p0, g1, p1, ...]`` (P rows, P
even), then optionally one background row per pair ``[bg0, bg1, ...]`` (P/2 rows) for the BCM reference pass
folded into the same call. Both branches and the backgrounds go through ONE attention call; the per-branch
LoRA deltas are routed by row. Modes, chosen per call through ``cross_attention_kwargs``:

- default: every row is a pair row.
- ``background_rows=G``: the last G = P/2 rows are background rows (global LoRA, no SAIM, no fusion); every
  attn1 fuses background row i into pair i's global row. Exact: the background rows never see the pairs.
- ``record_background=dict``: the BCM reference pass on its own: every row is a background row; each attn1
  stores its input (after the block's LayerNorm) under its processor name.
- ``background_states=dict``: the pair pass of the two-pass BCM, fusing the recorded states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from .adapters import GLOBAL_BRANCH, PART_BRANCH, BackgroundFusion, BranchLoRA, SelfAttentionInteraction


def pair_rows(num_rows: int, background_rows: int = 0) -> int:
    """Number of pair rows in a batch, checking the layout (even pairs, one background per pair). The batch is
    laid out by the pipeline and the training loop, never by a user's file or flag, so a wrong layout is a
    ValueError of the caller, not an InputError."""
    pairs = num_rows - background_rows
    if pairs <= 0 or pairs % 2:
        raise ValueError(
            f"the dual UNet needs an even number of pair rows [global_0, part_0, global_1, part_1, ...]; "
            f"got a batch of {num_rows} rows with {background_rows} background rows"
        )
    if background_rows not in (0, pairs // 2):
        raise ValueError(
            f"BCM needs one background row per pair: {pairs // 2} pairs, {background_rows} backgrounds"
        )
    return pairs


def branch_of_rows(num_rows: int, background_rows: int, device: torch.device) -> torch.Tensor:
    """(N,) long: the branch whose LoRA each row uses (background rows use the global branch)."""
    pairs = pair_rows(num_rows, background_rows)
    branch = torch.full((num_rows,), GLOBAL_BRANCH, dtype=torch.long, device=device)
    branch[1:pairs:2] = PART_BRANCH
    return branch


def _rows_by_branch(num_rows: int, num_pair_rows: int, device: torch.device) -> list[torch.Tensor]:
    """Row indices of the global branch (pair rows 0, 2, ... and background rows) and of the part branch."""
    global_rows = torch.cat(
        [
            torch.arange(0, num_pair_rows, 2, device=device),
            torch.arange(num_pair_rows, num_rows, device=device),
        ]
    )
    return [global_rows, torch.arange(1, max(num_pair_rows, 1), 2, device=device)]


class DualBranchAttnProcessor(nn.Module):
    """Per-branch LoRA on to_q/to_k/to_v/to_out[0], SAIM after the output projection, BCM fusion (attn1)."""

    def __init__(
        self,
        name: str,
        hidden_size: int,
        cross_attention_dim: int | None,
        rank: int,
        alpha: float | None = None,
        saim: bool = True,
        saim_zero_init: bool = False,
        bcm: bool = False,
    ):
        super().__init__()
        self.name = name
        self.is_self_attention = cross_attention_dim is None
        kv_dim = hidden_size if cross_attention_dim is None else cross_attention_dim
        self.to_q_lora = BranchLoRA(hidden_size, hidden_size, rank, alpha)
        self.to_k_lora = BranchLoRA(kv_dim, hidden_size, rank, alpha)
        self.to_v_lora = BranchLoRA(kv_dim, hidden_size, rank, alpha)
        self.to_out_lora = BranchLoRA(hidden_size, hidden_size, rank, alpha)
        self.saim = SelfAttentionInteraction(hidden_size, saim_zero_init) if saim else None
        self.bcm = BackgroundFusion(hidden_size) if bcm and self.is_self_attention else None
        self._merged: dict[str, torch.Tensor] | None = None  # inference only, see merge_lora

    def merge_lora(self, attn: Attention) -> None:
        """Inference fast path: fold each branch's LoRA into its own copy of the base projections.

        Each projection then costs one matmul per branch instead of the base matmul plus two LoRA matmuls.
        The copies are plain tensors (not parameters): call `unmerge_lora` before training again.
        """
        merged = {}
        with torch.no_grad():
            for key, base, lora in self._projections(attn):
                w = base.weight
                delta = torch.bmm(lora.up.to(w.dtype), lora.down.to(w.dtype)) * lora.scale  # (2, out, in)
                merged[key] = w.unsqueeze(0) + delta
        self._merged = merged

    def unmerge_lora(self) -> None:
        self._merged = None

    def _projections(self, attn: Attention):
        return (
            ("q", attn.to_q, self.to_q_lora),
            ("k", attn.to_k, self.to_k_lora),
            ("v", attn.to_v, self.to_v_lora),
            ("out", attn.to_out[0], self.to_out_lora),
        )

    def _project(
        self, key: str, base: torch.nn.Linear, lora: BranchLoRA, x: torch.Tensor, rows
    ) -> torch.Tensor:
        """base(x) + the LoRA delta of each row's branch; ``rows`` = (branch ids, row indices per branch)."""
        branch, by_branch = rows
        if self._merged is None:
            return base(x) + lora(x, branch)
        y = x.new_empty(*x.shape[:-1], base.out_features)
        for b, index in enumerate(by_branch):
            if index.numel():
                y[index] = F.linear(x[index], self._merged[key][b], base.bias)
        return y

    # diffusers passes only the keyword arguments named in this signature (it inspects `__call__`),
    # so the processor defines `__call__` rather than `forward`, as diffusers' own module processors do.
    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        background_rows: int = 0,
        record_background: dict[str, torch.Tensor] | None = None,
        background_states: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError("the dual processor supports SD 1.5 transformer-block attention only")
        num_rows = hidden_states.shape[0]
        reference_pass = record_background is not None
        if reference_pass:
            # Every row is a background row: global branch, no SAIM, no fusion.
            branch = torch.full((num_rows,), GLOBAL_BRANCH, dtype=torch.long, device=hidden_states.device)
            num_pairs_rows = 0
            if self.is_self_attention:
                record_background[self.name] = hidden_states
        else:
            branch = branch_of_rows(num_rows, background_rows, hidden_states.device)
            num_pairs_rows = num_rows - background_rows

        # Key/value input: the tokens themselves (attn1) or the text (attn2); BCM alters global rows of attn1.
        if encoder_hidden_states is not None:
            kv_input = (
                attn.norm_encoder_hidden_states(encoder_hidden_states)
                if attn.norm_cross
                else encoder_hidden_states
            )
        else:
            kv_input = hidden_states
            h_bg = None
            if self.bcm is not None and not reference_pass:
                h_bg = self._background_for(hidden_states, background_rows, background_states)
            if h_bg is not None:
                kv_input = self._fuse_background(hidden_states, num_pairs_rows, h_bg)

        # Row indices per branch are only needed by the merged (inference) path: no work on the training path.
        by_branch = None
        if self._merged is not None:
            by_branch = _rows_by_branch(num_rows, num_pairs_rows, hidden_states.device)
        rows = (branch, by_branch)
        query = self._project("q", attn.to_q, self.to_q_lora, hidden_states, rows)
        key = self._project("k", attn.to_k, self.to_k_lora, kv_input, rows)
        value = self._project("v", attn.to_v, self.to_v_lora, kv_input, rows)

        head_dim = key.shape[-1] // attn.heads
        query, key, value = (
            t.unflatten(-1, (attn.heads, head_dim)).transpose(1, 2) for t in (query, key, value)
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, kv_input.shape[1], num_rows)
            attention_mask = attention_mask.view(num_rows, attn.heads, -1, attention_mask.shape[-1])
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2).to(query.dtype)  # (N, L, C)

        out = self._project("out", attn.to_out[0], self.to_out_lora, out, rows)
        out = attn.to_out[1](out)  # dropout

        if self.saim is not None and num_pairs_rows:
            if num_pairs_rows == num_rows:
                out = self.saim(out)
            else:
                out = torch.cat([self.saim(out[:num_pairs_rows]), out[num_pairs_rows:]])

        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    def _background_for(
        self,
        hidden_states: torch.Tensor,
        background_rows: int,
        background_states: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor | None:
        """The background features for this layer: folded rows of this batch, or recorded states, or none."""
        if background_rows:
            return hidden_states[hidden_states.shape[0] - background_rows :]
        if background_states is not None:
            if self.name not in background_states:
                raise ValueError(f"no recorded background state for attention layer {self.name}")
            return background_states[self.name]
        return None

    def _fuse_background(
        self, hidden_states: torch.Tensor, num_pair_rows: int, h_bg: torch.Tensor
    ) -> torch.Tensor:
        """Key/value input with pair i's global row replaced by BCM(global_i, background_i)."""
        pairs = hidden_states[:num_pair_rows].unflatten(0, (num_pair_rows // 2, 2))  # (G, 2, L, C)
        fused_global = self.bcm(pairs[:, 0], h_bg)
        kv_pairs = torch.stack([fused_global, pairs[:, 1]], dim=1).flatten(0, 1)
        return torch.cat([kv_pairs, hidden_states[num_pair_rows:]])
