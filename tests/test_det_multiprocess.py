"""tools/train_net.py --num-gpus 2 on a CPU machine: Detectron2's ``launch`` spawns 2 gloo processes,
the DDP-wrapped NASNet-A Faster R-CNN trains on both, rank 0 alone writes the model."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from det_helpers import ROOT  # noqa: E402

pytestmark = pytest.mark.slow
INSTANT = ROOT / "configs" / "quick_schedules" / "nasnet_a_mobile_c4_instant_test.yaml"


def test_train_net_two_processes_on_cpu(tmp_path):
    out, data = tmp_path / "out", tmp_path / "datasets"
    env = dict(os.environ, DETECTRON2_DATASETS=str(data), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(INSTANT),
           "--num-gpus", "2", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    log = (out / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 2" in log
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    # SOLVER.IMS_PER_BATCH 2 over 2 ranks: 1 image each per iteration; both ran the 2 iterations.
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert max(m["iteration"] for m in metrics) == 1 and all(m["total_loss"] > 0 for m in metrics
                                                             if "total_loss" in m)
    assert (out / "model_final.pth").is_file() and (out / "last_checkpoint").read_text() == "model_final.pth"
    # The shapes data was generated once, before the processes started: no half-written leftovers.
    shapes = data / "nasnet_shapes"
    assert sorted(p.name for p in (shapes / "annotations").iterdir()) == ["instances_train.json",
                                                                         "instances_val.json"]
    assert not [p for p in shapes.iterdir() if p.name.startswith(".")]
    assert len(list((shapes / "train").glob("*.jpg"))) == 1000
