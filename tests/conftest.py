"""Shared fixtures: a tiny SD-structured base, built once per session, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def one_thread():
    """Every model in the tests is tiny: one thread is faster, and far faster on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_pill_root(tmp_path_factory):
    """A small 64 px synthetic MVTec-layout tree: one object category, four defect types of six images."""
    from dualanodiff.synthetic import make_synthetic

    counts = {"crack": 6, "scratch": 6, "spot": 6, "stain": 6}
    return make_synthetic(
        tmp_path_factory.mktemp("data"), resolution=64, n_train_good=6, n_test_good=3,
        categories=["pill"], defect_counts={"pill": counts},
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A complete diffusers folder written by `make-tiny-base` (64 px, seed 0)."""
    from dualanodiff.model.base import build_base, save_base

    out = tmp_path_factory.mktemp("tiny_base")
    save_base(build_base("tiny", seed=0, resolution=64), out)
    return out


@pytest.fixture
def tiny_components(tiny_base_dir):
    """Freshly loaded (so tests may mutate them) base components."""
    from dualanodiff.model.base import load_base

    return load_base(tiny_base_dir)


@pytest.fixture(scope="session")
def random_quality_weights(tmp_path_factory):
    """Inception and VGG16 files with the real keys and shapes, random values (no download)."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    import torchvision

    folder = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None)
        torch.manual_seed(0)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"])
    torch.save(model.state_dict(), folder / "inception.pth")
    torch.manual_seed(0)
    features = torchvision.models.vgg16().features
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, folder / "vgg16.pth")
    return folder / "inception.pth", folder / "vgg16.pth"


@pytest.fixture(scope="session")
def tiny_adapters(tiny_base_dir, tmp_path_factory):
    """Adapters for the tiny base, saved to disk, with non-zero LoRA-up weights (so the branches differ)."""
    import torch

    from dualanodiff.model.dual_unet import AdapterConfig
    from dualanodiff.pipeline import DualAnoDiffPipeline

    pipe = DualAnoDiffPipeline.from_pretrained(tiny_base_dir, AdapterConfig(rank=4))
    with torch.no_grad():
        for proc in pipe.adapter_modules():
            for name, param in proc.named_parameters():
                if name.endswith("up") or name.startswith("lora_B"):
                    param.normal_(0, 0.02)
    return pipe.save_adapters(tmp_path_factory.mktemp("tiny_adapters") / "adapters")
