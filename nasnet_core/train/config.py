"""Training configuration: every key with its default and a comment, YAML files, CLI overrides.

A config is a two-level dict ``{section: {key: value}}``. Files and ``KEY VALUE`` overrides
(``solver.lr 0.1``) may only set keys defined here; anything else raises ConfigError
listing the known keys. The resolved config is written (with these comments) next to
every run's outputs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..fileio import atomic_write_text, read_yaml_mapping

__all__ = ["ConfigError", "SCHEMA", "default_config", "load_config", "apply_overrides",
           "dump_config", "write_config", "flatten"]


class ConfigError(ValueError):
    """A config file or override is malformed or names an unknown key."""


# (key, default, comment). None means "take it from the model / dataset".
SCHEMA: dict[str, list[tuple[str, Any, str]]] = {
    "model": [
        ("arch", "nasnet_a_cifar", "registered nasnet_core model (nasnet_core.list_models())"),
        ("genotype", None, "genotype: registered name, text form or a JSON file from the search "
                           "(null: the arch's, NASNet-A)"),
        ("N", None, "normal cells per stage (null: the arch's)"),
        ("F", None, "penultimate width, 24 x num_conv_filters for NASNet-A (null: the arch's)"),
        ("stem", None, "imagenet | cifar (null: the arch's)"),
        ("aux_head", True, "auxiliary classifier after the 2nd stage (training only)"),
        ("drop_path_keep_prob", None, "ScheduledDropPath final keep prob of the last cell "
                                      "(null: the arch's; 1.0 = off)"),
        ("dropout", None, "dropout before the classifier (null: the arch's)"),
        ("norm", "BN", "BN | SyncBN | FrozenBN | GN"),
        ("pad_mode", "tf", "tf | timm (stride-2 padding semantics)"),
    ],
    "data": [
        ("dataset", "cifar10", "cifar10 | imagenet | fashion_mnist"),
        ("path", "", "dataset root (CIFAR python batches, ImageNet train/ val/ folders, "
                     "Fashion-MNIST IDX files); --data overrides it"),
        ("image_size", None, "training and eval crop size (null: the dataset's native size, "
                             "or the arch's image_size for imagenet)"),
        ("crop_pct", 0.875, "imagenet eval: resize the shorter side to image_size / crop_pct, "
                            "then centre-crop"),
        ("min_scale", 0.08, "imagenet train: smallest area fraction of the random-resized crop"),
        ("pad", 4, "cifar10 / fashion_mnist train: zero-pad then random crop back (0 = off)"),
        ("hflip", True, "random horizontal flips for training"),
        ("cutout", 0, "cutout square side in pixels (0 = off; paper: 16 on CIFAR-10)"),
        ("mean", None, "per-channel normalisation mean (null: the dataset's default)"),
        ("std", None, "per-channel normalisation std (null: the dataset's default)"),
        ("train_limit", 0, "use only the first K training examples (0 = all); for smoke runs"),
        ("val_limit", 0, "use only the first K validation examples (0 = all)"),
        ("workers", 4, "data-loader worker processes per training process"),
        ("pin_memory", True, "pinned host memory for faster copies to the GPU"),
    ],
    "solver": [
        ("epochs", 600, "training epochs"),
        ("batch_size", 32, "images per step per process (global batch = this x world size)"),
        ("optimizer", "sgd", "sgd (momentum) | rmsprop (TF semantics)"),
        ("lr", 0.025, "peak learning rate"),
        ("momentum", 0.9, "SGD / RMSProp momentum"),
        ("nesterov", False, "Nesterov momentum for SGD"),
        ("rmsprop_decay", 0.9, "RMSProp decay of the squared-gradient average"),
        ("rmsprop_eps", 1.0, "RMSProp epsilon, inside the square root as in TensorFlow"),
        ("weight_decay", 5e-4, "L2 on conv / FC weights (TF-slim regularises weights only)"),
        ("schedule", "cosine", "cosine | exponential | constant (per step)"),
        ("warmup_epochs", 0.0, "linear warmup from lr/W to lr over this many epochs"),
        ("decay_rate", 0.97, "exponential schedule: multiply lr by this ..."),
        ("decay_epochs", 2.4, "... every this many epochs"),
        ("staircase", True, "exponential schedule: decay in steps (TF staircase) or smoothly"),
        ("min_lr", 0.0, "cosine schedule: final learning rate"),
        ("label_smoothing", 0.0, "target = (1 - e) one_hot + e / K"),
        ("aux_weight", 0.4, "loss weight of the auxiliary head"),
        ("grad_clip", 5.0, "clip the global gradient norm to this (0 = off)"),
        ("ema_decay", 0.0, "parameter EMA decay (0 = off); when on, evaluation and the exported "
                           "backbone use the EMA weights"),
    ],
    "train": [
        ("output_dir", "runs/classification", "checkpoints, TensorBoard events, resolved config"),
        ("seed", 0, "seed of sampling order, augmentation, init, dropout and drop-path"),
        ("deterministic", False, "deterministic kernels (torch.use_deterministic_algorithms)"),
        ("device", "auto", "auto | cpu | cuda"),
        ("amp", "auto", "bf16 autocast: auto (on for CUDA) | on | off"),
        ("channels_last", "auto", "channels_last memory format: auto (on for CUDA) | on | off"),
        ("eval_every", 1, "evaluate every this many epochs (and always at the end)"),
        ("keep_every", 0, "also keep epoch_XXXX.pth every this many epochs (0 = only last.pth)"),
        ("log_every", 10, "write TensorBoard training scalars every this many steps"),
        ("threads", 0, "CPU threads for torch (0 = torch's default)"),
    ],
}

_KNOWN = {sec: {k for k, _, _ in keys} for sec, keys in SCHEMA.items()}


def default_config() -> dict[str, dict[str, Any]]:
    """A fresh config holding every key's default."""
    return {sec: {k: copy.deepcopy(v) for k, v, _ in keys} for sec, keys in SCHEMA.items()}


