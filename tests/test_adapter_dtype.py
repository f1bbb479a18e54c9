"""Adapters saved in fp32, bf16 or fp16 (`save_adapters(dtype=...)`, `dualanodiff train --save-dtype`): the file
holds that precision and says so, and loading casts to the model's precision, giving exactly the rounded values."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from dualanodiff.cli import main
from dualanodiff.errors import InputError
from dualanodiff.model.dual_unet import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    SAVE_DTYPES,
    AdapterConfig,
    adapter_state_dict,
    dual_processors,
)
from dualanodiff.pipeline import DualAnoDiffPipeline


def random_pipe(components) -> DualAnoDiffPipeline:
    pipe = DualAnoDiffPipeline.from_components(
        components, AdapterConfig(rank=4, bcm=True, text_encoder_rank=4)
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for proc in dual_processors(pipe.unet).values():
            for p in proc.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        for name, p in pipe.text_encoder.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return pipe


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_adapters_load_as_their_rounded_values(
    tiny_components, tiny_base_dir, tmp_path, dtype
):
    pipe = random_pipe(tiny_components)
    original = adapter_state_dict(pipe.unet, pipe.text_encoder)
    full, half = pipe.save_adapters(tmp_path / "fp32"), pipe.save_adapters(tmp_path / dtype, dtype=dtype)

    with safe_open(str(half / ADAPTER_WEIGHTS), "pt") as f:
        assert f.metadata()["dtype"] == dtype
        assert {f.get_tensor(k).dtype for k in f.keys()} == {SAVE_DTYPES[dtype]}
    assert json.loads((half / ADAPTER_CONFIG).read_text())["saved_dtype"] == dtype
    full_size, half_size = ((d / ADAPTER_WEIGHTS).stat().st_size for d in (full, half))
    assert half_size < 0.55 * full_size

    fresh = DualAnoDiffPipeline.from_pretrained(
        tiny_base_dir, AdapterConfig(rank=8)
    )  # fp32: the half values are upcast
    fresh.load_adapters(half)
    loaded = adapter_state_dict(fresh.unet, fresh.text_encoder)
    assert loaded.keys() == original.keys()
    for key, value in original.items():
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], value.to(SAVE_DTYPES[dtype]).float()), key
    assert any(not torch.equal(loaded[k], original[k]) for k in original)  # the rounding is real

    low = DualAnoDiffPipeline.from_pretrained(
        tiny_base_dir, AdapterConfig(rank=8), torch_dtype=torch.bfloat16
    )
    low.load_adapters(half)  # a bf16 model: everything arrives in bf16
    assert {v.dtype for v in adapter_state_dict(low.unet, low.text_encoder).values()} == {torch.bfloat16}


@pytest.mark.slow
def test_bad_save_dtypes_are_refused(tiny_components, tmp_path):
    pipe = random_pipe(tiny_components)
    with pytest.raises(InputError, match="save dtype must be one of fp32, bf16, fp16"):
        pipe.save_adapters(tmp_path / "x", dtype="int8")
    with torch.no_grad():
        next(iter(dual_processors(pipe.unet).values())).to_q_lora.up[0, 0, 0] = 1e5
    with pytest.raises(InputError, match="beyond fp16's range: save the adapters as bf16 or fp32"):
        pipe.save_adapters(tmp_path / "x", dtype="fp16")
    assert not (tmp_path / "x" / ADAPTER_WEIGHTS).exists()
    pipe.save_adapters(tmp_path / "x", dtype="bf16")  # bf16 has fp32's range


@pytest.mark.slow
def test_train_cli_save_dtype(synthetic_pill_root, tiny_base_dir, tmp_path, capsys):
    argv = [
        "train", "--data", str(synthetic_pill_root), "--category", "pill", "--anomaly", "spot",
        "--base", str(tiny_base_dir), "--out", str(tmp_path), "--max-steps", "1", "--batch-size", "1",
        "--rank", "2", "--text-encoder-rank", "2", "--no-progress", "--save-dtype", "bf16",
    ]  # fmt: skip
    assert main(argv) == 0
    run_dir = tmp_path / "pill" / "spot"
    with safe_open(str(run_dir / ADAPTER_WEIGHTS), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    meta = json.loads((run_dir / ADAPTER_CONFIG).read_text())
    assert meta["saved_dtype"] == "bf16" and meta["training"]["save_dtype"] == "bf16"
    DualAnoDiffPipeline.from_pretrained(tiny_base_dir).load_adapters(run_dir)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv[:-1], "fp8"])
    assert exit_info.value.code == 2 and "argument --save-dtype: invalid choice" in capsys.readouterr().err
