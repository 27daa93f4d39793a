"""Optimizers, per-step learning-rate schedules, label smoothing and parameter EMA.

The ImageNet recipe (paper appendix A; TF-slim ``train_image_classifier``) uses TensorFlow's
RMSProp, whose epsilon sits inside the square root and whose squared-gradient average starts
at 1 (PyTorch's RMSprop adds epsilon outside and starts at 0; with eps = 1.0 the two differ
a lot), and an EMA whose decay is capped by (1 + n) / (10 + n) early on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSpropTF", "OPTIMIZERS", "build_optimizer", "SCHEDULES", "LRSchedule", "lr_scale",
           "smoothed_cross_entropy", "ModelEMA"]


class RMSpropTF(torch.optim.Optimizer):
    """TensorFlow RMSProp with momentum:
    ms = d ms + (1 - d) g^2 (ms starts at 1);  mom = m mom + lr g / sqrt(ms + eps);  p -= mom."""

    def __init__(self, params, lr: float, decay: float = 0.9, momentum: float = 0.9, eps: float = 1.0,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            d, m, eps, lr, wd = (group["decay"], group["momentum"], group["eps"], group["lr"],
                                 group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)  # L2 term of the loss
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p)
                    state["mom"] = torch.zeros_like(p)
                ms, mom = state["ms"], state["mom"]
                ms.mul_(d).addcmul_(g, g, value=1 - d)
                mom.mul_(m).addcdiv_(g, (ms + eps).sqrt_(), value=lr)
                p.sub_(mom)
        return loss


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # TF-slim regularises conv / FC weights only (not BN affine parameters or biases).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


OPTIMIZERS: dict[str, Callable] = {
    "sgd": lambda groups, s: torch.optim.SGD(groups, lr=s["lr"], momentum=s["momentum"],
                                             nesterov=s["nesterov"]),
    "rmsprop": lambda groups, s: RMSpropTF(groups, lr=s["lr"], decay=s["rmsprop_decay"],
                                           momentum=s["momentum"], eps=s["rmsprop_eps"]),
}


def build_optimizer(model: nn.Module, solver: dict) -> torch.optim.Optimizer:
    """The optimizer named by ``solver['optimizer']`` with L2 on weights only."""
    name = solver["optimizer"]
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](_param_groups(model, solver["weight_decay"]), solver)


# ------------------------------------------------------------------ schedules
def _cosine(step, total, s, steps_per_epoch):
    t = min(step, total) / max(1, total)
    return s["min_lr"] + 0.5 * (s["lr"] - s["min_lr"]) * (1 + math.cos(math.pi * t))


def _exponential(step, total, s, steps_per_epoch):
    decay_steps = s["decay_epochs"] * steps_per_epoch
    k = step / decay_steps
    return s["lr"] * s["decay_rate"] ** (math.floor(k) if s["staircase"] else k)


SCHEDULES: dict[str, Callable] = {
    "cosine": _cosine,  # single period over the whole run (paper: CIFAR)
    "exponential": _exponential,  # 0.97 every 2.4 epochs (paper: ImageNet)
    "constant": lambda step, total, s, spe: s["lr"],
}


def lr_scale(solver: dict, world: int = 1) -> float:
    """Linear scaling of the learning rate: the run's global batch (``batch_size`` x ``world``
    processes) over ``global_batch``, the batch ``lr`` is stated for; 1 when that is 0 or absent."""
    ref = solver.get("global_batch", 0)
    if not ref:
        return 1.0
    if ref < 0:
        raise ValueError(f"solver.global_batch must be >= 0, got {ref}")
    return solver["batch_size"] * world / ref


class LRSchedule:
    """Per-step learning rate: ``scale * base(step) * min(1, (step + 1) / warmup_steps)``, with
    ``scale = lr_scale(solver, world)`` (the linear scaling rule)."""

    def __init__(self, solver: dict, steps_per_epoch: int, world: int = 1):
        if solver["schedule"] not in SCHEDULES:
            raise ValueError(f"unknown schedule {solver['schedule']!r}; known schedules: "
                             f"{', '.join(SCHEDULES)}")
        self.solver, self.steps_per_epoch = solver, steps_per_epoch
        self.scale = lr_scale(solver, world)
        self.total_steps = int(solver["epochs"] * steps_per_epoch)
        self.warmup_steps = int(round(solver["warmup_epochs"] * steps_per_epoch))

    def __call__(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        lr = self.scale * SCHEDULES[self.solver["schedule"]](step, self.total_steps, self.solver,
                                                             self.steps_per_epoch)
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every param group's lr for ``step``; returns it."""
        lr = self(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr


# ------------------------------------------------------------------ loss
def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross entropy against (1 - e) one_hot + e / K (TF-slim label_smoothing)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    if smoothing == 0:
        return nll.mean()
    return ((1 - smoothing) * nll - smoothing * logp.mean(dim=-1)).mean()


# ------------------------------------------------------------------ EMA
class ModelEMA:
    """Exponential moving average of a model's parameters and float buffers (BN statistics),
    as TF-slim averages all model variables: ema = d ema + (1 - d) x with
    d = min(decay, (1 + n) / (10 + n)) at update n (TF ExponentialMovingAverage num_updates)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self, n: int | None = None) -> float:
        """The decay used by update number ``n`` (default: the next one)."""
        n = self.updates if n is None else n
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current state."""
        d = self.current_decay()
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src[k].detach(), alpha=1 - d)
            else:
                v.copy_(src[k])
        self.updates += 1

    def state_dict(self) -> dict:
        """Averaged weights and update count."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()``."""
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
