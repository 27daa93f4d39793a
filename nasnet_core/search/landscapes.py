"""Synthetic rewards with a known optimum, and the strategy comparison run on them.

``match``: the fraction of decisions equal to a hidden target (separable: every decision
counts on its own). ``pairwise``: a sum over a chain of decision pairs (a random order of the
decisions, each neighbouring pair scored by its own table of U(0, 1) values), rescaled so the
worst list scores 0 and the best 1. Its optimum is exact (dynamic programming along the chain);
the best value of a decision depends on its neighbours, so it has local optima that single-
decision changes cannot leave. Both are deterministic functions of their seed.
"""

from __future__ import annotations

import statistics

import torch

from .base import make_strategy
from .space import DecisionSpace, make_space

__all__ = ["MatchLandscape", "PairwiseLandscape", "LANDSCAPES", "make_landscape", "samples_to_reach",
           "compare_strategies", "comparison_table", "COMPARISON_HPARAMS"]


class MatchLandscape:
    """Fraction of decisions equal to a target drawn from ``seed``; optimum 1.0."""

    def __init__(self, space: DecisionSpace, seed: int = 0):
        g = torch.Generator().manual_seed(int(seed))
        self.space = space
        self.target = [int(torch.randint(c, (1,), generator=g)) for c in space.choices]
        self.optimum = 1.0

    def __call__(self, decisions) -> float:
        """Score of one decision list in [0, 1]."""
        return sum(a == b for a, b in zip(decisions, self.target)) / len(self.target)


class PairwiseLandscape:
    """Sum over neighbouring pairs of a random decision order of per-pair U(0, 1) tables, in [0, 1]."""

    def __init__(self, space: DecisionSpace, seed: int = 0):
        if len(space) < 2:
            raise ValueError("the pairwise landscape needs at least two decisions")
        g = torch.Generator().manual_seed(int(seed))
        self.space = space
        self.order = torch.randperm(len(space), generator=g).tolist()
        c = [space.choices[i] for i in self.order]
        self.tables = [torch.rand(a, b, generator=g, dtype=torch.float64) for a, b in zip(c, c[1:])]
        lo, hi = self._extreme(min), self._extreme(max)
        self.lo, self.span = lo, hi - lo
        self.optimum = 1.0

    def _extreme(self, pick) -> float:
        """Max (or min) of the raw sum over all decision lists, by dynamic programming on the chain."""
        best = torch.zeros(self.tables[0].shape[0], dtype=torch.float64)
        for table in self.tables:
            total = best[:, None] + table
            best = total.max(0).values if pick is max else total.min(0).values
        return float(best.max() if pick is max else best.min())

    def raw(self, decisions) -> float:
        """Unscaled sum over the chain's pairs."""
        d = [decisions[i] for i in self.order]
        return sum(float(t[d[k], d[k + 1]]) for k, t in enumerate(self.tables))

    def __call__(self, decisions) -> float:
        """Score of one decision list in [0, 1] (1 = the best list)."""
        return (self.raw(decisions) - self.lo) / self.span


LANDSCAPES = {"match": MatchLandscape, "pairwise": PairwiseLandscape}


def make_landscape(kind: str, space: DecisionSpace, seed: int = 0):
    """A registered synthetic landscape; unknown kinds raise an error listing the known ones."""
    if kind not in LANDSCAPES:
        raise ValueError(f"unknown synthetic landscape {kind!r}; known: {', '.join(LANDSCAPES)}")
    return LANDSCAPES[kind](space, seed)


def samples_to_reach(strategy: str, landscape, seed: int, fraction: float = 0.9, budget: int = 2000,
                     batch: int = 10, **hparams) -> int | None:
    """Samples until one scores >= ``fraction`` x the optimum (asked ``batch`` at a time, told after
    each batch); None if not within ``budget``."""
    s = make_strategy(strategy, landscape.space, seed=seed, **hparams)
    n = 0
    while n < budget:
        ds = s.ask(min(batch, budget - n))
        rs = [landscape(d) for d in ds]
        for i, r in enumerate(rs, 1):
            if r >= fraction * landscape.optimum:
                return n + i
        s.tell(zip(ds, rs))
        n += len(ds)
    return None


# The controllers learn nothing in a few thousand samples at the paper's lr 3.5e-4 (sized for
# 20,000 children); lr 0.01 is the rate the tests use. Evolution and random use their defaults.
COMPARISON_HPARAMS = {"evolution": {}, "ppo": {"lr": 0.01}, "reinforce": {"lr": 0.01}, "random": {}}


def compare_strategies(kinds=("match", "pairwise"), strategies=tuple(COMPARISON_HPARAMS), seeds=range(5),
                       budget: int = 2000, fraction: float = 0.9, space: DecisionSpace | None = None) -> dict:
    """``{kind: {strategy: [samples or None per seed]}}``; landscape seed = 1000 + seed."""
    torch.set_num_threads(1)
    space = space or make_space("A", num_blocks=2)
    out = {}
    for kind in kinds:
        out[kind] = {}
        for name in strategies:
            out[kind][name] = [samples_to_reach(name, make_landscape(kind, space, 1000 + s), s, fraction,
                                                budget, **COMPARISON_HPARAMS.get(name, {})) for s in seeds]
    return out


def comparison_table(results: dict, budget: int) -> str:
    """Markdown: per landscape and strategy, samples per seed, median and how many seeds got there."""
    lines = ["| reward | strategy | samples to 90 % of the optimum, per seed | median | reached |",
             "|---|---|---|---|---|"]
    for kind, per in results.items():
        for name, xs in per.items():
            cells = ", ".join(str(x) if x is not None else f">{budget}" for x in xs)
            # a seed that never got there counts as the budget: the median is then a lower bound
            med = statistics.median(x if x is not None else budget for x in xs)
            reached = sum(x is not None for x in xs)
            mark = "" if reached == len(xs) else "≥ "
            lines.append(f"| {kind} | {name} | {cells} | {mark}{med:g} | {reached}/{len(xs)} |")
    return "\n".join(lines)
