"""The classification training loop: single-process CPU/GPU or DDP under torchrun."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..common.config import flatten, write_config
from ..common.fileio import atomic_torch_save, atomic_write_text, read_checkpoint, remove_stale_temps
from ..interop.convert import load_checkpoint, save_checkpoint
from ..model import registry
from . import checkpoint as ck
from .checkpoint import TrainingDiverged
from .checks import TOGGLES, check_config, resolve_device, self_contained, toggle
from .data import build_dataset, build_loader
from .optim import LRSchedule, ModelEMA, build_optimizer, smoothed_cross_entropy

__all__ = ["Trainer", "TrainingDiverged", "config_changes", "model_overrides", "accuracy_counts",
           "resolve_device", "TOGGLES"]

# Keys that may differ between a run and its resumption without changing the result.
_RESUME_FREE = {"data.path", "data.workers", "data.pin_memory", "train.output_dir", "train.threads",
                "train.device", "train.log_every", "train.keep_every", "model.grad_checkpointing"}


def config_changes(old: dict, new: dict) -> str:
    """``"key: old -> new, ..."`` for the keys that change a run's result (empty when none)."""
    a, b = flatten(old), flatten(new)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUME_FREE)
    return ", ".join(f"{k}: {a.get(k)} -> {b.get(k)}" for k in changed)


def model_overrides(cfg: dict, info, total_steps: int) -> dict:
    """create_model keyword arguments for the config's model section and the dataset."""
    m = cfg["model"]
    kw = {k: m[k] for k in ("genotype", "N", "F", "stem", "drop_path_keep_prob", "dropout")
          if m[k] is not None}
    kw.update(aux_head=m["aux_head"], norm=m["norm"], pad_mode=m["pad_mode"],
              num_classes=info.num_classes, in_chans=info.in_chans, image_size=info.image_size,
              total_training_steps=total_steps)
    return kw


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == target[:, None]
    return [int(hit[:, :k].any(1).sum()) for k in ks]


