"""Aging (regularized) evolution (Real, Aggarwal, Huang, Le, AAAI 2019: the AmoebaNet search).

A population of the P most recently told children; each new child is a copy of the best of S
members drawn at random (a tournament) with exactly one decision changed to a different value;
the oldest member (first told) leaves when a new one arrives. Until P children have been asked
the children are uniformly random (the initial population). Asynchronous: ``ask`` never waits
for ``tell``; children asked and not yet told are kept in the state (``pending``), so a run
killed with children in flight resumes with exactly the same population, queue and RNG.
"""

from __future__ import annotations

from collections import deque

import torch

from .base import Strategy, register_strategy
from .space import DecisionSpace

__all__ = ["AgingEvolution"]


@register_strategy
class AgingEvolution(Strategy):
    """Tournament selection of size S from a population of the last P told, one-decision mutation."""

    name = "evolution"
    # Real et al. (2019) use P = 100, S = 25 for 20k children (450 workers). At the budgets this
    # project runs (tens to a few thousand children) P = 100 spends 100 children, or all of a small
    # budget, on the random initial population; P = 20 starts breeding after 20 and ages a member out
    # after 20 more children. S = 5 keeps their selection pressure S / P = 1/4.
    HPARAMS = dict(
        population_size=20,  # P: members kept (the last P told); also the random initial children
        sample_size=5,       # S: members drawn per tournament; the best is the parent
    )

    def __init__(self, space: DecisionSpace, seed: int = 0, **hparams):
        super().__init__(space, seed, **hparams)
        p, s = self.hparams["population_size"], self.hparams["sample_size"]
        for key, value in (("population_size", p), ("sample_size", s)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"evolution hparam {key} must be a positive int, got {value!r}")
        if s > p:
            raise ValueError(f"evolution sample_size ({s}) may not exceed population_size ({p})")
        if not any(c > 1 for c in space.choices):
            raise ValueError("evolution needs a decision with at least two choices to mutate")
        self.population: deque[tuple[list[int], float]] = deque()  # oldest first
        self.pending: list[list[int]] = []  # asked, not yet told (in ask order)

    def _randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def _random(self) -> list[int]:
        return [self._randint(c) for c in self.space.choices]

    def _mutate(self, parent: list[int]) -> list[int]:
        """``parent`` with one decision (among those with a choice) set to a different value."""
        mutable = [i for i, c in enumerate(self.space.choices) if c > 1]
        i = mutable[self._randint(len(mutable))]
        child = list(parent)
        child[i] = (parent[i] + 1 + self._randint(self.space.choices[i] - 1)) % self.space.choices[i]
        return child

    def _tournament(self) -> list[int]:
        """Decisions of the best of ``sample_size`` members drawn without replacement (ties: younger)."""
        pop = list(self.population)
        k = min(self.hparams["sample_size"], len(pop))
        drawn = torch.randperm(len(pop), generator=self.generator)[:k].tolist()
        best = max(drawn, key=lambda i: (pop[i][1], i))
        return pop[best][0]

    def ask(self, n: int) -> list[list[int]]:
        """n children: random while the initial population is asked (or none is told yet), else bred."""
        out = []
        for _ in range(n):
            if self.num_asked < self.hparams["population_size"] or not self.population:
                child = self._random()
            else:
                child = self._mutate(self._tournament())
                self.num_updates += 1  # children bred from a parent
            self.num_asked += 1
            self.pending.append(child)
            out.append(child)
        return out

    def _observe(self, decisions: list[int], reward: float) -> None:
        if decisions in self.pending:
            self.pending.remove(decisions)
        self.population.append((decisions, reward))
        if len(self.population) > self.hparams["population_size"]:
            self.population.popleft()  # aging: the oldest leaves, however good it is

    def best(self) -> tuple[list[int], float] | None:
        """The best member of the current population (None while it is empty)."""
        return max(self.population, key=lambda m: m[1]) if self.population else None

    def state_dict(self) -> dict:
        """Base state plus the population (oldest first) and the children in flight."""
        state = super().state_dict()
        state.update(population=[[list(d), r] for d, r in self.population],
                     pending=[list(d) for d in self.pending])
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict`` of the same strategy and space."""
        super().load_state_dict(state)
        self.population = deque((list(d), float(r)) for d, r in state["population"])
        self.pending = [list(d) for d in state["pending"]]
