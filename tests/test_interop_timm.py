"""Our models through timm: names, pretrained cfg, classifier API, features_only, TorchScript, FX."""

import pytest
import torch

import nasnet_core as nc

timm = pytest.importorskip("timm")
import nasnet_core.interop.timm_compat  # noqa: E402,F401  (registers nc_* with timm)


def test_every_model_is_registered_without_clashing_with_timm():
    names = timm.list_models("nc_*")
    assert names == sorted(f"nc_{n}" for n in nc.list_models())
    assert "nasnetalarge" in timm.list_models("nasnet*")  # timm's own stays


@pytest.mark.parametrize("name, size, pool, interp", [("nasnet_a_mobile", 224, 7, "bilinear"),
                                                      ("nasnet_a_large", 331, 11, "bicubic"),
                                                      ("nasnet_a_cifar", 32, 8, "bilinear")])
def test_pretrained_cfg_matches_the_model(name, size, pool, interp):
    m = timm.create_model(f"nc_{name}", device="meta")
    cfg = m.pretrained_cfg
    assert cfg["input_size"] == (3, size, size) and cfg["pool_size"] == (pool, pool)
    assert cfg["interpolation"] == interp and cfg["first_conv"] == "conv0.conv"
    assert cfg["classifier"] == "last_linear" and m.default_cfg is cfg
    assert cfg["mean"] == nc.get_config(name).mean and cfg["crop_pct"] == nc.get_config(name).crop_pct
    feats = m.forward_features(torch.empty(1, 3, size, size, device="meta"))
    assert tuple(feats.shape[-2:]) == (pool, pool) and feats.shape[1] == m.num_features


@pytest.mark.parametrize("name, chans", [
    ("nasnet_a_mobile", [32, 44, 264, 528, 1056]),
    ("nasnet_a_large", [96, 168, 1008, 2016, 4032])])
def test_features_only_channels_and_strides(name, chans):
    size = 96
    m = timm.create_model(f"nc_{name}", features_only=True).eval()
    assert m.feature_info.channels() == chans and m.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert [f["module"] for f in m.feature_info.get_dicts()][:2] == ["conv0", "cell_stem_0"]
    with torch.no_grad():
        outs = m(torch.randn(2, 3, size, size))
    assert [o.shape[1] for o in outs] == chans
    assert [o.shape[-1] for o in outs] == [47, 24, 12, 6, 3]  # VALID stem, then SAME halvings
    sub = timm.create_model(f"nc_{name}", features_only=True, out_indices=(2, 4))
    assert sub.feature_info.channels() == [chans[2], chans[4]]
    assert sub.feature_info.reduction() == [8, 32]


def test_classifier_api_and_pre_logits():
    m = timm.create_model("nc_nasnet_a_mobile", num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = m.forward_features(x)
        logits = m(x)
        pre = m.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(m.forward_head(feats), logits)
        torch.testing.assert_close(m.get_classifier()(pre), logits)
        assert m.num_classes == 7 and logits.shape == (2, 7) and pre.shape == (2, m.num_features)
        m.reset_classifier(0)
        torch.testing.assert_close(m(x), pre)
        m.reset_classifier(0, "")
        torch.testing.assert_close(m(x), feats)
        m.reset_classifier(3, "avg")
        assert m(x).shape == (2, 3)


def test_forward_intermediates_match_forward_feature_maps():
    m = timm.create_model("nc_nasnet_a_large", num_conv_filters=8, N=1).eval()
    base = nc.create_model("nasnet_a_large", num_conv_filters=8, N=1, aux_head=False).eval()
    base.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x)
        maps = base.forward_feature_maps(x)
        torch.testing.assert_close(final, m.forward_features(x))
        torch.testing.assert_close(final, torch.relu(maps["stage3"]))
        for info, t in zip(m.feature_info, inter):
            torch.testing.assert_close(t, maps[info["name"]])
        early = m.forward_intermediates(x, indices=[2], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], maps["stage1"])


def test_torchscript_and_fx_give_the_eager_logits():
    m = timm.create_model("nc_nasnet_a_mobile", N=1, num_conv_filters=8).eval()
    scripted = torch.jit.script(m)
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor
    fx = create_feature_extractor(m, return_nodes=["last_linear"], tracer_kwargs=dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()))
    with torch.no_grad():
        for size in (64, 65):  # odd and even: SAME padding is computed at run time in both
            x = torch.randn(2, 3, size, size)
            torch.testing.assert_close(scripted(x), m(x))
            torch.testing.assert_close(fx(x)["last_linear"], m(x))


def test_pretrained_loads_a_converted_checkpoint(tmp_path):
    src = nc.create_model("nasnet_a_mobile", N=1, num_conv_filters=8).eval()
    path = nc.save_checkpoint(tmp_path / "w.pth", src.state_dict(), "nasnet_a_mobile")
    m = timm.create_model("nc_nasnet_a_mobile", N=1, num_conv_filters=8, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), src(x))
    with pytest.raises(ValueError, match="no hosted weights"):
        timm.create_model("nc_nasnet_a_mobile", pretrained=True)
    with pytest.raises(TypeError, match="not_an_arg"):
        timm.create_model("nc_nasnet_a_mobile", not_an_arg=1)


def test_prune_intermediate_layers_ends_features_at_the_tap():
    m = timm.create_model("nc_nasnet_a_mobile", N=1, num_conv_filters=8).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps = m.forward_intermediates(x, intermediates_only=True)
        kept = m.prune_intermediate_layers([2], prune_norm=True)
        assert kept == [2] and m.num_classes == 0
        torch.testing.assert_close(m.forward_features(x), taps[2])
        assert len(m.cell_specs) == m.plan.index(m.feature_info[2]["module"]) + 1
