"""Training checkpoints: checking what was read, and RNG state capture (exact resume)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..fileio import read_checkpoint

__all__ = ["load_training_checkpoint", "is_training_checkpoint", "rng_state", "set_rng_state"]


def is_training_checkpoint(ckpt) -> bool:
    """Whether a loaded checkpoint is one the trainer wrote (weights, optimizer, step, RNG states)."""
    return isinstance(ckpt, dict) and "model" in ckpt and "step" in ckpt


def load_training_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by the trainer; one clear error if it is not one."""
    ckpt = read_checkpoint(path, weights_only=False)
    if not is_training_checkpoint(ckpt):
        raise ValueError(f"{path} is not a training checkpoint (no 'model' / 'step'); "
                         "--eval-only also accepts exported backbone checkpoints")
    return ckpt


def rng_state() -> dict:
    """Every RNG this process draws from: torch CPU (and CUDA), numpy, python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