class Trainer:
    """Builds data, model, optimizer, schedule and EMA from a config and runs training."""

    def __init__(self, cfg: dict, resume: str | Path | bool | None = None,
                 log: Callable[[str], None] | None = None, force: bool = False):
        """``resume``: True (``<output_dir>/last.pth``) or a checkpoint path; ``force``: train into a
        folder that holds a run (else RunExistsError before anything is built)."""
        cfg = self.cfg = self_contained(check_config(cfg))
        t, s = cfg["train"], cfg["solver"]
        ck.check_output_dir(t["output_dir"], bool(resume), force)
        self._setup_distributed(t["device"])
        if cfg["model"]["norm"] == "SyncBN" and self.world > 1 and self.device.type == "cpu":
            raise ValueError("model.norm SyncBN needs CUDA under DDP (torch's SyncBatchNorm has no CPU "
                             "kernel); on CPU use GN (per-image statistics) or BN (per-process statistics)")
        self.claim = ck.OutputClaim(t["output_dir"], bool(resume), force, self.rank)  # before last.pth's read
        self.log = log or (lambda msg: tqdm.write(msg) if self.rank == 0 else None)
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        if t["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = self.device.type == "cuda"
        cuda = self.device.type == "cuda"
        self.amp = toggle(t["amp"], cuda and torch.cuda.is_bf16_supported(), "train.amp")
        self.channels_last = toggle(t["channels_last"], cuda, "train.channels_last")
        self.out = Path(t["output_dir"])

        # Data first: a bad path or file fails here, before anything is built or written.
        arch_size = registry.get_config(cfg["model"]["arch"]).image_size
        self.train_set, self.val_set, self.info = build_dataset(cfg["data"], t["seed"], arch_size)
        d = cfg["data"]
        pin = d["pin_memory"] and cuda
        self.train_loader = build_loader(self.train_set, s["batch_size"], True, d["workers"], pin,
                                         t["seed"], self.rank, self.world)
        self.val_loader = build_loader(self.val_set, s["batch_size"], False, d["workers"], pin,
                                       t["seed"], self.rank, self.world)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = s["epochs"] * self.steps_per_epoch

        torch.manual_seed(t["seed"])
        self.arch = cfg["model"]["arch"]
        self.overrides = model_overrides(cfg, self.info, self.total_steps)
        self.model = registry.create_model(self.arch, **self.overrides).to(self.device)
        self.model.set_grad_checkpointing(cfg["model"]["grad_checkpointing"])
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, s)
        self.schedule = LRSchedule(s, self.steps_per_epoch, self.world)  # lr scaled to the global batch
        self.ema = ModelEMA(self.model, s["ema_decay"]) if s["ema_decay"] > 0 else None
        self.net = self.model
        if self.world > 1:
            ids = [self.device.index] if cuda else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # Per-rank stream for dropout / drop-path, independent of the init draws above.
        torch.manual_seed(t["seed"] * 1000 + self.rank + 1)
        self.epoch, self.step, self.history = 0, 0, []
        self.writer = None
        if resume is True and not (self.out / "last.pth").exists():
            self.log(f"no checkpoint in {self.out} yet: starting from the beginning")
        elif resume:
            self._resume(self.out / "last.pth" if resume is True else Path(resume))

    # ---------------------------------------------------------------- setup
    def _setup_distributed(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        use_cuda = self.device.type == "cuda"
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")

    def _writer(self):
        if self.writer is None and self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "tb"))
        return self.writer

    def _scalar(self, tag: str, value: float, step: int) -> None:
        w = self._writer()
        if w is not None:
            w.add_scalar(tag, value, step)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, EMA, optimizer, step, RNG states."""
        rngs = [ck.rng_state()]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, ck.rng_state())
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "optimizer": self.optimizer.state_dict(), "schedule": {"step": self.step},
                "epoch": self.epoch, "step": self.step, "config": self.cfg, "arch": self.arch,
                "model_overrides": self.overrides, "model_spec": registry.model_spec(self.model.default_cfg),
                "rng": rngs, "history": self.history}

    def _resume(self, path: Path) -> None:
        ckpt = ck.load_training_checkpoint(path)
        diffs = config_changes(ckpt["config"], self.cfg)
        if diffs:
            self.log(f"warning: resuming with changed config keys (the run will not match an "
                     f"uninterrupted one): {diffs}")
        ck.load_weights(self.model, ckpt["model"], path)
        if self.ema is not None and ckpt["ema"] is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch, self.step, self.history = ckpt["epoch"], ckpt["step"], ckpt["history"]
        rngs = ckpt["rng"]
        if len(rngs) == self.world:
            ck.set_rng_state(rngs[self.rank])
        else:
            self.log(f"warning: checkpoint has RNG states of {len(rngs)} process(es), this run has "
                     f"{self.world}; dropout / drop-path streams are reseeded")
            torch.manual_seed(self.cfg["train"]["seed"] * 1000 + self.rank + 1 + self.step)
        self.log(f"resumed from {path}: epoch {self.epoch}, step {self.step}")

    def _check_finite(self, loss: float, where: str) -> None:
        if not math.isfinite(loss):
            raise ck.diverged(f"loss is {loss} {where}", self.step, self.out / "last.pth")

    def save(self, name: str = "last.pth") -> Path | None:
        """Write a training checkpoint atomically (rank 0 only); never one holding non-finite tensors."""
        state = self.state_dict()
        bad, total = ck.nonfinite_tensors({k: state[k] for k in ("model", "ema", "optimizer")})
        if bad:
            raise ck.diverged(f"{bad} of {total} weight / optimizer tensors are not finite", self.step,
                              self.out / "last.pth")
        if self.rank != 0:
            return None
        return atomic_torch_save(state, self.out / name)

    def export_backbone(self, path: str | Path | None = None) -> Path | None:
        """nasnet_core checkpoint (EMA weights when EMA is on, no aux head) for
        nasnet_core.load_checkpoint and nasnet_det's MODEL.WEIGHTS."""
        if self.rank != 0:
            return None
        src = self.ema.module if self.ema is not None else self.model
        state = {k: v.detach().cpu().contiguous() for k, v in src.state_dict().items()
                 if not k.startswith("aux_head.")}
        config = {k: v for k, v in registry.model_spec(self.model.default_cfg).items()
                  if k != "total_training_steps"}
        return save_checkpoint(path or self.out / "backbone.pth", state, self.arch, config=config,
                               ema=self.ema is not None, epoch=self.epoch, step=self.step)

    # ---------------------------------------------------------------- loops
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _to_device(self, x, y):
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def train_epoch(self) -> dict:
        """One pass over the training set; returns mean loss and accuracy."""
        s = self.cfg["solver"]
        self.net.train()
        self.train_set.epoch = self.epoch
        self.train_loader.sampler.set_epoch(self.epoch)
        # Summed on the device: the loop syncs with the host only at log steps and epoch end.
        total_loss = torch.zeros((), device=self.device)
        correct, seen = torch.zeros((), device=self.device), 0
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{s['epochs']}", leave=False,
                   disable=self.rank != 0, dynamic_ncols=True)
        for x, y in bar:
            x, y = self._to_device(x, y)
            lr = self.schedule.apply(self.optimizer, self.step)
            self.model.set_training_step(self.step)
            with self._autocast():
                out = self.net(x)
            logits, aux = out if isinstance(out, tuple) else (out, None)
            loss = smoothed_cross_entropy(logits, y, s["label_smoothing"])
            if aux is not None:
                loss = loss + s["aux_weight"] * smoothed_cross_entropy(aux, y, s["label_smoothing"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if s["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), s["grad_clip"])
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            total_loss += loss.detach() * len(y)
            correct += (logits.detach().topk(1, dim=1).indices[:, 0] == y).sum()
            seen += len(y)
            if self.step % self.cfg["train"]["log_every"] == 0 or self.step == self.total_steps:
                value = loss.item()
                self._check_finite(value, f"at step {self.step}")
                keep = min(self.model.drop_path_keep_probs())
                self._scalar("train/loss", value, self.step)
                self._scalar("train/lr", lr, self.step)
                self._scalar("train/drop_path_keep", keep, self.step)
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}", keep=f"{keep:.3f}")
        self._check_finite(total_loss.item(), f"in epoch {self.epoch + 1}")  # before a checkpoint is written
        stats = torch.tensor([total_loss.item(), correct.item(), seen], dtype=torch.float64,
                             device=self.device)
        if self.world > 1:
            dist.all_reduce(stats)
        n = stats[2].item()
        return {"train_loss": stats[0].item() / n, "train_top1": 100 * stats[1].item() / n}

    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None) -> dict:
        """Top-1 / top-5 (%) and loss of ``model`` (default: the EMA if on, else the model)."""
        model = model or (self.ema.module if self.ema is not None else self.model)
        was_training = model.training
        model.eval()
        stats = torch.zeros(4, dtype=torch.float64, device=self.device)
        for x, y in tqdm(self.val_loader, desc="eval", leave=False, disable=self.rank != 0):
            x, y = self._to_device(x, y)
            with self._autocast():
                logits = model(x)
            top1, top5 = accuracy_counts(logits.float(), y)
            loss = smoothed_cross_entropy(logits, y, 0.0).item()
            stats += torch.tensor([top1, top5, loss * len(y), len(y)], dtype=torch.float64,
                                  device=self.device)
        if self.world > 1:
            dist.all_reduce(stats)
        model.train(was_training)
        n = max(stats[3].item(), 1)
        return {"top1": 100 * stats[0].item() / n, "top5": 100 * stats[1].item() / n,
                "loss": stats[2].item() / n, "images": int(stats[3].item())}

    def fit(self, stop_after_epochs: int | None = None) -> dict:
        """Train to ``solver.epochs`` (or ``stop_after_epochs`` more epochs), checkpointing every
        epoch; at the end export the backbone. Returns the last epoch's metrics."""
        t, epochs = self.cfg["train"], self.cfg["solver"]["epochs"]
        with self.claim.held():  # OUT/train.lock: one training writes the folder at a time
            if self.rank == 0:  # the claim made the folder
                for p in remove_stale_temps(self.out):
                    self.log(f"removed {p.name}, left by an interrupted write")
                write_config(self.cfg, self.out / "config.yaml")
                self.log(f"{self.arch} {self.overrides} | {len(self.train_set)} train / {len(self.val_set)} "
                         f"val images, {self.steps_per_epoch} steps/epoch x {epochs} epochs, device "
                         f"{self.device}, world {self.world}, bf16 {self.amp}, channels_last "
                         f"{self.channels_last} -> {self.out}")
            end = epochs if stop_after_epochs is None else min(epochs, self.epoch + stop_after_epochs)
            metrics = self.history[-1] if self.history else {}
            while self.epoch < end:
                t0 = time.perf_counter()
                metrics = {"epoch": self.epoch + 1, **self.train_epoch()}
                self.epoch += 1
                self.model.set_training_step(self.step)
                metrics["drop_path_keep"] = min(self.model.drop_path_keep_probs())
                metrics["lr"] = self.schedule(self.step - 1)
                if self.epoch % t["eval_every"] == 0 or self.epoch == epochs:
                    val = self.evaluate()
                    metrics.update({f"val_{k}": v for k, v in val.items() if k != "images"})
                    for k in ("top1", "top5", "loss"):
                        self._scalar(f"val/{k}", val[k], self.epoch)
                metrics["epoch_seconds"] = time.perf_counter() - t0
                self._scalar("train/epoch_loss", metrics["train_loss"], self.epoch)
                self.history.append(metrics)
                self.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in metrics.items()))
                self.save("last.pth")
                if t["keep_every"] and self.epoch % t["keep_every"] == 0:
                    self.save(f"epoch_{self.epoch:04d}.pth")
                if self.rank == 0:
                    atomic_write_text(self.out / "metrics.json", json.dumps(self.history, indent=1))
            if self.epoch >= epochs:
                self.export_backbone()
            if self.writer is not None:
                self.writer.flush()
            return metrics

    def evaluate_checkpoint(self, path: str | Path) -> dict:
        """Load a training checkpoint (its EMA when present) or an exported backbone, then evaluate."""
        ckpt = read_checkpoint(path, weights_only=False)
        if ck.is_training_checkpoint(ckpt):
            state = ckpt["ema"]["module"] if ckpt.get("ema") else ckpt["model"]
            ck.load_weights(self.model, state, path)
            source = "EMA weights" if ckpt.get("ema") else "model weights"
        else:
            load_checkpoint(self.model, path)
            source = "exported weights"
        res = self.evaluate(self.model)
        res["source"] = source
        return res

    def close(self) -> None:
        """Flush TensorBoard and leave the process group."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
