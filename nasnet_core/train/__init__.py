"""Classification training for NASNet: data, optimizers, schedules, EMA and the trainer.

Its config schema and loader live in nasnet_core.common.config (CLASSIFICATION).

Importing this package needs only torch, numpy, PIL, PyYAML, tqdm and tensorboard.
"""

from .checkpoint import RunExistsError, TrainingDiverged
from .data import DataError, build_dataset
from .optim import SCHEDULES, LRSchedule, ModelEMA, RMSpropTF, smoothed_cross_entropy
from .trainer import Trainer

__all__ = ["DataError", "LRSchedule", "ModelEMA", "RMSpropTF", "RunExistsError", "SCHEDULES", "Trainer",
           "TrainingDiverged", "build_dataset", "smoothed_cross_entropy"]
