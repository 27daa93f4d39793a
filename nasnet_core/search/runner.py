"""The search loop: ask the strategy, queue children, record results, resume after a crash."""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
from pathlib import Path

from ..common.config import SEARCH, load_config, write_config
from .base import make_strategy, state_from_bytes, state_to_bytes
from .executor import make_executor
from .rewards import build_space
from .store import DB_NAME, RunStore, left_by_start

__all__ = ["start_search", "resume_search", "topk_means", "check_config", "check_values",
           "check_run_dir"]

log = logging.getLogger(__name__)


def _counts(strategy) -> tuple[int, int, int]:
    return strategy.num_asked, strategy.num_told, strategy.num_updates


def _genotype_text(space, decisions) -> str | None:
    return space.decode(decisions).to_string() if hasattr(space, "decode") else None


# Lowest sensible value of each numeric search key: (bound, inclusive); null passes where allowed.
_LOWER_BOUNDS = {
    "search.num_children": (1, True), "search.max_in_flight": (0, True),
    "space.num_blocks": (1, True), "executor.num_cpus": (1, True), "executor.cpus_per_child": (1, True),
    "executor.gpus_per_child": (0, True), "executor.max_retries": (0, True),
    "reward.child.val_size": (1, True), "reward.child.train_subset": (0, True),
    "reward.child.val_subset": (0, True), "reward.child.N": (1, True),
    "reward.child.num_conv_filters": (1, True), "reward.child.stem_multiplier": (0, False),
    "reward.child.epochs": (1, True), "reward.child.batch_size": (1, True), "reward.child.lr": (0, False),
    "reward.child.weight_decay": (0, True), "reward.child.grad_clip": (0, True),
    "reward.child.crop_pad": (0, True), "reward.child.num_threads": (0, True),
    "reward.child.eval_batch_size": (1, True), "reward.child.cost_target": (0, True),
    "reward.child.workers": (0, True), "reward.synthetic.noise": (0, True),
    "reward.synthetic.delay": (0, True), "reward.supernet.calib_batches": (1, True),
    "reward.supernet.calib_batch_size": (0, True), "reward.supernet.val_subset": (0, True),
    "reward.supernet.num_threads": (0, True), "reward.supernet.eval_batch_size": (1, True),
    "supernet.steps": (1, True), "supernet.lr": (0, False), "supernet.checkpoint_every": (1, True),
    "supernet.log_every": (1, True),
}
_NULLABLE = {"space.num_blocks", "executor.num_cpus", "executor.gpus_per_child", "supernet.lr"}


def check_values(cfg: dict) -> None:
    """One ValueError naming the first numeric search key whose value makes no sense."""
    for key, (bound, inclusive) in _LOWER_BOUNDS.items():
        section, *path = key.split(".")
        value = cfg[section]
        for part in path:
            value = value[part]
        if value is None and key in _NULLABLE:
            continue
        number = isinstance(value, (int, float))
        if not (number and math.isfinite(value) and (value >= bound if inclusive else value > bound)):
            rule = f"{'>=' if inclusive else '>'} {bound}" + (" or null" if key in _NULLABLE else "")
            raise ValueError(f"{key} must be {rule}, got {f'{value:g}' if number else value}")
    momentum = cfg["reward"]["child"]["momentum"]
    if not 0 <= momentum < 1:
        raise ValueError(f"reward.child.momentum must be in [0, 1), got {momentum:g}")


def check_config(cfg: dict) -> None:
    """Fail fast, before anything is written, on names and values the workers would only reject later."""
    from ..common.datasets import DATASETS
    from .executor import EXECUTORS
    from .rewards import REWARDS

    check_values(cfg)
    if cfg["reward"]["name"] not in REWARDS:
        raise ValueError(f"unknown reward {cfg['reward']['name']!r}; known: {', '.join(REWARDS)}")
    if cfg["executor"]["backend"] not in EXECUTORS:
        raise ValueError(f"unknown executor backend {cfg['executor']['backend']!r}; "
                         f"known: {', '.join(EXECUTORS)}")
    failure_reward = cfg["search"]["failure_reward"]
    if failure_reward is not None and not math.isfinite(failure_reward):
        raise ValueError(f"search.failure_reward must be a finite number or null, got {failure_reward}")
    timeout = cfg["executor"]["child_timeout"]
    if timeout is not None and timeout <= 0:
        raise ValueError(f"executor.child_timeout must be > 0 seconds or null, got {timeout}")
    child = cfg["reward"]["child"]
    if cfg["reward"]["name"] == "supernet":
        _check_supernet_reward(cfg)
    if cfg["reward"]["name"] == "child":
        if child["dataset"] not in DATASETS:
            raise ValueError(f"unknown dataset {child['dataset']!r}; known: {', '.join(DATASETS)}")
        if cfg["executor"]["address"] is None and not Path(child["data_dir"]).is_dir():
            raise FileNotFoundError(f"dataset folder not found: {child['data_dir']} "
                                    "(reward.child.data_dir)")


