"""Downstream localization: train DRAEM's U-Net on normal + generated data, score it on the real test set.

This is how the paper measures whether generated (image, mask) pairs are useful (METHOD section 8).
One U-Net per category; each training sample is, with probability 1/2, a normal ``train/good`` image
with an empty mask, else a generated pair (anomaly type drawn uniformly, then a pair of that type, as
the authors' loader does). Focal loss on the softmax, Adam, learning rate x0.2 at the milestones.

Model selection: the authors keep the epoch with the best test-set score, which flatters every number.
By default a slice of the generated pairs and normal images is held out of training and the epoch is
chosen on it; ``select_on="test"`` reproduces the authors and the result says ``"test (optimistic)"``.
The selection score is the authors' sum: image AUROC + pixel AUROC + pixel AP + AU-PRO.

Every epoch writes a checkpoint, so an interrupted run resumes where it stopped; results are JSON
written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..checks import check_float, check_int, check_loss, check_seed
from ..errors import InputError
from ..io import atomic_path, write_json_atomic
from ..locking import output_lock
from ..progress import progress_bar
from .metrics import LocalizationMetrics, localization_metrics
from .unet import DiscriminativeSubNetwork, draem_weights_init, focal_loss

if TYPE_CHECKING:
    from ..data.generated import GeneratedPair
    from ..data.mvtec import DefectSample


def available_cores(most: int = 4) -> int:
    """Threads worth starting for image decoding: the cores this process may use, at most ``most`` (a
    2-core machine given 4 decoders only slows itself down, and the results then record a false 4)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(most, cores))


@dataclass
class LocalizationConfig:
    """The protocol's settings (paper defaults). ``num_workers`` = threads decoding images for the cache."""

    epochs: int = 200
    samples_per_epoch: int = 500
    batch_size: int = 16
    lr: float = 1e-4
    lr_milestones: tuple[int, ...] = (160, 180)
    lr_gamma: float = 0.2
    resolution: int = 256
    base_channels: int = 64
    runs: int = 3  # the supplementary trains three times and reports the best run (as the CLI)
    select_on: str = "heldout"  # "heldout" | "test"
    heldout_fraction: float = 0.1
    seed: int = 0
    device: str | None = None  # None: cuda if available
    num_workers: int = field(default_factory=available_cores)
    paper_compat_f1: bool = False  # the authors' 21-threshold pixel F1 instead of the exact one
    eval_batch_size: int = 16

    def validate(self) -> None:
        if self.select_on not in ("heldout", "test"):
            raise InputError(f"--select-on: must be 'heldout' or 'test', got {self.select_on!r}")
        if check_int(self.resolution, "--resolution", minimum=32) % 32:
            raise InputError(
                f"--resolution: must be a multiple of 32 (the U-Net pools 2x five times), got {self.resolution}"
            )
        for name in ("epochs", "runs", "base_channels", "eval_batch_size"):
            check_int(getattr(self, name), f"--{name.replace('_', '-')}", minimum=1)
        # Batch norm needs two samples in a batch, and so in an epoch (a last batch of one is dropped).
        check_int(self.batch_size, "--batch-size", minimum=2)
        check_int(self.samples_per_epoch, "--samples-per-epoch", minimum=2)
        check_float(self.lr, "--lr", above=0)
        check_seed(self.seed)
        if not 0.0 < self.heldout_fraction < 1.0 and self.select_on == "heldout":
            raise InputError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must agree with to be resumed (not device or worker count)."""
        d = asdict(self)
        for k in ("device", "num_workers", "eval_batch_size", "runs"):
            d.pop(k)
        d["lr_milestones"] = list(d["lr_milestones"])
        return d


# ---------------------------------------------------------------------------------------------- data


def _resize_rgb(image: np.ndarray, resolution: int) -> np.ndarray:
    if image.shape[:2] == (resolution, resolution):
        return image
    return np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.BILINEAR))


def _load_set(
    items: Sequence[tuple[Path, Path | None]], resolution: int, workers: int, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decode (image, mask-or-None) files into uint8 (N, R, R, 3) images and bool (N, R, R) masks; a mask
    whose size differs from its image's is refused, naming both."""
    from ..data.images import load_mask_for, load_rgb

    def one(item: tuple[Path, Path | None]) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = item
        image = load_rgb(image_path)
        if mask_path is None:
            mask = np.zeros((resolution, resolution), bool)
        else:
            mask = load_mask_for(mask_path, image_path, image.shape, size=(resolution, resolution))
        return _resize_rgb(image, resolution), mask

    images = np.zeros((len(items), resolution, resolution, 3), np.uint8)
    masks = np.zeros((len(items), resolution, resolution), bool)
    if not items:
        return images, masks
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        bar = progress_bar(pool.map(one, items), total=len(items), desc=desc, leave=False)
        for i, (im, m) in enumerate(bar):
            images[i], masks[i] = im, m
    return images, masks


