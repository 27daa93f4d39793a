"""Child networks of the search: held-out split, training and reward.

Paper appendix A: the child's data is CIFAR-10 with 5,000 of the 50,000 training images held out
for the reward, whitened, with random 32x32 crops of the 40x40 zero-padded image and horizontal
flips; a child has N = 2 and is trained for 20 epochs with a single-period cosine learning rate,
momentum 0.9 and L2 weight decay; its reward is its accuracy on the held-out images. Where each
training hyper-parameter comes from -- the paper, TF-slim's CIFAR recipe, or our choice -- is
``HPARAM_SOURCES``. A child is trained with the classifier trainer's parts: the dataset readers
(nasnet_core.common.datasets), augmentation and sampling (train.data), optimizer and schedule
(train.optim) and device choice (train.trainer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..common.datasets import load_arrays
from ..model.complexity import complexity
from ..model.registry import create_model
from ..train.data import ArrayDataset, build_loader
from ..train.optim import LRSchedule, build_optimizer
from ..train.trainer import accuracy_counts, resolve_device

__all__ = ["CHILD_IMAGE_SIZE", "HPARAM_SOURCES", "ChildData", "split_train_val", "prepare_child_data",
           "load_child_data", "ChildTrainer", "train_child", "cost_aware_reward"]

CHILD_IMAGE_SIZE = 32  # smaller images (Fashion-MNIST's 28x28) are zero-padded to this

# Source of each train_child hyper-parameter's default. "paper" = the paper's appendix A on the
# search's child; "TF-slim" = TF-slim's NASNet CIFAR recipe (the final CIFAR-10 training, which
# the paper does not restate for the child); "ours" = not stated for the child anywhere.
HPARAM_SOURCES = {
    "N": "paper: N = 2 for the child",
    "num_conv_filters": "ours: 8 (F = 192); the paper does not state the child's width",
    "stem_multiplier": "TF-slim: cifar_config stem_multiplier 3",
    "epochs": "paper: 20 epochs",
    "batch_size": "TF-slim: the CIFAR recipe's batch 32 (the paper states none for the child)",
    "lr": "TF-slim: the CIFAR recipe's lr 0.025, single-period cosine (paper: cosine for the child)",
    "momentum": "paper: momentum 0.9",
    "weight_decay": "TF-slim: nasnet_cifar_arg_scope 5e-4 (paper: L2 for the child, no value)",
    "grad_clip": "TF-slim: the CIFAR recipe's clip at global norm 5 (the paper states none for the child)",
    "crop_pad": "paper: random 32x32 crops of the 40x40 zero-padded image",
    "flip": "paper: random horizontal flips",
    "seed": "ours: one weight-init and batch-order seed for every child",
    "device": "ours: execution only",
    "num_threads": "ours: execution only",
    "eval_batch_size": "ours: execution only (does not change the accuracy)",
    "workers": "ours: execution only",
}
# Also ours: no auxiliary head and no drop-path for the child (the paper does not describe either
# for the search's children), and whitening as per-channel mean / std of the training part.


@dataclass
class ChildData:
    """Training and held-out images (N, H, W, C) uint8 with labels, and the whitening statistics."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int


