"""Weight conversion from the public PyTorch ports, and this project's checkpoint format.

Our module names follow the ports (timm ``nasnetalarge``, Cadene ``pretrainedmodels``
``nasnetalarge``/``nasnetamobile``), so conversion is a short rename table:

* factorized reduction of the previous input: ``path_1.conv`` / ``path_2.conv`` /
  ``final_path_bn`` -> ``reduce_prev.path_1`` / ``reduce_prev.path_2`` / ``reduce_prev.bn``;
* Cadene numbers normal cells 6 per stage whatever N is (mobile: cell_0-3, cell_6-9,
  cell_12-15); TF-slim and this project number them 0 .. 3N-1.

TF-slim checkpoints (``source="tf-slim"``: ``{TF variable name: array}`` from
``tf_checkpoint.read_tf_checkpoint``) go through ``tf_slim.py``'s name table and layouts; what does
not fit is reported in TF's variable names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..common.fileio import atomic_torch_save, read_checkpoint
from ..model.registry import MODELS, create_model, get_config
from . import tf_slim

__all__ = ["convert_state_dict", "SOURCES", "CheckpointMismatch", "save_checkpoint",
           "load_checkpoint", "read_state_dict", "check_state_dict", "mismatch_report"]

_COMMON_RULES = [
    (re.compile(r"^(.*)\.path_1\.conv\.weight$"), r"\1.reduce_prev.path_1.weight"),
    (re.compile(r"^(.*)\.path_2\.conv\.weight$"), r"\1.reduce_prev.path_2.weight"),
    (re.compile(r"^(.*)\.final_path_bn\.(.*)$"), r"\1.reduce_prev.bn.\2"),
]
SOURCES = ("timm", "cadene", "nasnet_core", "tf-slim")


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the architecture; the message lists the offending keys."""


def _renumber_cadene(key: str, cells_per_stage: int) -> str:
    m = re.match(r"^cell_(\d+)\.(.*)$", key)
    if not m:
        return key
    idx = int(m.group(1))
    stage, j = divmod(idx, 6)
    return f"cell_{stage * cells_per_stage + j}.{m.group(2)}"


def convert_state_dict(state_dict: dict[str, torch.Tensor], source: str, arch: str,
                       drop_background: bool = False, **overrides) -> dict[str, torch.Tensor]:
    """Map a ``source`` state dict (timm / cadene / nasnet_core, or TF-slim's variables) onto
    registered ``arch``.

    ``drop_background`` removes class 0 of a 1001-way TF classifier (implied for tf-slim, whose
    ImageNet heads always have it). Raises CheckpointMismatch listing unmatched, missing and
    wrongly shaped keys.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    if arch not in MODELS:
        raise ValueError(f"unknown arch {arch!r}; known models: {', '.join(sorted(MODELS))}")
    if source == "tf-slim":
        return _from_tf_slim(state_dict, arch, **overrides)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    cells_per_stage = get_config(arch, **overrides).num_cells // 3
    out = {}
    for key, value in state_dict.items():
        new = key
        if source != "nasnet_core":
            if source == "cadene":
                new = _renumber_cadene(new, cells_per_stage)
            for pattern, repl in _COMMON_RULES:
                new = pattern.sub(repl, new)
        out[new] = value
    if drop_background:
        for k in ("last_linear.weight", "last_linear.bias"):
            if k in out:
                out[k] = out[k][1:]
    check_state_dict(out, arch, **{"aux_head": False, **overrides})
    return out


def _structure(desc: dict[str, int]) -> str:
    return (f"{desc['num_cells']} normal cells, {desc['num_conv_filters']} filters, "
            f"{desc['stem_filters']} stem filters")


def _from_tf_slim(tf_vars: dict, arch: str, **overrides) -> dict[str, torch.Tensor]:
    """TF-slim's variables as ``arch``'s state dict; CheckpointMismatch naming TF's variables."""
    desc = tf_slim.describe_tf_slim(tf_vars)
    if desc is None:
        first = ", ".join(sorted(tf_vars)[:3])
        raise CheckpointMismatch(f"not a TF-slim NASNet checkpoint: no conv0/weights and cell_0/1x1/weights "
                                 f"among its {len(tf_vars)} variables (first: {first})")
    cfg = get_config(arch, **overrides)
    want = dict(num_cells=cfg.num_cells, num_conv_filters=cfg.num_conv_filters,
                stem_filters=int(32 * cfg.stem_multiplier))
    if desc != want:
        looks = tf_slim.identify_tf_slim(desc)
        hint = f"it looks like {looks}: convert it with --arch {looks}" if looks else \
            "no registered model has that structure"
        raise CheckpointMismatch(f"refusing to convert a TF-slim checkpoint with {_structure(desc)} as "
                                 f"{arch} ({_structure(want)}); {hint}")
    with_aux = any(re.match(r"aux_\d+/", name) for name in tf_vars)
    names, tf_shapes, counters = tf_slim.expected_tf_slim(arch, with_aux, **overrides)
    tf_vars = tf_slim.drop_tf_background(tf_vars, cfg.num_classes)
    report = mismatch_report(tf_vars, tf_shapes)
    if report:
        raise CheckpointMismatch(f"TF-slim checkpoint does not fit {arch}: {report} (TF variable names)")
    out = {key: tf_slim.tf_slim_to_torch(key, tf_vars[name]) for key, name in names.items()}
    out.update({key: torch.tensor(0) for key in counters})
    check_state_dict(out, arch, **{**overrides, "aux_head": with_aux})
    return out


