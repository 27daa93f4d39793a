"""ONNX export of classifiers, checked in onnxruntime right after export.

Two exporters: ``torchscript`` (``torch.onnx.export(..., dynamo=False)``, the tracer; TF
"SAME" padding is computed from the example's static spatial size) and ``dynamo``
(``torch.export``-based). Both keep the batch dimension dynamic. ``onnx`` and
``onnxruntime`` (the ``export`` extra) are imported only when used.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "OnnxCheck", "check_onnx", "export_onnx", "onnx_session"]

EXPORTERS = ("torchscript", "dynamo")
MIN_OPSET = 17
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}
"""torch's dynamo exporter implements opset 18 and cannot convert Pad down to 17."""


@dataclass(frozen=True)
class OnnxCheck:
    """Result of running an exported file in onnxruntime against the PyTorch model."""

    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    max_abs_ref: float

    def ok(self, atol: float) -> bool:
        """True when every output is within ``atol`` of PyTorch's."""
        return self.max_abs_diff <= atol


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"ONNX export needs {module!r}: pip install -e '.[export]'") from None


def export_onnx(model: nn.Module, path: str, example: torch.Tensor, exporter: str = "torchscript",
                opset: int | None = None, overwrite: bool = False, output_names=("logits",),
                dynamic_batch: bool = True) -> str:
    """Export ``model`` (eval mode) to ONNX at ``path`` with a dynamic batch dimension
    (opset default: 17 for the TorchScript-based exporter, 18 for dynamo). ``dynamic_batch=False``
    keeps every shape of the example (e.g. a detector's CHW image)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    opset = opset or DEFAULT_OPSET[exporter]
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below the supported minimum {MIN_OPSET}")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if model.training:
        raise ValueError("export a model in eval mode (model.eval())")
    _require("onnx")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    names = list(output_names)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # strided slices stay
        if exporter == "torchscript":
            axes = {"input": {0: "batch"}, **{n: {0: "batch"} for n in names}} if dynamic_batch else None
            torch.onnx.export(model, (example,), path, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=names, dynamic_axes=axes)
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                     input_names=["input"], output_names=names,
                                     dynamic_shapes=({0: batch},) if dynamic_batch else None,
                                     verbose=False)
            prog.save(path)
    return path


def onnx_session(path: str, threads: int | None = None):
    """An onnxruntime CPU session for ``path`` with all graph optimisations on."""
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def check_onnx(path: str, model: nn.Module, inputs: list[torch.Tensor], session=None) -> OnnxCheck:
    """Run ``path`` in onnxruntime on each input and compare with ``model``'s eval outputs."""
    sess = session or onnx_session(path)
    name = sess.get_inputs()[0].name
    diff = ref_max = 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model(x)
        refs = ref if isinstance(ref, (tuple, list)) else (ref,)
        got = sess.run(None, {name: x.numpy()})
        if len(got) != len(refs):
            raise ValueError(f"{path}: {len(got)} outputs, PyTorch gives {len(refs)}")
        for r, g in zip(refs, got):
            r = r.detach().numpy()
            if r.shape != g.shape:
                raise ValueError(f"{path}: output shape {g.shape} != PyTorch's {r.shape}")
            diff = max(diff, float(np.abs(r - g).max()))
            ref_max = max(ref_max, float(np.abs(r).max()))
    return OnnxCheck(tuple(int(x.shape[0]) for x in inputs), diff, ref_max)
