"""Results of finished (or running) searches: best-architecture table, Fig. 6 plot, genotype export."""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_write, atomic_write_text
from .runner import topk_means
from .store import RunStore

__all__ = ["load_run", "best_table", "plot_runs", "export_top"]


def load_run(run_dir: str | Path) -> dict:
    """A run's config, strategy counters and children (read-only)."""
    store = RunStore(run_dir)
    try:
        meta = store.meta()
        run = {"run_dir": str(run_dir), "config": meta["config"], "counts": store.strategy_counts(),
               "children": store.children()}
    finally:
        store.close()
    run["label"] = f"{run['config']['search']['strategy']} ({Path(run_dir).name})"
    done = [c for c in run["children"] if c["status"] == "done"]
    run["rewards"] = [c["reward"] for c in sorted(done, key=lambda c: c["seq"])]
    return run


def _ranked(run: dict) -> list[dict]:
    done = [c for c in run["children"] if c["status"] == "done"]
    return sorted(done, key=lambda c: (-c["reward"], c["id"]))


def best_table(runs: list[dict], top: int = 5) -> str:
    """Markdown table: per run its size and failures, then its ``top`` best children."""
    lines = ["| run | rank | child | reward | accuracy | mult-adds (M) | genotype |",
             "|---|---|---|---|---|---|---|"]
    for run in runs:
        for rank, c in enumerate(_ranked(run)[:top], 1):
            acc, ma = c.get("accuracy"), c.get("mult_adds")  # child rewards record both
            acc = "-" if acc is None else f"{acc:.4f}"
            ma = "-" if ma is None else f"{ma / 1e6:.2f}"
            lines.append(f"| {run['label']} | {rank} | {c['id']} | {c['reward']:.4f} | {acc} | {ma} | "
                         f"`{c['genotype'] or c['decisions']}` |")
    summary = ["| run | children | done | failed | timeout | strategy updates | best | top-5 mean | "
               "top-25 mean |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        r = sorted(run["rewards"], reverse=True)

        def mean(k, r=r):
            return f"{sum(r[:k]) / k:.4f}" if len(r) >= k else "-"
        summary.append(f"| {run['label']} | {len(run['children'])} | {len(run['rewards'])} | "
                       f"{sum(c['status'] == 'failed' for c in run['children'])} | "
                       f"{sum(c['status'] == 'timeout' for c in run['children'])} | "
                       f"{run['counts']['num_updates']} | {mean(1)} | {mean(5)} | {mean(25)} |")
    return "\n".join(summary) + "\n\n" + "\n".join(lines)


def plot_runs(runs: list[dict], out: str | Path, ks=(1, 5, 25), title: str | None = None) -> Path:
    """Fig. 6 style: reward of every sample (dots) and running mean of the top-k so far, per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {k: s for k, s in zip(ks, ("-", "--", ":", "-."))}
    for i, run in enumerate(runs):
        color = f"C{i}"
        xs = range(1, len(run["rewards"]) + 1)
        ax.scatter(xs, run["rewards"], s=8, color=color, alpha=0.35)
        for k, values in topk_means(run["rewards"], ks).items():
            pts = [(x, v) for x, v in zip(xs, values) if v is not None]
            if pts:
                ax.plot(*zip(*pts), styles[k], color=color, label=f"{run['label']} top-{k}")
    ax.set_xlabel("number of children sampled (completed)")
    ax.set_ylabel("held-out accuracy (reward)")
    ax.set_title(title or "reward vs samples, mean of the top-k so far (paper Fig. 6)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    try:
        return atomic_write(out, lambda f: fig.savefig(f, dpi=120, format=Path(out).suffix[1:] or "png"))
    finally:
        plt.close(fig)


def export_top(run: dict, top: int, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """Write the ``top`` best genotypes as JSON (``{"genotype": ..., "reward": ...}``); returns paths.

    Existing files are refused (nothing written) unless ``overwrite`` (tools/search.py export --force)."""
    from ..genotype import Genotype

    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    out_dir = Path(out_dir)
    ranked = _ranked(run)
    if not ranked:
        raise ValueError(f"{run['run_dir']} has no finished child to export")
    chosen = list(enumerate(ranked[:top], 1))
    paths = [out_dir / f"top{rank}.json" for rank, _ in chosen]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                         "pass --force to overwrite, or choose another --output")
    texts = []
    for rank, c in chosen:
        if not c["genotype"]:
            raise ValueError(f"child {c['id']} has no genotype (not a NASNet space)")
        g = Genotype.from_string(c["genotype"])
        data = {"genotype": g.to_dict(), "text": g.to_string(), "reward": c["reward"], "child": c["id"],
                "rank": rank, "run_dir": run["run_dir"], "strategy": run["config"]["search"]["strategy"]}
        texts.append(json.dumps(data, indent=1))
    for path, text in zip(paths, texts):
        atomic_write_text(path, text)
    return paths
