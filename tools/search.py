"""Architecture search: run, resume, report and export.

    tools/search.py run --config configs/search/fashion_mnist_small.yaml --run-dir runs/ppo
    tools/search.py run --config configs/search/fashion_mnist_small.yaml --run-dir runs/random \
        search.strategy random search.strategy_hparams "{}"      # trailing KEY VALUE overrides
    tools/search.py --resume runs/ppo                 # after a crash / SIGKILL
    tools/search.py supernet --config configs/search/fashion_mnist_supernet.yaml --out runs/supernet
    tools/search.py run --config configs/search/fashion_mnist_supernet.yaml --run-dir runs/sn_evo
    tools/search.py report runs/ppo runs/random --plot docs/search_fig6.png
    tools/search.py export runs/ppo --top 5 --output genotypes/
    tools/search.py retrain runs/ppo --top 3 --config configs/classification/fashion_mnist_small.yaml \
        solver.epochs 2                                # again after a kill: continues where it was
    tools/search.py report runs/ppo --plot-retrained docs/retrained.png
    tools/search.py compare --seeds 5 --budget 2000   # strategies on the synthetic landscapes
    tools/search.py rescore runs/random12 --config configs/search/fashion_mnist_supernet.yaml \
        --output rank.json --plot rank.png            # the run's children under another reward, Kendall tau
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from nasnet_core.common.cli import refuse_existing, tool_main
from nasnet_core.common.config import CLASSIFICATION, SEARCH, load_config


def cmd_run(args) -> dict:
    """Start a new search."""
    from nasnet_core.search.runner import start_search

    overrides = list(args.overrides)
    if args.backend:
        overrides += ["executor.backend", args.backend]
    if args.address:
        overrides += ["executor.address", args.address]
    cfg = load_config(args.config, overrides, schema=SEARCH)
    return start_search(args.run_dir, cfg, progress=not args.quiet, force=args.force)


def cmd_supernet(args) -> dict:
    """Train (or continue) the weight-sharing supernet of a search config."""
    from nasnet_core.search.runner import check_values
    from nasnet_core.search.supernet_train import train_supernet

    cfg = load_config(args.config, list(args.overrides), schema=SEARCH)
    check_values(cfg)
    return train_supernet(cfg, args.out, resume=args.resume_supernet, force=args.force,
                          progress=not args.quiet)


def cmd_resume(args) -> dict:
    """Continue a search from its run directory."""
    from nasnet_core.search.runner import resume_search

    return resume_search(args.run_dir, progress=not args.quiet, num_children=args.num_children)


def cmd_report(args) -> None:
    """Print the best architectures of one or more runs and draw the Fig. 6 plot; with retrained
    children also the retrained-accuracy vs reward table and (``--plot-retrained``) the Fig. 5 plot."""
    from nasnet_core.search import report

    for plot in (args.plot, args.plot_retrained):
        refuse_existing(plot, args.force)
    runs = [report.load_run(d) for d in args.run_dirs]
    print(report.best_table(runs, args.top))
    for run in runs:
        if report.retrained_rows(run):
            print("\n" + report.retrained_table(run))
    if args.plot:
        print(f"\nplot: {report.plot_runs(runs, args.plot)}")
    if args.plot_retrained:
        print(f"\nretrained plot: {report.plot_retrained(runs, args.plot_retrained)}")


def cmd_export(args) -> None:
    """Write the top-K genotypes of a run as JSON files."""
    from nasnet_core.search.report import export_top, load_run

    out = args.output or Path(args.run_dir) / "export"
    paths = export_top(load_run(args.run_dir), args.top, out, overwrite=args.force)
    for path in paths:
        print(path)
    if len(paths) < args.top:
        print(f"exported {len(paths)} of the {args.top} asked; only {len(paths)} children of "
              f"{args.run_dir} finished", file=sys.stderr)


def cmd_retrain(args) -> dict:
    """Retrain the top-K children of a search with a classification config."""
    from nasnet_core.search.retrain import retrain_top

    cfg = load_config(args.config, list(args.overrides), schema=CLASSIFICATION)
    return retrain_top(args.run_dir, args.top, cfg, args.output)


def cmd_compare(args) -> None:
    """Samples each strategy needs to reach 90 % of the optimum of the synthetic landscapes."""
    from nasnet_core.common.fileio import atomic_write_text
    from nasnet_core.search.landscapes import compare_strategies, comparison_table

    refuse_existing(args.output, args.force)
    start = time.time()
    res = compare_strategies(strategies=args.strategies, seeds=range(args.seeds), budget=args.budget)
    table = comparison_table(res, args.budget)
    print(table)
    print(f"\n({args.seeds} seeds, budget {args.budget}, {time.time() - start:.0f} s)")
    if args.output:
        atomic_write_text(args.output, table + "\n")


def cmd_rescore(args) -> None:
    """Score a run's finished children with a config's reward; rank agreement with the run's rewards."""
    from nasnet_core.common.fileio import atomic_write_text
    from nasnet_core.search.rescore import plot_rescore, rescore_run, rescore_table

    for path in (args.output, args.plot):
        refuse_existing(path, args.force)
    cfg = load_config(args.config, list(args.overrides), schema=SEARCH)
    result = rescore_run(args.run_dir, cfg["reward"], cfg["space"], progress=not args.quiet)
    print(rescore_table(result))
    if args.output:
        atomic_write_text(args.output, json.dumps(result, indent=1) + "\n")
    if args.plot:
        print(f"\nplot: {plot_rescore(result, args.plot)}")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the search in RUN_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="start a new search")
    r.add_argument("--config", help="YAML under configs/search/ (defaults: the SEARCH schema)")
    r.add_argument("--run-dir", required=True, help="new folder for the run's database, config, TensorBoard")
    r.add_argument("--backend", choices=["inprocess", "ray"], help="executor.backend")
    r.add_argument("--address", help="Ray cluster address (executor.address)")
    r.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar")
    r.add_argument("--force", action="store_true",
                   help="write the run into a folder that holds other files (replaces its config.yaml)")
    r.add_argument("overrides", nargs="*", metavar="KEY VALUE",
                   help="config overrides in pairs, e.g. search.seed 1 reward.child.epochs 2")
    sn = sub.add_parser("supernet", help="train the weight-sharing supernet of a search config "
                        "(reward.child: data, sizes, recipe; supernet: steps, seed)")
    sn.add_argument("--config", help="YAML under configs/search/ (defaults: the SEARCH schema)")
    sn.add_argument("--out", required=True, help="folder for supernet.pth, config.yaml, TensorBoard")
    sn.add_argument("--resume", dest="resume_supernet", action="store_true",
                    help="continue the supernet in --out from its last checkpoint")
    sn.add_argument("--force", action="store_true", help="train a new supernet over what --out holds")
    sn.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar")
    sn.add_argument("overrides", nargs="*", metavar="KEY VALUE",
                    help="config overrides in pairs, e.g. supernet.steps 500 reward.child.num_threads 1")
    s = sub.add_parser("resume", help="continue a search (same as --resume)")
    s.add_argument("run_dir")
    s.add_argument("--num-children", type=int, help="change the planned total")
    s.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar")
    t = sub.add_parser("report", help="table of the best architectures and the Fig. 6 plot")
    t.add_argument("run_dirs", nargs="+")
    t.add_argument("--top", type=int, default=5, help="architectures per run in the table")
    t.add_argument("--plot", help="PNG path for the reward-vs-samples plot")
    t.add_argument("--plot-retrained", metavar="PATH",
                   help="PNG path for retrained accuracy vs mult-adds and vs reward (a colour per run)")
    t.add_argument("--force", action="store_true", help="overwrite existing --plot / --plot-retrained files")
    e = sub.add_parser("export", help="write the top-K genotypes as JSON")
    e.add_argument("run_dir")
    e.add_argument("--top", type=int, default=1, help="how many of the best genotypes to write")
    e.add_argument("--output", help="output folder (default RUN_DIR/export)")
    e.add_argument("--force", action="store_true", help="overwrite existing topK.json files")
    rt = sub.add_parser("retrain", help="train the top-K genotypes with a classification config")
    rt.add_argument("run_dir")
    rt.add_argument("--top", type=int, required=True, help="how many of the best distinct genotypes")
    rt.add_argument("--config", required=True, help="classification YAML (configs/classification/)")
    rt.add_argument("--output", help="results folder (default RUN_DIR/retrain)")
    rt.add_argument("overrides", nargs="*", metavar="KEY VALUE",
                    help="classification config overrides in pairs, e.g. solver.epochs 2")
    c = sub.add_parser("compare", help="strategies on the synthetic landscapes (samples to 90 %% of optimum)")
    c.add_argument("--seeds", type=int, default=5, help="strategy / landscape seeds")
    c.add_argument("--budget", type=int, default=2000, help="samples per strategy and seed")
    c.add_argument("--strategies", nargs="+", default=["evolution", "ppo", "reinforce", "random"])
    c.add_argument("--output", help="also write the markdown table here")
    c.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    rs = sub.add_parser("rescore", help="score a run's children with another reward (Kendall tau)")
    rs.add_argument("run_dir")
    rs.add_argument("--config", required=True, help="search YAML whose reward (and space) scores them")
    rs.add_argument("--output", help="JSON file for the scores and correlations")
    rs.add_argument("--plot", help="PNG path: new score vs the run's reward")
    rs.add_argument("--force", action="store_true", help="overwrite existing --output / --plot files")
    rs.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar")
    rs.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="config overrides in pairs")
    return p


@tool_main
def main(argv=None) -> int:
    """Entry point: exit code 2 and one error line for a bad config, run directory or file."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("run", "retrain", "rescore", "supernet"):  # KEY VALUE pairs after options too
        unknown = [a for a in extra if a.startswith("--")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.resume:
        args.run_dir, args.num_children = args.resume, None
        args.command = "resume"
    commands = {"run": cmd_run, "supernet": cmd_supernet, "resume": cmd_resume, "report": cmd_report,
                "export": cmd_export, "retrain": cmd_retrain, "compare": cmd_compare, "rescore": cmd_rescore}
    if args.command not in commands:
        parser.print_help()
        return 2
    start = time.time()
    summary = commands[args.command](args)
    if summary is not None:
        summary["wall_seconds"] = round(time.time() - start, 1)
        print(json.dumps(summary))
        if summary.get("failed") and args.command == "retrain":
            return 1  # the errors are in the log and in RUN/retrain/results.json; rerun to retry
    return 0


if __name__ == "__main__":
    sys.exit(main())
