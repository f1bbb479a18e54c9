"""Generation quality: Inception Score (torch-fidelity) and IC-LPIPS (CDC, Ojha et al. 2021), METHOD section 8.

Both need pretrained weights that machines without internet cannot download, so both take local files:
``inception_weights`` is torch-fidelity's own Inception v3 file and ``lpips_vgg_weights`` a torchvision
VGG16 state dict (``vgg16-397923af.pth``); the LPIPS linear layers ship inside the ``lpips`` wheel.
Without a path, the torch hub cache is searched (where torch-fidelity / torchvision would have put them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..progress import progress_bar
from ..weights import read_state_dict

ImageLike = np.ndarray | str | os.PathLike

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
# torch-fidelity caches its download under the first name; pytorch-fid's conversion has the same layout.
INCEPTION_FILENAMES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"
LPIPS_SIZE = 256


class UndefinedMetric(InputError):
    """A metric that the given images cannot define (too few of them); the protocol records it as None
    with this reason. Other input errors (an unreadable image) are not this and stop the evaluation."""


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _as_rgb(image: ImageLike) -> np.ndarray:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"images must be uint8 (H, W, 3) arrays, got {image.dtype} {image.shape}")
        return image
    from ..data.images import load_rgb

    return load_rgb(image)


def _cached_file(names: Sequence[str]) -> Path | None:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


# ------------------------------------------------------------------------------------ Inception Score


def resolve_inception_weights(path: str | os.PathLike | None) -> Path:
    """The Inception weights file to use: ``path``, else torch-fidelity's file in the torch hub cache."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"inception_weights: {path} does not exist")
        return path
    cached = _cached_file(INCEPTION_FILENAMES)
    if cached is None:
        raise InputError(
            "inception_weights: the Inception Score needs torch-fidelity's Inception v3 weights and none were "
            f"found in {Path(torch.hub.get_dir()) / 'checkpoints'}. Download {INCEPTION_URL} on a machine "
            "with internet and pass the file with inception_weights=<path> (CLI: --inception-weights PATH), "
            f"or put it in that cache folder as {INCEPTION_FILENAMES[0]}"
        )
    return cached


def load_inception(weights: str | os.PathLike | None = None, device: str | torch.device | None = None):
    """torch-fidelity's Inception v3 (``FeatureExtractorInceptionV3``) giving the unbiased logits for IS."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    path = resolve_inception_weights(weights)
    state = read_state_dict(path, "torch-fidelity's Inception v3 weights")
    # torch-fidelity reads a weights path with torch.load(weights_only=False), which runs whatever code a
    # hostile file holds; the tensors read safely above are handed to it as its "download" instead.
    try:
        with mock.patch.object(fidelity, "load_state_dict_from_url", return_value=state):
            model = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"])
    except (RuntimeError, KeyError, ValueError) as e:
        detail = str(e).strip().splitlines()[0]
        raise InputError(
            f"inception_weights: {path} is not torch-fidelity's Inception v3 state dict ({detail})"
        ) from e
    return model.to(_device(device))


def _batches_by_shape(images: Sequence[ImageLike], batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, H, W) batches of consecutive images that share a size (each image is resized by the model)."""
    batch: list[np.ndarray] = []
    for image in images:
        arr = _as_rgb(image)
        if batch and (len(batch) == batch_size or arr.shape != batch[0].shape):
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
        batch.append(arr)
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


@torch.no_grad()
def inception_logits(images: Sequence[ImageLike], model, batch_size: int = 32) -> torch.Tensor:
    """The (N, 1008) float64 logits torch-fidelity's IS uses (``logits_unbiased``)."""
    device = next(model.parameters()).device
    out = []
    for batch in progress_bar(_batches_by_shape(images, batch_size), desc="Inception", leave=False):
        out.append(model(batch.to(device))[0].double().cpu())
    return torch.cat(out)


