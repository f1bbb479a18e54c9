"""Inception Score and IC-LPIPS, offline: weight files with random values are written by the tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualanodiff.errors import InputError
from dualanodiff.evaluate.quality import (
    ic_lpips,
    inception_logits,
    inception_score,
    inception_score_from_logits,
    load_inception,
    load_lpips_vgg,
    lpips_features,
    lpips_from_features,
)

from rounding import assert_equal_up_to_rounding, reduction_depth, rounding_tolerance


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A file with torch-fidelity's Inception keys and shapes, random values (built without any download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None)
        torch.manual_seed(0)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"])
    path = tmp_path_factory.mktemp("weights") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """torchvision VGG16 ``features.*`` tensors with random values, as in vgg16-397923af.pth."""
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.vgg16().features
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def lpips_model(vgg_file):
    return load_lpips_vgg(vgg_file, device="cpu")


def _numpy_is(logits: np.ndarray, splits: int) -> tuple[float, float]:
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    n = len(p)
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        q = part.mean(axis=0)
        kl = np.sum(part * (np.log(part) - np.log(q)), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_is_maths_matches_numpy_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (50, 12))
    mean, std = inception_score_from_logits(logits, splits=5, shuffle=False)
    ref_mean, ref_std = _numpy_is(logits, 5)
    # float64, the same sums in another order: each logit enters them once, at the score's magnitude (the
    # standard deviation is a difference of scores, so it carries their rounding too).
    steps = logits.size
    assert_equal_up_to_rounding(mean, ref_mean, steps, np.float64)
    assert_equal_up_to_rounding(std, ref_std, steps, np.float64, magnitude=ref_mean)
    # Shuffled: torch-fidelity permutes with RandomState(seed) before splitting.
    perm = np.random.RandomState(7).permutation(50)
    shuffled = inception_score_from_logits(logits, 5, True, 7)[0]
    assert_equal_up_to_rounding(shuffled, _numpy_is(logits[perm], 5)[0], steps, np.float64)
    # Identical predictions: no information, IS = 1. One-hot over 10 classes, evenly: IS = 10.
    same = np.tile(logits[:1], (40, 1))
    assert_equal_up_to_rounding(inception_score_from_logits(same, 4)[0], 1.0, same.size, np.float64)
    one_hot = np.eye(10)[np.arange(40) % 10] * 80
    assert_equal_up_to_rounding(inception_score_from_logits(one_hot, 1)[0], 10.0, one_hot.size, np.float64)
    with pytest.raises(InputError, match="at least 10 images"):
        inception_score_from_logits(logits[:5])


@pytest.mark.slow
def test_inception_score_pipeline_equals_torch_fidelity(inception_file):
    import torch_fidelity

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(6)]
    model = load_inception(inception_file, device="cpu")
    ours = inception_score(images, splits=3, batch_size=4, model=model)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return torch.from_numpy(images[i]).permute(2, 0, 1).contiguous()

    ref = torch_fidelity.calculate_metrics(
        input1=Images(),
        isc=True,
        isc_splits=3,
        feature_extractor_weights_path=str(inception_file),
        cuda=False,
        batch_size=4,
        save_cpu_ram=True,
        cache=False,
        verbose=False,
    )
    # The same network on the same batches, but its own copy of the weights: logits equal up to rounding
    # through the Inception's depth, and the score with them (its std, a difference of scores, too).
    depth = reduction_depth(model)
    mean = ref["inception_score_mean"]
    assert_equal_up_to_rounding(ours["is_mean"], mean, depth)
    assert_equal_up_to_rounding(ours["is_std"], ref["inception_score_std"], depth, magnitude=mean)
    # Identical images in one batch: logits equal up to delta = rounding through the network; KL(p_i || mean p)
    # and with it IS - 1 are quadratic in delta, plus the score's own float64 sums over 4 x classes terms.
    same = inception_score([images[0]] * 4, splits=2, batch_size=4, model=model)
    logits = inception_logits(images[:1], model)
    delta = rounding_tolerance(float(logits.abs().max()), depth)
    assert abs(same["is_mean"] - 1.0) <= delta**2 + rounding_tolerance(1.0, 4 * logits.shape[1], np.float64)


def test_missing_inception_weights_say_how_to_pass_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(InputError, match=r"inception_weights=<path>.*--inception-weights"):
        load_inception(None)
    with pytest.raises(InputError, match="does not exist"):
        load_inception(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(InputError, match="not torch-fidelity's Inception"):
        load_inception(bad)
    with pytest.raises(InputError, match="lpips_vgg_weights=<path>"):
        load_lpips_vgg(None)
    with pytest.raises(InputError, match="not a torchvision VGG16"):
        load_lpips_vgg(bad)


@pytest.mark.slow
def test_lpips_features_equal_lpips_forward(lpips_model, vgg_file):
    state = torch.load(vgg_file, weights_only=True)
    assert torch.equal(lpips_model.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(lpips_model.net.slice5, "28").weight, state["features.28.weight"])
    rng = np.random.default_rng(2)
    a, b, c = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3))
    fa, fb, fc = lpips_features(lpips_model, [a, b, c], size=64)
    ours = lpips_from_features(lpips_model, fa, [fb, fc])
    to = lambda im: torch.from_numpy(im).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
    ref = [lpips_model(to(a), to(x)).item() for x in (b, c)]
    # Features in another batch, so up to rounding through the network; squared differences double it.
    assert_equal_up_to_rounding(ours.numpy(), ref, steps=2 * reduction_depth(lpips_model))


@pytest.mark.slow
def test_ic_lpips_zero_for_identical_images_and_assignment(lpips_model):
    dark, bright = np.full((64, 64, 3), 20, np.uint8), np.full((64, 64, 3), 230, np.uint8)
    dark[20:30, 20:30] = 60
    bright[5:15, 40:60] = 200
    rng = np.random.default_rng(3)

    def near(img):
        return np.clip(img.astype(int) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)

    # Identical generated images: every pairwise distance is 0 (default 256 x 256 path, resized). Identical rows
    # of a batch may still round apart by delta (unit-normalised features, through the network); a distance is
    # a sum of squared differences weighted by the lin layers: at most their total weight x delta^2.
    delta = rounding_tolerance(1.0, reduction_depth(lpips_model))
    lin_weight = sum(float(p.sum()) for p in lpips_model.lins.parameters())
    assert 0.0 <= ic_lpips([dark] * 3, [dark], model=lpips_model)["ic_lpips"] <= lin_weight * delta**2

    generated = [near(dark), near(bright), near(dark), near(bright), near(bright)]
    res = ic_lpips(generated, [dark, bright], model=lpips_model, size=64)
    assert res["assignment"] == [0, 1, 0, 1, 1]
    assert [c["size"] for c in res["clusters"]] == [2, 3] and res["n_clusters_used"] == 2
    # Brute force with lpips' own forward: nearest centre, then mean pairwise distance per cluster.
    to = lambda im: torch.from_numpy(im).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
    d = lambda x, y: lpips_model(to(x), to(y)).item()  # noqa: E731

    big, cents = generated, (dark, bright)  # already at size 64: no resizing
    assert [int(np.argmin([d(g, c) for c in cents])) for g in big] == res["assignment"]
    cluster0 = d(big[0], big[2])
    cluster1 = np.mean([d(big[1], big[3]), d(big[1], big[4]), d(big[3], big[4])])
    # As in test_lpips_features_equal_lpips_forward: other batches, squared differences.
    assert_equal_up_to_rounding(res["ic_lpips"], (cluster0 + cluster1) / 2, 2 * reduction_depth(lpips_model))

    # Clusters larger than max_per_cluster are subsampled with the seed: same seed, same value.
    many = [near(dark) for _ in range(5)]
    r1 = ic_lpips(many, [dark], max_per_cluster=3, seed=4, model=lpips_model, size=64)
    r2 = ic_lpips(many, [dark], max_per_cluster=3, seed=4, model=lpips_model, size=64)
    assert r1["ic_lpips"] == r2["ic_lpips"] and r1["clusters"][0]["used"] == 3
    with pytest.raises(InputError, match="no cluster received two"):
        ic_lpips([near(dark), near(bright)], [dark, bright], model=lpips_model, size=64)
