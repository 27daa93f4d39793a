"""Our models as timm models: ``import nasnet_core.interop.timm_compat`` registers every registered
nasnet_core model with timm as ``nc_<name>`` (e.g. ``nc_nasnet_a_mobile``; timm's own
``nasnetalarge`` is untouched).

``timm.create_model("nc_nasnet_a_large", num_classes=10, features_only=True, out_indices=...)``
then works as for timm's models: a ``pretrained_cfg`` (input size, interpolation, crop, mean/std
of the ported weights, first conv and classifier names), ``num_classes`` / ``num_features``,
``reset_classifier``, ``forward_features`` / ``forward_head(pre_logits=...)``,
``forward_intermediates`` and ``features_only`` (timm's feature getter over
``forward_intermediates``). A timm-created model's ``feature_info`` is timm's layout: the last
map at each stride (ImageNet: stem, cell_stem_0, stage1, stage2, stage3 at strides 2-32).
Weights: ``pretrained=True, pretrained_cfg_overlay=dict(file="weights/nasnet_a_mobile.pth")``
with a checkpoint written by ``tools/convert_weights.py``. The auxiliary head is off.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from timm.layers import register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..model.layers import SameConv2d, SamePool2d
from ..model.network import NASNet
from ..model.registry import ModelConfig, get_config, list_models

__all__ = ["PREFIX", "default_cfgs", "register_timm", "timm_name"]

PREFIX = "nc_"
default_cfgs: dict = {}  # timm reads each entrypoint's pretrained cfgs from here

# SAME padding reads the input size: FX keeps these layers whole (they are scriptable).
register_notrace_module(SameConv2d)
register_notrace_module(SamePool2d)

_INTERPOLATION = {"nasnet_a_large": "bicubic"}
"""Resize used with the ported weights: timm's nasnetalarge (large) says bicubic; Cadene's mobile
port and TF-slim's preprocessing resize bilinearly."""


def timm_name(name: str) -> str:
    """timm's name for the nasnet_core model ``name``."""
    return PREFIX + name


def _pool_size(cfg: ModelConfig) -> int:
    """Side of the final feature map at the config's image size: the ImageNet stem is a VALID
    3x3 stride-2 conv and 4 SAME stride-2 cells follow (stride 32); CIFAR has 2 (stride 4)."""
    if cfg.stem == "imagenet":
        side, halvings = (cfg.image_size - 3) // 2 + 1, 4
    else:
        side, halvings = cfg.image_size, 2
    for _ in range(halvings):
        side = math.ceil(side / 2)
    return side


def _pretrained_cfg(name: str, cfg: ModelConfig) -> dict:
    side = _pool_size(cfg)
    size = (cfg.in_chans, cfg.image_size, cfg.image_size)
    return dict(url="", num_classes=cfg.num_classes, input_size=size,
                pool_size=(side, side), crop_pct=cfg.crop_pct,
                interpolation=_INTERPOLATION.get(name, "bilinear"), mean=cfg.mean, std=cfg.std,
                first_conv="conv0.conv", classifier="last_linear", license="apache-2.0")


def per_stride_feature_info(model: NASNet) -> list[dict]:
    """timm's feature layout: the last ``feature_info`` map at each stride, in order."""
    last = {f["stride"]: f for f in model.feature_info}
    return [last[s] for s in sorted(last)]


def _build(name: str):
    """The model class timm's builder calls: kwargs -> a NASNet with timm's attributes."""
    def build(num_classes: int = 1000, in_chans: int = 3, global_pool: str | None = None,
              drop_rate: float | None = None, drop_path_rate: float | None = None, device=None, dtype=None,
              **overrides) -> NASNet:
        """The NASNet for timm's kwargs (unknown ones raise TypeError, as timm expects)."""
        if drop_rate is not None:
            overrides["dropout"] = drop_rate
        if drop_path_rate is not None:
            overrides["drop_path_keep_prob"] = 1.0 - drop_path_rate
        try:
            cfg = get_config(name, in_chans=in_chans, aux_head=False, num_classes=max(num_classes, 1),
                             **overrides)
        except ValueError as e:
            raise TypeError(f"{timm_name(name)}: {e}") from None  # timm: unknown arguments are TypeErrors
        from ..model.registry import create_model
        with torch.device(device) if device is not None else nullcontext():
            model = create_model(name, in_chans=cfg.in_chans, aux_head=False, num_classes=cfg.num_classes,
                                 **overrides)
        if dtype is not None:
            model.to(dtype=dtype)
        if num_classes == 0 or global_pool is not None:
            model.reset_classifier(num_classes, global_pool)
        model.nc_config = model.default_cfg  # timm replaces default_cfg by its pretrained cfg dict
        model.in_chans = in_chans
        model.feature_info = per_stride_feature_info(model)
        return model

    build.__name__ = f"build_{name}"
    return build


def _drop_aux(state_dict: dict, model: NASNet) -> dict:
    """Checkpoint -> state dict for a timm-created model: the aux head (always off here) is dropped."""
    return {k: v for k, v in state_dict.items() if not k.startswith("aux_head.")}


def register_timm(name: str) -> str:
    """Register the nasnet_core model ``name`` with timm; returns its timm name."""
    cfg = get_config(name)
    tname = timm_name(name)
    default_cfgs.update(generate_default_cfgs({tname: _pretrained_cfg(name, cfg)}))
    build = _build(name)

    def entry(pretrained: bool = False, **kwargs) -> NASNet:
        """timm entrypoint: build through timm's builder (pretrained cfg, features_only)."""
        if pretrained and not (kwargs.get("pretrained_cfg_overlay") or {}).get("file"):
            raise ValueError(f"{tname} has no hosted weights; convert them with tools/convert_weights.py and "
                             "pass pretrained_cfg_overlay=dict(file=<checkpoint>)")
        n_feat = len(per_stride_feature_info_of(cfg))
        return build_model_with_cfg(build, tname, pretrained, pretrained_filter_fn=_drop_aux,
                                    feature_cfg=dict(feature_cls="getter", out_indices=tuple(range(n_feat))),
                                    **kwargs)

    entry.__name__ = entry.__qualname__ = tname
    entry.__module__ = __name__
    entry.__doc__ = f"nasnet_core {name} through timm."
    register_model(entry)
    return tname


def per_stride_feature_info_of(cfg: ModelConfig) -> list[int]:
    """Strides of the timm feature layout for a config: ImageNet 2-32, CIFAR 1, 2, 4."""
    return [2, 4, 8, 16, 32] if cfg.stem == "imagenet" else [1, 2, 4]


for _name in list_models():
    register_timm(_name)