def inception_score_from_logits(
    logits: torch.Tensor | np.ndarray, splits: int = 10, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """(mean, std) over ``splits`` of exp(E_x KL(p(y|x) || p(y))), torch-fidelity's implementation."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    logits = torch.as_tensor(logits)
    if logits.dim() != 2 or logits.shape[0] < splits:
        raise InputError(
            f"Inception Score needs at least {splits} images (one per split), got {logits.shape[0]}"
        )
    out = isc_features_to_metric(logits, splits=splits, shuffle=shuffle, rng_seed=seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def inception_score(
    images: Sequence[ImageLike],
    inception_weights: str | os.PathLike | None = None,
    splits: int = 10,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    seed: int = 2020,
    model=None,
) -> dict[str, float]:
    """Inception Score of generated whole images (uint8 arrays or files), torch-fidelity's Inception, 10 splits.

    Pass ``model`` (from :func:`load_inception`) to reuse one network over many anomaly types.
    """
    if len(images) < splits:
        raise InputError(f"Inception Score needs at least {splits} images (one per split), got {len(images)}")
    model = model if model is not None else load_inception(inception_weights, device)
    mean, std = inception_score_from_logits(inception_logits(images, model, batch_size), splits, True, seed)
    return {"is_mean": mean, "is_std": std, "n_images": len(images)}


# ----------------------------------------------------------------------------------------- IC-LPIPS


def resolve_vgg_weights(path: str | os.PathLike | None) -> Path:
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"lpips_vgg_weights: {path} does not exist")
        return path
    cached = _cached_file((VGG16_FILENAME,))
    if cached is None:
        raise InputError(
            "lpips_vgg_weights: IC-LPIPS needs torchvision's ImageNet VGG16 weights and none were found in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}. Download {VGG16_URL} on a machine with internet and "
            "pass it with lpips_vgg_weights=<path> (CLI: --lpips-vgg-weights PATH)"
        )
    return cached


def load_lpips_vgg(vgg_weights: str | os.PathLike | None = None, device: str | torch.device | None = None):
    """LPIPS-VGG (v0.1) with its calibrated linear layers and the VGG16 trunk read from a local file.

    ``pnet_rand=True`` stops lpips from downloading the trunk; the torchvision ``features.<i>.*`` tensors
    of the file are then copied into lpips' five slices (which keep torchvision's layer indices).
    """
    import lpips

    path = resolve_vgg_weights(vgg_weights)
    state = read_state_dict(path, "a torchvision VGG16 state dict (lpips_vgg_weights)")
    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    trunk = {}
    for name, tensor in model.net.state_dict().items():  # "slice<k>.<i>.weight" -> "features.<i>.weight"
        key = "features." + name.split(".", 1)[1]
        if key not in state or tuple(state[key].shape) != tuple(tensor.shape):
            raise InputError(
                f"lpips_vgg_weights: {path} is not a torchvision VGG16 state dict ({key} missing or misshapen)"
            )
        trunk[name] = state[key]
    model.net.load_state_dict(trunk)
    return model.eval().requires_grad_(False).to(_device(device))


def _lpips_input(image: ImageLike, size: int = LPIPS_SIZE) -> torch.Tensor:
    arr = _as_rgb(image)
    if arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
    return torch.tensor(arr).permute(2, 0, 1).float().div(127.5).sub(1.0)  # [-1, 1]


@torch.no_grad()
def lpips_features(
    model, images: Sequence[ImageLike], batch_size: int = 8, size: int = LPIPS_SIZE
) -> list[list[torch.Tensor]]:
    """Unit-normalised VGG activations per image (five layers), so each image goes through VGG once.

    LPIPS(a, b) = sum_l mean_xy lin_l((f_l(a) - f_l(b))^2): caching f turns the N*k + k*50^2/2 network
    passes of IC-LPIPS into N + k ones. :func:`lpips_from_features` must equal ``model(a, b)``.
    """
    import lpips

    device = next(model.parameters()).device
    feats: list[list[torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([_lpips_input(im, size) for im in images[i : i + batch_size]]).to(device)
        outs = model.net(model.scaling_layer(x))
        layers = [lpips.normalize_tensor(o).cpu() for o in outs]
        feats += [[layer[j] for layer in layers] for j in range(x.shape[0])]
    return feats


@torch.no_grad()
def lpips_from_features(model, a: list[torch.Tensor], b: Sequence[list[torch.Tensor]]) -> torch.Tensor:
    """LPIPS distances between one image's features ``a`` and each of ``b`` (a batch), shape (len(b),)."""
    device = next(model.parameters()).device
    total = torch.zeros(len(b), dtype=torch.float64)
    for layer, lin in enumerate(model.lins):
        fb = torch.stack([f[layer] for f in b]).to(device)
        diff = (a[layer].to(device)[None] - fb) ** 2
        total += lin(diff).mean(dim=(1, 2, 3)).double().cpu()
    return total


