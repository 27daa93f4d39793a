"""Retrain the top K children of a search with the classification trainer.

The paper (section 4.1) retrains the top 250 children of its search to convergence and keeps the
best; the search reward only ranks candidates. ``retrain_top`` picks the K best distinct genotypes
of a run by reward, trains each with ``nasnet_core.train.Trainer`` (``model.genotype`` = the child's
genotype; depth, width and recipe from the classification config) on the run's executor backend
(in-process or Ray), one output folder per child: ``RUN/retrain/child<id>/``. Results go to
``RUN/retrain/results.json``, rewritten atomically after every child. Run it again after a crash or
SIGKILL: finished children are kept, a half-trained one resumes from its ``last.pth`` (the
trainer's exact resume), so the end state equals that of an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import time
from pathlib import Path

from ..common.config import CLASSIFICATION, write_config
from ..common.fileio import atomic_write_text
from .store import RunStore

__all__ = ["RESULTS", "select_top", "check_retrain_config", "retrain_job", "retrain_top", "load_results"]

log = logging.getLogger(__name__)

RESULTS = "results.json"


def select_top(run_dir: str | Path, top: int) -> list[dict]:
    """The ``top`` best distinct genotypes of a run's finished children, best reward first."""
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    with RunStore(run_dir) as store:
        done = store.children("done")
    if not done:
        raise ValueError(f"{run_dir} has no finished child to retrain")
    picks, seen = [], set()
    for c in sorted(done, key=lambda c: (-c["reward"], c["id"])):
        if not c["genotype"]:
            raise ValueError(f"child {c['id']} of {run_dir} has no genotype (not a NASNet space)")
        if c["genotype"] in seen:  # a strategy may sample one cell twice: train it once, as its best
            continue
        seen.add(c["genotype"])
        picks.append({"rank": len(picks) + 1, "child": c["id"], "reward": c["reward"],
                      "search_accuracy": c["accuracy"], "search_mult_adds": c["mult_adds"],
                      "genotype": c["genotype"]})
    if top > len(picks):
        raise ValueError(f"{run_dir} has {len(picks)} finished children with distinct genotypes; "
                         f"--top {top} asks for more")
    return picks[:top]


def check_retrain_config(cfg: dict, executor_cfg: dict) -> None:
    """Fail before anything is written on an unknown arch, a missing local dataset folder or a Ray
    cluster address where nothing answers."""
    from ..model.registry import get_config
    from .executor import check_reachable

    F = cfg["model"]["F"]  # ValueError for an unknown arch (listing the known ones) or a bad F
    get_config(cfg["model"]["arch"], **({} if F is None else {"F": F}))
    local = executor_cfg["backend"] == "inprocess" or executor_cfg.get("address") is None
    if local and not Path(cfg["data"]["path"]).exists():
        raise FileNotFoundError(f"dataset folder not found: {cfg['data']['path']} (data.path)")
    if executor_cfg["backend"] == "ray":
        check_reachable(executor_cfg.get("address"))


def child_width(base: dict, genotype: str) -> int:
    """The child's F: the config's filters (F read as NASNet-A's, F = 24 x num_conv_filters, or the
    arch's filters when F is null) times 4 x the child's normal-cell output width per filter.

    Every child gets the same num_conv_filters, as in the search; a cell that concatenates more
    states is wider, as the paper's N @ F counts it."""
    from ..model.registry import get_config, width_per_filter

    m = base["model"]
    filters = get_config(m["arch"], **({} if m["F"] is None else {"F": m["F"]})).num_conv_filters
    return 4 * width_per_filter(genotype) * filters


def child_config(base: dict, genotype: str, output_dir: str | Path) -> dict:
    """The classification config of one retrained child (its genotype, width and output folder)."""
    cfg = copy.deepcopy(base)
    cfg["model"]["genotype"] = genotype
    cfg["model"]["F"] = child_width(base, genotype)
    cfg["train"]["output_dir"] = str(output_dir)
    return cfg


