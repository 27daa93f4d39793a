"""Score a finished search's children again with another reward and measure how well the two agree.

The use: rank agreement between a cheap proxy (the weight-sharing supernet's validation accuracy) and
standalone training. A search of random genotypes with the standalone reward gives the reference
scores; ``rescore_run`` scores the same children with the proxy and reports Kendall's tau-b and
Spearman's rho between the two lists.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..common.fileio import atomic_write
from .report import load_run, spearman
from .rewards import build_space, make_reward

__all__ = ["kendall_tau_b", "rescore_run", "rescore_table", "plot_rescore"]


def kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b of ``x`` and ``y`` (ties corrected); None below 2 pairs or for a constant list."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b needs lists of one length, got {len(x)} and {len(y)}")
    concordant = discordant = tied_x = tied_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue  # tied in both: counts in neither correction term's pairs
            if dx == 0:
                tied_x += 1
            elif dy == 0:
                tied_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    n_x = concordant + discordant + tied_y  # pairs not tied in x
    n_y = concordant + discordant + tied_x  # pairs not tied in y
    if n < 2 or n_x == 0 or n_y == 0:
        return None
    return (concordant - discordant) / math.sqrt(n_x * n_y)


def rescore_run(run_dir: str | Path, reward_cfg: dict, space_cfg: dict | None = None,
                progress: bool = True) -> dict:
    """Score every finished child of ``run_dir`` with ``reward_cfg``; rows, tau-b, Spearman, seconds."""
    run = load_run(run_dir)
    stored = run["config"]["space"]
    if space_cfg is not None and dict(space_cfg) != dict(stored):
        diff = sorted(k for k in set(space_cfg) | set(stored) if space_cfg.get(k) != stored.get(k))
        raise ValueError(f"the config's space differs from the run's in {', '.join(diff)}; "
                         f"rescoring needs the run's space")
    done = sorted((c for c in run["children"] if c["status"] == "done"), key=lambda c: c["id"])
    if len(done) < 2:
        raise ValueError(f"{run_dir} has {len(done)} finished children; rescoring needs at least 2")
    space = build_space(stored)
    start = time.perf_counter()
    fn = make_reward(reward_cfg, space)
    setup = time.perf_counter() - start
    rows = []
    for c in _progress(done, progress):
        t0 = time.perf_counter()
        out = fn(c["id"], list(c["decisions"]))
        out = dict(out) if isinstance(out, dict) else {"reward": out}
        rows.append({"id": c["id"], "genotype": c["genotype"], "reward": c["reward"],
                     "accuracy": c.get("accuracy"), "score": float(out["reward"]),
                     "seconds": time.perf_counter() - t0})
    ref, new = [r["reward"] for r in rows], [r["score"] for r in rows]
    return {"run_dir": str(run_dir), "reward": reward_cfg["name"], "rows": rows,
            "kendall_tau_b": kendall_tau_b(ref, new), "spearman": spearman(ref, new),
            "setup_seconds": setup, "seconds": time.perf_counter() - start}


def _progress(items: list, enabled: bool):
    """``items`` behind a tqdm bar when enabled."""
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, desc="rescore", unit="child")


def _fmt(v: float | None) -> str:
    """A correlation for the table (``-`` when undefined)."""
    return "-" if v is None else f"{v:+.3f}"


def rescore_table(result: dict) -> str:
    """Markdown table of the run's reward and the new score per child, then the rank agreement."""
    lines = [f"| child | run reward | {result['reward']} score | seconds |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['id']} | {r['reward']:.4f} | {r['score']:.4f} | {r['seconds']:.1f} |")
    lines.append("")
    lines.append(f"{len(result['rows'])} children: Kendall tau-b {_fmt(result['kendall_tau_b'])}, "
                 f"Spearman {_fmt(result['spearman'])}; {result['seconds']:.0f} s "
                 f"({result['setup_seconds']:.0f} s of it loading the reward)")
    return "\n".join(lines)


def plot_rescore(result: dict, out: str | Path, xlabel: str = "run reward", title: str | None = None) -> Path:
    """Scatter of the new score against the run's reward, one labelled point per child."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    for r in result["rows"]:
        ax.scatter(r["reward"], r["score"], color="tab:blue")
        ax.annotate(str(r["id"]), (r["reward"], r["score"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{result['reward']} score")
    ax.set_title(title or f"Kendall tau-b {_fmt(result['kendall_tau_b'])}, "
                 f"Spearman {_fmt(result['spearman'])} ({len(result['rows'])} children)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return atomic_write(out, lambda f: fig.savefig(f, dpi=120, format="png"))
    finally:
        plt.close(fig)
