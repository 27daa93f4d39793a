"""Training checkpoints: reading them, and RNG state capture (exact resume)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["read_checkpoint", "load_training_checkpoint", "rng_state", "set_rng_state"]


def read_checkpoint(path: str | Path) -> Any:
    """torch.load a checkpoint file; FileNotFoundError or one ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unreadable file
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


def load_training_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by the trainer; one clear error if it is not one."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
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
