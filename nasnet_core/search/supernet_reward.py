"""The supernet reward: a child's score is its path's held-out accuracy in a trained supernet.

BatchNorm statistics are shared by every path through a layer during supernet training and fit none
of them, so before a path is scored its BN running statistics are recomputed, as single-path one-shot
does (Guo et al., 2020): every BN of the path is reset, then a train-mode forward pass (no gradient)
over ``calib_batches`` fixed training batches (a seeded choice of training images, no augmentation)
accumulates their cumulative average (BN momentum None); then the path is evaluated in eval mode on
the held-out images. The same path always gets the same statistics and the same score.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..model.complexity import complexity
from ..train.checks import resolve_device
from ..train.data import ArrayDataset
from .child import load_child_data
from .supernet import Supernet, child_model, path_modules, set_path_mode
from .supernet_train import check_reward_checkpoint, load_supernet

__all__ = ["recalibrate_bn", "path_accuracy", "calibration_batches", "SupernetReward"]

_NO_AUG = {"pad": 0, "hflip": False, "cutout": 0}


def recalibrate_bn(supernet: Supernet, genotype, batches: list[torch.Tensor]) -> list[nn.Module]:
    """Reset the path's BN statistics and recompute them (cumulative average) over ``batches``; the
    path is left in eval mode. Returns the path's BN layers."""
    norms = [m for mod in path_modules(supernet, genotype) for m in mod.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    set_path_mode(supernet, genotype, True)
    try:
        with torch.no_grad():
            for xb in batches:
                supernet(xb, genotype)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        set_path_mode(supernet, genotype, False)
    return norms


@torch.no_grad()
def path_accuracy(supernet: Supernet, genotype, images: torch.Tensor, labels: torch.Tensor,
                  batch_size: int) -> float:
    """Top-1 accuracy (fraction) of the path in eval mode."""
    set_path_mode(supernet, genotype, False)
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = supernet(images[i:i + batch_size], genotype)
        correct += int((logits.argmax(1) == labels[i:i + batch_size]).sum())
    return correct / len(labels)


def _stack(dataset: ArrayDataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (normalised, not augmented) and labels of ``indices``, as two tensors."""
    pairs = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs], dtype=torch.int64)


def calibration_batches(data, count: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """``count`` fixed batches of training images (a seeded choice without replacement, no augmentation)."""
    n = min(count * batch_size, len(data.train_y))
    picks = np.random.default_rng(seed).permutation(len(data.train_y))[:n]
    plain = ArrayDataset(data.train_x, data.train_y, False, _NO_AUG, data.mean, data.std, seed)
    images, _ = _stack(plain, picks)
    return list(images.split(batch_size))


class SupernetReward:
    """Reward function: the path's held-out accuracy after BN recalibration, with the child's
    mult-adds as built; the supernet, its data and the calibration batches are loaded once."""

    def __init__(self, space, checkpoint: str, calib_batches: int = 8, calib_batch_size: int = 0,
                 val_subset: int = 0, dataset: str | None = None, data_dir: str | None = None,
                 num_threads: int = 0, device: str = "auto", eval_batch_size: int = 500):
        if not checkpoint:
            raise ValueError("reward.supernet.checkpoint is not set; give the supernet.pth of a "
                             "tools/search.py supernet run")
        if calib_batches < 1 or calib_batch_size < 0 or val_subset < 0 or eval_batch_size < 1:
            raise ValueError("reward.supernet: calib_batches and eval_batch_size must be >= 1, "
                             "calib_batch_size and val_subset >= 0")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.dev = resolve_device(device, key="reward.supernet.device")
        ck = check_reward_checkpoint(checkpoint, space.to_dict(), mmap=False)  # read once, used whole
        self.net, ck = load_supernet(checkpoint, ck)
        spec = ck["spec"]
        self.space, self.sizes, self.eval_batch_size = space, spec["sizes"], eval_batch_size
        d = dict(spec["data"])
        d.update({k: v for k, v in (("dataset", dataset), ("data_dir", data_dir)) if v is not None})
        if val_subset:
            d["val_subset"] = val_subset
        data = load_child_data(d["dataset"], d["data_dir"], d["val_size"], d["split_seed"],
                               d["train_subset"], d["val_subset"])
        self.net.to(self.dev)
        bs = calib_batch_size or spec["recipe"]["batch_size"]
        self.calib = [x.to(self.dev) for x in calibration_batches(data, calib_batches, bs, spec["seed"])]
        val = ArrayDataset(data.val_x, data.val_y, False, _NO_AUG, data.mean, data.std, spec["seed"])
        self.val_x, self.val_y = (t.to(self.dev) for t in _stack(val, range(len(val))))
        self.image_size = tuple(data.train_x.shape[1:3])  # the child's input, as train_child counts it

    def __call__(self, child_id: int, decisions: list[int]) -> dict:
        """``{'reward', 'accuracy', 'mult_adds'}`` of the child's path."""
        g = self.space.decode(decisions)
        recalibrate_bn(self.net, g, self.calib)
        acc = path_accuracy(self.net, g, self.val_x, self.val_y, self.eval_batch_size)
        mult_adds = complexity(child_model(g, self.sizes), self.image_size)["mult_adds"]
        return {"reward": acc, "accuracy": acc, "mult_adds": mult_adds}
