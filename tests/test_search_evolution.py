"""Aging evolution, the synthetic landscapes and the strategy comparison, failure rewards, timeouts."""

import itertools

import pytest

from nasnet_core.common.config import SEARCH, load_config
from nasnet_core.search import make_space, make_strategy
from nasnet_core.search.base import state_from_bytes, state_to_bytes
from nasnet_core.search.child import cost_aware_reward
from nasnet_core.search.landscapes import (
    PairwiseLandscape,
    compare_strategies,
    comparison_table,
    make_landscape,
)
from nasnet_core.search.runner import start_search
from nasnet_core.search.space import DecisionSpace
from nasnet_core.search.store import RunStore


def test_evolution_breeds_by_one_decision_and_ages_out_the_oldest():
    space = make_space("A", num_blocks=2)
    land = make_landscape("match", space, 5)
    evo = make_strategy("evolution", space, seed=1, population_size=6, sample_size=2)
    first = evo.ask(6)  # the random initial population
    assert evo.num_updates == 0 and len(evo.pending) == 6
    evo.tell([(d, land(d)) for d in first])
    assert [m[0] for m in evo.population] == first and evo.pending == []
    for _ in range(10):
        (child,) = evo.ask(1)
        members = [m[0] for m in evo.population]
        # exactly one decision differs from some member (its parent), and it differs for real
        assert min(sum(a != b for a, b in zip(child, m)) for m in members) == 1
        evo.tell([(child, land(child))])
        assert len(evo.population) == 6 and evo.population[-1][0] == child
    assert evo.num_updates == 10 and evo.num_told == 16
    # the population is the last 6 told, oldest first, whatever their reward
    assert [m[0] for m in evo.population][0] != first[0]
    with pytest.raises(ValueError, match="sample_size \\(7\\) may not exceed population_size \\(6\\)"):
        make_strategy("evolution", space, population_size=6, sample_size=7)
    with pytest.raises(ValueError, match="population_size must be a positive int"):
        make_strategy("evolution", space, population_size=0)
    with pytest.raises(ValueError, match="unknown hparam.*known: population_size, sample_size"):
        make_strategy("evolution", space, tournament=3)


def test_evolution_tournament_picks_the_best_of_the_sample():
    space = DecisionSpace((3,) * 4)
    evo = make_strategy("evolution", space, seed=0, population_size=4, sample_size=4)
    members = [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [0, 1, 2, 0]]
    evo.ask(4)
    evo.tell(zip(members, [0.1, 0.9, 0.2, 0.3]))
    for child in evo.ask(20):  # S = P: the parent is always the best member [1, 1, 1, 1]
        assert sum(c != 1 for c in child) == 1


def test_evolution_state_round_trip_with_children_in_flight():
    space = make_space("A", num_blocks=2)
    land = make_landscape("pairwise", space, 3)
    a = make_strategy("evolution", space, seed=4, population_size=8, sample_size=3)
    for _ in range(5):  # leave children in flight
        ds = a.ask(4)
        a.tell([(d, land(d)) for d in ds[:3]])
    b = make_strategy("evolution", space, seed=99, population_size=8, sample_size=3)
    b.load_state_dict(state_from_bytes(state_to_bytes(a.state_dict())))
    assert len(b.pending) == 5 and b.pending == a.pending and list(b.population) == list(a.population)
    for _ in range(5):
        da, db = a.ask(3), b.ask(3)
        assert da == db
        a.tell([(d, land(d)) for d in da + a.pending[:1]])
        b.tell([(d, land(d)) for d in db + b.pending[:1]])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.pop("generator").equal(sb.pop("generator")) and sa == sb


def _brute_force_optimum(land):
    return max(land.raw(d) for d in itertools.product(*(range(c) for c in land.space.choices)))


def test_pairwise_landscape_optimum_is_exact_and_not_separable():
    space = DecisionSpace((3, 4, 2, 3, 3))
    land = PairwiseLandscape(space, seed=7)
    lists = list(itertools.product(*(range(c) for c in space.choices)))
    scores = [land(d) for d in lists]
    assert land.lo + land.span == pytest.approx(_brute_force_optimum(land))
    assert min(scores) == pytest.approx(0.0, abs=1e-12) and max(scores) == pytest.approx(1.0)
    # interactions: the best value of some decision depends on another decision's value
    best_given = {}
    for d in lists:
        for i in range(len(d)):
            key = (i, d[:i] + d[i + 1:])
            if key not in best_given or land(d) > land(best_given[key]):
                best_given[key] = d
    per_decision = [{best_given[k][i] for k in best_given if k[0] == i} for i in range(len(space))]
    assert any(len(s) > 1 for s in per_decision)
    with pytest.raises(ValueError, match="unknown synthetic landscape 'nk'; known: match, pairwise"):
        make_landscape("nk", space)


def test_evolution_needs_fewer_samples_than_random_on_both_landscapes():
    budget = 1500
    res = compare_strategies(strategies=("evolution", "random"), seeds=range(3), budget=budget)
    for kind in ("match", "pairwise"):
        evo = [x if x is not None else budget for x in res[kind]["evolution"]]
        rnd = [x if x is not None else budget for x in res[kind]["random"]]
        assert all(x is not None for x in res[kind]["evolution"]), (kind, res)
        assert sum(evo) < 0.5 * sum(rnd), (kind, res)
    table = comparison_table(res, budget)
    assert "| pairwise | evolution |" in table and f">{budget}" in table


