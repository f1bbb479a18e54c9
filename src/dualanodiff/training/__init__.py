"""Training the adapters of one or several anomaly types (METHOD section 6): config and presets, data
sources, the Accelerate loop, checkpoints; `from dualanodiff.training import TrainConfig, train_adapters`."""

from .checkpoint import LOSS_LOG, list_checkpoints, read_loss_log
from .config import PRESETS, Preset, TrainConfig, identity, resolve_config, steps_per_epoch, total_steps
from .loop import (
    TRAIN_CONFIG,
    batch_indices,
    derived_seed,
    epoch_order,
    is_finished,
    native_resolution,
    train_adapters,
    train_anomaly_types,
)
from .sources import expand_anomaly_types, training_samples

__all__ = [
    "LOSS_LOG",
    "PRESETS",
    "TRAIN_CONFIG",
    "Preset",
    "TrainConfig",
    "batch_indices",
    "derived_seed",
    "epoch_order",
    "expand_anomaly_types",
    "identity",
    "is_finished",
    "list_checkpoints",
    "native_resolution",
    "read_loss_log",
    "resolve_config",
    "steps_per_epoch",
    "total_steps",
    "train_adapters",
    "train_anomaly_types",
    "training_samples",
]
