"""nasnet_det model tests: configs build, backbone/head shapes, train/inference, freezing, weights."""

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from det_helpers import CONFIGS, make_cfg, tiny_inputs  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_backbone, build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import nasnet_core as nc  # noqa: E402
import nasnet_det  # noqa: E402
from nasnet_det.backbone import C4_FEATURE  # noqa: E402

# Reduced mobile net for real forward/backward runs on 2 CPU cores.
SMALL = ["MODEL.NASNET.N", 1, "MODEL.NASNET.F", 192, "MODEL.NASNET.NORM", "BN", "MODEL.NASNET.FREEZE_AT", 0,
         "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
         "MODEL.RPN.POST_NMS_TOPK_TRAIN", 30, "MODEL.RPN.POST_NMS_TOPK_TEST", 10,
         "MODEL.ANCHOR_GENERATOR.SIZES", [[16, 32]], "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7,
         "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]


def meta_model(config_file, opts=()):
    cfg = make_cfg(config_file, ["MODEL.DEVICE", "meta", *opts])
    with torch.device("meta"):
        return build_model(cfg), cfg


def test_import_registers_everything():
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY

    assert "build_nasnet_c4_backbone" in BACKBONE_REGISTRY
    assert "build_nasnet_fpn_backbone" in BACKBONE_REGISTRY
    assert "NASNetROIHeads" in ROI_HEADS_REGISTRY
    for name in ("nasnet_shapes_train", "nasnet_shapes_val", "coco_2014_minival8k",
                 "coco_2014_trainval_minus_minival8k"):
        assert name in DatasetCatalog.list()


def _added_keys(node, base, prefix=""):
    """Full names of the leaf keys ``node`` has and ``base`` lacks."""
    out = []
    for k, v in node.items():
        if isinstance(v, dict):
            out += _added_keys(v, base.get(k, {}) if isinstance(base, dict) else {}, f"{prefix}{k}.")
        elif k not in base:
            out.append(prefix + k)
    return out


def test_config_keys_are_commented_and_unknown_keys_fail():
    """Every key add_nasnet_config adds is assigned once, on a line right below a comment."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    nasnet_det.add_nasnet_config(cfg)
    added = _added_keys(cfg, get_cfg())
    assert len(added) == 25 and "MODEL.NASNET.ARCH" in added and "TEST.FAST_EVAL" in added
    src = (make_cfg.__globals__["ROOT"] / "nasnet_det" / "config.py").read_text().splitlines()
    for key in added:
        short = "n." + key[len("MODEL.NASNET."):] if key.startswith("MODEL.NASNET.") else "cfg." + key
        lines = [i for i, line in enumerate(src) if line.strip().startswith(short + " = ")]
        assert len(lines) == 1, f"{key}: assigned on {len(lines)} lines of config.py"
        assert src[lines[0] - 1].strip().startswith("#"), f"uncommented key: {key}"
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.NASNET.NOT_A_KEY"):  # yacs
        make_cfg(None, ["MODEL.NASNET.NOT_A_KEY", 1])


@pytest.mark.parametrize("config_file", CONFIGS)
def test_every_shipped_config_builds(config_file):
    model, cfg = meta_model(config_file)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 1e5
    shapes = model.backbone.output_shape()
    assert set(cfg.MODEL.RPN.IN_FEATURES) <= set(shapes)


@pytest.mark.parametrize("arch,channels", [("nasnet_a_mobile", 1056), ("nasnet_a_large", 4032)])
def test_c4_backbone_stride16_and_pair_width(arch, channels):
    model, cfg = meta_model("configs/Base-NASNet-C4.yaml", ["MODEL.NASNET.ARCH", arch])
    shape = model.backbone.output_shape()[C4_FEATURE]
    assert (shape.stride, shape.channels) == (16, channels)
    net = nc.create_model(arch, aux_head=False)
    stage2 = next(f for f in net.feature_info if f["name"] == "stage2")
    assert channels == 2 * stage2["channels"]
    # The head returns the final-stage width (= F for NASNet-A) into the box predictor.
    assert model.roi_heads.res5.out_channels == net.num_features
    assert model.roi_heads.box_predictor.cls_score.in_features == net.num_features


def test_mobile_backbone_and_head_real_shapes():
    cfg = make_cfg("configs/Base-NASNet-C4.yaml", ["MODEL.NASNET.NORM", "BN"])
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 96, 128))
    assert list(out) == [C4_FEATURE]
    assert tuple(out[C4_FEATURE].shape) == (1, 1056, 6, 8)  # 96/16, 128/16
    from nasnet_det.model import build_nasnet
    from nasnet_det.roi_heads import NASNetCropHead

    head = NASNetCropHead(build_nasnet(cfg)).eval()
    with torch.no_grad():
        y = head(torch.randn(3, 1056, 14, 14))
    assert tuple(y.shape) == (3, 1056, 7, 7)
    assert (y >= 0).all()  # ReLU before the mean-pool, as NASNet's classifier
    with pytest.raises(ValueError, match="1056-channel"):
        head(torch.randn(1, 1000, 14, 14))


def test_head_equals_running_the_whole_network():
    """Backbone + head on the full map reproduce nasnet_core's last cell output exactly."""
    cfg = make_cfg("configs/Base-NASNet-C4.yaml", ["MODEL.NASNET.NORM", "BN", *SMALL[:4]])
    model = build_model(make_cfg("configs/Base-NASNet-C4.yaml",
                                 ["MODEL.NASNET.NORM", "BN", "MODEL.DEVICE", "cpu", *SMALL[:4]])).eval()
    full = nasnet_det.model.build_nasnet(cfg).eval()
    sd = {}
    for k, v in model.state_dict().items():
        for prefix in ("backbone.nasnet.", "roi_heads.res5.nasnet."):
            if k.startswith(prefix):
                sd[k[len(prefix):]] = v
    missing, unexpected = full.load_state_dict(sd, strict=False)
    assert unexpected == [] and set(missing) == {"last_linear.weight", "last_linear.bias"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feat = model.backbone(x)[C4_FEATURE]
        ours = torch.relu(model.roi_heads.res5.nasnet.forward_cells(
            [feat[:, :model.roi_heads.res5.split], feat[:, model.roi_heads.res5.split:]],
            model.roi_heads.res5.start)[-1])
        ref = full.forward_features(x)  # ReLU(stage3), the final map
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("config_file", ["configs/Base-NASNet-C4.yaml",
                                         "configs/COCO-Detection/faster_rcnn_nasnet_a_mobile_fpn.yaml"])
def test_one_train_iteration_and_inference_on_cpu(config_file):
    opts = list(SMALL)
    if "fpn" in config_file:
        opts += ["MODEL.ANCHOR_GENERATOR.SIZES", [[8], [16], [32], [64], [128]], "MODEL.FPN.OUT_CHANNELS", 32,
                 "MODEL.ROI_BOX_HEAD.FC_DIM", 64]
    model = build_model(make_cfg(config_file, opts))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    with EventStorage(0):
        losses = model(tiny_inputs())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    total.backward()
    opt.step()
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert any("backbone" in k and "cell_0" in k for k in changed)
    if "fpn" not in config_file:
        assert any(k.startswith("roi_heads.res5.nasnet.cell_") for k in changed)
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 80) * 255, "height": 64, "width": 80}])
    inst = out[0]["instances"]
    assert inst.image_size == (64, 80)
    assert len(inst) <= 100 and inst.pred_boxes.tensor.shape[1] == 4


