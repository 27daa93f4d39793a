"""Activation checkpointing per cell and bf16 autocast training of the classifiers."""

import copy
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

import nasnet_core as nc
from nasnet_core.model import recompute


def _cifar(**kw):
    """A tiny NASNet-A CIFAR net with ScheduledDropPath at full strength (step = T)."""
    torch.manual_seed(0)
    model = nc.create_model("nasnet_a_cifar", N=1, F=48, drop_path_keep_prob=0.5, total_training_steps=1,
                            **kw)
    model.set_training_step(1)
    return model.train()


def _step(model, x, y, checkpointing, seed=1):
    """Loss, gradients and buffers of one training forward/backward of a copy of ``model``."""
    model = copy.deepcopy(model)
    model.set_grad_checkpointing(checkpointing)
    torch.manual_seed(seed)
    out = model(x)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = F.cross_entropy(logits, y) + (0.4 * F.cross_entropy(aux, y) if aux is not None else 0)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    bufs = {k: b.detach().clone() for k, b in model.named_buffers()}
    return loss.detach(), grads, bufs


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _batch(n=4, size=32):
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 10


def test_checkpointed_classifier_equals_plain_with_drop_path_and_bn():
    model = _cifar(aux_head=True)
    assert min(model.drop_path_keep_probs()) == pytest.approx(0.5)
    x, y = _batch()
    loss, grads, bufs = _step(model, x, y, False)
    loss_ck, grads_ck, bufs_ck = _step(model, x, y, True)
    other_seed, _, _ = _step(model, x, y, False, seed=7)
    assert other_seed != loss  # drop path is on: another seed draws other masks, another loss
    assert abs(loss_ck - loss) <= 1e-6
    assert len(grads) == len(list(model.parameters())) and _max_diff(grads, grads_ck) <= 1e-6
    assert any(k.endswith("running_mean") for k in bufs) and _max_diff(bufs, bufs_ck) <= 1e-6
    assert bufs["cell_0.conv_1x1.bn.num_batches_tracked"] == 1  # once, as without checkpointing


def test_bn_statistics_move_twice_without_the_restore(monkeypatch):
    """The equality above needs bn_stats_kept: without it the recomputation updates BN again."""
    model = _cifar(aux_head=False)
    x, y = _batch()
    _, grads, bufs = _step(model, x, y, False)
    monkeypatch.setattr(recompute, "_recompute_contexts", lambda module: (nullcontext(), nullcontext()))
    _, grads_ck, bufs_ck = _step(model, x, y, True)
    assert _max_diff(grads, grads_ck) <= 1e-6  # the gradients do not depend on the statistics
    assert _max_diff(bufs, bufs_ck) > 1e-3
    assert bufs_ck["cell_0.conv_1x1.bn.num_batches_tracked"] == 2


def test_checkpointing_saves_less_and_is_off_in_eval():
    model = _cifar(aux_head=False)
    x, _ = _batch(2)

    def saved_bytes(checkpointing):
        model.set_grad_checkpointing(checkpointing)
        total = []

        def pack(t):
            total.append(t.untyped_storage().nbytes())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        return sum(total)

    plain, ck = saved_bytes(False), saved_bytes(True)
    assert ck < 0.5 * plain  # only the cells' inputs (and the stem / head) are kept
    model.eval()
    with torch.no_grad():
        model.set_grad_checkpointing(True)
        a = model(x)
        model.set_grad_checkpointing(False)
        torch.testing.assert_close(model(x), a, rtol=0, atol=0)


def test_checkpointed_nasnet_b_equals_plain():
    import random

    from nasnet_core.model.genotype import random_genotype
    from nasnet_core.search import make_space

    space = make_space("B")
    g = random_genotype(random.Random(0), 4, ops=space.ops, combiners=space.combiners, outputs=("all",),
                        num_inputs=4)
    torch.manual_seed(0)
    model = nc.create_model("nasnet_a_cifar", genotype=g, N=1, F=48, drop_path_keep_prob=0.5,
                            total_training_steps=1, aux_head=False).train()
    model.set_training_step(1)
    assert type(model).__name__ == "NASNetB"
    x, y = _batch(2)
    loss, grads, bufs = _step(model, x, y, False)
    loss_ck, grads_ck, bufs_ck = _step(model, x, y, True)
    assert abs(loss_ck - loss) <= 1e-6
    assert _max_diff(grads, grads_ck) <= 1e-6 and _max_diff(bufs, bufs_ck) <= 1e-6


@pytest.mark.slow
def test_bf16_autocast_classifier_training_close_to_fp32(tmp_path):
    """The trainer with train.amp on (bf16 autocast on this CPU): finite, step 1 within 5 % of fp32,
    and model.grad_checkpointing on gives the plain run's losses."""
    from test_train_classifier import make_folder, tiny_cfg

    from nasnet_core.train.trainer import Trainer

    data = make_folder(tmp_path / "d", per_class=3)
    losses = {}
    for name, extra in (("fp32", {"train.amp": "off"}), ("bf16", {"train.amp": "on"}),
                        ("ckpt", {"train.amp": "off", "model.grad_checkpointing": True})):
        cfg = tiny_cfg(tmp_path / name, "imagenet", data, **{
            "solver.epochs": 3, "solver.batch_size": 8, "data.train_limit": 8, "data.val_limit": 4,
            "train.eval_every": 10, **extra})
        t = Trainer(cfg, log=lambda msg: None)
        assert t.amp == (name == "bf16") and t.model.grad_checkpointing == (name == "ckpt")
        losses[name] = []
        for epoch in range(3):
            t.epoch = epoch
            losses[name].append(t.train_epoch()["train_loss"])
        t.close()
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())
    assert abs(losses["bf16"][0] - losses["fp32"][0]) <= 0.05 * losses["fp32"][0]
    assert losses["ckpt"] == pytest.approx(losses["fp32"], abs=1e-6)
