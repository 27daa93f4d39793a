"""Named model configurations and ``create_model`` (TF-slim's NASNet configs, paper Table 2/3)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from numbers import Integral, Real
from typing import Any

from .genotype import get_genotype
from .layers import PAD_MODES
from .network import NASNet
from .ops import OpContext
from .plan import make_plan, spatial_after

__all__ = ["ModelConfig", "MODELS", "create_model", "list_models", "register_model", "get_config",
           "width_per_filter", "model_spec", "check_model_config", "min_image_size"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a registered model, plus its default input/normalisation."""

    genotype: str = "nasnet_a"
    num_cells: int = 18  # normal cells in all (3 N)
    num_conv_filters: int = 168  # F / 24 for NASNet-A
    stem: str = "imagenet"
    stem_multiplier: float = 3.0
    skip_reduction_layer_input: bool = True
    num_classes: int = 1000
    in_chans: int = 3
    image_size: int = 331
    drop_path_keep_prob: float = 1.0
    total_training_steps: int = 250000
    dropout: float = 0.5  # 1 - dense_dropout_keep_prob
    aux_head: bool = True
    norm: str = "BN"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.0003  # 1 - TF decay 0.9997
    pad_mode: str = "tf"
    # timm-style default_cfg: what the published weights expect.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop_pct: float = 0.875
    paper: dict[str, Any] = field(default_factory=dict, compare=False)


_IMAGENET = ModelConfig()
_CIFAR = ModelConfig(num_cells=18, num_conv_filters=32, stem="cifar", stem_multiplier=3.0,
                     skip_reduction_layer_input=False, num_classes=10, image_size=32,
                     drop_path_keep_prob=0.6, total_training_steps=937500, dropout=0.0,
                     bn_eps=1e-5, bn_momentum=0.1, mean=(0.4914, 0.4822, 0.4465),
                     std=(0.2470, 0.2435, 0.2616), crop_pct=1.0)

MODELS: dict[str, ModelConfig] = {
    # TF-slim mobile_imagenet_config; paper: 5.3 M params, 564 M mult-adds, 74.0 / 91.6.
    "nasnet_a_mobile": replace(_IMAGENET, num_cells=12, num_conv_filters=44, stem_multiplier=1.0,
                               skip_reduction_layer_input=False, image_size=224,
                               paper=dict(params=5.3e6, mult_adds=564e6, top1=74.0, top5=91.6)),
    # TF-slim large_imagenet_config; paper: 88.9 M, 23.8 B, 82.7 / 96.2.
    "nasnet_a_large": replace(_IMAGENET, drop_path_keep_prob=0.7,
                              paper=dict(params=88.9e6, mult_adds=23.8e9, top1=82.7, top5=96.2)),
    # Paper Table 2: 7 @ 1920 at 299 -> 22.6 M, 4.93 B, 80.8 / 95.3 (large-style hparams).
    "nasnet_a_7_1920": replace(_IMAGENET, num_cells=21, num_conv_filters=80, image_size=299,
                               drop_path_keep_prob=0.7,
                               paper=dict(params=22.6e6, mult_adds=4.93e9, top1=80.8, top5=95.3)),
    # Paper Table 2 "5 @ 1538" (1538 is not 24 x k; 1536 = 24 x 64): 10.9 M, 2.35 B, 78.6 / 94.2.
    "nasnet_a_5_1536": replace(_IMAGENET, num_cells=15, num_conv_filters=64, image_size=299,
                               drop_path_keep_prob=0.7,
                               paper=dict(params=10.9e6, mult_adds=2.35e9, top1=78.6, top5=94.2)),
    # TF-slim cifar_config; paper Table 1: 3.3 M params, 3.41 % error (2.65 with cutout).
    "nasnet_a_cifar": replace(_CIFAR, paper=dict(params=3.3e6, error=3.41)),
    # Paper Table 1: 7 @ 2304 -> 27.6 M params, 2.97 % error (2.40 with cutout).
    "nasnet_a_cifar_7_2304": replace(_CIFAR, num_cells=21, num_conv_filters=96,
                                     paper=dict(params=27.6e6, error=2.97)),
}


def register_model(name: str, config: ModelConfig) -> None:
    """Add a named configuration to the registry."""
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = config


def list_models() -> list[str]:
    """Names of the registered models."""
    return sorted(MODELS)