def retrain_job(base_cfg: dict, jobs: dict, child_id: int, _decisions, _timeout=None) -> dict:
    """Train (or resume, or just read back) one child; the executor's job function. Never raises."""
    from ..model.complexity import complexity
    from ..train.trainer import Trainer

    spec = jobs[child_id]
    cfg = child_config(base_cfg, spec["genotype"], spec["output_dir"])
    started, t0 = time.time(), time.perf_counter()
    try:
        # resume=True: from last.pth when a killed attempt left one, else from the start (a kill
        # before the first checkpoint leaves only config.yaml, which a fresh Trainer would refuse).
        trainer = Trainer(cfg, resume=True)
        from_epoch = trainer.epoch
        metrics = trainer.fit()
        cx = complexity(trainer.model, trainer.info.image_size, trainer.info.in_chans)
        params = sum(p.numel() for n, p in trainer.model.named_parameters() if not n.startswith("aux_head."))
        trainer.close()
    except Exception as e:  # noqa: BLE001 - recorded as failed; the other children go on
        return {"status": "failed", "error": f"{type(e).__name__}: {e}", "started": started,
                "seconds": time.perf_counter() - t0, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    return {"status": "done", "F": cfg["model"]["F"], "top1": metrics["val_top1"],
            "top5": metrics["val_top5"], "val_loss": metrics["val_loss"], "train_loss": metrics["train_loss"],
            "epochs": trainer.epoch, "steps": trainer.step, "resumed_from_epoch": from_epoch,
            "params": params, "mult_adds": cx["mult_adds"], "started": started,
            "seconds": time.perf_counter() - t0, "worker": f"{socket.gethostname()}:{os.getpid()}"}


def load_results(root: str | Path) -> dict | None:
    """``root/results.json`` (None when no retrain was started there)."""
    path = Path(root) / RESULTS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _save(root: Path, state: dict) -> None:
    atomic_write_text(root / RESULTS, json.dumps(state, indent=1))


def _same_recipe(old: dict, new: dict, root: Path) -> None:
    from ..train.trainer import config_changes

    diffs = config_changes(old, new)
    if diffs:
        raise ValueError(f"{root} holds a retrain with another config ({diffs}); continue it with the "
                         f"same config or choose another --output")


def _plan(root: Path, run_dir: Path, picks: list[dict], cfg: dict) -> dict:
    """The results state: the old one (same recipe) with the current picks merged in, or a new one."""
    state = load_results(root)
    if state is None:
        state = {"run_dir": str(run_dir), "config": cfg, "children": {}}
    else:
        _same_recipe(state["config"], cfg, root)
    for p in picks:
        entry = state["children"].setdefault(str(p["child"]), {**p, "dir": f"child{p['child']}",
                                                                "status": "pending"})
        entry["rank"] = p["rank"]  # a resumed search may have moved it
    state["top"] = [p["child"] for p in picks]
    return state


def _train(todo: list[dict], state: dict, root: Path, cfg: dict, executor_cfg: dict) -> None:
    """Run the children of ``todo`` on the run's executor, recording each result as it arrives."""
    from .executor import make_executor

    jobs = {e["child"]: {"genotype": e["genotype"], "output_dir": str(root / e["dir"])} for e in todo}
    # retraining runs to the end: the search's per-child timeout does not apply
    executor = make_executor({**executor_cfg, "child_timeout": None, "job": retrain_job}, cfg, jobs)
    try:
        for e in todo:
            executor.submit(e["child"], [])
        while executor.pending():
            for child_id, result in executor.wait():
                entry = state["children"][str(child_id)]
                entry.update(result)
                if result["status"] == "done":
                    entry.pop("error", None)  # of an earlier failed attempt
                _save(root, state)
                log.info("child %d (rank %d): %s %s", child_id, entry["rank"], result["status"],
                         f"top-1 {result['top1']:.2f} %" if result["status"] == "done" else result["error"])
    finally:
        executor.shutdown()


def retrain_top(run_dir: str | Path, top: int, cfg: dict, output: str | Path | None = None) -> dict:
    """Retrain the ``top`` best children of ``run_dir`` with the classification config ``cfg``."""
    run_dir = Path(run_dir)
    picks = select_top(run_dir, top)  # StoreError for an unknown run, ValueError for no children
    with RunStore(run_dir) as store:
        executor_cfg = store.meta()["config"]["executor"]
    check_retrain_config(cfg, executor_cfg)
    root = Path(output) if output else run_dir / "retrain"
    state = _plan(root, run_dir, picks, cfg)
    root.mkdir(parents=True, exist_ok=True)
    write_config(cfg, root / "config.yaml", CLASSIFICATION)
    _save(root, state)
    todo = [state["children"][str(p["child"])] for p in picks]
    todo = [e for e in todo if e["status"] != "done"]
    log.info("retraining %d of the top %d children of %s (%d already done) -> %s",
             len(todo), top, run_dir, top - len(todo), root)
    if todo:
        _train(todo, state, root, cfg, executor_cfg)
    entries = [state["children"][str(p["child"])] for p in picks]
    done = [e for e in entries if e["status"] == "done"]
    best = max(done, key=lambda e: (e["top1"], -e["rank"]), default=None)
    return {"run_dir": str(run_dir), "output": str(root), "top": top, "done": len(done),
            "failed": len(entries) - len(done), "trained_now": len(todo),
            "best_child": None if best is None else best["child"],
            "best_top1": None if best is None else best["top1"]}
