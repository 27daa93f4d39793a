"""Up-front checks of a classification config, and its self-contained form (genotype as text, N, F).

``check_config`` runs before anything is read or written: a value no run can use (0 epochs,
evaluating every 0 epochs, a negative learning rate) raises one ConfigError naming the key.
``self_contained`` replaces a genotype given as a JSON path by its text form and fills null N / F
with the architecture's, so a saved config or checkpoint rebuilds its model without the file.
"""

from __future__ import annotations

import copy

import torch

from ..common.config import ConfigError, flatten
from ..model import registry
from ..model.genotype import GENOTYPES, get_genotype, is_genotype_text

__all__ = ["RULES", "TOGGLES", "check_config", "self_contained", "resolve_device", "toggle"]

TOGGLES = {"auto": None, "on": True, "off": False}


def _between(lo, hi, lo_open=False, hi_open=False):
    def ok(v):
        """Whether ``v`` lies in the interval."""
        return (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
    left, right = "(" if lo_open else "[", ")" if hi_open or hi is None else "]"
    return ok, f"in {left}{lo}, {'inf' if hi is None else hi}{right}"


_POS, _NONNEG = _between(1, None), _between(0, None)
_POS_REAL = _between(0, None, lo_open=True)
_FRACTION = _between(0, 1, hi_open=True)  # [0, 1)
_PROB = _between(0, 1, lo_open=True)  # (0, 1]

RULES = {
    "solver.epochs": _POS, "solver.batch_size": _POS, "solver.lr": _POS_REAL, "solver.momentum": _FRACTION,
    "solver.weight_decay": _NONNEG, "solver.warmup_epochs": _NONNEG, "solver.decay_rate": _POS_REAL,
    "solver.decay_epochs": _POS_REAL, "solver.min_lr": _NONNEG, "solver.label_smoothing": _FRACTION,
    "solver.aux_weight": _NONNEG, "solver.grad_clip": _NONNEG, "solver.ema_decay": _FRACTION,
    "solver.rmsprop_decay": _FRACTION, "solver.rmsprop_eps": _POS_REAL,
    "train.eval_every": _POS, "train.keep_every": _NONNEG, "train.log_every": _POS, "train.threads": _NONNEG,
    "data.workers": _NONNEG, "data.train_limit": _NONNEG, "data.val_limit": _NONNEG, "data.pad": _NONNEG,
    "data.cutout": _NONNEG, "data.image_size": _POS, "data.crop_pct": _PROB, "data.min_scale": _PROB,
    "model.N": _POS, "model.F": _POS, "model.drop_path_keep_prob": _PROB, "model.dropout": _FRACTION,
}
"""Key -> (predicate, rule text) for the numeric classification keys; null values pass (defaults)."""


def check_config(cfg: dict) -> dict:
    """``cfg`` unchanged; ConfigError naming the first key whose value no run can use."""
    flat = flatten(cfg)
    for key, (ok, rule) in RULES.items():
        value = flat.get(key)
        if value is not None and not ok(value):
            raise ConfigError(f"config key {key!r} must be {rule}, got {value!r}")
    return cfg


def self_contained(cfg: dict) -> dict:
    """A copy of ``cfg`` whose model section rebuilds the model alone: a genotype file replaced by the
    genotype's text, null N and F by the architecture's values."""
    cfg = copy.deepcopy(cfg)
    m = cfg["model"]
    g = m["genotype"]
    if g is not None and g not in GENOTYPES and not is_genotype_text(g):  # text: no file lookup
        m["genotype"] = get_genotype(g).to_string()
    if m["N"] is None or m["F"] is None:
        kw = {k: m[k] for k in ("genotype", "N") if m[k] is not None}
        spec = registry.model_spec(registry.get_config(m["arch"], **kw))
        m["N"] = spec["N"] if m["N"] is None else m["N"]
        m["F"] = spec["F"] if m["F"] is None else m["F"]
    return cfg


def resolve_device(name: str, index: int = 0, key: str = "train.device") -> torch.device:
    """The torch device of a config value: auto (CUDA when visible) | cpu | cuda (``index``-th GPU)."""
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{key} must be auto, cpu or cuda, got {name!r}")
    use_cuda = torch.cuda.is_available() if name == "auto" else name == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"{key} is cuda but no CUDA device is available (use auto or cpu)")
    return torch.device("cuda", index) if use_cuda else torch.device("cpu")


def toggle(value: str, default: bool, key: str) -> bool:
    """The boolean of an auto | on | off config value (``default`` for auto)."""
    if value not in TOGGLES:
        raise ConfigError(f"{key} must be one of {', '.join(TOGGLES)}, got {value!r}")
    return default if TOGGLES[value] is None else TOGGLES[value]