def get_config(name: str, **overrides) -> ModelConfig:
    """The registered config ``name`` with overrides applied (N/F accepted, see create_model)."""
    try:
        cfg = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    overrides = dict(overrides)
    n, f = overrides.pop("N", None), overrides.pop("F", None)
    known = {f_.name for f_ in cfg.__dataclass_fields__.values()} - {"paper"}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {name}; known: "
                         f"{', '.join(sorted(known | {'N', 'F'}))}")
    if "genotype" in overrides and not isinstance(overrides["genotype"], str):
        overrides["genotype"] = get_genotype(overrides["genotype"]).to_string()
    cfg = replace(cfg, **overrides)
    if n is not None:
        if "num_cells" in overrides:
            raise ValueError("give N or num_cells, not both")
        cfg = replace(cfg, num_cells=3 * _positive_int("N", n))
    if f is not None:
        if "num_conv_filters" in overrides:
            raise ValueError("give F or num_conv_filters, not both")
        cfg = replace(cfg, num_conv_filters=filters_for_width(cfg.genotype, _positive_int("F", f)))
    return cfg


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_model_config(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first field of ``cfg`` no network can be built with."""
    for name in ("num_cells", "num_conv_filters", "in_chans", "image_size", "total_training_steps"):
        _positive_int(name, getattr(cfg, name))
    if cfg.num_cells % 3:
        raise ValueError(f"num_cells must be a multiple of 3 (3 N), got {cfg.num_cells}")
    if isinstance(cfg.num_classes, bool) or not isinstance(cfg.num_classes, Integral) or cfg.num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0, got {cfg.num_classes!r}")
    checks = (("stem_multiplier", cfg.stem_multiplier > 0, "> 0"),
              ("drop_path_keep_prob", 0 < cfg.drop_path_keep_prob <= 1, "in (0, 1]"),
              ("dropout", 0 <= cfg.dropout < 1, "in [0, 1)"))
    for name, ok, rule in checks:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, Real) or not ok:
            raise ValueError(f"{name} must be a number {rule}, got {value!r}")


def width_per_filter(genotype) -> int:
    """Channels of the normal cell's output per filter (6 for NASNet-A: F = 4 x this x filters)."""
    g = get_genotype(genotype)
    n_in = g.normal.num_inputs
    per_filter = 0
    for s in g.normal.output_states():
        # NASNet-B (four-input) cells: F counts each of the four outputs as ``filters`` wide
        per_filter += 2 if n_in == 2 and s >= 2 and g.normal.blocks[s - 2].combine == "concat" else 1
    return per_filter


def model_spec(cfg: ModelConfig) -> dict[str, Any]:
    """Every create_model override that rebuilds ``cfg``'s network, self-contained: the genotype as
    text (never a file path), N and F, and every other field (not the default input statistics)."""
    skip = {"paper", "mean", "std", "crop_pct", "genotype", "num_cells", "num_conv_filters"}
    spec = {"genotype": get_genotype(cfg.genotype).to_string(), "N": cfg.num_cells // 3,
            "F": cfg.num_conv_filters * 4 * width_per_filter(cfg.genotype)}
    spec.update({k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in skip})
    return spec


def filters_for_width(genotype, width: int) -> int:
    """num_conv_filters giving a penultimate width F (after two filter doublings).

    For NASNet-A the normal cell concatenates 6 states of ``filters`` channels, so
    F = 24 * num_conv_filters (the paper's "N @ F" notation).
    """
    multiple = 4 * width_per_filter(genotype)
    if width % multiple:
        raise ValueError(f"F={width} is not a multiple of {multiple} (4 x the normal cell's output "
                         f"width in filters) for this genotype; e.g. {width - width % multiple} or "
                         f"{width - width % multiple + multiple}")
    return width // multiple


_NETWORK_ARGS = ("num_cells", "num_conv_filters", "stem", "stem_multiplier", "num_classes", "in_chans",
                 "skip_reduction_layer_input", "aux_head", "image_size", "drop_path_keep_prob",
                 "total_training_steps", "dropout")
"""ModelConfig fields passed to ``NASNet`` under the same name."""


def min_image_size(cfg: ModelConfig, genotype) -> int:
    """The smallest square input a NASNet of ``cfg`` takes (VALID 3x3 ImageNet stem; aux head 5x5 map)."""
    plan = make_plan(genotype, cfg.num_cells, cfg.num_conv_filters, cfg.stem, cfg.stem_multiplier,
                     cfg.in_chans, cfg.skip_reduction_layer_input, num_classes=cfg.num_classes)
    size = 3 if plan.stem.kind == "imagenet" else 1
    if cfg.aux_head:
        stride = next(c.stride for c in plan.cells if c.name == plan.head.aux_after)
        while spatial_after(size, stride, plan.stem) < 5:
            size += 1
    return size


def _nasnet_b():
    from .network_b import NASNetB  # its own module, built on network.py's stem and aux head
    return NASNetB


def create_model(name: str, **overrides) -> NASNet:
    """Build a registered model; overrides may set any ModelConfig field, or N and F.

    ``genotype`` takes a Genotype, a registered name, its text form, a dict or a JSON path.
    """
    cfg = get_config(name, **overrides)
    check_model_config(cfg)
    if cfg.pad_mode not in PAD_MODES:
        raise ValueError(f"unknown pad_mode {cfg.pad_mode!r}; known: {', '.join(PAD_MODES)}")
    ctx = OpContext(norm=cfg.norm, bn_eps=cfg.bn_eps, bn_momentum=cfg.bn_momentum,
                    pad_mode=cfg.pad_mode)
    genotype = get_genotype(cfg.genotype)
    if genotype.normal.num_inputs == 2:
        smallest = min_image_size(cfg, genotype)
        if cfg.image_size < smallest:
            why = "its aux head needs a 5x5 map; or aux_head=False" if cfg.aux_head else "the stem's 3x3 conv"
            raise ValueError(f"image_size {cfg.image_size} is too small for {name} at these settings: "
                             f"use at least {smallest} ({why})")
    network = NASNet if genotype.normal.num_inputs == 2 else _nasnet_b()  # four-input cells: NASNet-B
    model = network(genotype, ctx=ctx, **{k: getattr(cfg, k) for k in _NETWORK_ARGS})
    model.default_cfg = cfg
    model.arch = name
    return model
