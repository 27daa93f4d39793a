"""Rescoring a run's children with another reward: Kendall tau-b and the `rescore` tool."""

import json
import random
import subprocess
import sys

import pytest
from conftest import ROOT
from scipy.stats import kendalltau
from test_search import search_config

from nasnet_core.search.rescore import kendall_tau_b, rescore_run
from nasnet_core.search.runner import start_search


def test_kendall_tau_b_matches_scipy_with_ties():
    rng = random.Random(0)
    for n in (2, 5, 12, 40):
        x = [rng.randint(0, 6) for _ in range(n)]  # many ties
        y = [rng.randint(0, 6) if rng.random() < 0.5 else v for v in x]
        ref = kendalltau(x, y, variant="b").statistic
        got = kendall_tau_b(x, y)
        assert (got is None and ref != ref) or abs(got - ref) < 1e-12, (x, y, got, ref)
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau_b([1, 2, 3], [5, 5, 5]) is None
    with pytest.raises(ValueError, match="one length"):
        kendall_tau_b([1, 2], [1])


def _run(tmp_path, n=16):
    cfg = search_config(search__num_children=n, search__strategy="random", search__strategy_hparams={},
                        space__num_blocks=2, reward__name="synthetic", reward__synthetic={"kind": "pairwise"})
    start_search(tmp_path / "run", cfg, progress=False)
    return cfg


def test_rescore_same_reward_agrees_and_other_reward_does_not(tmp_path):
    cfg = _run(tmp_path)
    same = rescore_run(tmp_path / "run", cfg["reward"], cfg["space"], progress=False)
    assert len(same["rows"]) == 16 and same["kendall_tau_b"] == pytest.approx(1.0)
    assert all(r["score"] == r["reward"] for r in same["rows"])
    other = dict(cfg["reward"], synthetic={"kind": "pairwise", "target_seed": 7})
    diff = rescore_run(tmp_path / "run", other, progress=False)
    ref = kendalltau([r["reward"] for r in diff["rows"]], [r["score"] for r in diff["rows"]]).statistic
    assert diff["kendall_tau_b"] == pytest.approx(ref) and diff["kendall_tau_b"] < 0.9
    with pytest.raises(ValueError, match="differs from the run's in num_blocks"):
        rescore_run(tmp_path / "run", cfg["reward"], dict(cfg["space"], num_blocks=3), progress=False)


def test_rescore_tool_writes_json_and_plot_and_refuses_to_overwrite(tmp_path):
    _run(tmp_path, n=8)
    conf = tmp_path / "c.yaml"
    conf.write_text("space: {num_blocks: 2}\n"
                    "reward: {name: synthetic, synthetic: {kind: pairwise, noise: 0.05}}\n")
    args = [sys.executable, str(ROOT / "tools" / "search.py"), "rescore", str(tmp_path / "run"), "--quiet",
            "--config", str(conf), "--output", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["rows"]) == 8 and -1 <= data["kendall_tau_b"] <= 1
    assert "Kendall tau-b" in out.stdout and (tmp_path / "r.png").stat().st_size > 5000
    before = (tmp_path / "r.json").read_bytes()
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "--force" in again.stderr and (tmp_path / "r.json").read_bytes() == before
    wrong = subprocess.run(args[:4] + ["--config", str(conf), "search.nope", "1"],
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and "search.nope" in wrong.stderr
