"""Activation checkpointing of one cell: its activations are dropped after the forward pass and
recomputed during backward (non-reentrant ``torch.utils.checkpoint``).

Two things make the recomputation equal to the first pass:

* ScheduledDropPath draws its masks from the global RNG; ``preserve_rng_state=True`` stashes the
  CPU generator and the generators of the inputs' devices (CUDA) before the forward pass and
  restores them for the recomputation, so every drop mask is drawn again unchanged.
* A BatchNorm in training mode would update its running statistics a second time while the
  cell is recomputed (one more momentum step and one more ``num_batches_tracked``). The
  recomputation runs inside :func:`bn_stats_kept`, which restores every running statistic of the
  cell on the way out, so the statistics move once per training step, as without checkpointing.
  FrozenBN keeps no statistics it updates and needs nothing.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["bn_stats_kept", "checkpoint_cell", "should_checkpoint"]

_STATS = ("running_mean", "running_var", "num_batches_tracked")


@contextmanager
def bn_stats_kept(module: nn.Module):
    """Restore the running statistics of every training-mode BatchNorm in ``module`` on exit."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            saved += [(t, t.clone()) for t in (getattr(m, n) for n in _STATS) if t is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)


def _recompute_contexts(module: nn.Module):
    """(context of the first pass, context of the recomputation) for ``checkpoint``'s context_fn."""
    return nullcontext(), bn_stats_kept(module)


def should_checkpoint(module: nn.Module, enabled: bool) -> bool:
    """Whether a cell of a network with checkpointing ``enabled`` is checkpointed now: in training
    mode with autograd recording (eval, ``no_grad`` and tracing run cells plainly)."""
    return enabled and module.training and torch.is_grad_enabled() and not torch.jit.is_scripting()


def checkpoint_cell(cell: nn.Module, *args, call=None):
    """``cell(*args)`` (or ``call(*args)``, a function running ``cell``), its activations recomputed
    in backward (same drop masks, BN statistics updated once)."""
    return checkpoint(call or cell, *args, use_reentrant=False, preserve_rng_state=True,
                      context_fn=lambda: _recompute_contexts(cell))