def _distances(model, a: list[torch.Tensor], bs: Sequence[list[torch.Tensor]], batch_size: int) -> np.ndarray:
    out = [lpips_from_features(model, a, bs[i : i + batch_size]) for i in range(0, len(bs), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def ic_lpips(
    generated: Sequence[ImageLike],
    centres: Sequence[ImageLike],
    lpips_vgg_weights: str | os.PathLike | None = None,
    max_per_cluster: int = 50,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    model=None,
    size: int = LPIPS_SIZE,
) -> dict[str, Any]:
    """Intra-cluster LPIPS: diversity of generated images around each few-shot real image (higher = more diverse).

    Each generated image joins its LPIPS-nearest centre (ties: the first); in every cluster the mean
    pairwise LPIPS over up to ``max_per_cluster`` random members (seeded) is taken; the result is the
    mean over clusters with at least two members. LPIPS-VGG at ``size`` x ``size`` (the protocol's 256),
    inputs in [-1, 1].
    """
    if not centres:
        raise InputError("IC-LPIPS needs the few-shot real images as cluster centres; none were given")
    if len(generated) < 2:
        raise UndefinedMetric(f"IC-LPIPS needs at least two generated images, got {len(generated)}")
    model = model if model is not None else load_lpips_vgg(lpips_vgg_weights, device)
    centre_feats = lpips_features(model, centres, batch_size, size)
    # Generated features are not kept: a cluster's members are recomputed below, so memory stays at
    # one batch here and at most ``max_per_cluster`` images there.
    assignment = np.zeros(len(generated), dtype=int)
    for start in progress_bar(range(0, len(generated), batch_size), desc="IC-LPIPS assign", leave=False):
        for j, f in enumerate(lpips_features(model, generated[start : start + batch_size], batch_size, size)):
            assignment[start + j] = int(np.argmin(_distances(model, f, centre_feats, batch_size)))
    rng = np.random.default_rng(seed)
    clusters = []
    for c in range(len(centres)):
        members = np.flatnonzero(assignment == c)
        if members.size > max_per_cluster:
            members = np.sort(rng.choice(members, size=max_per_cluster, replace=False))
        entry = {
            "centre": c,
            "size": int((assignment == c).sum()),
            "used": int(members.size),
            "mean_lpips": None,
        }
        if members.size >= 2:
            feats = lpips_features(model, [generated[i] for i in members], batch_size, size)
            dists = [_distances(model, feats[i], feats[i + 1 :], batch_size) for i in range(len(feats) - 1)]
            entry["mean_lpips"] = float(np.concatenate(dists).mean())
        clusters.append(entry)
    used = [c["mean_lpips"] for c in clusters if c["mean_lpips"] is not None]
    if not used:
        raise UndefinedMetric(
            f"IC-LPIPS: no cluster received two generated images ({len(generated)} images, {len(centres)} centres)"
        )
    return {
        "ic_lpips": float(np.mean(used)),
        "n_clusters_used": len(used),
        "assignment": assignment.tolist(),
        "clusters": clusters,
    }


def generation_quality(
    generated: Sequence[ImageLike],
    few_shot: Sequence[ImageLike],
    inception_model=None,
    lpips_model=None,
    inception_weights: str | os.PathLike | None = None,
    lpips_vgg_weights: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """IS and IC-LPIPS of one anomaly type's generated images (the per-type numbers of the paper)."""
    is_ = inception_score(generated, inception_weights, device=device, model=inception_model)
    ic = ic_lpips(generated, few_shot, lpips_vgg_weights, seed=seed, device=device, model=lpips_model)
    return {
        "is": is_["is_mean"],
        "is_std": is_["is_std"],
        "ic_lpips": ic["ic_lpips"],
        "n_images": len(generated),
    }