# ---- failures, timeouts ----------------------------------------------------
def _cfg(n, strategy="evolution", **kw):
    pairs = ["search.num_children", n, "search.strategy", strategy, "space.num_blocks", 2,
             "reward.name", "synthetic"]
    if strategy == "evolution":
        pairs += ["search.strategy_hparams", {"population_size": 8, "sample_size": 2}]
    for k, v in kw.items():
        pairs += [k.replace("__", "."), v]
    return load_config(None, pairs, schema=SEARCH)


@pytest.mark.parametrize("strategy", ["evolution", "ppo"])
def test_failure_reward_is_told_to_the_strategy(tmp_path, strategy):
    faults = {2: "raise", 5: "nan"}
    silent = start_search(tmp_path / "silent", _cfg(8, strategy, reward__synthetic__faults=faults),
                          progress=False)
    told = start_search(tmp_path / "told", _cfg(8, strategy, reward__synthetic__faults=faults,
                                                search__failure_reward=-1.0), progress=False)
    assert (silent["failed"], told["failed"]) == (2, 2)
    assert (silent["num_told"], told["num_told"]) == (6, 8)
    state = state_from_bytes(RunStore(tmp_path / "told").strategy_state())
    if strategy == "evolution":  # both failures sit in the population with the failure reward
        assert sorted(r for _, r in state["population"])[:2] == [-1.0, -1.0]
    else:  # the EMA baseline saw the two -1 rewards
        plain = state_from_bytes(RunStore(tmp_path / "silent").strategy_state())
        assert state["baseline"] < plain["baseline"]


def test_bad_failure_reward_and_timeout_are_rejected_before_the_run(tmp_path):
    with pytest.raises(ValueError, match="search.failure_reward must be a finite number or null, got nan"):
        start_search(tmp_path / "a", _cfg(4, search__failure_reward=float("nan")), progress=False)
    with pytest.raises(ValueError, match="executor.child_timeout must be > 0 seconds or null, got 0.0"):
        start_search(tmp_path / "b", _cfg(4, executor__child_timeout=0), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_child_past_its_timeout_is_recorded_and_search_goes_on(tmp_path):
    cfg = _cfg(6, reward__synthetic__faults={3: "hang"}, executor__child_timeout=0.5,
               search__failure_reward=0.0)
    summary = start_search(tmp_path / "run", cfg, progress=False)
    assert (summary["children"], summary["done"], summary["timeout"], summary["num_told"]) == (6, 5, 1, 6)
    rows = {c["id"]: c for c in RunStore(tmp_path / "run").children()}
    assert rows[3]["status"] == "timeout" and "child_timeout = 0.5 s" in rows[3]["error"]
    assert 0.5 <= rows[3]["seconds"] < 5
    assert all(rows[i]["status"] == "done" for i in (0, 1, 2, 4, 5))


def test_cost_aware_reward():
    assert cost_aware_reward(0.8, 5_000_000, 0, -0.07) == 0.8  # no target: accuracy alone
    assert cost_aware_reward(0.8, 5_000_000, 5_000_000, -0.07) == pytest.approx(0.8)
    assert cost_aware_reward(0.8, 10_000_000, 5_000_000, -0.07) == pytest.approx(0.8 * 2 ** -0.07)
    assert cost_aware_reward(0.8, 2_500_000, 5_000_000, -0.07) > 0.8  # cheaper child, higher reward
    with pytest.raises(ValueError, match="positive mult-adds"):
        cost_aware_reward(0.8, 0, 5_000_000, -0.07)


def test_cost_aware_search_records_accuracy_and_mult_adds(tmp_path):
    from test_search import _stripes, _write_idx

    from nasnet_core.search.report import best_table, load_run

    x, y = _stripes(300, 0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y)
    target, w = 2_000_000, -0.07
    child = {"data_dir": str(tmp_path), "val_size": 100, "N": 1, "num_conv_filters": 4, "epochs": 1,
             "batch_size": 50, "num_threads": 1, "cost_target": target, "cost_weight": w}
    cfg = load_config(None, ["search.num_children", 2, "search.strategy", "random", "search.strategy_hparams",
                             {}, "space.num_blocks", 2, "reward.child", child], schema=SEARCH)
    start_search(tmp_path / "run", cfg, progress=False)
    run = load_run(tmp_path / "run")
    rows = [c for c in run["children"] if c["status"] == "done"]
    assert len(rows) == 2
    for c in rows:
        assert 0 <= c["accuracy"] <= 1 and c["mult_adds"] > 100_000
        assert c["reward"] == pytest.approx(c["accuracy"] * (c["mult_adds"] / target) ** w)
    table = best_table([run], top=2)
    assert "| accuracy | mult-adds (M) |" in table
    assert f"{rows[0]['mult_adds'] / 1e6:.2f} |" in table and f"{rows[0]['accuracy']:.4f} |" in table