def split_train_val(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-seed split of ``range(n)`` into (train indices, held-out indices)."""
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}), got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def prepare_child_data(x: np.ndarray, y: np.ndarray, val_size: int, split_seed: int = 0,
                       train_subset: int = 0, val_subset: int = 0) -> ChildData:
    """Pad ``x`` (N, H, W, C) uint8 to the child's size, split off the held-out set, take subsets
    and measure per-channel mean / std on the training part ("whitening")."""
    p = max(0, (CHILD_IMAGE_SIZE - x.shape[1]) // 2)
    if p:
        x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    tr, va = split_train_val(len(x), val_size, split_seed)
    tr = tr[:train_subset] if train_subset else tr
    va = va[:val_subset] if val_subset else va
    train_x = x[tr]
    stats = [(float(c.mean()), float(c.std())) for c in
             (train_x[..., i].astype(np.float32) / 255 for i in range(x.shape[-1]))]
    y = np.asarray(y, dtype=np.int64)
    return ChildData(train_x, y[tr], x[va], y[va], tuple(m for m, _ in stats), tuple(s for _, s in stats),
                     int(y.max()) + 1)


def load_child_data(dataset: str, data_dir: str | Path, val_size: int = 5000, split_seed: int = 0,
                    train_subset: int = 0, val_subset: int = 0) -> ChildData:
    """A dataset's training split read by nasnet_core.common.datasets and prepared for children."""
    x, y = load_arrays(dataset, data_dir, train=True)
    return prepare_child_data(x, y, val_size, split_seed, train_subset, val_subset)


def cost_aware_reward(accuracy: float, mult_adds: int, target: int, weight: float) -> float:
    """MnasNet's form ``accuracy x (mult_adds / target) ** weight``; ``target`` 0: accuracy alone."""
    if not target:
        return accuracy
    if target < 0 or mult_adds <= 0:
        raise ValueError(f"cost-aware reward needs positive mult-adds and target, got {mult_adds}, {target}")
    return accuracy * (mult_adds / target) ** weight


class ChildTrainer:
    """Reward function: train the child a decoded genotype describes; reward = held-out accuracy,
    or with ``cost_target`` the cost-aware ``accuracy x (mult_adds / cost_target) ** cost_weight``."""

    def __init__(self, space, dataset: str, data_dir: str, val_size: int = 5000, split_seed: int = 0,
                 train_subset: int = 0, val_subset: int = 0, cost_target: int = 0, cost_weight: float = -0.07,
                 **train_kw):
        self.space, self.train_kw = space, train_kw
        self.cost_target, self.cost_weight = int(cost_target), float(cost_weight)
        if self.cost_target < 0:
            raise ValueError(f"reward.child.cost_target must be >= 0, got {cost_target}")
        self.data = load_child_data(dataset, data_dir, val_size, split_seed, train_subset, val_subset)

    def __call__(self, child_id: int, decisions: list[int]) -> dict:
        """``{'reward', 'accuracy', 'mult_adds'}`` of the trained child."""
        out = train_child(self.space.decode(decisions), self.data, **self.train_kw)
        reward = cost_aware_reward(out["val_acc"], out["mult_adds"], self.cost_target, self.cost_weight)
        return {"reward": reward, "accuracy": out["val_acc"], "mult_adds": out["mult_adds"]}


def _solver(epochs: int, lr: float, momentum: float, weight_decay: float) -> dict:
    """The trainer's solver section for the child: SGD, single-period cosine down to 0."""
    return {"optimizer": "sgd", "lr": lr, "momentum": momentum, "nesterov": False,
            "weight_decay": weight_decay, "schedule": "cosine", "min_lr": 0.0, "epochs": epochs,
            "warmup_epochs": 0.0}


def train_child(genotype, data: ChildData, N: int = 2, num_conv_filters: int = 8,
                stem_multiplier: float = 3.0, epochs: int = 20, batch_size: int = 32, lr: float = 0.025,
                momentum: float = 0.9, weight_decay: float = 5e-4, grad_clip: float = 5.0,
                crop_pad: int = 4, flip: bool = True, seed: int = 0, device: str = "auto",
                num_threads: int = 0, eval_batch_size: int = 500, workers: int = 0) -> dict:
    """Train one child: {'val_acc', 'train_loss', 'steps', 'images', 'train_seconds', 'mult_adds'};
    raises on NaN loss."""
    if num_threads:
        torch.set_num_threads(num_threads)
    dev = resolve_device(device, key="reward.child.device")
    torch.manual_seed(seed)
    aug = {"pad": crop_pad, "hflip": flip, "cutout": 0}
    train_set = ArrayDataset(data.train_x, data.train_y, True, aug, data.mean, data.std, seed)
    loader = build_loader(train_set, batch_size, True, workers, dev.type == "cuda", seed)
    model = create_model("nasnet_a_cifar", genotype=genotype, num_cells=3 * N,
                         num_conv_filters=num_conv_filters, stem_multiplier=stem_multiplier,
                         num_classes=data.num_classes, in_chans=data.train_x.shape[-1],
                         aux_head=False, drop_path_keep_prob=1.0).to(dev)
    mult_adds = complexity(model, data.train_x.shape[1:3])["mult_adds"]  # the child as built
    solver = _solver(epochs, lr, momentum, weight_decay)
    opt, schedule = build_optimizer(model, solver), LRSchedule(solver, len(loader))
    model.train()
    step, start = 0, time.perf_counter()
    loss_sum = torch.zeros((), device=dev)  # summed on the device: no host sync per step
    for epoch in range(epochs):
        train_set.epoch = epoch
        loader.sampler.set_epoch(epoch)
        for xb, yb in loader:
            schedule.apply(opt, step)
            loss = F.cross_entropy(model(xb.to(dev, non_blocking=True)), yb.to(dev, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            step += 1
            loss_sum += loss.detach()
        if not torch.isfinite(loss_sum):  # checked once per epoch, where it costs one sync
            raise FloatingPointError(f"loss became {loss_sum.item()} in epoch {epoch}")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    train_seconds = time.perf_counter() - start
    val_set = ArrayDataset(data.val_x, data.val_y, False, aug, data.mean, data.std, seed)
    return {"val_acc": _accuracy(model, val_set, eval_batch_size, dev),
            "train_loss": loss_sum.item() / max(step, 1), "steps": step, "images": step * batch_size,
            "train_seconds": train_seconds, "mult_adds": mult_adds}


@torch.no_grad()
def _accuracy(model: torch.nn.Module, val_set: ArrayDataset, batch_size: int, dev: torch.device) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``val_set``."""
    model.eval()
    correct = 0
    for xb, yb in build_loader(val_set, batch_size, False, 0, False, 0):
        correct += accuracy_counts(model(xb.to(dev)).cpu(), yb, ks=(1,))[0]
    return correct / len(val_set)
