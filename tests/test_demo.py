"""The demo: the shipped base (loads, deterministic, has learned the domain) and `dualanodiff demo --quick`."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import jaccard_score

from dualanodiff.demo_alignment import iou
from dualanodiff.demo_base import ASSETS, META_NAME, WEIGHTS_NAME, demo_base_folder, load_demo_base
from dualanodiff.errors import InputError
from dualanodiff.model.base import build_base, load_base
from dualanodiff.synthetic import synthetic_sample


@pytest.fixture(scope="module")
def demo_base():
    return load_demo_base()


def _normals(n: int = 6) -> torch.Tensor:
    # Split "testcheck": renders the pretraining never saw (it used "pretrain").
    imgs = [
        synthetic_sample(c, "testcheck", "good", i, 0, 64).image for c in ("pill", "weave") for i in range(n)
    ]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_shipped_weights_are_small_fp16_and_described():
    weights = ASSETS / WEIGHTS_NAME
    assert weights.stat().st_size < 8 * 2**20
    meta = json.loads((ASSETS / META_NAME).read_text())
    assert meta["config"]["resolution"] == 64 and meta["scaling_factor"] > 0
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
        assert {f.get_tensor(k).dtype for k in keys[:20]} == {torch.float16}
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("vae.") for k in keys)
    assert not any(k.startswith("text_encoder.") for k in keys)  # rebuilt from its seed instead


def test_shipped_base_loads_deterministically(demo_base):
    again = load_demo_base()
    for a, b in (
        (demo_base.unet, again.unet),
        (demo_base.vae, again.vae),
        (demo_base.text_encoder, again.text_encoder),
    ):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # SD 1.5's layout: 16 transformer blocks, 32 attention layers.
    assert len(demo_base.unet.attn_processors) == 32
    assert (
        demo_base.vae.config.scaling_factor == json.loads((ASSETS / META_NAME).read_text())["scaling_factor"]
    )


def test_diffusers_folder_round_trip(demo_base, tmp_path):
    folder = demo_base_folder(tmp_path / "base")
    loaded = load_base(folder)
    for a, b in ((demo_base.unet, loaded.unet), (demo_base.vae, loaded.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert loaded.vae.config.scaling_factor == demo_base.vae.config.scaling_factor


@torch.no_grad()
def test_vae_reconstructs_unseen_synthetic_images_unlike_a_random_one(demo_base):
    x = _normals()

    def err(vae):
        return float((vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean())

    trained, random = err(demo_base.vae), err(build_base("tiny").vae)
    assert trained < 0.15 < random  # mean absolute error in [-1, 1] units


@torch.no_grad()
def test_vae_keeps_the_part_images_mid_grey_canvas(demo_base):
    """The part branch's target is the defect on mid-grey (0 in [-1, 1]): the VAE must give grey back."""
    s = synthetic_sample("pill", "testcheck", "stain", 0, 0, 64)
    x = torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    part = x * torch.from_numpy(s.mask)[None, None].float()
    rec = demo_base.vae.decode(demo_base.vae.encode(part).latent_dist.mean).sample
    outside = torch.from_numpy(~s.mask)
    assert float(rec[0][:, outside].abs().mean()) < 0.06  # about 8 grey levels of 255


@torch.no_grad()
def test_unet_predicts_noise_on_unseen_normal_latents(demo_base):
    """The pretrained UNet's epsilon error is far below the random UNet's (about 1, the noise variance)."""
    from diffusers import DDPMScheduler

    vae = demo_base.vae
    z0 = vae.encode(_normals()).latent_dist.mean * vae.config.scaling_factor
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.full((z0.shape[0],), 400)
    zt = DDPMScheduler.from_config(demo_base.scheduler.config).add_noise(z0, noise, t)
    from dualanodiff.model.encode import encode_prompts

    text = encode_prompts(demo_base.tokenizer, demo_base.text_encoder, ["pill"] * 6 + ["weave"] * 6)
    trained = float((demo_base.unet(zt, t, text).sample - noise).pow(2).mean())
    random = float((build_base("tiny").unet(zt, t, text).sample - noise).pow(2).mean())
    assert trained < 0.5 * random


def test_missing_weights_name_the_folder(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path).replace("\\", "\\\\") + ".*demo_base.safetensors"):
        load_demo_base(tmp_path)


def test_iou_matches_sklearn():
    rng = np.random.default_rng(0)
    a, b = rng.random((16, 16)) < 0.3, rng.random((16, 16)) < 0.4
    assert iou(a, b) == jaccard_score(a.ravel(), b.ravel())  # one division of the same two counts: exact
    assert iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0


def test_demo_rejects_unknown_type(tmp_path):
    from dualanodiff.demo import DemoConfig, run_demo

    with pytest.raises(InputError, match="pill/hole"):
        run_demo(DemoConfig(out=str(tmp_path), quick=True, anomaly="hole", progress=False))


class _Report(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tag: str | None = None
        self.h2: list[str] = []
        self.td: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tag = tag
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self.tag == "h2":
            self.h2.append(data.strip())
        elif self.tag == "td":
            self.td.append(data.strip())

    def handle_endtag(self, tag):
        self.tag = None


def test_demo_quick_end_to_end(tmp_path, capsys):
    from dualanodiff.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    report = out / "report.html"
    assert str(report.resolve()) in printed and "[demo 5/5]" in printed

    parsed = _Report()
    parsed.feed(report.read_text(encoding="utf-8"))
    expected = [
        "What you are looking at",
        "Few-shot training images",
        "Generated pairs: whole image / anomaly part / mask overlay",
        "Baseline: Crop&Paste pairs",
        "Downstream localization",
        "Mask alignment",
        "Adapter training loss",
        "Settings",
    ]
    for heading in expected:
        assert any(h.startswith(heading) for h in parsed.h2), (heading, parsed.h2)
    for label in ("DualAnoDiff", "Crop&Paste", "no generated data"):
        assert label in parsed.td
    # Every picture is embedded and decodes; pill/spot has 13 images, so 4 few-shot (image, overlay) pairs.
    assert all(s.startswith("data:image/png;base64,") for s in parsed.srcs)
    for s in parsed.srcs:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    assert len(parsed.srcs) >= 2 * 4 + 3 * 8 + 2 * 6 + 1  # few-shot, triples, Crop&Paste, loss chart

    results = json.loads((out / "demo_results.json").read_text())
    assert {r["training data"] for r in results["localization"]} == {
        "DualAnoDiff",
        "Crop&Paste",
        "no generated data",
    }
    assert results["timings"]["total_s"] > 0
