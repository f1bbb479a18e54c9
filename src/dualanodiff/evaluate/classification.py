"""Anomaly-type classification (main paper): ResNet-34 trained on generated images, tested on real ones.

Per category, a ResNet-34 learns to tell the anomaly types apart from the *generated* whole images of
every type, then classifies the real remaining 2/3 test images of those types; the number is accuracy.
As in the authors' script: inputs resized and scaled to [0, 1] (no ImageNet normalisation), Adam,
cross-entropy, learning rate x0.2 at 80 % and 90 % of the epochs, each epoch going over the training
images ``repeats_per_epoch`` times, at most ``max_per_type`` generated images per type, last epoch kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import confusion_matrix

from ..checks import check_float, check_int, check_loss, check_seed
from ..errors import InputError
from ..io import write_json_atomic
from ..locking import output_lock
from ..progress import progress_bar
from ..weights import read_state_dict
from .localization import _load_set, _to_input, available_cores

if TYPE_CHECKING:
    from ..data.generated import GeneratedPair
    from ..data.mvtec import DefectSample


@dataclass
class ClassificationConfig:
    epochs: int = 30
    lr: float = 1e-4
    batch_size: int = 8
    resolution: int = 256
    seed: int = 0
    device: str | None = None  # None: cuda if available
    repeats_per_epoch: int = 5
    max_per_type: int = 500
    num_workers: int = field(default_factory=available_cores)  # threads decoding images
    # Without ImageNet weights the network starts from random values: not the paper's protocol, so it is
    # refused unless asked for, and the results then say so (``imagenet_init: false``).
    random_init: bool = False

    def validate(self) -> None:
        """InputError naming the first option out of range (an epoch count of 0 would report the accuracy of
        an untrained network)."""
        for name in ("epochs", "max_per_type", "repeats_per_epoch", "num_workers"):
            check_int(getattr(self, name), f"--{name.replace('_', '-')}", minimum=1)
        check_int(self.batch_size, "--batch-size", minimum=2)  # batch norm needs two samples
        check_int(self.resolution, "--resolution", minimum=32)
        check_float(self.lr, "--lr", above=0)
        check_seed(self.seed)


RESNET34_FILENAME = "resnet34-b627a593.pth"
RESNET34_URL = f"https://download.pytorch.org/models/{RESNET34_FILENAME}"


def resolve_imagenet_weights(path: str | os.PathLike | None, random_init: bool = False) -> Path | None:
    """The ResNet-34 ImageNet weights to use, by the rule the Inception weights follow: ``path``, else
    torchvision's file in the torch hub cache, else an InputError saying how to get it; ``None`` (random
    values) only when ``random_init`` asks for it explicitly."""
    if random_init:
        if path is not None:
            raise InputError("--random-init: conflicts with --imagenet-weights; give one of them")
        return None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"--imagenet-weights: {path} does not exist")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / RESNET34_FILENAME
    if cached.is_file():
        return cached
    raise InputError(
        f"--imagenet-weights: classification needs torchvision's ResNet-34 ImageNet weights and none were found "
        f"in {cached.parent}; download {RESNET34_URL} on a machine with internet and pass it with "
        "--imagenet-weights PATH (or put it in that folder), or pass --random-init to train from random values "
        "(not the paper's protocol; the tables then say so)"
    )


def build_resnet34(num_classes: int, imagenet_weights: str | os.PathLike | None, seed: int) -> nn.Module:
    """torchvision ResNet-34, ImageNet weights from a local state dict if given (``None``: random values,
    see :func:`resolve_imagenet_weights`), new seeded classifier head."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.resnet34(weights=None)
        if imagenet_weights is not None:
            path = Path(imagenet_weights)
            state = read_state_dict(path, "a torchvision ResNet-34 state dict (imagenet_weights)")
            try:
                model.load_state_dict(state)
            except RuntimeError as e:  # other keys or shapes: another network's weights
                detail = str(e).strip().splitlines()[0]
                raise InputError(f"imagenet_weights: {path} is not a torchvision ResNet-34 ({detail})") from e
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _image_path(item: GeneratedPair | str | os.PathLike) -> Path:
    return Path(item.image) if hasattr(item, "image") else Path(item)


