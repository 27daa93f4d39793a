"""Detector: MODEL.NASNET.GRAD_CHECKPOINTING equals the plain step; SOLVER.AMP trains in bf16 on CPU."""

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from det_helpers import make_cfg, tiny_inputs  # noqa: E402
from detectron2.engine import SimpleTrainer  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from test_det_model import SMALL  # noqa: E402

from nasnet_det.amp import AutocastTrainer, amp_dtype  # noqa: E402

INSTANT = "configs/quick_schedules/nasnet_a_mobile_c4_instant_test.yaml"
# Drop path at full strength from step 1 (MAX_ITER 1); stem cells frozen (FrozenBN), the rest BN.
OPTS = [*SMALL, "MODEL.NASNET.DROP_PATH_KEEP_PROB", 0.5, "SOLVER.MAX_ITER", 1, "MODEL.NASNET.FREEZE_AT", 2]


def _model(checkpointing: bool):
    torch.manual_seed(0)
    model = build_model(make_cfg(INSTANT, [*OPTS, "MODEL.NASNET.GRAD_CHECKPOINTING", checkpointing]))
    model.backbone.set_training_step(1)
    model.roi_heads.res5.set_training_step(1)
    return model.train()


def _step(model, seed=1):
    torch.manual_seed(seed)
    with EventStorage(0):
        losses = model(tiny_inputs())
    sum(losses.values()).backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads, dict(model.named_buffers())


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_checkpointed_detector_step_equals_plain():
    plain, ck = _model(False), _model(True)
    assert ck.backbone.nasnet.grad_checkpointing and ck.roi_heads.res5.nasnet.grad_checkpointing
    assert not plain.backbone.nasnet.grad_checkpointing
    assert _max_diff(dict(plain.state_dict()), dict(ck.state_dict())) == 0
    assert any(isinstance(m, FrozenBatchNorm2d) for m in ck.backbone.nasnet.cell_stem_0.modules())
    assert ck.roi_heads.res5.nasnet.cell_2.drop_path_keep == pytest.approx(0.5)  # N = 1: the last cell
    losses, grads, bufs = _step(plain)
    losses_ck, grads_ck, bufs_ck = _step(ck)
    assert _max_diff(losses, losses_ck) <= 1e-6
    assert any(k.startswith("roi_heads.res5.nasnet.cell_") for k in grads)
    assert any(k.startswith("backbone.nasnet.cell_0") for k in grads)
    assert _max_diff(grads, grads_ck) <= 1e-6
    assert _max_diff(bufs, bufs_ck) <= 1e-6  # BN running statistics updated once
    tracked = {k: v.item() for k, v in bufs_ck.items() if k.endswith("num_batches_tracked")}
    frozen = {k for k in tracked if k.startswith(("backbone.nasnet.conv0.", "backbone.nasnet.cell_stem_"))}
    assert frozen and {tracked[k] for k in frozen} == {0}  # FrozenBN: never updated
    assert len(tracked) > len(frozen) and {v for k, v in tracked.items() if k not in frozen} == {1}
    other, _, _ = _step(_model(False), seed=5)
    assert _max_diff(losses, other) > 1e-4  # drop masks (and ROI sampling) follow the seed


@pytest.mark.slow
def test_amp_trainer_bf16_on_cpu_close_to_fp32():
    """SOLVER.AMP on CPU: bf16 autocast, no scaler; finite over 3 steps, step 1 within 5 % of fp32."""
    assert amp_dtype(torch.device("cpu")) == torch.bfloat16
    data = [tiny_inputs()] * 3
    totals = {}
    for loop in (SimpleTrainer, AutocastTrainer):
        torch.manual_seed(0)
        model = build_model(make_cfg(INSTANT, SMALL)).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
        trainer = loop(model, data, opt)
        with EventStorage(0) as storage:
            for it in range(3):
                trainer.iter = it
                storage.iter = it
                torch.manual_seed(10 + it)
                trainer.run_step()
        totals[loop] = [v for v, _ in storage.history("total_loss").values()]
    assert trainer.precision == torch.bfloat16 and not trainer.grad_scaler.is_enabled()
    fp32, bf16 = totals[SimpleTrainer], totals[AutocastTrainer]
    assert len(fp32) == len(bf16) == 3
    assert all(torch.isfinite(torch.tensor(v)).all() for v in (fp32, bf16))
    assert abs(bf16[0] - fp32[0]) <= 0.05 * fp32[0], (fp32, bf16)
    assert bf16 != fp32  # autocast did change the arithmetic
