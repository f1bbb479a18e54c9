"""Run Ultralytics on an export without it reaching the network or the user's settings.

Ultralytics checks the network when it is imported (``ONLINE``), may pip-install missing packages
(``YOLO_AUTOINSTALL``), keeps its settings in the user's config folder, sends usage events (``sync``),
loads logger integrations (MLflow, Ray Tune, ...) and, in every dataset check (``check_det_dataset``),
looks for ``Arial.ttf`` in its config folder and else fetches it. :func:`ultralytics_offline` turns each off
before the import: the environment switches, a config folder of the caller's, every integration and
``sync`` off in its settings, and the font it looks for already there (matplotlib's DejaVu Sans, which
matplotlib, a dependency of Ultralytics, ships; it only draws plots, which stay off). Train from a model
yaml (``yolo11n-seg.yaml``, no weights to fetch) with ``plots=False`` and ``amp=False``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_INTEGRATIONS = (
    "sync",
    "hub",
    "clearml",
    "comet",
    "dvc",
    "mlflow",
    "neptune",
    "raytune",
    "tensorboard",
    "wandb",
)


def ultralytics_offline(config_dir: str | os.PathLike) -> None:
    """Make the next ``import ultralytics`` offline, with its settings in ``config_dir`` (created)."""
    config_dir = Path(config_dir).resolve()
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        YOLO_OFFLINE="1", YOLO_AUTOINSTALL="False", YOLO_CONFIG_DIR=str(config_dir), YOLO_VERBOSE="False"
    )
    from ultralytics import settings
    from ultralytics.utils import ONLINE, USER_CONFIG_DIR

    if ONLINE or not Path(USER_CONFIG_DIR).resolve().is_relative_to(config_dir):
        raise RuntimeError("ultralytics_offline() must run before ultralytics is first imported")
    font = Path(USER_CONFIG_DIR) / "Arial.ttf"
    if not font.is_file():
        import matplotlib

        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    settings.update({key: False for key in _INTEGRATIONS if key in settings})
