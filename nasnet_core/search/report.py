"""Results of finished (or running) searches: best-architecture table, Fig. 6 plot, genotype export."""

from __future__ import annotations

import json
from pathlib import Path

from ..common.fileio import atomic_write, atomic_write_text
from .runner import topk_means
from .store import RunStore

__all__ = ["load_run", "best_table", "plot_runs", "export_top", "spearman", "retrained_rows",
           "retrained_table", "plot_retrained"]


def load_run(run_dir: str | Path) -> dict:
    """A run's config, strategy counters and children (read-only)."""
    with RunStore(run_dir) as store:
        run = {"run_dir": str(run_dir), "config": store.meta()["config"], "counts": store.strategy_counts(),
               "children": store.children()}
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
    from ..model.genotype import Genotype

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


# ---- retrained top K (paper section 4.1, Fig. 5) -----------------------------------------------
def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman rank correlation of ``x`` and ``y`` (None below 3 pairs or for a constant list)."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs lists of one length, got {len(x)} and {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = _ranks(list(x)), _ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def retrained_rows(run: dict) -> list[dict]:
    """The run's retrained children (``RUN/retrain/results.json``) of its last retrain, by rank."""
    from .retrain import load_results

    state = load_results(Path(run["run_dir"]) / "retrain")
    if state is None:
        return []
    return sorted((state["children"][str(c)] for c in state["top"]), key=lambda e: e["rank"])


def retrained_table(run: dict) -> str:
    """Markdown table: rank by search reward, reward, retrained top-1, mult-adds, params; Spearman."""
    rows = retrained_rows(run)
    lines = [f"retrained top {len(rows)} of {run['label']}:", "",
             "| rank (reward) | child | reward | retrained top-1 (%) | rank (retrained) | mult-adds (M) | "
             "params (M) | epochs |", "|---|---|---|---|---|---|---|---|"]
    done = [e for e in rows if e["status"] == "done"]
    by_acc = {e["child"]: i for i, e in enumerate(sorted(done, key=lambda e: (-e["top1"], e["rank"])), 1)}
    for e in rows:
        if e["status"] != "done":
            lines.append(f"| {e['rank']} | {e['child']} | {e['reward']:.4f} | {e['status']} | - | - | - | "
                         "- |")
            continue
        lines.append(f"| {e['rank']} | {e['child']} | {e['reward']:.4f} | {e['top1']:.2f} | "
                     f"{by_acc[e['child']]} | {e['mult_adds'] / 1e6:.2f} | {e['params'] / 1e6:.3f} | "
                     f"{e['epochs']} |")
    rho = spearman([e["reward"] for e in done], [e["top1"] for e in done])
    lines.append("")
    lines.append(f"Spearman rank correlation, search reward vs retrained top-1 ({len(done)} children): "
                 + ("- (needs 3 distinct)" if rho is None else f"{rho:.3f}"))
    if done:
        best = min(done, key=lambda e: by_acc[e["child"]])
        lines.append(f"best after retraining: child {best['child']} (reward rank {best['rank']}), "
                     f"top-1 {best['top1']:.2f} %")
    return "\n".join(lines)


def plot_retrained(runs: dict | list[dict], out: str | Path, title: str | None = None) -> Path:
    """Paper Fig. 5 style: retrained top-1 vs mult-adds, one labelled point per child (one colour per
    run when several are given, e.g. searches with different rewards); and vs each run's reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [runs] if isinstance(runs, dict) else list(runs)
    per_run = [[e for e in retrained_rows(run) if e["status"] == "done"] for run in runs]
    for run, done in zip(runs, per_run):
        if not done:
            raise ValueError(f"{run['run_dir']} has no retrained child to plot (run tools/search.py retrain)")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, scale, xlabel in ((left, "mult_adds", 1e-6, "mult-adds (millions)"),
                                   (right, "reward", 1.0, "search reward (held-out accuracy)")):
        for i, (run, done) in enumerate(zip(runs, per_run)):
            xs, ys = [e[key] * scale for e in done], [e["top1"] for e in done]
            ax.scatter(xs, ys, s=30, color=f"C{i}", zorder=3, label=run["label"] if len(runs) > 1 else None)
            for e, x, y in zip(done, xs, ys):
                ax.annotate(f"#{e['rank']} (child {e['child']})", (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=f"C{i}")
        ax.margins(x=0.15, y=0.15)  # room for the labels
        ax.set_xlabel(xlabel)
        ax.set_ylabel("retrained top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        left.legend(fontsize=7)
    left.set_title("accuracy vs mult-adds (paper Fig. 5 style)", fontsize=9)
    rhos = [spearman([e["reward"] for e in done], [e["top1"] for e in done]) for done in per_run]
    rho_text = ", ".join("-" if r is None else f"{r:.2f}" for r in rhos)
    right.set_title(f"retrained vs search reward (Spearman {rho_text})", fontsize=9)
    label = runs[0]["label"] if len(runs) == 1 else f"{len(runs)} runs"
    fig.suptitle(title or f"retrained top {max(len(d) for d in per_run)} of {label}", fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(out, lambda f: fig.savefig(f, dpi=120, format=Path(out).suffix[1:] or "png"))
    finally:
        plt.close(fig)
