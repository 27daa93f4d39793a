"""TensorFlow and triton in one process (nasnet_core/common/tf_guard.py): with the ``tf`` extra
installed, TensorFlow loaded before triton segfaulted the process (TensorBoard's writer imports
TensorFlow; torch's first optimizer imports triton)."""

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                reason="TensorFlow absent: nothing to guard against")

LOG_THEN_OPTIMIZE = """
import sys
import nasnet_core, torch
from torch.utils.tensorboard import SummaryWriter
w = SummaryWriter(sys.argv[1]); w.add_scalar("loss", 1.0, 0); w.close()
assert "tensorflow" not in sys.modules, "TensorBoard loaded TensorFlow"
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
import tensorflow  # after triton: fine
print("ok")
"""


def test_tensorboard_then_optimizer_then_tensorflow(tmp_path):
    r = subprocess.run([sys.executable, "-c", LOG_THEN_OPTIMIZE, str(tmp_path / "tb")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [s.value for s in events.Scalars("loss")] == [1.0]
