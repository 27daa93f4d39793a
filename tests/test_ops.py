import pytest
import torch
import torch.nn.functional as F

from nasnet_core.ops import (
    OP_NAMES,
    OPS,
    FactorizedReduction,
    OpContext,
    SameConv2d,
    SamePool2d,
    drop_path,
    make_norm,
    same_padding,
)


def test_op_table_has_the_papers_13_ops():
    assert len(OPS) == 13
    assert set(OP_NAMES) == {
        "identity", "conv_1x3_3x1", "conv_1x7_7x1", "dil_conv_3x3", "avg_pool_3x3", "max_pool_3x3",
        "max_pool_5x5", "max_pool_7x7", "conv_1x1", "conv_3x3", "sep_conv_3x3", "sep_conv_5x5",
        "sep_conv_7x7"}


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("stride,size", [(1, 9), (2, 9), (2, 8)])
def test_every_op_maps_shapes(name, stride, size):
    op = OPS[name](6, 10, stride, OpContext())
    out = op(torch.randn(2, 6, size, size))
    assert out.shape == (2, 10, -(-size // stride), -(-size // stride))


@pytest.mark.parametrize("name", OP_NAMES)
def test_ops_keep_channels_without_projection(name):
    op = OPS[name](8, 8, 1, OpContext())
    x = torch.randn(1, 8, 7, 7)
    if name == "identity":
        assert op(x) is x and not any(True for _ in op.parameters())
    else:
        assert op(x).shape == x.shape


def test_same_padding_matches_tensorflow_rule():
    # TF: out = ceil(in / s); pad = max((out - 1) s + k - in, 0); extra pad after.
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(9, 3, 2) == (1, 1)
    assert same_padding(42, 5, 2) == (1, 2)
    assert same_padding(42, 7, 2) == (2, 3)
    assert same_padding(7, 3, 1) == (1, 1)
    assert same_padding(7, 3, 1, dilation=2) == (2, 2)


def test_same_conv_pads_bottom_right_on_even_inputs():
    conv = SameConv2d(1, 1, 3, stride=2)
    x = torch.randn(1, 1, 8, 8)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.allclose(conv(x), ref)
    # and symmetric on odd inputs
    x = torch.randn(1, 1, 9, 9)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1))


def test_avg_pool_tf_mode_excludes_padding_timm_mode_counts_it():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    tf = SamePool2d("avg", 3, 2, "tf")(x)
    timm = SamePool2d("avg", 3, 2, "timm")(x)
    # last window covers rows 2,3 and cols 2,3 plus the bottom/right pad
    real = x[0, 0, 2:4, 2:4]
    assert tf[0, 0, 1, 1].item() == pytest.approx(real.mean().item())
    assert timm[0, 0, 1, 1].item() == pytest.approx(real.sum().item() / 9)
    assert tf[0, 0, 0, 0].item() == pytest.approx(x[0, 0, :3, :3].mean().item())


def test_max_pool_pads_with_minus_infinity():
    x = -torch.ones(1, 1, 4, 4) - torch.arange(16.0).view(1, 1, 4, 4)
    out = SamePool2d("max", 3, 2)(x)
    assert out[0, 0, 1, 1].item() == x[0, 0, 2:, 2:].max().item()  # negative, not the 0 pad


def test_factorized_reduction_paths():
    fr = FactorizedReduction(4, 6, OpContext(), stride=2).eval()
    x = torch.randn(1, 4, 9, 9)
    out = fr(x)
    assert out.shape == (1, 6, 5, 5)
    p1 = F.conv2d(x[:, :, ::2, ::2], fr.path_1.weight)
    shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
    p2 = F.conv2d(shifted[:, :, ::2, ::2], fr.path_2.weight)
    assert torch.allclose(out, fr.bn(torch.cat([p1, p2], 1)))


def test_drop_path_drops_whole_samples_and_rescales():
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.7)
    per_sample = y.flatten(1)
    kept = per_sample[:, 0] > 0
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.7))
    assert torch.all(per_sample[~kept] == 0)
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.03)
    assert drop_path(x, 1.0) is x


def test_unknown_norm_lists_known_names():
    with pytest.raises(ValueError, match="known norms: BN, SyncBN, FrozenBN, GN"):
        make_norm("LN", 8)
