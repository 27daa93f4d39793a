"""Training checkpoints: checking what was read, RNG state capture (exact resume), the run folder
guard (no silent overwrite, one training at a time), the finite-weights guard and the shape check of a
resume."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..common.fileio import read_checkpoint
from ..common.locks import lock_folder
from ..interop.convert import CheckpointMismatch

__all__ = ["load_training_checkpoint", "is_training_checkpoint", "rng_state", "set_rng_state", "RUN_FILES",
           "RunExistsError", "TrainingDiverged", "check_output_dir", "OutputClaim", "LOCK_NAME", "diverged",
           "nonfinite_tensors", "first_mismatch", "load_weights"]

RUN_FILES = ("config.yaml", "last.pth", "metrics.json", "backbone.pth")
"""Files whose presence makes a folder a training run's."""
LOCK_NAME = "train.lock"  # flocked by the one process training into the folder (rank 0)


class RunExistsError(ValueError):
    """The output folder holds a run and neither resume nor force was given."""


class TrainingDiverged(ValueError):
    """The loss or the weights became non-finite; nothing non-finite was written."""


def check_output_dir(out: str | Path, resume: bool, force: bool) -> None:
    """RunExistsError when ``out`` holds a training run and neither ``resume`` nor ``force`` is set."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"output folder {out} is a file")
    if resume or force or not out.is_dir():
        return
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise RunExistsError(f"{out} already holds a training run ({', '.join(found)}); pass --resume to "
                             "continue it or --force to overwrite it, or choose another --output")


def _last_seen(out: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of ``out/last.pth``; None when there is none."""
    try:
        st = (out / "last.pth").stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class OutputClaim:
    """Rank 0's hold on a training's output folder while it trains: the flock on ``OUT/train.lock``
    (one training per folder; the kernel releases it when the process ends, even by SIGKILL) and, on
    the first hold, the check under it that no other training wrote the folder since this one looked."""

    def __init__(self, out: str | Path, resume: bool, force: bool, rank: int):
        """Made before a resume reads ``last.pth``: that file as it is now is the one the run continues."""
        self.out, self.rank = Path(out), rank
        self._expect = None if force else ("resume", _last_seen(self.out)) if resume else ("new", None)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the folder for the ``with`` body (ranks other than 0 hold nothing); RunExistsError naming
        the folder and the process that holds it, before anything is written."""
        if self.rank != 0:
            yield
            return
        self.out.mkdir(parents=True, exist_ok=True)
        handle = lock_folder(self.out, LOCK_NAME, "another training run", RunExistsError)
        try:
            self._recheck()
            yield
        finally:
            handle.close()

    def _recheck(self) -> None:
        if self._expect is None:  # force, or this trainer's own run since its first hold
            return
        kind, seen = self._expect
        if kind == "new":
            check_output_dir(self.out, False, False)
        elif _last_seen(self.out) != seen:
            raise RunExistsError(f"{self.out / 'last.pth'} changed after this run read it (another training "
                                 f"wrote {self.out} meanwhile); start again with --resume to continue it")
        self._expect = None


def diverged(what: str, step: int, last: Path) -> TrainingDiverged:
    """The one-line error of a diverged run: what, the step, and the last good checkpoint ``last``."""
    good = (f"the last good checkpoint is {last} (epoch {load_training_checkpoint(last)['epoch']}); "
            "continue from it with --resume and a lower solver.lr" if last.exists() else
            "no checkpoint was written; lower solver.lr")
    return TrainingDiverged(f"training diverged at step {step}: {what}; {good}")


def nonfinite_tensors(obj) -> tuple[int, int]:
    """(non-finite, all) floating-point tensors in a nested dict / list of tensors."""
    if isinstance(obj, torch.Tensor):
        return (int(not bool(torch.isfinite(obj).all())), 1) if obj.is_floating_point() else (0, 0)
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    bad = total = 0
    for v in items:
        b, t = nonfinite_tensors(v)
        bad, total = bad + b, total + t
    return bad, total


def first_mismatch(model_state: dict, ckpt_state: dict, path: str | Path) -> str | None:
    """One line naming the first key where ``ckpt_state`` does not fit ``model_state`` (names, shapes)."""
    for key, value in ckpt_state.items():
        if key not in model_state:
            return f"checkpoint {path} does not fit the configured model: unexpected key {key}"
        want = tuple(model_state[key].shape)
        if tuple(value.shape) != want:
            return (f"checkpoint {path} does not fit the configured model: {key} has shape "
                    f"{tuple(value.shape)} in the checkpoint, {want} in the model (another N, F or "
                    "genotype? use the run's own config.yaml)")
    missing = [k for k in model_state if k not in ckpt_state]
    if missing:
        return f"checkpoint {path} does not fit the configured model: {len(missing)} model keys missing, " \
               f"first {missing[0]}"
    return None


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


def load_weights(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """``model.load_state_dict(state)``; CheckpointMismatch naming the first key that does not fit."""
    report = first_mismatch(model.state_dict(), state, path)
    if report:
        raise CheckpointMismatch(report)
    model.load_state_dict(state)
