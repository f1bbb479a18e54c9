"""The offline base: `make-tiny-base` folders, determinism, and loading errors."""

from __future__ import annotations

import hashlib

import pytest

from dualanodiff.cli import main as cli
from dualanodiff.errors import InputError
from dualanodiff.model.base import build_base, load_base


def _digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


@pytest.mark.slow
def test_make_tiny_base_is_a_complete_deterministic_sd_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    for name in ("a", "b"):
        assert cli(["make-tiny-base", "--out", str(tmp_path / name), "--seed", "3"]) == 0
    assert cli(["make-tiny-base", "--out", str(tmp_path / "c"), "--seed", "4"]) == 0
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert set(a) == {f"{m}/diffusion_pytorch_model.safetensors" for m in ("unet", "vae")} | {
        "text_encoder/model.safetensors"
    }
    assert a == b and a != c
    pipe = StableDiffusionPipeline.from_pretrained(
        tmp_path / "a", safety_checker=None, requires_safety_checker=False
    )
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer("a vfx with sks").input_ids == [
        49406,
        320,
        30149,
        593,
        48136,
        49407,
    ]  # real CLIP BPE
    assert len(pipe.unet.attn_processors) == 32  # SD 1.5's attention layout
    assert pipe.scheduler.config.clip_sample is False  # as SD 1.5's scheduler_config.json (DDIM reads it)


def test_tiny_base_has_sd15_block_structure():
    from dualanodiff.model.base import SD15_UNET_CONFIG

    tiny = build_base("tiny").unet.config
    for key in ("down_block_types", "up_block_types", "layers_per_block", "in_channels"):
        value = tuple(tiny[key]) if isinstance(tiny[key], list) else tiny[key]
        assert value == SD15_UNET_CONFIG[key], key


def test_offline_hub_id_that_is_not_cached_says_how_to_give_a_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(InputError, match="local diffusers folder"):
        load_base("someone/not-a-cached-model", local_files_only=True)
    with pytest.raises(InputError, match="not a diffusers Stable Diffusion folder"):
        load_base(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_base(str(tmp_path / "missing" / "folder"))