@dataclass
class _Data:
    train_normal: np.ndarray
    train_gen: np.ndarray
    train_gen_masks: np.ndarray
    train_gen_groups: list[np.ndarray]  # indices into train_gen, one array per anomaly type
    held_images: np.ndarray
    held_masks: np.ndarray
    test_images: np.ndarray
    test_masks: np.ndarray
    test_labels: np.ndarray
    counts: dict[str, int]


def _heldout_count(n: int, fraction: float) -> int:
    return 0 if n < 2 else min(n - 1, max(1, round(fraction * n)))


def _prepare_data(
    normal_train: Sequence[Path],
    generated: Sequence[GeneratedPair],
    test_set: Sequence[DefectSample],
    cfg: LocalizationConfig,
) -> _Data:
    if not normal_train:
        raise InputError("localization needs normal training images (train/good); none were given")
    if not test_set:
        raise InputError("localization needs a test set; it is empty")
    for s in test_set:
        if s.mask is None and s.anomaly_type != "good":
            raise InputError(f"{s.image}: test image of type {s.anomaly_type!r} has no ground-truth mask")
    rng = np.random.default_rng(cfg.seed)
    normal = [Path(p) for p in normal_train]
    gen = list(generated)
    held_normal, held_gen = [], []
    if cfg.select_on == "heldout":
        perm = rng.permutation(len(normal))
        k = _heldout_count(len(normal), cfg.heldout_fraction)
        held_normal = [normal[i] for i in sorted(perm[:k])]
        normal = [normal[i] for i in sorted(perm[k:])]
        perm = rng.permutation(len(gen))
        k = _heldout_count(len(gen), cfg.heldout_fraction)
        held_gen = [gen[i] for i in sorted(perm[:k])]
        gen = [gen[i] for i in sorted(perm[k:])]
    res, workers = cfg.resolution, cfg.num_workers
    train_normal, _ = _load_set([(p, None) for p in normal], res, workers, "normal images")
    train_gen, train_gen_masks = _load_set([(g.image, g.mask) for g in gen], res, workers, "generated pairs")
    held_items = [(p, None) for p in held_normal] + [(g.image, g.mask) for g in held_gen]
    held_images, held_masks = _load_set(held_items, res, workers, "held-out")
    test_images, test_masks = _load_set([(s.image, s.mask) for s in test_set], res, workers, "test set")
    _refuse_all_empty([s.mask for s in test_set if s.mask is not None], test_masks, "ground-truth")
    _refuse_all_empty(
        [g.mask for g in gen] + [g.mask for g in held_gen],
        np.concatenate([train_gen_masks, held_masks[len(held_normal) :]]),
        "generated",
    )
    types = sorted({str(g.record.get("anomaly_type", "")) for g in gen})
    groups = [
        np.array([i for i, g in enumerate(gen) if str(g.record.get("anomaly_type", "")) == t]) for t in types
    ]
    return _Data(
        train_normal=train_normal,
        train_gen=train_gen,
        train_gen_masks=train_gen_masks,
        train_gen_groups=groups,
        held_images=held_images,
        held_masks=held_masks,
        test_images=test_images,
        test_masks=test_masks,
        test_labels=np.array([s.anomaly_type != "good" for s in test_set]),
        counts={
            "train_normal": len(normal),
            "train_generated": len(gen),
            "heldout_normal": len(held_normal),
            "heldout_generated": len(held_gen),
            "test": len(test_set),
            "test_anomalous": int(sum(s.anomaly_type != "good" for s in test_set)),
        },
    )


