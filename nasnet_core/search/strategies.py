"""Search strategies over any ``DecisionSpace``: ``ppo`` and ``reinforce`` (LSTM controller) and
``random``; ``evolution`` (aging evolution) is in ``evolution.py``. The interface and the registry
they share are in ``base.py``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .base import Strategy, register_strategy
from .space import DecisionSpace

__all__ = ["RandomSearch", "PolicyGradient", "Reinforce", "Controller"]


@contextmanager
def _one_thread():
    """Run the controller's tiny ops on one thread (extra threads only add sync cost, badly so
    on a loaded machine), then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Controller(nn.Module):
    """1-layer LSTM; step t reads the embedding of decision t-1 and emits a softmax over decision t."""

    def __init__(self, choices: tuple[int, ...], hidden: int = 100, init_range: float = 0.1):
        super().__init__()
        self.choices = tuple(choices)
        self.start = nn.Parameter(torch.zeros(1, hidden))
        # One embedding table and one softmax head per decision (their sizes differ).
        self.embed = nn.ModuleList(nn.Embedding(c, hidden) for c in self.choices)
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, c) for c in self.choices)
        for p in self.parameters():  # paper appendix A: weights U(-0.1, 0.1)
            nn.init.uniform_(p, -init_range, init_range)

    def forward(self, n: int, decisions: torch.Tensor | None = None, generator=None,
                temperature: float = 1.0):
        """Sample n lists (``decisions`` None) or score given ones; returns (decisions, logp, entropy)."""
        h = c = self.start.new_zeros(n, self.start.shape[1])
        x = self.start.expand(n, -1)
        taken, logps, ents = [], [], []
        for t, head in enumerate(self.heads):
            h, c = self.lstm(x, (h, c))
            logits = head(h) / temperature
            logp_all = torch.log_softmax(logits, dim=-1)
            if decisions is None:
                d = torch.multinomial(logp_all.detach().exp(), 1, generator=generator).squeeze(1)
            else:
                d = decisions[:, t]
            taken.append(d)
            logps.append(logp_all.gather(1, d[:, None]).squeeze(1))
            ents.append(-(logp_all.exp() * logp_all).sum(-1))
            x = self.embed[t](d)
        return torch.stack(taken, 1), torch.stack(logps, 1).sum(1), torch.stack(ents, 1).sum(1)