def test_freeze_at_and_frozen_bn():
    cfg = make_cfg("configs/Base-NASNet-C4.yaml", [*SMALL, "MODEL.NASNET.FREEZE_AT", 2])
    model = build_model(cfg)
    nas = model.backbone.nasnet
    for name in ("conv0", "cell_stem_0", "cell_stem_1"):
        mod = getattr(nas, name)
        assert all(not p.requires_grad for p in mod.parameters()), name
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in mod.modules())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in mod.modules())
    assert all(p.requires_grad for p in nas.cell_0.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in nas.cell_0.modules())
    frozen = build_model(make_cfg("configs/Base-NASNet-C4.yaml", [*SMALL, "MODEL.NASNET.NORM", "FrozenBN"]))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.roi_heads.modules()) > 10
    with pytest.raises(ValueError, match="known: BN, SyncBN, FrozenBN, GN"):
        build_model(make_cfg("configs/Base-NASNet-C4.yaml", [*SMALL, "MODEL.NASNET.NORM", "LN"]))


def test_gn_variant_trains_a_step():
    model = build_model(make_cfg("configs/Base-NASNet-C4.yaml", [*SMALL, "MODEL.NASNET.NORM", "GN"]))
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    with EventStorage(0):
        losses = model(tiny_inputs(1))
    assert torch.isfinite(sum(losses.values()))


