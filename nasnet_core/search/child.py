"""Child networks: data (CIFAR-10 pickles, Fashion-MNIST IDX), augmentation, training, held-out reward.

Paper appendix A (nasnet-reference.md section 6): N = 2, CIFAR stem, 20 epochs, single-period
cosine LR, momentum 0.9, L2 decay; whitened images, random 32x32 crops of 40x40 zero-padded
images, horizontal flips; reward = accuracy on 5k held-out training images.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import datasets
from ..registry import create_model

__all__ = ["DATASETS", "load_dataset", "split_train_val", "augment", "ChildTrainer", "train_child"]


def load_fashion_mnist(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST training set (60k) as uint8 (N, 1, 32, 32) zero-padded from 28x28, labels."""
    x, y = datasets.load_fashion_mnist(Path(root), train=True)
    return np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None], y  # 28 -> 32, the child's input size


def load_cifar10(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 training set (50k) from the python pickle batches as uint8 (N, 3, 32, 32), labels."""
    x, y = datasets.load_cifar10(Path(root), train=True)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


DATASETS = {"fashion_mnist": load_fashion_mnist, "cifar10": load_cifar10}


def load_dataset(name: str, root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 NCHW, labels) of a registered dataset's training split."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    return DATASETS[name](root)


def split_train_val(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-seed split of ``range(n)`` into (train indices, held-out indices)."""
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}), got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crops of the input size from zero-padded images and random horizontal flips (batched)."""
    n, _, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        batch = torch.arange(n)[:, None, None, None]
        chans = torch.arange(x.shape[1])[None, :, None, None]
        x = xp[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class ChildTrainer:
    """Reward function: train the child a decoded genotype describes; reward = held-out accuracy."""

    def __init__(self, space, dataset: str, data_dir: str, val_size: int = 5000, split_seed: int = 0,
                 train_subset: int = 0, val_subset: int = 0, **train_kw):
        self.space, self.train_kw = space, train_kw
        x, y = load_dataset(dataset, data_dir)
        tr, va = split_train_val(len(x), val_size, split_seed)
        tr = tr[:train_subset] if train_subset else tr
        va = va[:val_subset] if val_subset else va
        # "whiten": per-channel standardisation with training-split statistics
        xf = torch.from_numpy(x).float().div_(255)
        mean = xf[tr].mean((0, 2, 3), keepdim=True)
        std = xf[tr].std((0, 2, 3), keepdim=True)
        xf = (xf - mean) / std
        self.train = (xf[tr], torch.from_numpy(y[tr]))
        self.val = (xf[va], torch.from_numpy(y[va]))
        self.num_classes = int(y.max()) + 1

    def __call__(self, child_id: int, decisions: list[int]) -> float:
        """Held-out accuracy of the trained child."""
        return train_child(self.space.decode(decisions), self.train, self.val, self.num_classes,
                           **self.train_kw)["val_acc"]


def train_child(genotype, train, val, num_classes: int, N: int = 2, num_conv_filters: int = 8,
                stem_multiplier: float = 3.0, epochs: int = 20, batch_size: int = 32, lr: float = 0.025,
                momentum: float = 0.9, weight_decay: float = 5e-4, grad_clip: float = 5.0,
                crop_pad: int = 4, flip: bool = True, seed: int = 0, device: str = "auto",
                num_threads: int = 0, eval_batch_size: int = 500) -> dict:
    """Train one child: {'val_acc', 'train_loss', 'steps', 'images', 'train_seconds'}; raises on NaN loss."""
    if num_threads:
        torch.set_num_threads(num_threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_tr, y_tr = train
    model = create_model("nasnet_a_cifar", genotype=genotype, num_cells=3 * N,
                         num_conv_filters=num_conv_filters,
                         stem_multiplier=stem_multiplier, num_classes=num_classes, in_chans=x_tr.shape[1],
                         aux_head=False, drop_path_keep_prob=1.0).to(dev)
    decay, no_decay = [], []
    for p in model.parameters():  # L2 on conv/linear weights, not on norm/bias parameters
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=momentum)
    steps_per_epoch = max(1, len(x_tr) // batch_size)  # drop the last partial batch
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(  # single-period cosine, per step, down to 0
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model.train()
    step, start = 0, time.perf_counter()
    loss_sum = torch.zeros((), device=dev)  # summed on the device: no host sync per step
    for epoch in range(epochs):
        perm = torch.randperm(len(x_tr), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb = augment(x_tr[idx], crop_pad, flip, g).to(dev, non_blocking=True)
            yb = y_tr[idx].to(dev, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.detach()
        if not torch.isfinite(loss_sum):  # checked once per epoch, where it costs one sync
            raise FloatingPointError(f"loss became {loss_sum.item()} in epoch {epoch}")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    train_seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    x_va, y_va = val
    with torch.no_grad():
        for i in range(0, len(x_va), eval_batch_size):
            logits = model(x_va[i:i + eval_batch_size].to(dev))
            correct += int((logits.argmax(1).cpu() == y_va[i:i + eval_batch_size]).sum())
    return {"val_acc": correct / len(x_va), "train_loss": loss_sum.item() / max(step, 1), "steps": step,
            "images": step * batch_size, "train_seconds": train_seconds}