@register_strategy
class PolicyGradient(Strategy):
    """LSTM controller trained by PPO (clipped objective) or REINFORCE, EMA reward baseline."""

    name = "ppo"
    # Paper appendix A.2-A.3: 100 units, U(-0.1, 0.1), lr 0.00035,
    # entropy 1e-5, EMA baseline 0.95, minibatches of 20. clip/epochs/optimizer are not in the paper.
    HPARAMS = dict(
        hidden=100,            # LSTM units
        init_range=0.1,        # weights ~ U(-init_range, init_range)
        lr=0.00035,            # Adam learning rate
        entropy_weight=1e-5,   # bonus on the summed per-decision entropy
        baseline_decay=0.95,   # baseline <- decay * baseline + (1 - decay) * reward
        batch_size=20,         # architectures per controller update
        clip=0.2,              # PPO ratio clip epsilon (ignored by reinforce)
        ppo_epochs=4,          # gradient steps per minibatch (reinforce: 1)
        temperature=1.0,       # softmax temperature when sampling and scoring
    )

    def __init__(self, space: DecisionSpace, seed: int = 0, **hparams):
        super().__init__(space, seed, **hparams)
        hp = self.hparams
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)  # weight init from the strategy seed, then restore the global RNG
        self.controller = Controller(space.choices, hp["hidden"], hp["init_range"])
        torch.random.set_rng_state(torch_state)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=hp["lr"])
        self.baseline: float | None = None
        self.buffer: list[tuple[list[int], float, float]] = []  # (decisions, advantage, old logp)
        # log-prob of each asked-but-not-told list under the policy that sampled it (PPO's pi_old)
        self.pending: dict[tuple[int, ...], list[float]] = {}

    def ask(self, n: int) -> list[list[int]]:
        """Sample n decision lists from the controller."""
        with torch.no_grad(), _one_thread():
            d, logp, _ = self.controller(n, generator=self.generator, temperature=self.hparams["temperature"])
        out = d.tolist()
        for dec, lp in zip(out, logp.tolist()):
            self.pending.setdefault(tuple(dec), []).append(lp)
        self.num_asked += n
        return out

    def _observe(self, decisions: list[int], reward: float) -> None:
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        decay = self.hparams["baseline_decay"]
        self.baseline = decay * self.baseline + (1 - decay) * reward
        olds = self.pending.get(tuple(decisions))
        if olds:
            old = olds.pop(0)
            if not olds:
                del self.pending[tuple(decisions)]
        else:  # told something it never asked: score it under the current policy
            with torch.no_grad():
                old = float(self.controller(1, torch.tensor([decisions]),
                                            temperature=self.hparams["temperature"])[1])
        self.buffer.append((decisions, advantage, old))
        if len(self.buffer) >= self.hparams["batch_size"]:
            with _one_thread():
                self._update(self.buffer)
            self.buffer = []

    def _loss(self, logp, old, adv, ent) -> torch.Tensor:
        ratio = torch.exp(logp - old)
        eps = self.hparams["clip"]
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        return -(surrogate.mean() + self.hparams["entropy_weight"] * ent.mean())

    def _epochs(self) -> int:
        return self.hparams["ppo_epochs"]

    def _update(self, batch) -> None:
        dec = torch.tensor([b[0] for b in batch])
        adv = torch.tensor([b[1] for b in batch], dtype=torch.float32)
        old = torch.tensor([b[2] for b in batch], dtype=torch.float32)
        for _ in range(self._epochs()):
            _, logp, ent = self.controller(len(batch), dec, temperature=self.hparams["temperature"])
            loss = self._loss(logp, old, adv, ent)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.num_updates += 1

    def probabilities(self) -> list[torch.Tensor]:
        """Per-decision softmax along the greedy (argmax) path; for inspection."""
        with torch.no_grad():
            h = c = self.controller.start.new_zeros(1, self.controller.start.shape[1])
            x, out = self.controller.start, []
            for t, head in enumerate(self.controller.heads):
                h, c = self.controller.lstm(x, (h, c))
                p = torch.softmax(head(h)[0], -1)
                out.append(p)
                x = self.controller.embed[t](p.argmax()[None])
        return out

    def state_dict(self) -> dict:
        """Base state plus controller weights, optimiser, baseline, buffer and pending samples."""
        state = super().state_dict()
        state.update(controller=self.controller.state_dict(), optimizer=self.optimizer.state_dict(),
                     baseline=self.baseline, buffer=[list(b) for b in self.buffer],
                     pending=[[list(k), list(v)] for k, v in self.pending.items()])
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict`` of the same strategy and space."""
        super().load_state_dict(state)
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.buffer = [(list(d), float(a), float(o)) for d, a, o in state["buffer"]]
        self.pending = {tuple(k): list(v) for k, v in state["pending"]}


@register_strategy
class Reinforce(PolicyGradient):
    """The original NAS rule (Zoph & Le, 2017): one REINFORCE step per minibatch, EMA baseline."""

    name = "reinforce"

    def _loss(self, logp, old, adv, ent) -> torch.Tensor:
        return -((logp * adv).mean() + self.hparams["entropy_weight"] * ent.mean())

    def _epochs(self) -> int:
        return 1


@register_strategy
class RandomSearch(Strategy):
    """Uniform sampling of every decision (the paper's Fig. 6 baseline)."""

    name = "random"

    def ask(self, n: int) -> list[list[int]]:
        """n uniformly random decision lists."""
        out = []
        for _ in range(n):
            out.append([int(torch.randint(c, (1,), generator=self.generator)) for c in self.space.choices])
        self.num_asked += n
        return out
