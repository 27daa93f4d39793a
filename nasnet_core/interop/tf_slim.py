"""TF-slim NASNet-A checkpoints (``nets/nasnet/nasnet.py``, e.g. ``nasnet-a_large_04_10_2017``) as
nasnet_core state dicts.

Our module names follow TF-slim's scopes, so the table is one rule per layer kind, written from
our key to TF's variable name (``tf_slim_name``); conversion, the missing / unmatched / mis-shaped
report and the layouts all follow from it:

* convs ``.../weights`` (H, W, in, out) -> (out, in, H, W); separable convs keep TF's pair:
  ``depthwise_weights`` (H, W, C, 1) -> (C, 1, H, W), ``pointwise_weights`` (1, 1, in, out) ->
  (out, in, 1, 1); the kernel size TF puts in the scope (``separable_5x5_1``) comes from ours;
* BN ``gamma / beta / moving_mean / moving_variance`` -> ``weight / bias / running_mean /
  running_var`` (TF-slim's NASNet arg scopes use eps 1e-3, as our ImageNet models);
* ``final_layer/FC`` (in, out) -> ``last_linear`` (out, in); a head with one output more than
  the model's classes is TF-slim's ImageNet head (class 0 = background) and loses that class;
* the auxiliary head ``aux_<n>/aux_logits/{proj, aux_bn0, Conv, aux_bn1, FC}`` (n: the normal
  cell before the second reduction, 11 in large, 7 in mobile) -> ``aux_head.*``, when the
  checkpoint has it (TF-slim builds it only for training, so an eval graph's checkpoint has none).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from ..model.registry import MODELS, create_model, get_config

__all__ = ["tf_slim_name", "expected_tf_slim", "tf_slim_to_torch", "describe_tf_slim",
           "identify_tf_slim", "drop_tf_background"]

_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_BN_P = "(weight|bias|running_mean|running_var)"
# (pattern on our key after the cell name, TF name after the cell scope): \g<i> is the pattern's group i,
# {bn} TF's name of the BN tensor, {k} the kernel size, {aux} the aux head's scope.
_CELL_RULES = [
    (r"conv_1x1\.conv\.weight", "1x1/weights"),
    (rf"conv_1x1\.bn\.{_BN_P}", "beginning_bn/{bn}"),
    (r"conv_prev_1x1\.conv\.weight", "prev_1x1/weights"),
    (rf"conv_prev_1x1\.bn\.{_BN_P}", "prev_bn/{bn}"),
    (r"reduce_prev\.path_(1|2)\.weight", r"path\g<1>_conv/weights"),
    (rf"reduce_prev\.bn\.{_BN_P}", "final_path_bn/{bn}"),
    (r"comb_iter_(\d)_(left|right)\.separable_(\d)\.(depthwise|pointwise)_conv2d\.weight",
     r"comb_iter_\g<1>/\g<2>/separable_{k}x{k}_\g<3>/\g<4>_weights"),
    (rf"comb_iter_(\d)_(left|right)\.bn_sep_(\d)\.{_BN_P}",
     r"comb_iter_\g<1>/\g<2>/bn_sep_{k}x{k}_\g<3>/{bn}"),
]
_TOP_RULES = [
    (r"conv0\.conv\.weight", "conv0/weights"),
    (rf"conv0\.bn\.{_BN_P}", "conv0_bn/{bn}"),
    (r"last_linear\.weight", "final_layer/FC/weights"),
    (r"last_linear\.bias", "final_layer/FC/biases"),
    (r"aux_head\.proj\.weight", "{aux}/aux_logits/proj/weights"),
    (rf"aux_head\.bn(0|1)\.{_BN_P}", r"{aux}/aux_logits/aux_bn\g<1>/{bn}"),
    (r"aux_head\.conv\.weight", "{aux}/aux_logits/Conv/weights"),
    (r"aux_head\.fc\.weight", "{aux}/aux_logits/FC/weights"),
    (r"aux_head\.fc\.bias", "{aux}/aux_logits/FC/biases"),
]
_CELL = re.compile(r"^(cell_stem_\d+|cell_\d+|reduction_cell_\d+)\.(.+)$")


def _apply(rules, text: str, **fmt) -> str | None:
    for pattern, template in rules:
        m = re.fullmatch(pattern, text)
        if m:
            bn = _BN.get(m.groups()[-1]) if m.groups() else None
            return m.expand(template).format(bn=bn, **fmt)
    return None


def tf_slim_name(key: str, shapes: dict[str, torch.Size], aux_scope: str) -> str | None:
    """TF-slim's variable name for our state-dict ``key`` (None when TF-slim has no such variable)."""
    m = _CELL.match(key)
    if not m:
        return _apply(_TOP_RULES, key, aux=aux_scope)
    cell, rest = m.groups()
    k = ""
    sep = re.match(r"(comb_iter_\d_(?:left|right))\.(?:separable_|bn_sep_)(\d)", rest)
    if sep:  # TF names the scope by kernel size: read it from our depthwise conv
        k = shapes[f"{cell}.{sep.group(1)}.separable_{sep.group(2)}.depthwise_conv2d.weight"][-1]
    name = _apply(_CELL_RULES, rest, k=k)
    return f"{cell}/{name}" if name else None


