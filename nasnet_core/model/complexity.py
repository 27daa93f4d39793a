"""Parameter and mult-add counting (multiply-accumulates of conv and linear layers), and the bytes
autograd saves for backward (``SavedBytes``)."""

from __future__ import annotations

import weakref

import torch
from torch import nn

__all__ = ["SavedBytes", "complexity"]


def complexity(model: nn.Module, image_size: int | tuple[int, int] | None = None,
               in_chans: int | None = None) -> dict[str, int]:
    """Parameters, mult-adds and conv/linear output activations of one eval forward pass.

    Mult-adds count each multiply-accumulate of Conv2d and Linear layers once, as the
    paper and timm's profiler do; pools, norms and additions are not counted.
    """
    if image_size is None:
        image_size = getattr(model, "image_size", 224)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if in_chans is None:
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        in_chans = first.in_channels
    totals = {"mult_adds": 0, "activations": 0}

    def conv_hook(m: nn.Conv2d, _inp, out):
        kh, kw = m.kernel_size
        totals["mult_adds"] += out.numel() * (m.in_channels // m.groups) * kh * kw
        totals["activations"] += out.numel()

    def linear_hook(m: nn.Linear, _inp, out):
        totals["mult_adds"] += out.numel() * m.in_features
        totals["activations"] += out.numel()

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, in_chans, h, w, dtype=param.dtype, device=param.device))
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    return {"params": sum(p.numel() for p in model.parameters()), **totals}


class SavedBytes:
    """Saved-tensor hooks totalling the distinct storages autograd saves for backward (views and
    shared storages once; ``model``'s parameters and buffers not); nothing is kept, so a pass of a
    model far larger than memory measures cheaply. ``watch(modules)`` also records the bytes saved
    inside each named module (``per_module``: name -> bytes of its last call)."""

    def __init__(self, model: nn.Module, seen: dict | None = None):
        self.skip = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
        self.seen = {} if seen is None else seen  # data_ptr -> (nbytes, [weakrefs to tensors])
        self.bytes = 0
        self.per_module: dict[str, int] = {}
        self._handles = []

    def pack(self, t: torch.Tensor):
        """Count ``t``'s storage unless a live tensor already brought it in; return a placeholder."""
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in self.skip or t.device.type == "meta":
            return None
        entry = self.seen.get(ptr)
        if entry is not None and any(r() is not None for r in entry[1]):
            entry[1].append(weakref.ref(t))  # same live storage (a view or the same tensor)
            return None
        # new storage, or the address of one that died here (training would have kept it)
        self.seen[ptr] = (st.nbytes(), [weakref.ref(t)])
        self.bytes += st.nbytes()
        return None

    def watch(self, modules: dict[str, nn.Module]) -> SavedBytes:
        """Record the bytes saved during each call of these modules into ``per_module``."""
        for name, m in modules.items():
            start = {}
            self._handles.append(m.register_forward_pre_hook(lambda *_, s=start: s.update(b=self.bytes)))
            self._handles.append(m.register_forward_hook(
                lambda *_, s=start, n=name: self.per_module.__setitem__(n, self.bytes - s["b"])))
        return self

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda _: None)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return self._ctx.__exit__(*exc)
