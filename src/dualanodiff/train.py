"""Training entry points (the implementation lives in `dualanodiff.training`).

from dualanodiff.train import TrainConfig, train_adapters
adapters = train_adapters(TrainConfig(base="sd15", out="adapters", data="mvtec", category="hazelnut",
                                      anomaly="crack"))
"""

from .training import *  # noqa: F403
from .training import __all__  # noqa: F401
