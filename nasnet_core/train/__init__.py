"""Classification training for NASNet: configs, data, optimizers, schedules, EMA and the trainer.

Importing this package needs only torch, numpy, PIL, PyYAML, tqdm and tensorboard.
"""

from .config import ConfigError, default_config, dump_config, load_config
from .data import DATASETS, DataError, build_dataset
from .optim import SCHEDULES, LRSchedule, ModelEMA, RMSpropTF, smoothed_cross_entropy
from .trainer import Trainer

__all__ = ["ConfigError", "DataError", "DATASETS", "LRSchedule", "ModelEMA", "RMSpropTF", "SCHEDULES",
           "Trainer", "build_dataset", "default_config", "dump_config", "load_config",
           "smoothed_cross_entropy"]