def _tf_shape(key: str, shape: torch.Size) -> tuple[int, ...]:
    """Our tensor's shape in TF's layout."""
    if key.endswith("depthwise_conv2d.weight"):
        return (shape[2], shape[3], shape[0], shape[1])
    if len(shape) == 4:
        return (shape[2], shape[3], shape[1], shape[0])
    return tuple(shape)[::-1] if len(shape) == 2 else tuple(shape)


def tf_slim_to_torch(key: str, array: np.ndarray) -> torch.Tensor:
    """A TF-slim array in our layout for our ``key`` (NHWC kernels -> OIHW, FC transposed)."""
    if key.endswith("depthwise_conv2d.weight"):
        h, w, c, mult = array.shape
        array = array.transpose(2, 3, 0, 1).reshape(c * mult, 1, h, w)
    elif array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    elif array.ndim == 2:
        array = array.T
    return torch.from_numpy(np.ascontiguousarray(array))


def expected_tf_slim(arch: str, with_aux: bool, **overrides) -> tuple[dict[str, str], dict[str, tuple], list]:
    """For ``arch``: (our key -> TF name, TF name -> TF shape, BN batch counters: PyTorch's own,
    written as 0). ValueError when a key has no TF-slim name (a model TF-slim does not build)."""
    cfg = get_config(arch, **overrides)
    if cfg.stem != "imagenet" or cfg.genotype != "nasnet_a":
        raise ValueError(f"TF-slim conversion covers NASNet-A with the ImageNet stem (TF-slim's "
                         f"build_nasnet_large / build_nasnet_mobile); {arch} has the {cfg.stem} stem "
                         f"and genotype {cfg.genotype}")
    with torch.device("meta"):
        model = create_model(arch, aux_head=with_aux, **overrides)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    counters = [k for k in shapes if k.endswith(".num_batches_tracked")]
    aux_scope = f"aux_{model.aux_after.removeprefix('cell_')}"
    names, tf_shapes, unnamed = {}, {}, []
    for key, shape in shapes.items():
        name = None if key in counters else tf_slim_name(key, shapes, aux_scope)
        if name is None:
            unnamed += [] if key in counters else [key]
            continue
        names[key] = name
        tf_shapes[name] = _tf_shape(key, shape)
    if unnamed:
        raise ValueError(f"{arch} has tensors TF-slim's NASNet does not: {', '.join(unnamed[:10])}")
    return names, tf_shapes, counters


def drop_tf_background(tf_vars: dict[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    """``tf_vars`` with class 0 (TF-slim's background) removed from every FC head that has
    ``num_classes + 1`` outputs; the others are left as they are."""
    out = dict(tf_vars)
    for name, value in tf_vars.items():
        if name.endswith("/FC/biases") and value.shape == (num_classes + 1,):
            out[name] = value[1:]
            weights = name.removesuffix("biases") + "weights"
            if weights in out and out[weights].shape[-1] == num_classes + 1:
                out[weights] = out[weights][:, 1:]
    return out


def describe_tf_slim(tf_vars: dict[str, np.ndarray]) -> dict[str, int] | None:
    """Structure read off a TF-slim NASNet checkpoint: normal cells, filters, stem filters (None when
    it is not one: no ``conv0/weights`` or ``cell_0/1x1/weights``)."""
    if "conv0/weights" not in tf_vars or "cell_0/1x1/weights" not in tf_vars:
        return None
    cells = {int(m.group(1)) for name in tf_vars if (m := re.match(r"cell_(\d+)/", name))}
    return dict(num_cells=max(cells) + 1, num_conv_filters=int(tf_vars["cell_0/1x1/weights"].shape[-1]),
                stem_filters=int(tf_vars["conv0/weights"].shape[-1]))


def identify_tf_slim(desc: dict[str, int]) -> str | None:
    """The registered ImageNet NASNet-A whose structure is ``desc`` (None when none is)."""
    for name, cfg in MODELS.items():
        if cfg.stem == "imagenet" and cfg.genotype == "nasnet_a" and \
                (cfg.num_cells, cfg.num_conv_filters, int(32 * cfg.stem_multiplier)) == \
                (desc["num_cells"], desc["num_conv_filters"], desc["stem_filters"]):
            return name
    return None
