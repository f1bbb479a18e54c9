"""The dual-branch UNet: equivalences with the stock UNet and with an independent per-branch loop."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dualanodiff.errors import InputError
from dualanodiff.model.dual_unet import (
    AdapterConfig,
    adapter_state_dict,
    dual_processors,
    install_dual_processors,
)
from dualanodiff.model.official import export_official_state_dict
from dualanodiff.pipeline import DualAnoDiffPipeline

from rounding import assert_equal_up_to_rounding, reduction_depth


def randomize_adapters(unet, seed: int = 0, scale: float = 0.05) -> None:
    """Non-zero LoRA up-projections, SAIM and BCM weights, so every path contributes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dual_processors(unet).values():
            for name, param in p.named_parameters():
                param.copy_(
                    torch.randn(param.shape, generator=gen) * scale + (0.3 if name == "bcm.alpha" else 0)
                )


def batch(pairs: int, cross_dim: int = 64, res: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = 2 * pairs
    sample = torch.randn(n, 4, res, res, generator=gen)
    t = torch.randint(0, 1000, (pairs,), generator=gen).repeat_interleave(2)
    text = torch.randn(n, 77, cross_dim, generator=gen)
    return sample, t, text


# --- an independent per-branch reference, written from METHOD.md sections 3-5, one branch at a time --------


class LoopReference:
    """Reads the parameters of a dual processor and recomputes its layer with explicit per-branch loops.

    ``fusion``: BCM tensors (mlp0 weight, mlp0 bias, mlp1 weight, mlp1 bias, gate) to use instead of the
    processor's own (e.g. read straight from a checkpoint file).
    """

    def __init__(self, dual, fusion=None):
        self.dual = dual
        self.name = dual.name
        self.fusion = fusion
        if fusion is None and dual.bcm is not None:
            mlp = dual.bcm.mlp
            self.fusion = (mlp[0].weight, mlp[0].bias, mlp[1].weight, mlp[1].bias, dual.bcm.alpha)

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        background_rows=0,
        **_,
    ):
        d = self.dual
        n = hidden_states.shape[0]
        pairs = n - background_rows
        outs = [None] * n

        def lora(module, x, b):
            return x @ module.down[b].T @ module.up[b].T * module.scale

        def attend(x, kv, b):
            q = attn.to_q(x) + lora(d.to_q_lora, x, b)
            k = attn.to_k(kv) + lora(d.to_k_lora, kv, b)
            v = attn.to_v(kv) + lora(d.to_v_lora, kv, b)
            h = attn.heads
            q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
            w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            o = (w @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
            return attn.to_out[0](o) + lora(d.to_out_lora, o, b)

        for row in range(n):
            x = hidden_states[row : row + 1]
            branch = 0 if row >= pairs else row % 2
            kv = x if encoder_hidden_states is None else encoder_hidden_states[row : row + 1]
            if self.fusion is not None and background_rows and row < pairs and branch == 0:
                bg = hidden_states[pairs + row // 2 : pairs + row // 2 + 1]
                w0, b0, w1, b1, a = self.fusion
                kv = (1 - a) * x + a * F.linear(F.linear(bg, w0, b0), w1, b1)
            outs[row] = attend(x, kv, branch)
        if d.saim is not None:
            s = d.saim
            for i in range(pairs // 2):
                y = torch.cat([outs[2 * i], outs[2 * i + 1]])  # (2, L, C)
                u = s.proj_in(F.layer_norm(y, y.shape[-1:], s.norm.weight, s.norm.bias, 1e-6))
                q, k, v = s.to_q(u), s.to_k(u), s.to_v(u)  # (2, L, C)
                logits = torch.einsum("alc,blc->lab", q, k) / q.shape[-1] ** 0.5  # per token, 2x2
                mixed = torch.einsum("lab,blc->alc", logits.softmax(-1), v)
                y = y + s.proj_out(mixed)
                outs[2 * i], outs[2 * i + 1] = y[:1], y[1:]
        return torch.cat(outs)


def reference_unet(unet, fusions=None):
    ref = copy.deepcopy(unet)
    fusions = fusions or {}
    ref.set_attn_processor({n: LoopReference(p, fusions.get(n)) for n, p in dual_processors(ref).items()})
    return ref


@pytest.fixture
def dual_unet(tiny_components):
    unet = tiny_components.unet
    install_dual_processors(unet, AdapterConfig(rank=4, saim=True))
    return unet


def test_zero_lora_without_saim_equals_stock_unet(tiny_components):
    stock = copy.deepcopy(tiny_components.unet)
    unet = tiny_components.unet
    install_dual_processors(unet, AdapterConfig(rank=4, saim=False))
    for p in dual_processors(unet).values():  # down-projections are random, up-projections zero
        assert p.to_q_lora.down.abs().sum() > 0 and p.to_q_lora.up.abs().sum() == 0
    sample, t, text = batch(2)
    with torch.no_grad():
        ours, theirs = unet(sample, t, text).sample, stock(sample, t, text).sample
    # The same operations, but the copy's weights are 64-byte aligned and the loaded ones are not, so MKL may
    # block the products differently: equal up to rounding through the UNet's depth, not bit for bit.
    assert_equal_up_to_rounding(ours, theirs, steps=reduction_depth(stock))


@pytest.mark.slow
@pytest.mark.parametrize("bcm", [False, True])
def test_batched_equals_per_branch_loop(tiny_components, bcm):
    unet = tiny_components.unet
    install_dual_processors(unet, AdapterConfig(rank=4, saim=True, bcm=bcm))
    randomize_adapters(unet)
    ref = reference_unet(unet)
    pairs = 2
    sample, t, text = batch(pairs)
    kwargs = {}
    if bcm:  # one background row per pair, folded into the same call
        bg, _, bg_text = batch(pairs, seed=1)
        sample = torch.cat([sample, bg[:pairs]])
        t = torch.cat([t, t[::2]])
        text = torch.cat([text, bg_text[:pairs]])
        kwargs = {"cross_attention_kwargs": {"background_rows": pairs}}
    with torch.no_grad():
        ours = unet(sample, t, text, **kwargs).sample
        theirs = ref(sample, t, text, **kwargs).sample
    # Batched products and SDPA against one row at a time and explicit softmax: other summation orders.
    assert_equal_up_to_rounding(ours, theirs, steps=reduction_depth(unet))
    assert ours.abs().mean() > 0.1  # the comparison is not between two zero tensors


def test_single_layer_equals_loop_for_attn1_and_attn2(dual_unet):
    randomize_adapters(dual_unet, seed=3)
    for name, proc in dual_processors(dual_unet).items():
        if not name.startswith("down_blocks.1.attentions.0"):
            continue
        attn = dual_unet.get_submodule(name.removesuffix(".processor"))
        x = torch.randn(4, 16, attn.to_q.in_features)
        text = torch.randn(4, 77, attn.to_k.in_features) if attn.is_cross_attention else None
        with torch.no_grad():
            ours = proc(attn, x, text)
            theirs = LoopReference(proc)(attn, x, text)
        assert_equal_up_to_rounding(ours, theirs, steps=reduction_depth(attn))  # one layer deep


def test_branch_routing(tiny_components):
    unet = tiny_components.unet
    install_dual_processors(unet, AdapterConfig(rank=4, saim=False))
    randomize_adapters(unet)
    sample, t, text = batch(2)
    with torch.no_grad():
        before = unet(sample, t, text).sample
        for branch, other in ((1, 0), (0, 1)):
            for p in dual_processors(unet).values():
                p.to_v_lora.up[branch] += 0.2
                p.to_q_lora.up[branch] -= 0.1
            after = unet(sample, t, text).sample
            # Bitwise: the same kernels on the same buffers and shapes; only the other branch's values moved.
            assert torch.equal(after[other::2], before[other::2])
            assert (after[branch::2] - before[branch::2]).abs().max() > 1e-3
            before = after


def test_bcm_alpha_zero_is_exact_no_op_and_only_global_rows_change(tiny_components):
    unet = tiny_components.unet
    install_dual_processors(unet, AdapterConfig(rank=4, saim=False, bcm=True))
    randomize_adapters(unet)
    pairs = 2
    sample, t, text = batch(pairs)
    bg, _, _ = batch(pairs, seed=5)
    folded = dict(
        sample=torch.cat([sample, bg[:pairs]]),
        timestep=torch.cat([t, t[::2]]),
        encoder_hidden_states=torch.cat([text, text[::2]]),
        cross_attention_kwargs={"background_rows": pairs},
    )
    no_bcm = copy.deepcopy(unet)
    for p in dual_processors(no_bcm).values():
        p.bcm = None
    # Against the copy (64-byte aligned weights, another batch size) products may block differently: every
    # comparison of two UNet calls below is up to rounding through the UNet's depth.
    steps = reduction_depth(unet)
    with torch.no_grad():
        without = no_bcm(**folded).sample[: 2 * pairs]
        assert_equal_up_to_rounding(
            without, unet(sample, t, text).sample, steps
        )  # background rows: no effect
        for p in dual_processors(unet).values():
            if p.bcm is not None:
                p.bcm.alpha.zero_()
        # Exact where exactness is defined: (1 - 0) * h + 0 * mlp(bg) is h bit for bit.
        fusion = next(p.bcm for p in dual_processors(unet).values() if p.bcm is not None)
        h = torch.randn(2, 16, fusion.mlp[0].in_features)
        assert torch.equal(fusion(h, torch.randn_like(h)), h)
        assert_equal_up_to_rounding(unet(**folded).sample[: 2 * pairs], without, steps)
        for p in dual_processors(unet).values():
            if p.bcm is not None:
                p.bcm.alpha.fill_(0.5)
        with_bcm = unet(**folded).sample[: 2 * pairs]
    assert_equal_up_to_rounding(with_bcm[1::2], without[1::2], steps)  # part rows: unchanged
    assert (with_bcm[0::2] - without[0::2]).abs().max() > 1e-3


def test_folded_background_equals_two_pass_reference(tiny_components):
    unet = tiny_components.unet
    install_dual_processors(unet, AdapterConfig(rank=4, saim=True, bcm=True))
    randomize_adapters(unet)
    pairs = 2
    sample, t, text = batch(pairs)
    bg, _, _ = batch(pairs, seed=7)
    with torch.no_grad():
        recorded: dict = {}
        unet(bg[:pairs], t[::2], text[::2], cross_attention_kwargs={"record_background": recorded})
        two_pass = unet(sample, t, text, cross_attention_kwargs={"background_states": recorded}).sample
        folded = unet(
            torch.cat([sample, bg[:pairs]]),
            torch.cat([t, t[::2]]),
            torch.cat([text, text[::2]]),
            cross_attention_kwargs={"background_rows": pairs},
        ).sample[: 2 * pairs]
    assert len(recorded) == 16  # every attn1 of the 16 transformer blocks
    # Other batch sizes (6 rows against 2 + 4), so other blockings: equal up to rounding.
    assert_equal_up_to_rounding(folded, two_pass, steps=reduction_depth(unet))


def test_odd_batch_and_bad_background_layout_are_clear_errors(dual_unet):
    """A wrong batch layout is the caller's bug (ValueError), not a user's input the CLI would show as one line."""
    sample, t, text = batch(2)
    with pytest.raises(ValueError, match="even number of pair rows") as err:
        dual_unet(sample[:3], t[:3], text[:3])
    assert not isinstance(err.value, InputError)
    with pytest.raises(ValueError, match="one background row per pair"):
        dual_unet(sample, t, text, cross_attention_kwargs={"background_rows": 2})


def _pipe(components, **options):
    return DualAnoDiffPipeline.from_components(components, AdapterConfig(**options))


def test_save_load_round_trip_is_exact(tiny_components, tiny_base_dir, tmp_path):
    pipe = _pipe(tiny_components, rank=4, bcm=True, text_encoder_rank=4)
    randomize_adapters(pipe.unet)
    with torch.no_grad():
        for n, p in pipe.text_encoder.named_parameters():
            if "lora_B" in n:
                p.normal_()
    pipe.save_adapters(tmp_path / "ad")
    saved = adapter_state_dict(pipe.unet, pipe.text_encoder)

    fresh = DualAnoDiffPipeline.from_pretrained(
        tiny_base_dir, AdapterConfig(rank=8)
    )  # other options: replaced on load
    meta = fresh.load_adapters(tmp_path / "ad")
    assert meta["adapter"]["rank"] == 4 and fresh.adapter_config.bcm
    loaded = adapter_state_dict(fresh.unet, fresh.text_encoder)
    assert saved.keys() == loaded.keys()
    assert any(k.startswith("text_encoder.") for k in saved)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_adapters_for_another_base_and_missing_files_are_refused(tiny_components, tmp_path):
    from dualanodiff.model.base import build_base

    pipe = _pipe(tiny_components, rank=4)
    pipe.save_adapters(tmp_path / "ad")
    other = build_base("tiny")
    other.unet = type(other.unet)(**{**other.unet.config, "block_out_channels": (32, 32, 64, 64)})
    other_pipe = DualAnoDiffPipeline.from_components(other, AdapterConfig(rank=4))
    with pytest.raises(InputError, match="trained for another base"):
        other_pipe.load_adapters(tmp_path / "ad")
    with pytest.raises(InputError, match="does not exist"):
        pipe.load_adapters(tmp_path / "nowhere")


def _official_state(pipe, seed=0) -> dict:
    randomize_adapters(pipe.unet, seed=seed)
    with torch.no_grad():
        for n, p in pipe.text_encoder.named_parameters():
            if "lora_" in n:
                p.normal_()
    return export_official_state_dict(adapter_state_dict(pipe.unet, pipe.text_encoder))


@pytest.mark.slow
@pytest.mark.parametrize("bcm", [False, True])
def test_official_checkpoint_import(tiny_components, tiny_base_dir, tmp_path, bcm):
    source = _pipe(tiny_components, rank=4, bcm=bcm, text_encoder_rank=4)
    official = _official_state(source)
    # The official key layout of METHOD section 10.
    proc = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
    assert f"{proc}.attn2.processor.to_q_lora.1.up.weight" in official
    assert f"{proc}.attn2.processor.temporal_o.bias" in official
    assert "text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.down.weight" in official
    if bcm:
        assert f"{proc}.attn1.processor.chained_proc.to_k_lora.0.down.weight" in official
        assert official[f"{proc}.attn1.processor.chained_proc.temporal_a"].shape == (1,)
    torch.save(official, tmp_path / "official.bin")

    fresh = DualAnoDiffPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=32))
    config = fresh.load_official_checkpoint(tmp_path / "official.bin")
    assert (config.rank, config.bcm, config.background_latent_scaling) == (4, bcm, "official")
    ours = adapter_state_dict(source.unet, source.text_encoder)
    imported = adapter_state_dict(fresh.unet, fresh.text_encoder)
    assert all(torch.equal(ours[k], imported[k]) for k in ours) and ours.keys() == imported.keys()
    assert export_official_state_dict(imported).keys() == official.keys()

    # The imported model's forward equals the independent loop over the same imported weights.
    pairs = 2
    sample, t, text = batch(pairs)
    kwargs = {}
    if bcm:
        sample, t = torch.cat([sample, sample[:pairs] * 0.5]), torch.cat([t, t[::2]])
        text, kwargs = torch.cat([text, text[::2]]), {"cross_attention_kwargs": {"background_rows": pairs}}
    with torch.no_grad():
        ours = fresh.unet(sample, t, text, **kwargs).sample
        theirs = reference_unet(fresh.unet)(sample, t, text, **kwargs).sample
    assert_equal_up_to_rounding(ours, theirs, steps=reduction_depth(fresh.unet))  # as in the loop test


def test_official_checkpoint_that_does_not_fit_is_refused(tiny_components, tmp_path):
    pipe = _pipe(tiny_components, rank=4)
    official = _official_state(pipe)
    key = next(k for k in official if k.endswith("temporal_i.weight"))
    official[key] = torch.zeros(3, 3)
    torch.save(official, tmp_path / "bad.bin")
    with pytest.raises(InputError, match="do not fit this base"):
        pipe.load_official_checkpoint(tmp_path / "bad.bin")
    official.pop(key)
    official["unet.nonsense"] = torch.zeros(1)
    torch.save(official, tmp_path / "bad2.bin")
    with pytest.raises(InputError, match="unrecognised key"):
        pipe.load_official_checkpoint(tmp_path / "bad2.bin")
    with pytest.raises(InputError, match="not found"):
        pipe.load_official_checkpoint(tmp_path / "missing.bin")


# --- the authors' BCM layout, written from METHOD section 10's key list (not from our exporter) ---------------

_BCM_TENSORS = ("temporal_condition_mlp.", "temporal_a")


def _layers(unet):
    """(processor name, is attn1, hidden size, key/value input size) of every attention layer."""
    for name in unet.attn_processors:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        yield name, name.endswith("attn1.processor"), attn.to_q.out_features, attn.to_k.in_features


def _authors_bcm_checkpoint(unet, text_encoder, rank: int, seed: int = 0) -> dict:
    """A BCM state dict as their `save_lora_weights` writes it: attn1 under `chained_proc.` with its MLP and
    gate; attn2 at `processor.` with an unused MLP and a gate of 0; the text-encoder LoRA."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.05):
        return torch.randn(shape, generator=gen) * scale

    state = {}
    for name, is_attn1, c, kv in _layers(unet):
        prefix = f"unet.{name}.chained_proc." if is_attn1 else f"unet.{name}."
        for proj, fan_in in (("q", c), ("k", kv), ("v", kv), ("out", c)):
            for b in (0, 1):
                state[f"{prefix}to_{proj}_lora.{b}.down.weight"] = rand(rank, fan_in)
                state[f"{prefix}to_{proj}_lora.{b}.up.weight"] = rand(c, rank)
        state[f"{prefix}temporal_n.weight"] = 1 + rand(c)
        state[f"{prefix}temporal_n.bias"] = rand(c)
        for k in "iqkvo":
            state[f"{prefix}temporal_{k}.weight"] = rand(c, c, scale=0.2)
            state[f"{prefix}temporal_{k}.bias"] = rand(c)
        state[f"{prefix}temporal_condition_mlp.0.weight"] = rand(320, c, scale=0.1)
        state[f"{prefix}temporal_condition_mlp.0.bias"] = rand(320)
        state[f"{prefix}temporal_condition_mlp.1.weight"] = rand(c, 320, scale=0.1)
        state[f"{prefix}temporal_condition_mlp.1.bias"] = rand(c)
        state[f"{prefix}temporal_a"] = torch.tensor([0.3]) + rand(1) if is_attn1 else torch.zeros(1)
    d = text_encoder.config.hidden_size
    for i in range(text_encoder.config.num_hidden_layers):
        for proj in ("q", "k", "v", "out"):
            key = f"text_encoder.text_model.encoder.layers.{i}.self_attn.to_{proj}_lora"
            state[f"{key}.down.weight"], state[f"{key}.up.weight"] = rand(rank, d), rand(d, rank)
    return state


@pytest.mark.slow
def test_authors_bcm_checkpoint_is_its_non_bcm_parts_plus_the_fusion(tiny_base_dir, tmp_path):
    from dualanodiff.model.base import load_base

    components = load_base(tiny_base_dir)
    official = _authors_bcm_checkpoint(components.unet, components.text_encoder, rank=4)
    (tmp_path / "ckpt").mkdir()
    torch.save(official, tmp_path / "ckpt" / "pytorch_lora_weights.bin")  # their scripts pass the directory

    with_bcm = _pipe(components, rank=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # attn2's gates are 0: dropped without a word
        config = with_bcm.load_official_checkpoint(tmp_path / "ckpt")
    assert (config.rank, config.bcm, config.saim, config.text_encoder_rank) == (4, True, True, 4)

    # The same file without any BCM tensor and without the wrapper's prefix: a plain dual checkpoint.
    plain = {
        k.replace(".chained_proc.", "."): v for k, v in official.items() if not k.rpartition(".processor.")[2]
        .removeprefix("chained_proc.").startswith(_BCM_TENSORS)
    }  # fmt: skip
    torch.save(plain, tmp_path / "plain.bin")
    without_bcm = _pipe(load_base(tiny_base_dir), rank=32)
    assert not without_bcm.load_official_checkpoint(tmp_path / "plain.bin").bcm

    # ...plus the fusion of METHOD section 5, with the MLP and gate read straight from the file.
    fusions = {}
    for name, is_attn1, *_ in _layers(components.unet):
        if is_attn1:
            p = f"unet.{name}.chained_proc.temporal_"
            fusions[name] = tuple(
                official[p + k]
                for k in ("condition_mlp.0.weight", "condition_mlp.0.bias", "condition_mlp.1.weight")
            ) + (official[p + "condition_mlp.1.bias"], official[p + "a"])
    pairs = 2
    sample, t, text = batch(pairs)
    sample, t = torch.cat([sample, sample[:pairs] * 0.5]), torch.cat([t, t[::2]])
    text, kwargs = torch.cat([text, text[::2]]), {"cross_attention_kwargs": {"background_rows": pairs}}
    with torch.no_grad():
        ours = with_bcm.unet(sample, t, text, **kwargs).sample
        expected = reference_unet(without_bcm.unet, fusions)(sample, t, text, **kwargs).sample
        no_fusion = reference_unet(without_bcm.unet)(sample, t, text, **kwargs).sample
    # Other kernels (one row at a time, explicit softmax) on the same weights: up to rounding through the UNet.
    assert_equal_up_to_rounding(ours, expected, steps=reduction_depth(with_bcm.unet))
    assert (ours - no_fusion).abs().max() > 1e-3  # the fusion matters, so the comparison can fail


def test_unused_attn2_gate_that_is_not_zero_warns(tiny_components, tmp_path):
    official = _authors_bcm_checkpoint(tiny_components.unet, tiny_components.text_encoder, rank=4)
    key = next(k for k in official if k.endswith("attn2.processor.temporal_a"))
    official[key] = torch.tensor([0.25])
    torch.save(official, tmp_path / "pytorch_lora_weights.bin")
    pipe = _pipe(tiny_components, rank=4)
    with pytest.warns(UserWarning, match="never uses them"):
        assert pipe.load_official_checkpoint(tmp_path / "pytorch_lora_weights.bin").bcm


def test_checkpoint_directory_without_weights_is_refused(tiny_components, tmp_path):
    with pytest.raises(InputError, match="no pytorch_lora_weights"):
        _pipe(tiny_components, rank=4).load_official_checkpoint(tmp_path)


# Their processor's modules, named as in their code (METHOD section 10), and their loader's strict loading.
class _TheirLoRALayer(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, rank: int):
        super().__init__()
        self.down = nn.Linear(fan_in, rank, bias=False)
        self.up = nn.Linear(rank, fan_out, bias=False)


class _TheirProcessor(nn.Module):
    def __init__(self, hidden: int, kv: int, rank: int, bcm: bool):
        super().__init__()
        self.to_q_lora = nn.ModuleList(_TheirLoRALayer(hidden, hidden, rank) for _ in range(2))
        self.to_k_lora = nn.ModuleList(_TheirLoRALayer(kv, hidden, rank) for _ in range(2))
        self.to_v_lora = nn.ModuleList(_TheirLoRALayer(kv, hidden, rank) for _ in range(2))
        self.to_out_lora = nn.ModuleList(_TheirLoRALayer(hidden, hidden, rank) for _ in range(2))
        self.temporal_n = nn.LayerNorm(hidden)
        for k in "iqkvo":
            setattr(self, f"temporal_{k}", nn.Linear(hidden, hidden))
        if bcm:  # every processor of their BCM code has these; only attn1's (wrapped) are used
            self.temporal_condition_mlp = nn.Sequential(nn.Linear(hidden, 320), nn.Linear(320, hidden))
            self.temporal_a = nn.Parameter(torch.zeros(1))


class _TheirReferenceOnly(nn.Module):
    def __init__(self, chained_proc: nn.Module):
        super().__init__()
        self.chained_proc = chained_proc


def _load_as_the_authors_do(official, unet, text_encoder, rank: int, bcm: bool) -> dict:
    """Group the keys per processor and `load_state_dict` each strictly, as their loader does; every key of the
    file must land somewhere. Returns the loaded modules."""
    modules, used = {}, 0
    for name, is_attn1, hidden, kv in _layers(unet):
        proc = _TheirProcessor(hidden, kv, rank, bcm)
        module = _TheirReferenceOnly(proc) if bcm and is_attn1 else proc
        prefix = f"unet.{name}."
        part = {k[len(prefix) :]: v for k, v in official.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)
        modules[name], used = module, used + len(part)
    d = text_encoder.config.hidden_size
    text_layers = text_encoder.config.num_hidden_layers if any(k.startswith("text_") for k in official) else 0
    for i in range(text_layers):
        layer = nn.Module()
        for proj in ("q", "k", "v", "out"):
            setattr(layer, f"to_{proj}_lora", _TheirLoRALayer(d, d, rank))
        prefix = f"text_encoder.text_model.encoder.layers.{i}.self_attn."
        part = {k[len(prefix) :]: v for k, v in official.items() if k.startswith(prefix)}
        layer.load_state_dict(part, strict=True)
        used += len(part)
    assert used == len(official)
    return modules


@pytest.mark.slow
@pytest.mark.parametrize("bcm", [False, True])
def test_our_export_loads_in_their_strict_loader(tiny_components, tiny_base_dir, tmp_path, bcm):
    from dualanodiff.model.base import load_base

    pipe = _pipe(tiny_components, rank=4, bcm=bcm, text_encoder_rank=4, background_latent_scaling="official")
    randomize_adapters(pipe.unet)
    path = pipe.save_official_checkpoint(tmp_path / "export")
    assert path.name == "pytorch_lora_weights.bin"
    official = torch.load(path, weights_only=True)
    modules = _load_as_the_authors_do(official, pipe.unet, pipe.text_encoder, rank=4, bcm=bcm)

    ours = dual_processors(pipe.unet)
    name1 = next(n for n in ours if n.endswith("attn1.processor"))
    name2 = name1.replace("attn1", "attn2")
    attn1 = modules[name1].chained_proc if bcm else modules[name1]
    assert torch.equal(attn1.to_q_lora[1].up.weight, ours[name1].to_q_lora.up[1])
    assert torch.equal(attn1.temporal_o.bias, ours[name1].saim.proj_out.bias)
    if bcm:
        assert torch.equal(attn1.temporal_condition_mlp[1].weight, ours[name1].bcm.mlp[1].weight)
        assert torch.equal(attn1.temporal_a, ours[name1].bcm.alpha)
        assert modules[name2].temporal_a.item() == 0.0  # attn2's unused gate at its initial value
    # And back: the export imports to the same adapters.
    fresh = _pipe(load_base(tiny_base_dir), rank=8)
    fresh.load_official_checkpoint(tmp_path / "export")
    exported = adapter_state_dict(pipe.unet, pipe.text_encoder)
    imported = adapter_state_dict(fresh.unet, fresh.text_encoder)
    assert exported.keys() == imported.keys()
    assert all(torch.equal(exported[k], imported[k]) for k in exported)


@pytest.mark.slow
def test_export_without_saim_is_the_identity_in_their_layout(tiny_components, tiny_base_dir, tmp_path):
    """Their processor always runs SAIM; an adapter set without it is written with a zero output projection."""
    from dualanodiff.model.base import load_base

    pipe = _pipe(tiny_components, rank=4, saim=False, text_encoder_rank=0)
    randomize_adapters(pipe.unet)
    official = torch.load(pipe.save_official_checkpoint(tmp_path), weights_only=True)
    _load_as_the_authors_do(official, pipe.unet, pipe.text_encoder, rank=4, bcm=False)
    assert all(not v.any() for k, v in official.items() if "temporal_o" in k)
    fresh = _pipe(load_base(tiny_base_dir), rank=4)
    fresh.load_official_checkpoint(tmp_path)
    assert fresh.adapter_config.saim
    sample, t, text = batch(2)
    with torch.no_grad():
        ours, theirs = fresh.unet(sample, t, text).sample, pipe.unet(sample, t, text).sample
    # SAIM's zero projection adds exact zeros, but the two UNets hold their weights in other buffers (MKL may
    # block their products differently): up to rounding through the UNet.
    assert_equal_up_to_rounding(ours, theirs, steps=reduction_depth(pipe.unet))


def test_parameter_counts_at_sd15_shape():
    from diffusers import UNet2DConditionModel

    from dualanodiff.model.base import SD15_UNET_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    rank = 32
    install_dual_processors(unet, AdapterConfig(rank=rank, saim=True, bcm=True))
    procs = dual_processors(unet)
    assert len(procs) == 32
    count = {"lora": 0, "saim": 0, "bcm": 0}
    expected = dict.fromkeys(count, 0)
    for name, p in procs.items():
        for param_name, param in p.named_parameters():
            count["lora" if "_lora" in param_name else param_name.split(".")[0]] += param.numel()
        # Counted from METHOD's shapes: two branches of rank-r (down, up) on q, k, v, out; SAIM's LayerNorm and
        # five C x C linears; BCM's C -> 320 -> C MLP and alpha on self-attention only.
        attn = unet.get_submodule(name.removesuffix(".processor"))
        c, kv = attn.to_q.in_features, attn.to_k.in_features
        expected["lora"] += 2 * rank * ((c + c) + 2 * (kv + c) + (c + c))
        expected["saim"] += 2 * c + 5 * (c * c + c)
        expected["bcm"] += 0 if attn.is_cross_attention else (c * 320 + 320) + (320 * c + c) + 1
    assert count == expected  # integers: exact
    assert (round(count["lora"] / 1e6, 1), round(count["saim"] / 1e6)) == (12.8, 124)  # METHOD's figures


def test_two_token_attention_equals_softmax_attention():
    from dualanodiff.model.adapters import two_token_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(50, 2, 24, generator=gen) * 3 for _ in range(3))
    reference = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
    # Each output is a convex combination of v decided by one C-term dot product (q . (k0 - k1) against two
    # dot products and a softmax): C roundings in another order, at the output's magnitude.
    assert_equal_up_to_rounding(two_token_attention(q, k, v), reference, steps=q.shape[-1])


@pytest.mark.slow
def test_official_import_and_export_commands_round_trip_an_authors_file(
    tiny_base_dir, tiny_components, tmp_path
):
    import json

    from dualanodiff.cli import main

    official = _authors_bcm_checkpoint(tiny_components.unet, tiny_components.text_encoder, rank=4)
    (tmp_path / "theirs").mkdir()
    torch.save(official, tmp_path / "theirs" / "pytorch_lora_weights.bin")
    adapters, exported = tmp_path / "adapters", tmp_path / "exported"
    argv = ["official", "import", str(tmp_path / "theirs"), "--base", str(tiny_base_dir), "--out", str(adapters),
            "--category", "screw", "--anomaly", "thread_top"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((adapters / "adapter_config.json").read_text())
    assert meta["adapter"]["bcm"] and meta["adapter"]["background_latent_scaling"] == "official"
    assert meta["training"]["foreground"] == "u2net" and meta["training"]["category"] == "screw"
    argv = [
        "official",
        "export",
        "--adapters",
        str(adapters),
        "--base",
        str(tiny_base_dir),
        "--out",
        str(exported),
    ]
    assert main(argv) == 0
    back = torch.load(exported / "pytorch_lora_weights.bin", weights_only=True)
    assert back.keys() == official.keys()
    unused = [k for k in official if "attn2.processor.temporal_condition_mlp" in k]  # never used, not kept
    assert all(torch.equal(back[k], official[k]) for k in official if k not in unused)
    assert main(["official", "import", str(tmp_path / "nothing"), "--base", "x", "--out", "y"]) == 2
