"""Supernet training, single-path one-shot (Guo et al., 2020): every step samples one path uniformly
(each decision of the space uniform, from a seeded generator) and trains it on one batch with the child's
recipe: the child trainer's data (held-out split, pad-crop / flip ``ArrayDataset``, ``build_loader``),
SGD with momentum, L2 on weights, cosine ``LRSchedule`` over ``supernet.steps`` and the gradient clip.
Only the path's parameters get gradients, so only they move (SGD skips a parameter without one).

``OUT/supernet.pth`` (written atomically every ``supernet.checkpoint_every`` steps and at the end) holds
everything to rebuild and continue the supernet: space, sizes, data and recipe, weights, optimizer,
step, the path generator's and torch's RNG states; the data order and augmentation are functions of
(seed, epoch, index), and the epoch and batch follow from the step. A run SIGKILLed and resumed ends with
the same weights, bit for bit, as one never interrupted.

The path loss is smoothed (``loss_ema``, TensorBoard ``supernet/loss_ema``); a supernet that ends at or
above chance (ln C) is reported with a warning (``chance_warning``), since its reward cannot rank.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..common.config import SEARCH, write_config
from ..common.fileio import atomic_torch_save, read_checkpoint, remove_stale_temps
from ..common.locks import lock_folder
from ..train.checks import resolve_device
from ..train.data import ArrayDataset, build_loader
from ..train.optim import LRSchedule, build_optimizer
from .child import load_child_data
from .space import make_space
from .supernet import Supernet, path_modules

__all__ = ["CHECKPOINT", "KIND", "SupernetTrainer", "train_supernet", "supernet_spec", "build_supernet",
           "load_supernet", "copy_weights", "read_supernet_checkpoint", "check_reward_checkpoint",
           "sample_decisions", "chance_warning", "check_fit", "supernet_setup"]

log = logging.getLogger(__name__)
CHECKPOINT = "supernet.pth"
KIND = "nasnet_supernet"
_OURS = {CHECKPOINT, "config.yaml", "tb", "supernet.lock"}  # what a supernet run folder holds
_DATA_KEYS = ("dataset", "data_dir", "val_size", "split_seed", "train_subset", "val_subset")
_SIZE_KEYS = ("N", "num_conv_filters", "stem_multiplier")
CHANCE_FRACTION = 0.95  # a smoothed loss above this fraction of ln C counts as "at chance"
LOSS_EMA = 0.95  # smoothing of the per-step path loss (about the last 20 steps)
_RECIPE_KEYS = ("batch_size", "lr", "momentum", "weight_decay", "grad_clip", "crop_pad", "flip")


def supernet_spec(cfg: dict, num_classes: int, in_chans: int) -> dict:
    """What defines a supernet run, from a search config: space, sizes, data, recipe, steps and seed."""
    child, sn = cfg["reward"]["child"], cfg["supernet"]
    recipe = {k: child[k] for k in _RECIPE_KEYS}
    if sn["lr"] is not None:
        recipe["lr"] = sn["lr"]
    space = dict(cfg["space"])
    return {"space": make_space(space.pop("variant"), **space).to_dict(),
            "sizes": {**{k: child[k] for k in _SIZE_KEYS}, "num_classes": num_classes, "in_chans": in_chans},
            "data": {k: child[k] for k in _DATA_KEYS}, "recipe": recipe,
            "steps": sn["steps"], "seed": sn["seed"]}


def _changes(old: dict, new: dict) -> str:
    """``key: old -> new`` for what differs between two specs (the data folder may move)."""
    def flat(d, p=""):
        return {k2: v2 for k, v in d.items() for k2, v2 in
                (flat(v, f"{p}{k}.").items() if isinstance(v, dict) else [(f"{p}{k}", v)])}
    a, b = flat(old), flat(new)
    return ", ".join(f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k) and k != "data.data_dir")


def build_supernet(spec: dict) -> Supernet:
    """A supernet of a spec (``supernet_spec`` or a checkpoint's), initialised from its seed."""
    torch.manual_seed(spec["seed"])
    return Supernet(make_space(None, **spec["space"]), **spec["sizes"])


def read_supernet_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """The supernet checkpoint at ``path``; one ValueError when the file is not one."""
    ck = read_checkpoint(path, mmap=mmap)
    if not isinstance(ck, dict) or ck.get("kind") != KIND:
        raise ValueError(f"{path} is not a supernet checkpoint (tools/search.py supernet writes one)")
    return ck


def check_reward_checkpoint(path: str | Path, space_dict: dict, mmap: bool = True, fit: bool = False) -> dict:
    """The checkpoint a supernet reward reads; ValueError unless it is finished and over ``space_dict``
    (and with ``fit``, unless its tensors fit the supernet its spec builds: a search checks this before it
    writes anything, ~2 s)."""
    ck = read_supernet_checkpoint(path, mmap)
    spec = ck["spec"]
    if ck["step"] < spec["steps"]:
        raise ValueError(f"supernet checkpoint {path} is at step {ck['step']} of {spec['steps']}; finish it "
                         "first (tools/search.py supernet --resume)")
    if space_dict != spec["space"]:
        raise ValueError(f"supernet checkpoint {path} covers the space {spec['space']}; this search's is "
                         f"{space_dict}")
    if fit:
        with torch.random.fork_rng(devices=[]):  # building seeds and draws from torch's RNG
            check_fit(build_supernet(spec), ck["model"], path)
    return ck


def load_supernet(path: str | Path, ck: dict | None = None) -> tuple[Supernet, dict]:
    """The supernet and checkpoint at ``path`` (``ck``: that checkpoint, already read); one ValueError
    when it is not a supernet checkpoint or its tensors do not fit."""
    ck = read_supernet_checkpoint(path) if ck is None else ck
    net = build_supernet(ck["spec"])
    copy_weights(net, ck["model"], path)
    return net, ck


def check_fit(net: Supernet, state: dict, path: str | Path) -> dict:
    """The supernet's tensors by name; one ValueError naming the misfit unless ``state`` has exactly their
    names and shapes."""
    own = net.state_dict(keep_vars=True)
    if own.keys() != state.keys():
        missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        raise ValueError(f"{path} does not fit this supernet: {len(missing)} tensors missing "
                         f"({', '.join(missing[:3])}), {len(extra)} unexpected ({', '.join(extra[:3])})")
    for name, t in own.items():
        if t.shape != state[name].shape:
            raise ValueError(f"{path}: {name} has shape {tuple(state[name].shape)}, the supernet's is "
                             f"{tuple(t.shape)}")
    return own


def copy_weights(net: Supernet, state: dict, path: str | Path) -> None:
    """``load_state_dict(state, strict=True)`` in one pass over the supernet's tensors (its per-module
    prefix scan is quadratic in the ~10^4 modules); nothing is copied unless every tensor fits."""
    own = check_fit(net, state, path)
    with torch.no_grad():
        for name, t in own.items():
            t.copy_(state[name])


def sample_decisions(space, generator: torch.Generator) -> list[int]:
    """One uniform path: every decision uniform over its choices."""
    u = torch.rand(len(space.choices), generator=generator, dtype=torch.float64)
    return [int(v) for v in (u * torch.tensor(space.choices, dtype=torch.float64)).floor().long()]


def _prepare_out(out: Path, resume: bool, force: bool) -> Path | None:
    """The checkpoint to continue (None: start afresh); refuses to overwrite a run without ``force``."""
    ck = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is not a folder")
    if resume and ck.exists():
        return ck
    others = sorted(p.name for p in out.iterdir() if p.name not in _OURS and not p.name.startswith(".")) \
        if out.is_dir() else []
    if not force and (ck.exists() or (others and not resume)):
        what = f"a supernet ({CHECKPOINT})" if ck.exists() else f"other files ({', '.join(others[:5])})"
        raise ValueError(f"{out} holds {what}; pass --resume to continue it or --force to train a new "
                         "supernet there")
    return None


def _checkpoint(tr: SupernetTrainer, seconds: float) -> dict:
    return {"kind": KIND, "version": 1, "spec": tr.spec, "model": tr.net.state_dict(),
            "optimizer": tr.opt.state_dict(), "step": tr.step, "path_rng": tr.gen.get_state(),
            "torch_rng": torch.get_rng_state(), "train_seconds": seconds, "last_loss": tr.last_loss,
            "loss_ema": None if tr.loss_ema is None else tr.loss_ema.item()}


def chance_warning(loss_ema: float | None, num_classes: int) -> str | None:
    """A warning when the supernet's smoothed path loss is at or above chance (ln C): uniformly sampled
    paths did not learn, and its reward will rank children about as well as a random one."""
    chance = math.log(num_classes)
    if loss_ema is None or loss_ema < CHANCE_FRACTION * chance:
        return None
    return (f"the supernet's loss on uniformly sampled paths ends at {loss_ema:.2f}, at or above chance "
            f"(ln {num_classes} = {chance:.2f}): its paths did not learn, so the supernet reward will rank "
            "children about as a random reward would (docs/search.md, 'A real weight-sharing search')")


def supernet_setup(cfg: dict) -> tuple[torch.device, object, dict]:
    """(device, child data, spec) of a search config's supernet; sets its torch thread count."""
    child = cfg["reward"]["child"]
    if child["num_threads"]:
        torch.set_num_threads(child["num_threads"])
    dev = resolve_device(child["device"], key="reward.child.device")
    data = load_child_data(*(child[k] for k in _DATA_KEYS))
    return dev, data, supernet_spec(cfg, data.num_classes, data.train_x.shape[-1])


def train_supernet(cfg: dict, out: str | Path, resume: bool = False, force: bool = False,
                   progress: bool = True) -> dict:
    """Train (or with ``resume`` continue) the supernet a search config describes into ``out``."""
    out = Path(out)
    start_ck = _prepare_out(out, resume, force)
    dev, data, spec = supernet_setup(cfg)
    net, ck = (build_supernet(spec), None) if start_ck is None else load_supernet(start_ck)
    if ck is not None and (diff := _changes(ck["spec"], spec)):
        raise ValueError(f"{start_ck} was trained with another config ({diff}); resume it with the same "
                         "config, or pass --force (without --resume) to train a new supernet")
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(out, "supernet.lock", "a supernet training")
    try:
        remove_stale_temps(out)
        write_config(cfg, out / "config.yaml", SEARCH)
        return SupernetTrainer(net.to(dev), data, spec, ck, dev).run(out, cfg["supernet"], progress)
    finally:
        lock.close()


class SupernetTrainer:
    """The training state: data, optimizer, schedule, path generator, step (from a checkpoint or 0)."""

    def __init__(self, net: Supernet, data, spec: dict, ck: dict | None, dev: torch.device):
        r, seed = spec["recipe"], spec["seed"]
        self.net, self.spec, self.dev, self.recipe = net, spec, dev, r
        aug = {"pad": r["crop_pad"], "hflip": r["flip"], "cutout": 0}
        self.train_set = ArrayDataset(data.train_x, data.train_y, True, aug, data.mean, data.std, seed)
        self.loader = build_loader(self.train_set, r["batch_size"], True, 0, dev.type == "cuda", seed)
        # Each epoch's iterator draws a base seed (unused: order and augmentation come from (seed, epoch,
        # index)); from its own generator, so that torch's RNG state does not depend on where a run resumed.
        self.loader.generator = torch.Generator().manual_seed(seed)
        solver = {"optimizer": "sgd", "lr": r["lr"], "momentum": r["momentum"], "nesterov": False,
                  "weight_decay": r["weight_decay"], "schedule": "cosine", "min_lr": 0.0,
                  "epochs": spec["steps"], "warmup_epochs": 0.0}
        self.opt, self.schedule = build_optimizer(net, solver), LRSchedule(solver, 1)  # 1 "epoch" = 1 step
        self.gen = torch.Generator().manual_seed(seed)
        self.sample = sample_decisions  # (space, generator) -> decisions; tools/supernet_probe.py swaps it
        self.step, self.seconds, self.last_loss, self.loss_ema = 0, 0.0, None, None
        if ck is not None:
            self.opt.load_state_dict(ck["optimizer"])
            self.gen.set_state(ck["path_rng"])
            torch.set_rng_state(ck["torch_rng"])
            self.step, self.seconds, self.last_loss = ck["step"], ck["train_seconds"], ck["last_loss"]
            if ck.get("loss_ema") is not None:
                self.loss_ema = torch.tensor(ck["loss_ema"], dtype=torch.float32, device=dev)
        self.heads = [net.classifier_bias, *net.classifier.parameters()]
        self.group_of = {id(p): i for i, g in enumerate(self.opt.param_groups) for p in g["params"]}

    def batches(self):
        """(x, y) from the current step on: epoch and position follow from the step."""
        spe = len(self.loader)
        while True:
            epoch, skip = divmod(self.step, spe)
            self.train_set.epoch = epoch
            self.loader.sampler.set_epoch(epoch)
            yield from itertools.islice(self.loader, skip, None)

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One SGD step on a path from ``self.sample`` (uniform unless swapped); (loss, lr)."""
        d = self.sample(self.net.space, self.gen)
        lr = self.schedule.apply(self.opt, self.step)
        loss = F.cross_entropy(self.net(xb.to(self.dev, non_blocking=True), d),
                               yb.to(self.dev, non_blocking=True))
        params = [p for m in path_modules(self.net, d) for p in m.parameters()] + self.heads
        loss.backward()
        lo = loss.detach().float()  # stays on the device: no sync per step
        self.loss_ema = lo if self.loss_ema is None else LOSS_EMA * self.loss_ema + (1 - LOSS_EMA) * lo
        if self.recipe["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(params, self.recipe["grad_clip"])
        self._path_step([p for p in params if p.grad is not None])
        for p in params:  # the next path starts with no gradients (zero_grad(set_to_none) of the path)
            p.grad = None
        self.step += 1
        return loss, lr

    def _path_step(self, params: list) -> None:
        """``opt.step()`` with each param group holding only its path parameters: SGD skips a parameter
        without a gradient anyway, and its loop over every supernet parameter cost more than the update."""
        groups = self.opt.param_groups
        full = [g["params"] for g in groups]
        for g in groups:
            g["params"] = []
        for p in params:
            groups[self.group_of[id(p)]]["params"].append(p)
        try:
            self.opt.step()
        finally:
            for g, ps in zip(groups, full):
                g["params"] = ps

    def run(self, out: Path, sn: dict, progress: bool) -> dict:
        """Train to ``spec['steps']``, logging and checkpointing as configured."""
        from tqdm import tqdm

        steps = self.spec["steps"]
        if self.step:
            log.info("resumed from %s: step %d of %d", out / CHECKPOINT, self.step, steps)
        writer = _tensorboard(out)
        bar = tqdm(total=steps, initial=self.step, disable=not progress, desc="supernet", unit="step",
                   dynamic_ncols=True)
        started = time.perf_counter() - self.seconds
        self.net.train()
        try:
            for xb, yb in itertools.islice(self.batches(), steps - self.step):
                loss, lr = self.train_step(xb, yb)
                bar.update(1)
                save = self.step % sn["checkpoint_every"] == 0 or self.step == steps
                if save or self.step % sn["log_every"] == 0:
                    self.last_loss = loss.item()
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"supernet loss became {self.last_loss} at step {self.step}")
                    if writer is not None:
                        writer.add_scalar("supernet/loss", self.last_loss, self.step)
                        writer.add_scalar("supernet/lr", lr, self.step)
                        writer.add_scalar("supernet/loss_ema", self.loss_ema.item(), self.step)
                if save:
                    state = _checkpoint(self, time.perf_counter() - started)
                    atomic_torch_save(state, out / CHECKPOINT)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        ema = None if self.loss_ema is None else round(self.loss_ema.item(), 4)
        warning = chance_warning(ema, self.spec["sizes"]["num_classes"])
        if warning:
            log.warning(warning)
        return {"out": str(out), "checkpoint": str(out / CHECKPOINT), "steps": self.step,
                "train_seconds": round(time.perf_counter() - started, 1), "last_loss": self.last_loss,
                "loss_ema": ema, "chance_loss": round(math.log(self.spec["sizes"]["num_classes"]), 4),
                "warning": warning}


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a runtime dependency; tolerate its absence
        return None
    return SummaryWriter(str(out / "tb"))
