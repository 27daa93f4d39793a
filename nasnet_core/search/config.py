"""Search configuration: defaults (every key commented here), YAML loading, strict key checking."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..fileio import read_yaml_mapping

__all__ = ["DEFAULTS", "ConfigError", "load_config", "merge_config", "dump_config"]


class ConfigError(ValueError):
    """An unknown key or a value of the wrong type in a search config."""


# Keys whose values are free-form mappings (checked by their consumer, not here).
FREE_FORM = {"search.strategy_hparams", "reward.synthetic.faults"}

DEFAULTS: dict[str, Any] = {
    "search": {
        "strategy": "ppo",          # ppo | reinforce | random (nasnet_core.search.STRATEGIES)
        "strategy_hparams": {},     # overrides of the strategy's HPARAMS (e.g. lr, batch_size)
        "num_children": 48,         # children to sample in all; failed children count too
        "seed": 0,                  # strategy seed (controller init and sampling)
        "max_in_flight": 0,         # children queued or running at once; 0 = 1 in-process, 2 x slots on Ray
    },
    "space": {
        "variant": "A",             # paper variant A | B | C (nasnet_core.search.SPACE_VARIANTS)
        "num_blocks": None,         # B; null = the variant's
        "ops": None,                # list of op names; null = all 13 of nc.OP_NAMES
        "combiners": None,          # list of combiners; null = the variant's
        "output": None,             # unused | all; null = the variant's
    },
    "executor": {
        "backend": "inprocess",     # inprocess (default, one child at a time) | ray
        "address": None,            # Ray cluster address (e.g. "auto" or "ray://host:10001"); null = local
        "num_cpus": None,           # CPUs for a local Ray instance; null = all
        "cpus_per_child": 1,        # Ray CPUs reserved per child
        "gpus_per_child": None,     # Ray GPUs per child; null = 1 when the cluster has GPUs, else 0
        "max_retries": 3,           # Ray re-runs of a child whose worker process died
    },
    "reward": {
        "name": "child",            # child (train a child network) | synthetic (tests, demos)
        "child": {
            "dataset": "fashion_mnist",  # fashion_mnist (IDX files, .gz or not) | cifar10 (python pickles)
            "data_dir": "/usr/share/datasets/fashion-mnist",  # folder holding the dataset's files
            "val_size": 5000,       # held-out images taken from the training set (paper: 5k of 50k)
            "split_seed": 0,        # seed of the fixed train/held-out split
            "train_subset": 0,      # use only this many training images; 0 = all
            "val_subset": 0,        # use only this many held-out images; 0 = all
            "N": 2,                 # normal cells per stage (paper's child: 2)
            "num_conv_filters": 8,  # filters of the first stage (F = 24 x this for NASNet-A)
            "stem_multiplier": 3.0,  # CIFAR stem width = num_conv_filters x this
            "epochs": 20,           # training epochs (paper's child: 20)
            "batch_size": 32,       # SGD batch size
            "lr": 0.025,            # peak LR of the single-period cosine schedule
            "momentum": 0.9,        # SGD momentum (paper: 0.9)
            "weight_decay": 5e-4,   # L2 weight decay
            "grad_clip": 5.0,       # gradient-norm clip; 0 = off
            "crop_pad": 4,          # random crops of 32x32 from images zero-padded by this (paper: 40x40)
            "flip": True,           # random horizontal flips (paper: yes)
            "seed": 0,              # seed of weight init and batch order (the same for every child)
            "device": "auto",       # auto (cuda when visible) | cpu | cuda
            "num_threads": 0,       # torch CPU threads per child; 0 = torch's default
            "eval_batch_size": 500,  # batch size for held-out accuracy
        },
        "synthetic": {
            "target_seed": 0,       # seed drawing the optimum; reward = fraction of decisions equal to it
            "noise": 0.0,           # std of Gaussian noise added to the reward
            "delay": 0.0,           # seconds each evaluation sleeps (to mimic training time)
            "faults": {},           # child id -> raise | nan | die_once (fault injection for tests)
            "fault_dir": None,      # folder for die_once markers (a worker dies on the first attempt)
        },
    },
}


def merge_config(base: dict, update: dict, prefix: str = "") -> dict:
    """``base`` deep-updated with ``update``; unknown keys and type mismatches raise ConfigError."""
    out = copy.deepcopy(base)
    if not isinstance(update, dict):
        raise ConfigError(f"config section {prefix or '(top level)'!r} must be a mapping, "
                          f"got {type(update).__name__}")
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {dotted!r}; known keys"
                              f"{' in ' + repr(prefix[:-1]) if prefix else ''}: {', '.join(base)}")
        default = base[key]
        if dotted in FREE_FORM:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} must be a mapping, got {value!r}")
            out[key] = dict(value or {})
        elif isinstance(default, dict):
            out[key] = merge_config(default, value or {}, dotted + ".")
        elif default is None or value is None:
            out[key] = value
        elif not _type_ok(default, value):
            raise ConfigError(f"config key {dotted!r} expects {type(default).__name__} "
                              f"(default {default!r}), got {value!r}")
        else:
            out[key] = float(value) if isinstance(default, float) else value
    return out


def _type_ok(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """DEFAULTS merged with a YAML file and then with ``overrides`` (a nested dict)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = merge_config(cfg, read_yaml_mapping(path, ConfigError))
    if overrides:
        cfg = merge_config(cfg, overrides)
    return cfg


def parse_override(text: str) -> dict:
    """``a.b.c=value`` (value parsed as YAML) -> nested dict."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. search.num_children=24)")
    value = yaml.safe_load(raw)
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def dump_config(cfg: dict) -> str:
    """YAML text of a resolved config."""
    return yaml.safe_dump(cfg, sort_keys=False)