def _check_supernet_reward(cfg: dict) -> None:
    """The supernet reward's checkpoint (and a data folder given) exist, before anything is written."""
    sn = cfg["reward"]["supernet"]
    if not sn["checkpoint"]:
        raise ValueError("reward.supernet.checkpoint is not set; give the supernet.pth of a "
                         "tools/search.py supernet run")
    if cfg["executor"]["address"] is None:  # on a cluster the paths are the workers'
        if not Path(sn["checkpoint"]).is_file():
            raise FileNotFoundError(f"supernet checkpoint not found: {sn['checkpoint']} "
                                    "(reward.supernet.checkpoint)")
        from .supernet_train import check_reward_checkpoint

        check_reward_checkpoint(sn["checkpoint"], build_space(cfg["space"]).to_dict(), fit=True)
        if sn["data_dir"] is not None and not Path(sn["data_dir"]).is_dir():
            raise FileNotFoundError(f"dataset folder not found: {sn['data_dir']} (reward.supernet.data_dir)")


def check_run_dir(run_dir: str | Path, force: bool = False) -> None:
    """Refuse a ``run_dir`` that is a file, or a folder holding files but no search (unless ``force``)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} is not a folder")
    if not run_dir.is_dir() or (run_dir / DB_NAME).exists() or force:
        return  # new, or a search (RunStore names --resume)
    found = sorted(p.name for p in run_dir.iterdir() if not left_by_start(p.name))  # a search stopped at once
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ValueError(f"run directory {run_dir} is not empty and holds no search ({shown}); choose a "
                         f"new or empty folder, continue a search with --resume, or pass --force to "
                         f"write the search into it (its config.yaml would be replaced)")


def start_search(run_dir: str | Path, config: dict | None = None, progress: bool = True,
                 force: bool = False) -> dict:
    """Create ``run_dir`` for a new search with a resolved ``config`` and run it to completion.

    A folder that holds other files is refused unless ``force`` (tools/search.py run --force)."""
    cfg = config if config is not None else load_config(schema=SEARCH)
    check_config(cfg)
    check_run_dir(run_dir, force)
    space = build_space(cfg["space"])
    strategy = make_strategy(cfg["search"]["strategy"], space, seed=cfg["search"]["seed"],
                             **cfg["search"]["strategy_hparams"])
    with _executor(cfg) as executor, RunStore.create(
            run_dir, {"config": cfg, "space": space.to_dict()},
            state_to_bytes(strategy.state_dict()), _counts(strategy)) as store:  # Ray first
        write_config(cfg, Path(run_dir) / "config.yaml", SEARCH)  # a copy to read; the database holds it
        return _run(store, cfg, space, strategy, progress, executor)


def resume_search(run_dir: str | Path, progress: bool = True, num_children: int | None = None) -> dict:
    """Continue the search in ``run_dir`` exactly where its last committed state left it."""
    if num_children is not None and num_children < 1:
        raise ValueError(f"--num-children must be >= 1, got {num_children}")
    with RunStore(run_dir, lock=True) as store:  # a second process resuming the run is refused here
        cfg = store.meta()["config"]
        if num_children is not None:  # extend (or keep) the planned total
            cfg["search"]["num_children"] = int(num_children)
        space = build_space(cfg["space"])
        strategy = make_strategy(cfg["search"]["strategy"], space, seed=cfg["search"]["seed"],
                                 **cfg["search"]["strategy_hparams"])
        strategy.load_state_dict(state_from_bytes(store.strategy_state()))
        with _executor(cfg) as executor:  # before the store is changed
            if not (store.run_dir / "config.yaml").exists():  # stopped between its database and config.yaml
                write_config(cfg, store.run_dir / "config.yaml", SEARCH)
            return _run(store, cfg, space, strategy, progress, executor)


@contextlib.contextmanager
def _executor(cfg: dict):
    """The run's executor, made (a Ray cluster reached, or one error line) before the caller writes
    anything; shut down on leaving."""
    executor = make_executor(cfg["executor"], cfg["reward"], cfg["space"])
    try:
        yield executor
    finally:
        executor.shutdown()


def _run(store: RunStore, cfg: dict, space, strategy, progress: bool, executor) -> dict:
    from tqdm import tqdm

    total = cfg["search"]["num_children"]
    max_in_flight = cfg["search"]["max_in_flight"] or (
        1 if cfg["executor"]["backend"] == "inprocess" else 2 * executor.slots)
    writer = _tensorboard(store.run_dir)
    finished = [c for c in store.children() if c["status"] != "pending"]
    rewards = [c["reward"] for c in sorted(finished, key=lambda c: c["seq"]) if c["status"] == "done"]
    top = sorted(rewards, reverse=True)[:25]  # the 25 best rewards so far, best first
    bar = tqdm(total=total, initial=len(finished), disable=not progress, desc="children", unit="child",
               dynamic_ncols=True)
    try:
        for child in store.children("pending"):  # asked before a crash, never finished: run them again
            executor.submit(child["id"], child["decisions"])
        while True:
            want = min(max_in_flight - executor.pending(), total - store.count())
            if want > 0:
                asked = strategy.ask(want)
                ids = store.add_children([(d, _genotype_text(space, d)) for d in asked],
                                         state_to_bytes(strategy.state_dict()), _counts(strategy))
                for child_id, decisions in zip(ids, asked):
                    executor.submit(child_id, decisions)
            if executor.pending() == 0:
                break
            for child_id, result in executor.wait():
                failure_reward = cfg["search"].get("failure_reward")
                state = _tell(strategy, store.decisions(child_id), result, failure_reward)
                seq = store.finish_child(child_id, result, state, _counts(strategy) if state else None)
                if result["status"] == "done":
                    rewards.append(result["reward"])
                    _log_scalars(writer, seq, rewards[-1], top)
                bar.update(1)
                bar.set_postfix(best=f"{max(rewards):.4f}" if rewards else "-",
                                failed=store.count("failed"))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return {"run_dir": str(store.run_dir), "children": store.count(), "done": store.count("done"),
            "failed": store.count("failed"), "timeout": store.count("timeout"), **store.strategy_counts(),
            "best": max(rewards) if rewards else None}


def _tell(strategy, decisions: list[int], result: dict, failure_reward: float | None) -> bytes | None:
    """Tell the strategy a child's outcome; the state to commit with it (None: nothing was told)."""
    if result["status"] == "done":
        strategy.tell([(decisions, result["reward"])])
    else:
        log.warning("child %s: %s", result["status"], (result.get("error") or "").splitlines()[0])
        if failure_reward is None:
            return None  # not told: the strategy's state is unchanged
        strategy.tell([(decisions, failure_reward)])  # a failure is information: a low reward
    return state_to_bytes(strategy.state_dict())


def topk_means(rewards: list[float], ks=(1, 5, 25)) -> dict[int, list[float | None]]:
    """For each k, the mean of the top-k rewards seen after each sample (None until k exist)."""
    import heapq

    out = {k: [] for k in ks}
    seen: list[float] = []
    for r in rewards:
        seen.append(r)
        for k in ks:
            out[k].append(sum(heapq.nlargest(k, seen)) / k if len(seen) >= k else None)
    return out


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a runtime dependency; tolerate its absence
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _log_scalars(writer, step: int, reward: float, top: list[float]) -> None:
    bisect.insort(top, reward, key=lambda r: -r)
    del top[25:]
    if writer is None:
        return
    writer.add_scalar("search/reward", reward, step)
    for k in (1, 5, 25):
        if len(top) >= k:
            writer.add_scalar(f"search/top{k}_mean", sum(top[:k]) / k, step)
