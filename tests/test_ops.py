import ast
import importlib
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from torch import nn

import nasnet_core as nc
from nasnet_core.model.genotype import random_genotype
from nasnet_core.model.layers import SameConv2d, SamePool2d, drop_path, make_norm, same_padding
from nasnet_core.model.ops import OP_NAMES, OPS, PAPER_OPS, FactorizedReduction, FoldPair, Op, OpContext
from nasnet_core.search import make_space
from nasnet_core.search.space import NASNetSpace

PAPER_13 = {
    "identity", "conv_1x3_3x1", "conv_1x7_7x1", "dil_conv_3x3", "avg_pool_3x3", "max_pool_3x3",
    "max_pool_5x5", "max_pool_7x7", "conv_1x1", "conv_3x3", "sep_conv_3x3", "sep_conv_5x5",
    "sep_conv_7x7"}


def test_op_table_has_the_papers_13_ops():
    assert len(OPS) == 13
    assert set(OP_NAMES) == PAPER_13


def test_paper_ops_are_a_tuple_of_their_own_and_the_search_default():
    assert isinstance(PAPER_OPS, tuple) and len(PAPER_OPS) == 13 and set(PAPER_OPS) == PAPER_13
    assert set(PAPER_OPS) <= set(OP_NAMES)
    # the spaces and random genotypes default to the paper's ops, not to the op table
    assert NASNetSpace.__dataclass_fields__["ops"].default is PAPER_OPS
    assert NASNetSpace().ops is PAPER_OPS and make_space("A").ops is PAPER_OPS
    assert random_genotype.__defaults__[1] is PAPER_OPS
    # the order is the decision encoding of stored runs: op index i is PAPER_OPS[i]
    assert PAPER_OPS == OP_NAMES


def test_import_nasnet_core_exposes_what_op_users_need():
    op = nc.OPS["sep_conv_3x3"](4, 8, 2, nc.OpContext(norm="GN", pad_mode="timm"))
    assert op(torch.randn(1, 4, 9, 9)).shape == (1, 8, 5, 5)
    assert set(nc.NORMS) == {"BN", "SyncBN", "FrozenBN", "GN"} and nc.PAD_MODES == ("tf", "timm")
    assert nc.PAPER_OPS is PAPER_OPS and nc.FoldPair is FoldPair


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("c_in,stride", [(6, 2), (10, 1)])
def test_every_op_folds_its_batchnorms_and_keeps_its_output(name, c_in, stride):
    op = OPS[name](c_in, 10, stride, OpContext())
    randomize_bn(op)
    op.eval()
    x = torch.randn(2, c_in, 9, 9)
    with torch.no_grad():
        ref = op(x)
        nc.fuse_bn(op)
        out = op(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in op.modules())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


class _ConvBNWithoutPairs(Op):
    """An op with a BatchNorm that forgets to list its fold pair."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward_act(self, x):
        return self.bn(self.conv(x))


def test_fuse_bn_rejects_a_batchnorm_no_module_lists_and_changes_nothing():
    model = nc.create_model("nasnet_a_cifar", N=1, num_conv_filters=8, aux_head=False)
    model.cell_0.comb_iter_0_left = _ConvBNWithoutPairs(8)
    model.eval()
    before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(ValueError, match=r"no module lists the conv feeding cell_0\.comb_iter_0_left\.bn "
                                         r"\(BatchNorm2d\)"):
        nc.fuse_bn(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == before


def test_fuse_bn_rejects_pairs_that_do_not_cover_the_norm():
    class Half(_ConvBNWithoutPairs):
        def fold_pairs(self):
            return (FoldPair(self.conv, "bn", 4),)

    with pytest.raises(ValueError, match=r"fold pairs of bn cover channels \[\(4, 12\)\], not 0..8 once"):
        nc.fuse_bn(Half(8).eval())


def test_fuse_bn_folds_the_aux_head_and_leaves_group_norm():
    model = nc.create_model("nasnet_a_cifar", N=1, F=96).eval()
    nc.fuse_bn(model)
    assert isinstance(model.aux_head.bn0, nn.Identity) and isinstance(model.aux_head.bn1, nn.Identity)
    gn = nc.create_model("nasnet_a_cifar", N=1, F=48, norm="GN", aux_head=False).eval()
    n_gn = sum(isinstance(m, nn.GroupNorm) for m in gn.modules())
    assert n_gn > 20 and sum(isinstance(m, nn.GroupNorm) for m in nc.fuse_bn(gn).modules()) == n_gn


# The model modules (op table to nasnet_det's model and backbone) whose ``__all__`` this checks.
MODEL_MODULES = ("nasnet_core", "nasnet_core.model.layers", "nasnet_core.model.ops",
                 "nasnet_core.model.genotype", "nasnet_core.model.cell", "nasnet_core.model.plan",
                 "nasnet_core.model.network", "nasnet_core.model.registry", "nasnet_core.interop.fuse",
                 "nasnet_core.model.complexity", "nasnet_core.search.space",
                 "nasnet_det.model", "nasnet_det.backbone")


def test_every_all_lists_what_other_modules_import_from_it():
    root = Path(__file__).resolve().parents[1]
    checked = 0
    for path in sorted(root.glob("**/*.py")):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or node.level):
                continue
            parts = list(path.relative_to(root).with_suffix("").parts[:-1])
            base = parts[:len(parts) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            if mod not in MODEL_MODULES or \
                    (mod.startswith("nasnet_det") and importlib.util.find_spec("detectron2") is None):
                continue
            module = importlib.import_module(mod)
            for alias in node.names:
                if hasattr(module, "__path__") and importlib.util.find_spec(f"{mod}.{alias.name}"):
                    continue  # a submodule of a package
                assert alias.name in module.__all__, f"{path.name} imports {alias.name} from {mod}"
                checked += 1
    assert checked > 60


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


@pytest.mark.parametrize("k,s,size",
                         [(3, 1, 9), (5, 1, 8), (7, 1, 9), (7, 2, 9), (7, 2, 8), (5, 2, 8), (3, 2, 8)])
def test_max_pool_channels_last_route_is_bit_identical(k, s, size):
    """Without autograd, SamePool2d max pools in channels-last layout on CPU: values equal the plain NCHW
    max pool with TF SAME padding (ties included) and the output keeps the input's layout; under autograd
    it takes the plain route (training numerics unchanged)."""
    x = F.relu(torch.randn(3, 5, size, size)).round()  # many ties (zeros, small integers)
    ph, pw = same_padding(size, k, s), same_padding(size, k, s)
    ref = F.max_pool2d(F.pad(x, [pw[0], pw[1], ph[0], ph[1]], value=float("-inf")), k, s)
    with torch.no_grad():
        out = SamePool2d("max", k, s)(x)
    assert torch.equal(out, ref) and out.is_contiguous()
    xg = x.clone().requires_grad_()
    g = torch.randn_like(ref)
    got = torch.autograd.grad(SamePool2d("max", k, s)(xg), xg, g)[0]
    plain = torch.autograd.grad(F.max_pool2d(F.pad(xg, [pw[0], pw[1], ph[0], ph[1]], value=float("-inf")),
                                             k, s), xg, g)[0]
    assert torch.equal(got, plain)
    xl = x.contiguous(memory_format=torch.channels_last)
    out_l = SamePool2d("max", k, s)(xl)
    assert torch.equal(out_l, ref) and out_l.is_contiguous(memory_format=torch.channels_last)


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
