"""Reward functions (decisions -> float) and ``run_child``, the unit of work a worker executes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from .landscapes import make_landscape
from .space import DecisionSpace, make_space

__all__ = ["REWARDS", "SyntheticReward", "landscape_seed", "ChildTimeout", "make_reward", "run_child",
           "build_space"]


def landscape_seed(target_seed: int) -> int:
    """The landscape generator's seed: ``target_seed`` hashed with a tag (SHA-256, 63 bits).

    Strategies seed their generators with ``search.seed`` itself; a target drawn from the same
    number would be the random strategy's first sample (reward 1.0). Hashing makes the two
    streams unrelated whatever the two seeds are."""
    digest = hashlib.sha256(f"nasnet synthetic target {int(target_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class SyntheticReward:
    """A synthetic landscape (``kind``: match or pairwise, drawn from ``landscape_seed(target_seed)``,
    independent of the strategy's seed); optimum = 1.0.

    ``faults`` maps a child id to ``raise`` / ``nan`` / ``hang`` (sleep 600 s, for timeouts) /
    ``die_once`` (SIGKILL its own worker the first time, leaving a marker in ``fault_dir``) to
    exercise the workqueue's failure paths.
    """

    FAULTS = ("raise", "nan", "hang", "die_once")

    def __init__(self, space: DecisionSpace, target_seed: int = 0, noise: float = 0.0, delay: float = 0.0,
                 faults: dict | None = None, fault_dir: str | None = None, kind: str = "match"):
        self.space = space
        self.landscape = make_landscape(kind, space, landscape_seed(target_seed))
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
        if fault == "hang":
            time.sleep(600)
        if fault == "die_once":
            marker = Path(self.fault_dir) / f"child{child_id}.attempt"
            attempts = int(marker.read_text()) if marker.exists() else 0
            marker.write_text(str(attempts + 1))
            if attempts == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        score = self.landscape(decisions)
        if self.noise:
            g = torch.Generator().manual_seed(hash((child_id, tuple(decisions))) % (2 ** 31))
            score += self.noise * float(torch.randn(1, generator=g))
        return score


def _child_reward(space, **cfg):
    from .child import ChildTrainer  # heavy (data loading); only imported where children train
    return ChildTrainer(space, **cfg)


def _supernet_reward(space, **cfg):
    from .supernet_reward import SupernetReward  # heavy (the supernet and its data); imported where used
    return SupernetReward(space, **cfg)


REWARDS: dict[str, Callable] = {
    "synthetic": SyntheticReward,
    "child": _child_reward,
    "supernet": _supernet_reward,
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


class ChildTimeout(Exception):
    """A child ran past ``executor.child_timeout``."""


@contextmanager
def _time_limit(seconds: float | None):
    """Raise ChildTimeout in this (main) thread after ``seconds`` (SIGALRM); None: no limit."""
    if not seconds:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("executor.child_timeout needs children to run in a process's main thread")

    def expire(signum, frame):
        raise ChildTimeout(f"child ran past executor.child_timeout = {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _evaluate(reward_cfg: dict, space_cfg: dict, child_id: int, decisions: list[int]) -> dict:
    """The reward function's answer as a dict: ``reward`` plus any extra measurements it gives."""
    key = json.dumps([reward_cfg, space_cfg], sort_keys=True, default=str)
    if key not in _CACHE:  # one reward function (and its loaded data) per worker process
        space = build_space(space_cfg)
        _CACHE.clear()
        _CACHE[key] = (space, make_reward(reward_cfg, space))
    _, fn = _CACHE[key]
    out = fn(child_id, decisions)
    return dict(out) if isinstance(out, dict) else {"reward": out}


def run_child(reward_cfg: dict, space_cfg: dict, child_id: int, decisions: list[int],
              timeout: float | None = None) -> dict:
    """Evaluate one child; never raises: errors, NaN and OOM come back as ``status: failed``, a run
    past ``timeout`` seconds as ``status: timeout``."""
    started = time.time()
    result = {"started": started, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        with _time_limit(timeout):
            out = _evaluate(reward_cfg, space_cfg, child_id, decisions)
        reward = float(out.pop("reward"))
        result.update({k: out[k] for k in ("accuracy", "mult_adds") if k in out})
        if not math.isfinite(reward):
            result.update(status="failed", error=f"reward is {reward}")
        else:
            result.update(status="done", reward=reward)
    except ChildTimeout as e:
        result.update(status="timeout", error=str(e))
    except Exception as e:  # noqa: BLE001 - a child's failure must not stop the search
        tb = traceback.format_exc(limit=-3)
        result.update(status="failed", error=f"{type(e).__name__}: {e}\n{tb}")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    result["seconds"] = time.time() - started
    return result