def mismatch_report(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Size],
                    allow_missing: tuple[str, ...] = ()) -> str | None:
    """One line naming the unmatched, missing (except ``allow_missing`` prefixes) and wrongly shaped
    keys of ``state_dict`` against ``expected`` shapes; None when it fits."""
    unexpected = sorted(set(state_dict) - set(expected))
    missing = sorted(k for k in set(expected) - set(state_dict) if not k.startswith(tuple(allow_missing)))
    wrong = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k])}"
                   for k in set(state_dict) & set(expected)
                   if tuple(state_dict[k].shape) != tuple(expected[k]))
    groups = (("unmatched checkpoint keys", unexpected), ("model keys missing from the checkpoint", missing),
              ("shape mismatches", wrong))
    parts = [f"{title} ({len(items)}): {', '.join(items[:20])}"
             + (f" and {len(items) - 20} more" if len(items) > 20 else "")
             for title, items in groups if items]
    if not parts:
        return None
    bias = state_dict.get("last_linear.bias")
    if bias is not None and "last_linear.bias" in expected and \
            bias.shape[0] == expected["last_linear.bias"][0] + 1:
        parts.append("hint: a 1001-way classifier is TF's background class; use drop_background=True "
                     "(--drop-background), or set num_classes")
    return "; ".join(parts)


def check_state_dict(state_dict: dict[str, torch.Tensor], arch: str, allow_missing=(),
                     **overrides) -> None:
    """Raise CheckpointMismatch unless ``state_dict`` fits ``arch`` exactly (names and shapes)."""
    with torch.device("meta"):
        model = create_model(arch, **overrides)
    report = mismatch_report(state_dict, {k: v.shape for k, v in model.state_dict().items()},
                             tuple(allow_missing))
    if report:
        raise CheckpointMismatch(f"checkpoint does not fit {arch}: {report}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .pth/.pt (raw, or wrapped in 'state_dict'/'model') or .safetensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - SafetensorError and OSError alike: an unreadable file
            raise ValueError(f"cannot read safetensors file {path}: {type(e).__name__}: {e}") from None
    return _extract_state(read_checkpoint(path), path)


def _extract_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], arch: str,
                    config: dict[str, Any] | None = None, **extra) -> Path:
    """Write a nasnet_core checkpoint atomically (temp file, then rename)."""
    return atomic_torch_save({"arch": arch, "config": config or {}, "state_dict": state_dict, **extra},
                             path)


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a nasnet_core checkpoint (or raw state dict) into ``model``; the aux head may be absent
    from either (a model without one ignores the checkpoint's).

    Raises CheckpointMismatch naming the keys that do not fit; returns the checkpoint's metadata.
    """
    raw = read_checkpoint(path)
    meta = raw if isinstance(raw, dict) and "state_dict" in raw else {}
    state = _extract_state(raw, Path(path))
    if getattr(model, "aux_head", None) is None:  # training-only head: a model built without it skips it
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
    report = mismatch_report(state, {k: v.shape for k, v in model.state_dict().items()}, ("aux_head.",))
    if report:
        arch = getattr(model, "arch", type(model).__name__)
        raise CheckpointMismatch(f"checkpoint {path} (arch {meta.get('arch', '?')}) does not fit model "
                                 f"{arch}: {report}")
    model.load_state_dict(state, strict=False)
    return {k: v for k, v in meta.items() if k != "state_dict"}