def _known_list() -> str:
    return "; ".join(f"{sec}: {', '.join(k for k, _, _ in keys)}" for sec, keys in SCHEMA.items())


def _check_type(sec: str, key: str, value: Any) -> Any:
    default = next(d for k, d, _ in SCHEMA[sec] if k == key)
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{sec}.{key} must be true/false, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "5e-05" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{sec}.{key} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{sec}.{key} must be an integer, got {value!r}")
    elif isinstance(default, str) and isinstance(value, bool) and default in ("auto", "on", "off"):
        value = "on" if value else "off"  # YAML 1.1 reads bare on/off as booleans
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{sec}.{key} must be a string, got {value!r}")
    return value


def set_key(cfg: dict, dotted: str, value: Any) -> None:
    """Set ``section.key`` to ``value`` after checking the key exists and the type fits."""
    sec, _, key = dotted.partition(".")
    if sec not in _KNOWN or key not in _KNOWN[sec]:
        raise ConfigError(f"unknown config key {dotted!r}; known keys: {_known_list()}")
    cfg[sec][key] = _check_type(sec, key, value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Defaults, updated by the YAML file at ``path`` and then by ``KEY VALUE`` overrides."""
    cfg = default_config()
    if path is not None:
        data = read_yaml_mapping(path, ConfigError)
        for sec, keys in data.items():
            if sec not in SCHEMA:
                raise ConfigError(f"unknown config section {sec!r} in {path}; known sections: "
                                  f"{', '.join(SCHEMA)}")
            if not isinstance(keys, dict):
                raise ConfigError(f"section {sec!r} in {path} must be a mapping")
            for key, value in keys.items():
                set_key(cfg, f"{sec}.{key}", value)
    apply_overrides(cfg, overrides or [])
    return cfg


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Apply ``["section.key", "value", ...]`` pairs; values are parsed as YAML scalars."""
    if len(overrides) % 2:
        raise ConfigError(f"overrides come in KEY VALUE pairs, got an odd list: {overrides}")
    for key, raw in zip(overrides[::2], overrides[1::2]):
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        set_key(cfg, key, value)
    return cfg


def flatten(cfg: dict) -> dict[str, Any]:
    """``{"section.key": value}`` view of a config."""
    return {f"{sec}.{k}": v for sec, keys in cfg.items() for k, v in keys.items()}


def dump_config(cfg: dict) -> str:
    """YAML text of ``cfg`` with each key's comment."""
    lines = []
    for sec, keys in SCHEMA.items():
        lines.append(f"{sec}:")
        for key, _, comment in keys:
            value = yaml.safe_dump(cfg[sec][key], default_flow_style=True).strip()
            value = value.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"  {key}: {value}  # {comment}")
    return "\n".join(lines) + "\n"


def write_config(cfg: dict, path: str | Path) -> Path:
    """Write the commented resolved config atomically."""
    return atomic_write_text(path, dump_config(cfg))
