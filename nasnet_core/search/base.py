"""What every search strategy shares: the ``Strategy`` interface and the one registry, ``STRATEGIES``.

All strategies share one interface: ``ask(n)`` returns n decision lists, ``tell(results)`` takes
``(decisions, reward)`` pairs (in any order, from any earlier ask), ``state_dict()`` /
``load_state_dict()`` capture everything (weights, optimiser, RNG, baseline, pending samples) so
that a restored strategy continues exactly where it was. A strategy module registers its classes
with ``@register_strategy``; ``nasnet_core.search`` imports every strategy module, so the registry
is complete whenever any part of the search is imported.
"""

from __future__ import annotations

import io
import math

import torch

from .space import DecisionSpace

__all__ = ["Strategy", "STRATEGIES", "register_strategy", "make_strategy", "state_to_bytes",
           "state_from_bytes"]


class Strategy:
    """Base: counters and the ask/tell/state interface."""

    name = "base"
    HPARAMS: dict = {}

    def __init__(self, space: DecisionSpace, seed: int = 0, **hparams):
        unknown = set(hparams) - set(self.HPARAMS)
        if unknown:
            raise ValueError(f"unknown hparam(s) {sorted(unknown)} for strategy {self.name!r}; "
                             f"known: {', '.join(sorted(self.HPARAMS)) or '(none)'}")
        self.space = space
        self.seed = int(seed)
        self.hparams = {**self.HPARAMS, **hparams}
        self.generator = torch.Generator().manual_seed(self.seed)
        self.num_asked = 0
        self.num_told = 0
        self.num_updates = 0

    def ask(self, n: int) -> list[list[int]]:
        """Sample ``n`` decision lists."""
        raise NotImplementedError

    def tell(self, results) -> None:
        """Learn from ``(decisions, reward)`` pairs."""
        for decisions, reward in results:
            self.space.validate(decisions)
            if not math.isfinite(float(reward)):
                raise ValueError(f"reward must be finite, got {reward!r}")
            self.num_told += 1
            self._observe(list(decisions), float(reward))

    def _observe(self, decisions: list[int], reward: float) -> None:
        pass

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (plain data and tensors)."""
        return {"name": self.name, "seed": self.seed, "hparams": dict(self.hparams),
                "choices": list(self.space.choices), "generator": self.generator.get_state(),
                "num_asked": self.num_asked, "num_told": self.num_told, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict``; refuses a state of another strategy or space."""
        if state.get("name") != self.name:
            raise ValueError(f"state is for strategy {state.get('name')!r}, not {self.name!r}")
        if list(state["choices"]) != list(self.space.choices):
            raise ValueError("state was saved for a different decision space "
                             f"({len(state['choices'])} decisions vs {len(self.space)})")
        self.seed = state["seed"]
        self.hparams = dict(state["hparams"])
        self.generator.set_state(state["generator"])
        self.num_asked, self.num_told, self.num_updates = (
            state["num_asked"], state["num_told"], state["num_updates"])


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add ``cls`` to ``STRATEGIES`` under ``cls.name`` (a name is registered once)."""
    if cls.name in STRATEGIES:
        raise ValueError(f"strategy {cls.name!r} is already registered")
    STRATEGIES[cls.name] = cls
    return cls


def make_strategy(name: str, space: DecisionSpace, seed: int = 0, **hparams) -> Strategy:
    """Build a registered strategy; unknown names/hparams raise errors listing the known ones."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    return cls(space, seed=seed, **hparams)


def state_to_bytes(state: dict) -> bytes:
    """Serialise a strategy state (tensors included)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def state_from_bytes(data: bytes) -> dict:
    """Inverse of ``state_to_bytes``."""
    return torch.load(io.BytesIO(data), weights_only=True)