def train_and_evaluate_classification(
    generated: Mapping[str, Sequence[GeneratedPair | str | os.PathLike]],
    test_set: Sequence[DefectSample],
    config: ClassificationConfig | None = None,
    imagenet_weights: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train on ``generated`` ({anomaly type: pairs or image files}), return accuracy on the real test images.

    Test images of ``good`` or of types without generated images are left out (and listed).
    Writes ``out_dir/classification.json`` when ``out_dir`` is given (holding ``out_dir`` from the start, so
    an output that cannot be written fails before the training).
    """
    cfg = config or ClassificationConfig()
    cfg.validate()
    imagenet_weights = resolve_imagenet_weights(imagenet_weights, cfg.random_init)
    if out_dir is None:
        return _train_and_test(generated, test_set, cfg, imagenet_weights)
    with output_lock(out_dir, "evaluate classification"):
        result = _train_and_test(generated, test_set, cfg, imagenet_weights)
        write_json_atomic(Path(out_dir) / "classification.json", result)
    return result


def _train_and_test(
    generated: Mapping[str, Sequence[GeneratedPair | str | os.PathLike]],
    test_set: Sequence[DefectSample],
    cfg: ClassificationConfig,
    imagenet_weights: str | os.PathLike | None,
) -> dict[str, Any]:
    classes = sorted(t for t, items in generated.items() if len(items))
    if not classes:
        raise InputError("classification: no generated images were given")
    train_items = [(_image_path(it), None) for t in classes for it in list(generated[t])[: cfg.max_per_type]]
    train_labels = np.array(
        [i for i, t in enumerate(classes) for _ in list(generated[t])[: cfg.max_per_type]]
    )
    tests = [s for s in test_set if s.anomaly_type in classes]
    skipped = sorted(
        {s.anomaly_type for s in test_set if s.anomaly_type not in classes and s.anomaly_type != "good"}
    )
    if not tests:
        raise InputError(f"classification: the test set has no image of the types {', '.join(classes)}")
    test_labels = np.array([classes.index(s.anomaly_type) for s in tests])
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    res = cfg.resolution
    train_images, _ = _load_set(train_items, res, cfg.num_workers, "classification train")
    test_images, _ = _load_set([(s.image, None) for s in tests], res, cfg.num_workers, "classification test")

    model = build_resnet34(len(classes), imagenet_weights, cfg.seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    milestones = [int(cfg.epochs * 0.8), int(cfg.epochs * 0.9)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.2)
    criterion = nn.CrossEntropyLoss()
    losses = []
    for epoch in progress_bar(range(cfg.epochs), desc="ResNet-34"):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = np.concatenate([rng.permutation(len(train_images)) for _ in range(cfg.repeats_per_epoch)])
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()  # batch norm cannot train on a single image
        epoch_loss = []
        for idx in batches:
            x = _to_input(train_images[idx], device)
            y = torch.from_numpy(train_labels[idx]).to(device)
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss.append(float(loss.detach()))
        scheduler.step()
        losses.append(check_loss(float(np.mean(epoch_loss)), f"ResNet-34, epoch {epoch + 1}", cfg.lr))

    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(test_images), 32):
            logits = model(_to_input(test_images[i : i + 32], device))
            check_loss(float(logits.float().mean()), "ResNet-34", cfg.lr, "its mean output")  # NaN weights
            preds.append(logits.argmax(1).cpu().numpy())
    pred = np.concatenate(preds)
    per_type = {
        t: float(np.mean(pred[test_labels == i] == i))
        for i, t in enumerate(classes)
        if (test_labels == i).any()
    }
    result = {
        "accuracy": float(np.mean(pred == test_labels)),
        "per_type_accuracy": per_type,
        "classes": classes,
        "confusion": confusion_matrix(test_labels, pred, labels=list(range(len(classes)))).tolist(),
        "n_train": len(train_items),
        "n_test": len(tests),
        "skipped_test_types": skipped,
        "imagenet_init": imagenet_weights is not None,  # False only with an explicit random_init
        "loss_per_epoch": losses,
        "config": asdict(cfg),
    }
    return result