def _refuse_all_empty(paths: Sequence[Path], masks: np.ndarray, what: str) -> None:
    """A set of masks with not one pixel set is a reading problem (or a wrong folder), not data: refuse it,
    naming a file, instead of training or scoring against nothing."""
    if paths and not masks.any():
        raise InputError(
            f"{paths[0]}: all {len(paths)} {what} masks are empty (this one included); the masks must mark the "
            "defect with values of at least half range (e.g. 255 in 8 bits), or with 1 in a 0/1 label file"
        )


def _epoch_batches(
    data: _Data, cfg: LocalizationConfig, seed: int, epoch: int
) -> list[list[tuple[int, int]]]:
    """The epoch's samples as (source, index) batches; source 0 = normal, 1 = generated. Deterministic."""
    rng = np.random.default_rng([seed, epoch])
    samples = []
    for _ in range(cfg.samples_per_epoch):
        if data.train_gen_groups and rng.random() < 0.5:
            group = data.train_gen_groups[rng.integers(len(data.train_gen_groups))]
            samples.append((1, int(group[rng.integers(len(group))])))
        else:
            samples.append((0, int(rng.integers(len(data.train_normal)))))
    order = rng.permutation(len(samples))
    samples = [samples[i] for i in order]
    batches = [samples[i : i + cfg.batch_size] for i in range(0, len(samples), cfg.batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()  # batch norm cannot train on one sample at the 1x1 bottleneck of small inputs
    return batches


def _to_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _batch_tensors(data: _Data, batch: list[tuple[int, int]], device: torch.device):
    res = data.train_normal.shape[1]
    images = np.empty((len(batch), res, res, 3), np.uint8)
    masks = np.zeros((len(batch), 1, res, res), np.float32)
    for j, (src, i) in enumerate(batch):
        if src == 0:
            images[j] = data.train_normal[i]
        else:
            images[j] = data.train_gen[i]
            masks[j, 0] = data.train_gen_masks[i]
    return _to_input(images, device), torch.from_numpy(masks).to(device)


@torch.no_grad()
def predict_maps(
    model: torch.nn.Module, images: np.ndarray, batch_size: int = 16, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Pixel anomaly maps (softmax channel 1), float32 (N, H, W), of uint8 images (N, H, W, 3)."""
    model.eval()
    out = np.zeros(images.shape[:3], np.float32)
    for i in range(0, len(images), batch_size):
        logits = model(_to_input(images[i : i + batch_size], torch.device(device)))
        out[i : i + batch_size] = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
    return out


def _selection_score(metrics: LocalizationMetrics) -> float:
    return metrics.image_auroc + metrics.pixel_auroc + metrics.pixel_ap + metrics.pixel_aupro


def _evaluate(model, images, masks, labels, cfg, device) -> tuple[float, LocalizationMetrics | None]:
    """(selection score, metrics) on a set; without both classes, minus the mean score of normal pixels."""
    maps = predict_maps(model, images, cfg.eval_batch_size, device)
    check_loss(float(maps.mean()) if maps.size else 0.0, "U-Net", cfg.lr, "its mean anomaly score")
    if labels.all() or not labels.any() or not masks.any():
        return -float(maps[~masks].mean()), None
    m = localization_metrics(
        maps, masks, image_labels=labels, paper_compat=cfg.paper_compat_f1, seed=cfg.seed
    )
    return _selection_score(m), m


# -------------------------------------------------------------------------------------------- training


def _new_model(cfg: LocalizationConfig, seed: int) -> DiscriminativeSubNetwork:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # default inits (conv biases) from a seeded, local RNG state
        model = DiscriminativeSubNetwork(3, 2, cfg.base_channels)
    draem_weights_init(model, torch.Generator().manual_seed(seed))
    return model


def _save_torch(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _train_run(run: int, data: _Data, cfg: LocalizationConfig, run_dir: Path, device: torch.device) -> dict:
    seed = cfg.seed + 1000 * run
    key = {"config": cfg.fingerprint(), "counts": data.counts, "run": run}
    result_path = run_dir / "result.json"
    if result_path.exists():
        done = json.loads(result_path.read_text())
        if done.get("key") == key:
            return done
    model = _new_model(cfg, seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.lr_milestones), gamma=cfg.lr_gamma)
    state = {"epoch": 0, "best_score": -math.inf, "best_epoch": -1, "best_file": None, "history": []}
    last_path = run_dir / "last.pt"
    if last_path.exists():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        if ckpt.get("key") != key:
            raise InputError(
                f"{last_path}: checkpoint of a different configuration or data set; "
                "use another output folder or delete this one to start over"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
    use_test = cfg.select_on == "test"
    sel_images = data.test_images if use_test else data.held_images
    sel_masks = data.test_masks if use_test else data.held_masks
    sel_labels = data.test_labels if use_test else data.held_masks.any(axis=(1, 2))
    bar = progress_bar(
        range(state["epoch"], cfg.epochs),
        desc=f"U-Net run {run + 1}/{cfg.runs}",
        initial=state["epoch"],
        total=cfg.epochs,
    )
    for epoch in bar:
        model.train()
        losses = []
        for batch in _epoch_batches(data, cfg, seed, epoch):
            x, y = _batch_tensors(data, batch, device)
            loss = focal_loss(torch.softmax(model(x), dim=1), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        scheduler.step()
        epoch_loss = check_loss(float(np.mean(losses)), f"{run_dir}: U-Net epoch {epoch + 1}", cfg.lr)
        score, metrics = _evaluate(model, sel_images, sel_masks, sel_labels, cfg, device)
        entry = {"epoch": epoch, "loss": epoch_loss, "selection_score": score}
        if metrics is not None and use_test:
            entry["test"] = metrics.to_dict()
        state["history"].append(entry)
        if score > state["best_score"]:
            best_file = f"best-epoch{epoch:04d}.pt"
            _save_torch(model.state_dict(), run_dir / best_file)
            state.update(best_score=score, best_epoch=epoch, best_file=best_file)
        state["epoch"] = epoch + 1
        _save_torch(
            {
                "key": key,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
            },
            last_path,
        )
        for stale in run_dir.glob("best-epoch*.pt"):
            if stale.name != state["best_file"]:
                stale.unlink()
        bar.set_postfix(loss=f"{entry['loss']:.4f}", score=f"{score:.3f}", best=state["best_epoch"])
    model.load_state_dict(torch.load(run_dir / state["best_file"], map_location="cpu", weights_only=True))
    model.to(device)
    maps = predict_maps(model, data.test_images, cfg.eval_batch_size, device)
    test = localization_metrics(
        maps, data.test_masks, image_labels=data.test_labels, paper_compat=cfg.paper_compat_f1, seed=cfg.seed
    )
    result = {
        "key": key,
        "run": run,
        "seed": seed,
        "best_epoch": state["best_epoch"],
        "selection_score": state["best_score"],
        "test": test.to_dict(),
        "history": state["history"],
        "checkpoint": str(run_dir / state["best_file"]),
    }
    write_json_atomic(result_path, result)
    return result


def train_and_evaluate_localization(
    normal_train: Sequence[Path],
    generated: Sequence[GeneratedPair],
    test_set: Sequence[DefectSample],
    config: LocalizationConfig | None = None,
    out_dir: str | Path = "localization",
) -> dict[str, Any]:
    """Train ``config.runs`` U-Nets, keep the best by the selection score, return (and write) the metrics.

    ``generated=[]`` is the "none" baseline: normal images only (held-out selection then uses normal
    images only, scoring an epoch by its mean normal-pixel score). Writes ``out_dir/results.json``;
    per-run checkpoints and results live in ``out_dir/run<k>/``.
    """
    cfg = config or LocalizationConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = _prepare_data(normal_train, generated, test_set, cfg)
    if data.counts["test_anomalous"] == 0 or data.counts["test_anomalous"] == data.counts["test"]:
        raise InputError("the test set needs both normal (good) and anomalous images")
    with output_lock(out_dir, "evaluate localization"):  # runs resume from their checkpoints: one writer
        runs = [_train_run(r, data, cfg, out_dir / f"run{r}", device) for r in range(cfg.runs)]
        best = max(runs, key=lambda r: r["selection_score"])
        results = {
            "selection": "test (optimistic)" if cfg.select_on == "test" else "heldout",
            "selection_score": "image_auroc + pixel_auroc + pixel_ap + pixel_aupro"
            + (
                ""
                if data.counts["heldout_generated"] or cfg.select_on == "test"
                else " (none: -mean normal score)"
            ),
            "config": asdict(cfg),
            "counts": data.counts,
            "best_run": best["run"],
            "metrics": best["test"],
            "runs": [{k: v for k, v in r.items() if k != "key"} for r in runs],
        }
        write_json_atomic(out_dir / "results.json", results)
    return results
