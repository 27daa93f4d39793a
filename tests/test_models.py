import dataclasses
import random

import pytest
import torch

import nasnet_core as nc
from nasnet_core.model.genotype import random_genotype
from nasnet_core.model.layers import FrozenBatchNorm2d
from nasnet_core.model.network import reduction_layers


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# Golden numbers (aux head off). Large and mobile are the public ports' exact counts.
GOLDEN = {
    "nasnet_a_large": (88_753_150, 23.8e9),
    "nasnet_a_mobile": (5_289_978, 564e6),
    "nasnet_a_cifar": (3_346_538, None),
    "nasnet_a_cifar_7_2304": (32_590_954, None),
    "nasnet_a_7_1920": (24_613_292, None),
    "nasnet_a_5_1536": (12_263_416, None),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_parameter_counts_and_mult_adds(name):
    params, paper_madds = GOLDEN[name]
    model = nc.create_model(name, aux_head=False)
    c = nc.complexity(model)
    assert c["params"] == params == n_params(model)
    if paper_madds:
        assert abs(c["mult_adds"] - paper_madds) / paper_madds < 0.01


@pytest.mark.parametrize("name", ["nasnet_a_cifar", "nasnet_a_mobile", "nasnet_a_large"])
def test_built_models_are_within_2_percent_of_the_papers_parameter_count(name):
    # Paper Table 1 (CIFAR 6 @ 768: 3.3 M) and Table 2 (mobile 5.3 M, large 88.9 M).
    model = nc.create_model(name, aux_head=False)
    paper = model.default_cfg.paper["params"]
    assert abs(n_params(model) - paper) / paper < 0.02


def test_aux_head_parameters_follow_the_tf_slim_layout():
    # after cell_11 (2016 ch, 21x21 at 331): pool 5/3 -> 6x6; 1x1 128 + BN; 6x6 conv 768 + BN; FC
    model = nc.create_model("nasnet_a_large")
    expected = 2016 * 128 + 2 * 128 + 128 * 768 * 36 + 2 * 768 + 768 * 1000 + 1000
    assert model.aux_after == "cell_11" and n_params(model.aux_head) == expected
    assert n_params(model) - n_params(model.aux_head) == GOLDEN["nasnet_a_large"][0]


def test_reduction_positions():
    assert reduction_layers(18) == [6, 12]
    assert reduction_layers(12) == [4, 8]
    assert reduction_layers(15) == [5, 10]


@pytest.mark.parametrize("name", nc.list_models())
def test_every_registered_model_runs_and_feature_info_is_true(name):
    model = nc.create_model(name).eval()
    size = model.image_size
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = model.forward_feature_maps(x)
        logits = model(x)
    assert logits.shape == (1, model.default_cfg.num_classes)
    assert [f["name"] for f in model.feature_info] == list(feats)
    for info in model.feature_info:
        t = feats[info["name"]]
        assert t.shape[1] == info["channels"], info
        assert -(-size // t.shape[-1]) in (info["stride"], info["stride"] + 1) or \
            size // info["stride"] - t.shape[-1] in (-1, 0, 1), info
    assert feats["stage3"].shape[1] == model.num_features


def test_feature_info_of_the_large_model():
    info = {f["name"]: (f["channels"], f["stride"]) for f in nc.create_model("nasnet_a_large").feature_info}
    assert info == {"stem": (96, 2), "cell_stem_0": (168, 4), "cell_stem_1": (336, 8), "stage1": (1008, 8),
                    "reduction_cell_0": (1344, 16), "stage2": (2016, 16), "reduction_cell_1": (2688, 32),
                    "stage3": (4032, 32)}


def test_training_mode_returns_aux_logits():
    model = nc.create_model("nasnet_a_cifar", N=1, F=96).train()
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 10)
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_aux_head_rejects_another_image_size():
    model = nc.create_model("nasnet_a_cifar", N=1, F=96).train()
    with pytest.raises(ValueError, match="aux head was built for a 4x4 map"):
        model(torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_any_genotype_builds_at_any_n_at_f(seed, stem):
    rng = random.Random(seed)
    g = random_genotype(rng, num_blocks=rng.choice([4, 5]), outputs=("unused", "all", (0, 1, 2)))
    name = "nasnet_a_cifar" if stem == "cifar" else "nasnet_a_mobile"
    size = 16 if stem == "cifar" else 48
    filters = 4 if stem == "cifar" else 8
    model = nc.create_model(name, genotype=g, N=rng.choice([1, 2]), num_conv_filters=filters,
                            image_size=size, aux_head=False,
                            skip_reduction_layer_input=bool(seed % 2)).train()
    model.set_training_step(100)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, model.default_cfg.num_classes)
    out.sum().backward()
    model.eval()
    feats = model.forward_feature_maps(x)
    for info in model.feature_info:
        assert feats[info["name"]].shape[1] == info["channels"]


def test_too_few_filters_is_a_clear_error():
    with pytest.raises(ValueError, match="num_conv_filters=4 leaves cell_stem_0 1 filter"):
        nc.create_model("nasnet_a_mobile", num_conv_filters=4)


def test_n_and_f_overrides():
    model = nc.create_model("nasnet_a_mobile", N=2, F=480)
    assert model.num_cells == 6 and model.num_conv_filters == 20 and model.num_features == 480
    with pytest.raises(ValueError, match="F=1538 is not a multiple of 24"):
        nc.create_model("nasnet_a_mobile", F=1538)
    with pytest.raises(ValueError, match="give N or num_cells, not both"):
        nc.create_model("nasnet_a_mobile", N=2, num_cells=6)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'nasnet_b'; known models: nasnet_a_5_1536"):
        nc.create_model("nasnet_b")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['widht'\]"):
        nc.create_model("nasnet_a_mobile", widht=3)
    with pytest.raises(ValueError, match="unknown stem 'coco'; known: imagenet, cifar"):
        nc.create_model("nasnet_a_mobile", stem="coco")
    with pytest.raises(ValueError, match="unknown pad_mode 'same'; known: tf, timm"):
        nc.create_model("nasnet_a_mobile", pad_mode="same")
    with pytest.raises(ValueError, match="unknown norm 'XN'"):
        nc.create_model("nasnet_a_mobile", norm="XN")


@pytest.mark.parametrize("norm,cls", [("BN", torch.nn.BatchNorm2d), ("GN", torch.nn.GroupNorm),
                                      ("FrozenBN", FrozenBatchNorm2d), ("SyncBN", torch.nn.SyncBatchNorm)])
def test_norm_is_chosen_by_name(norm, cls):
    model = nc.create_model("nasnet_a_cifar", N=1, F=48, norm=norm, aux_head=False)
    bn_model = nc.create_model("nasnet_a_cifar", N=1, F=48, aux_head=False)
    # every norm of the ops, cells and stem is of the chosen kind, where BN puts a BatchNorm2d
    kinds = {n: type(m) for n, m in model.named_modules()}
    bn_names = [n for n, m in bn_model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn_names) > 20 and all(kinds[n] is cls for n in bn_names)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_syncbn_model_computes_what_the_bn_model_computes():
    """One process (no process group): SyncBN normalises with the local batch, as BN does;
    in eval both use the running statistics."""
    from conftest import randomize_bn

    kw = dict(N=1, F=48, aux_head=False, bn_eps=1e-4, bn_momentum=0.05)  # not torch's defaults
    bn = nc.create_model("nasnet_a_cifar", **kw)
    randomize_bn(bn)
    sync = nc.create_model("nasnet_a_cifar", norm="SyncBN", **kw)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in sync.modules())
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.modules()) == \
        sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())
    sync.load_state_dict(bn.state_dict())  # same names and shapes
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sync.eval()(x), bn.eval()(x))
        torch.testing.assert_close(sync.train()(x), bn.train()(x))  # batch statistics
    # the training forward moved the running statistics the same way
    for (name, a), b in zip(sync.state_dict().items(), bn.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert sync.cell_0.conv_1x1.bn.momentum == bn.cell_0.conv_1x1.bn.momentum == 0.05
    assert sync.cell_0.conv_1x1.bn.eps == bn.cell_0.conv_1x1.bn.eps == 1e-4


def test_scheduled_drop_path_follows_the_formula():
    model = nc.create_model("nasnet_a_large")  # keep 0.7, 18 cells + 2 reductions + 2 stem cells
    T = model.total_training_steps
    assert T == 250000 and len(model.cell_specs) == 22
    idx = model.cell_index("reduction_cell_1")
    assert idx == 15
    # keep_c = 1 - 16/22 * 0.3; at half time keep = 1 - 0.5 (1 - keep_c)
    assert model.drop_path_keep_probs(T // 2)[idx] == pytest.approx(1 - 0.5 * 16 / 22 * 0.3)
    assert model.drop_path_keep_probs(0) == [1.0] * 22
    model.set_training_step(3 * T)  # the ramp saturates
    assert model.cell_17.drop_path_keep == pytest.approx(0.7)  # last cell reaches the configured keep
    assert model.cell_stem_0.drop_path_keep == pytest.approx(1 - 1 / 22 * 0.3)
    cifar = nc.create_model("nasnet_a_cifar")  # keep 0.6, 18 + 2 cells, no stem cells
    assert cifar.drop_path_keep_probs(937500 // 4)[cifar.cell_index("cell_0")] == pytest.approx(
        1 - 0.25 * (1 / 20) * 0.4)


def test_drop_path_is_applied_only_in_training_after_step_zero():
    model = nc.create_model("nasnet_a_cifar", N=1, F=96, aux_head=False, drop_path_keep_prob=0.5)
    x = torch.randn(8, 3, 32, 32)
    model.train()
    model.set_training_step(0)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert torch.allclose(a, model(x))  # keep = 1 at step 0
    model.set_training_step(model.total_training_steps)
    torch.manual_seed(1)
    b = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(b, model(x))
    model.eval()
    assert torch.allclose(model(x), model(x))


def test_create_model_with_genotype_forms(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(nc.NASNET_A.to_json())
    a = nc.create_model("nasnet_a_cifar", genotype=str(path), N=1, F=96)
    b = nc.create_model("nasnet_a_cifar", genotype=nc.NASNET_A, N=1, F=96)
    assert n_params(a) == n_params(b)


@pytest.mark.parametrize("name,size,seed", [("nasnet_a_mobile", 96, None), ("nasnet_a_cifar", 32, 3)])
def test_fuse_bn_keeps_the_logits(name, size, seed):
    from conftest import randomize_bn

    kw = {"genotype": random_genotype(random.Random(seed), 5)} if seed is not None else {}
    model = nc.create_model(name, N=1, num_conv_filters=16, aux_head=False, **kw)
    randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        with pytest.raises(ValueError, match="eval mode"):
            nc.fuse_bn(model.train())
        fused = nc.fuse_bn(model.eval())
        out = fused(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_the_plan_is_data_computed_without_modules_and_matches_the_built_cells():
    model = nc.create_model("nasnet_a_large", aux_head=False)
    plan = nc.make_plan(nc.NASNET_A, num_cells=18, num_conv_filters=168, stem="imagenet",
                        skip_reduction_layer_input=True, image_size=331)
    assert plan == model.plan and model.cell_specs is model.plan.cells
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.cells[0].stage = 3
    for spec in plan.cells:
        cell = getattr(model, spec.name)
        assert cell.out_channels == spec.out_channels and cell.filters == spec.filters, spec.name
        assert cell.reduction == spec.reduction and cell.prev_mode == spec.prev_mode, spec.name
    stages = {s.name: s.stage for s in plan.cells}
    assert stages == {"cell_stem_0": 0, "cell_stem_1": 0, **{f"cell_{i}": 1 for i in range(6)},
                      "reduction_cell_0": 2, **{f"cell_{i}": 2 for i in range(6, 12)},
                      "reduction_cell_1": 3, **{f"cell_{i}": 3 for i in range(12, 18)}}
    assert plan.stage_start(3) == plan.index("reduction_cell_1") == 15
    assert plan.last_per_stride() == {4: 0, 8: 7, 16: 14, 32: 21}
    assert plan.last_per_stride(15) == {4: 0, 8: 7, 16: 14}
    assert (plan.stem.channels, plan.stem.stride, plan.head.in_channels) == (96, 2, 4032)
    assert (plan.head.aux_after, plan.head.aux_channels, plan.head.aux_map) == ("cell_11", 2016, 21)


def test_cifar_plan_has_no_stem_cells_and_feature_info_names_each_stage():
    plan = nc.create_model("nasnet_a_cifar", N=2, F=96, aux_head=False).plan
    assert [(s.name, s.stage, s.stride) for s in plan.cells] == [
        ("cell_0", 1, 1), ("cell_1", 1, 1), ("reduction_cell_0", 2, 2), ("cell_2", 2, 2),
        ("cell_3", 2, 2), ("reduction_cell_1", 3, 4), ("cell_4", 3, 4), ("cell_5", 3, 4)]
    assert [(f["name"], f["module"], f["stride"]) for f in plan.feature_info()] == [
        ("stem", "conv0", 1), ("stage1", "cell_1", 1), ("reduction_cell_0", "reduction_cell_0", 2),
        ("stage2", "cell_3", 2), ("reduction_cell_1", "reduction_cell_1", 4), ("stage3", "cell_5", 4)]
    with pytest.raises(KeyError, match="no cell in stage 0; stages: \\[1, 2, 3\\]"):
        plan.stage_start(0)
