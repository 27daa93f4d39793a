"""Reward functions (decisions -> float) and ``run_child``, the unit of work a worker executes."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from .space import DecisionSpace, make_space

__all__ = ["REWARDS", "SyntheticReward", "make_reward", "run_child", "build_space"]


class SyntheticReward:
    """Fraction of decisions equal to a hidden optimum (drawn from ``target_seed``); optimum = 1.0.

    ``faults`` maps a child id to ``raise`` / ``nan`` / ``die_once`` (SIGKILL its own worker
    the first time, leaving a marker in ``fault_dir``) to exercise the workqueue's failure paths.
    """

    FAULTS = ("raise", "nan", "die_once")

    def __init__(self, space: DecisionSpace, target_seed: int = 0, noise: float = 0.0, delay: float = 0.0,
                 faults: dict | None = None, fault_dir: str | None = None):
        g = torch.Generator().manual_seed(int(target_seed))
        self.space = space
        self.target = [int(torch.randint(c, (1,), generator=g)) for c in space.choices]
        self.noise, self.delay, self.fault_dir = float(noise), float(delay), fault_dir
        self.faults = {int(k): v for k, v in (faults or {}).items()}
        bad = {k: v for k, v in self.faults.items() if v not in self.FAULTS}
        if bad:
            raise ValueError(f"unknown fault(s) {bad}; known: {', '.join(self.FAULTS)}")
        if "die_once" in self.faults.values() and not fault_dir:
            raise ValueError("fault 'die_once' needs reward.synthetic.fault_dir")

    def __call__(self, child_id: int, decisions: list[int]) -> float:
        """Reward of one child."""
        if self.delay:
            time.sleep(self.delay)
        fault = self.faults.get(child_id)
        if fault == "raise":
            raise RuntimeError(f"injected failure in child {child_id}")
        if fault == "nan":
            return float("nan")
        if fault == "die_once":
            marker = Path(self.fault_dir) / f"child{child_id}.attempt"
            attempts = int(marker.read_text()) if marker.exists() else 0
            marker.write_text(str(attempts + 1))
            if attempts == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        score = sum(a == b for a, b in zip(decisions, self.target)) / len(self.target)
        if self.noise:
            g = torch.Generator().manual_seed(hash((child_id, tuple(decisions))) % (2 ** 31))
            score += self.noise * float(torch.randn(1, generator=g))
        return score


def _child_reward(space, **cfg):
    from .child import ChildTrainer  # heavy (data loading); only imported where children train
    return ChildTrainer(space, **cfg)


REWARDS: dict[str, Callable] = {
    "synthetic": SyntheticReward,
    "child": _child_reward,
}


def build_space(space_cfg: dict) -> DecisionSpace:
    """The NASNet space described by a config's ``space`` section."""
    cfg = dict(space_cfg)
    return make_space(cfg.pop("variant"), **cfg)


def make_reward(reward_cfg: dict, space: DecisionSpace) -> Callable[[int, list[int]], float]:
    """The reward function named by ``reward_cfg['name']`` with its own section as kwargs."""
    name = reward_cfg["name"]
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known: {', '.join(REWARDS)}")
    return REWARDS[name](space, **reward_cfg.get(name, {}))


_CACHE: dict[str, tuple] = {}


def run_child(reward_cfg: dict, space_cfg: dict, child_id: int, decisions: list[int]) -> dict:
    """Evaluate one child; never raises: errors, NaN and OOM come back as ``status: failed``."""
    started = time.time()
    result = {"started": started, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        key = json.dumps([reward_cfg, space_cfg], sort_keys=True, default=str)
        if key not in _CACHE:  # one reward function (and its loaded data) per worker process
            space = build_space(space_cfg)
            _CACHE.clear()
            _CACHE[key] = (space, make_reward(reward_cfg, space))
        _, fn = _CACHE[key]
        reward = float(fn(child_id, decisions))
        if not math.isfinite(reward):
            result.update(status="failed", error=f"reward is {reward}")
        else:
            result.update(status="done", reward=reward)
    except Exception as e:  # noqa: BLE001 - a child's failure must not stop the search
        tb = traceback.format_exc(limit=-3)
        result.update(status="failed", error=f"{type(e).__name__}: {e}\n{tb}")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    result["seconds"] = time.time() - started
    return result
