"""Mixed precision for the detector's training loop (``SOLVER.AMP.ENABLED``) on CPU and CUDA.

Detectron2's ``AMPTrainer`` asserts CUDA and autocasts to fp16 with a CUDA ``GradScaler``, so it
cannot run on a CPU. ``AutocastTrainer`` keeps its interface and checkpoint state but autocasts on
the model's own device: bf16 on the CPU and on CUDA cards that have it (bf16 has fp32's exponent
range, so no loss scaling), fp16 with a ``GradScaler`` only on CUDA cards without bf16.
"""

from __future__ import annotations

import time

import torch
from detectron2.engine import AMPTrainer

__all__ = ["AutocastTrainer", "amp_dtype"]


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype on ``device``: bf16 where supported (CPU, CUDA >= Ampere), else fp16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


class AutocastTrainer(AMPTrainer):
    """AMPTrainer that autocasts on the model's device (CPU or CUDA) in :func:`amp_dtype`; the
    gradient scaler is enabled only for fp16."""

    def __init__(self, model, data_loader, optimizer, **kwargs):
        device = next(model.parameters()).device
        dtype = amp_dtype(device)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler, precision=dtype, **kwargs)
        self.device_type = device.type

    def run_step(self):
        """One training step: forward and losses under autocast, backward (scaled for fp16), step."""
        if not self.model.training:
            raise RuntimeError("[AutocastTrainer] the model was put in eval mode")
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time, iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