def test_timm_nasnetalarge_weights_fill_backbone_and_head(tmp_path):
    timm = pytest.importorskip("timm", reason="timm (the [dev] extra) provides nasnetalarge")
    from conftest import randomize_bn

    src = timm.create_model("nasnetalarge", pretrained=False)
    randomize_bn(src)
    converted = nc.convert_state_dict(src.state_dict(), "timm", "nasnet_a_large")
    path = nc.save_checkpoint(tmp_path / "large.pth", converted, "nasnet_a_large",
                              config={"pad_mode": "timm"})
    del src
    cfg = make_cfg("configs/COCO-Detection/faster_rcnn_nasnet_a_large_800.yaml",
                   ["MODEL.DEVICE", "cpu", "MODEL.NASNET.NORM", "BN", "MODEL.NASNET.FREEZE_AT", 0])
    model = build_model(cfg)
    nasnet_det.NASNetCheckpointer(model).load(str(path))
    checked = 0
    for prefix in ("backbone.nasnet.", "roi_heads.res5.nasnet."):
        part = model.get_submodule(prefix[:-1])
        for name, tensor in list(part.named_parameters()) + list(part.named_buffers()):
            assert name in converted, f"{prefix}{name} has no source tensor"
            assert torch.equal(tensor, converted[name]), f"{prefix}{name} differs from the source"
            checked += 1
    unused = set(converted) - {n for n, _ in model.backbone.nasnet.state_dict().items()} \
        - {n for n, _ in model.roi_heads.res5.nasnet.state_dict().items()}
    assert unused == {"last_linear.weight", "last_linear.bias"}
    assert checked == len(converted) - 2


def test_drop_path_schedule_reaches_backbone_and_head():
    model, _ = meta_model("configs/Base-NASNet-C4.yaml", ["MODEL.NASNET.DROP_PATH_KEEP_PROB", 0.7,
                                                          "SOLVER.MAX_ITER", 100])
    bb, head = model.backbone, model.roi_heads.res5
    bb.set_training_step(0)
    head.set_training_step(0)
    assert bb.nasnet.cell_7.drop_path_keep == 1.0 and head.nasnet.cell_11.drop_path_keep == 1.0
    bb.set_training_step(100)
    head.set_training_step(100)
    assert head.nasnet.cell_11.drop_path_keep == pytest.approx(0.7)  # last cell: the final keep prob
    assert 0.7 < bb.nasnet.cell_7.drop_path_keep < 1.0


def test_classifier_export_loads_into_the_detector(tmp_path):
    """The backbone.pth written by tools/train_classifier.py is what MODEL.WEIGHTS takes."""
    from test_train_classifier import make_folder, tiny_cfg

    from nasnet_core.train.trainer import Trainer

    data = make_folder(tmp_path / "d", per_class=4)
    cfg = tiny_cfg(tmp_path, "imagenet", data, **{
        "model.arch": "nasnet_a_mobile", "model.N": 1, "model.F": 192, "model.aux_head": False,
        "data.image_size": 64, "solver.epochs": 1})
    trainer = Trainer(cfg)
    trainer.fit()
    trainer.close()
    path = tmp_path / "run" / "backbone.pth"
    exported = torch.load(path, weights_only=True)["state_dict"]
    model = build_model(make_cfg("configs/quick_schedules/nasnet_a_mobile_c4_instant_test.yaml", SMALL))
    nasnet_det.NASNetCheckpointer(model).load(str(path))
    checked = 0
    for part in (model.backbone.nasnet, model.roi_heads.res5.nasnet):
        for name, tensor in part.state_dict().items():
            assert torch.equal(tensor, exported[name]), name
            checked += 1
    assert checked == len(exported) - 2  # all but the classifier
