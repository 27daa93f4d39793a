"""The shipped training recipes read back against TF-slim's, and TF-slim's ImageNet transforms."""

import colorsys
import math

import numpy as np
import pytest
import torch
from conftest import ROOT
from test_train_classifier import make_cifar, tiny_cfg

import nasnet_core as nc
from nasnet_core.common.config import ConfigError, load_config
from nasnet_core.train.data import DataError, build_dataset
from nasnet_core.train.optim import LRSchedule, lr_scale
from nasnet_core.train.trainer import Trainer
from nasnet_core.train.transforms import (
    BRIGHTNESS_DELTA,
    adjust_saturation,
    distort_color,
    tf_central_box,
    tf_distorted_box,
)

CONFIGS = ROOT / "configs" / "classification"
IMAGENET_TRAIN_IMAGES = 1_281_167

# TF-slim's NASNet recipes: the notes above cifar_config / large_imagenet_config / mobile_imagenet_config,
# the configs' drop_path_keep_prob and total_training_steps, and the nasnet_*_arg_scope weight decays.
TF = {
    "large": dict(lr_per_image=0.015 * 100 / (16 * 100), clip=10.0, aux=0.4, smoothing=0.1, keep=0.7,
                  weight_decay=5e-5, steps=250_000, tf_global_batch=16 * 100),
    "mobile": dict(lr_per_image=0.04 * 50 / (32 * 50), clip=10.0, aux=0.4, smoothing=0.1, keep=1.0,
                   weight_decay=4e-5, steps=250_000, tf_global_batch=32 * 50),
    "cifar": dict(lr_per_image=0.025 / 32, clip=5.0, aux=0.4, smoothing=0.0, keep=0.6,
                  weight_decay=5e-4, epochs=600),
}
# Every shipped ImageNet / CIFAR-10 config: the TF recipe it follows, its cutout and the paper row it names.
ROWS = {
    "imagenet_nasnet_a_large.yaml": ("large", None, "82.7 / 96.2"),
    "imagenet_nasnet_a_mobile.yaml": ("mobile", None, "74.0 / 91.6"),
    "imagenet_nasnet_a_7_1920.yaml": ("large", None, "80.8 / 95.3"),
    "imagenet_nasnet_a_5_1536.yaml": ("large", None, "78.6 / 94.2"),
    "cifar10_nasnet_a_6_768.yaml": ("cifar", 0, "3.41 % test error (no cutout)"),
    "cifar10_nasnet_a_6_768_cutout.yaml": ("cifar", 16, "2.65 % test error (with cutout)"),
    "cifar10_nasnet_a_7_2304.yaml": ("cifar", 0, "2.97 % test error (no cutout)"),
    "cifar10_nasnet_a_7_2304_cutout.yaml": ("cifar", 16, "2.40 % test error (with cutout)"),
}


def test_every_shipped_recipe_is_checked():
    shipped = {p.name for p in CONFIGS.glob("*.yaml") if p.name.startswith(("imagenet_", "cifar10_"))}
    assert shipped == set(ROWS)


def _check_common(cfg: dict, tf: dict) -> None:
    s, m = cfg["solver"], cfg["model"]
    ref = s["global_batch"]
    assert ref > 0 and ref % s["batch_size"] == 0, "global batch = batch_size x a whole number of processes"
    # Peak lr per image at the config's global batch, as configured and as the schedule applies it.
    assert s["lr"] / ref == pytest.approx(tf["lr_per_image"], rel=0.01)
    schedule = LRSchedule(s, steps_per_epoch=100, world=ref // s["batch_size"])
    assert s["warmup_epochs"] == 0 and schedule(0) / ref == pytest.approx(tf["lr_per_image"], rel=0.01)
    assert s["grad_clip"] == tf["clip"] and s["aux_weight"] == tf["aux"] and m["aux_head"] is True
    assert s["label_smoothing"] == tf["smoothing"] and s["weight_decay"] == pytest.approx(tf["weight_decay"])
    kw = {k: m[k] for k in ("N", "F", "drop_path_keep_prob", "dropout") if m[k] is not None}
    assert nc.get_config(m["arch"], **kw).drop_path_keep_prob == tf["keep"]


@pytest.mark.parametrize("name", sorted(ROWS))
def test_recipe_is_tf_slims(name):
    recipe, cutout, row = ROWS[name]
    text = (CONFIGS / name).read_text()
    cfg = load_config(CONFIGS / name)
    tf, s, d = TF[recipe], cfg["solver"], cfg["data"]
    _check_common(cfg, tf)
    assert row in text.split("\nmodel:")[0], "the header names the paper row it targets"
    assert "chosen" not in text.lower()
    if recipe == "cifar":
        assert d["dataset"] == "cifar10" and d["cutout"] == cutout and d["pad"] == 4 and d["hflip"]
        assert s["schedule"] == "cosine" and s["min_lr"] == 0 and s["epochs"] == tf["epochs"]
        assert s["optimizer"] == "sgd" and s["momentum"] == 0.9
        return
    # ImageNet: TF's exponential decay, schedule length, RMSProp, dropout, EMA and transforms.
    assert s["schedule"] == "exponential" and s["staircase"] is True
    assert s["decay_rate"] == 0.97 and s["decay_epochs"] == 2.4
    tf_epochs = tf["steps"] * tf["tf_global_batch"] / IMAGENET_TRAIN_IMAGES
    assert s["epochs"] == pytest.approx(tf_epochs, rel=0.01)
    assert (s["optimizer"], s["rmsprop_decay"], s["rmsprop_eps"], s["momentum"]) == ("rmsprop", 0.9, 1.0, 0.9)
    assert cfg["model"]["dropout"] == 0.5 and s["ema_decay"] == 0.9999
    assert (d["train_crop"], d["area_range"], d["aspect_range"], d["min_object_covered"]) == \
        ("tf", [0.05, 1.0], [0.75, 1.33], 0.1)
    assert (d["color_distort"], d["eval_crop"], d["crop_pct"], d["hflip"]) == ("fast", "tf", 0.875, True)


def test_lr_scales_linearly_with_the_run_global_batch():
    s = load_config(CONFIGS / "imagenet_nasnet_a_large.yaml")["solver"]
    assert lr_scale(s, world=8) == 1.0 and lr_scale(s, world=1) == 1 / 8 and lr_scale(s, world=50) == 6.25
    per_image = [LRSchedule(s, 100, world=w)(0) / (s["batch_size"] * w) for w in (1, 8, 50)]
    assert per_image == pytest.approx([0.015 * 100 / 1600] * 3, rel=1e-9)
    assert lr_scale(dict(s, global_batch=0), world=4) == 1.0  # 0: lr used as is
    with pytest.raises(ConfigError, match="solver.global_batch"):
        load_config(None, ["solver.global_batch", "many"])


# ------------------------------------------------------------------ transforms
def _sample_boxes(width, height, n, **kw):
    rng = np.random.default_rng(0)
    boxes = np.array([tf_distorted_box(width, height, rng, **kw) for _ in range(n)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    return w * h / (width * height), w / h


@pytest.mark.parametrize("width, height", [(500, 375), (300, 400)])
def test_tf_crop_area_and_aspect_ranges(width, height):
    area, aspect = _sample_boxes(width, height, 20000)
    # area_range [0.05, 1]; covering >= 10 % of the whole-image box makes 0.1 the effective low end.
    assert area.min() >= 0.1 and area.max() <= 1.0
    assert area.min() < 0.102 and area.max() > 0.97
    # aspect_range [0.75, 1.33] (width / height), up to the rounding of whole pixels.
    assert aspect.min() >= 0.75 * 0.995 and aspect.max() <= 1.33 * 1.005
    assert aspect.min() < 0.755 and aspect.max() > 1.32
    # The aspect ratio is drawn uniformly (TF), not log-uniformly: its median sits near 1.04.
    assert np.median(aspect) == pytest.approx((0.75 + 1.33) / 2, abs=0.02)


def test_tf_crop_area_range_low_end_without_the_cover_constraint():
    area, _ = _sample_boxes(500, 375, 20000, min_object_covered=0.0)
    assert area.min() >= 0.05 and area.min() < 0.052 and area.max() > 0.97


def test_saturation_matches_hsv():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (16, 16, 3)).astype(np.float32)
    for factor in (0.5, 0.8, 1.3, 1.5):
        out = adjust_saturation(img, factor)
        for (r, g, b), got in zip(img.reshape(-1, 3), out.reshape(-1, 3)):
            hh, ss, vv = colorsys.rgb_to_hsv(r, g, b)
            assert got == pytest.approx(colorsys.hsv_to_rgb(hh, min(1.0, ss * factor), vv), abs=1e-5)


def test_colour_distortion_changes_pixels_within_tf_ranges():
    rng = np.random.default_rng(2)
    gray = np.full((4, 4, 3), 0.5, np.float32)  # saturation cannot move a gray pixel: out - in = brightness
    deltas = np.array([distort_color(gray, rng)[0, 0, 0] - 0.5 for _ in range(4000)])
    assert np.abs(deltas).max() <= BRIGHTNESS_DELTA + 1e-6 and np.abs(deltas).max() > 0.97 * BRIGHTNESS_DELTA
    assert deltas.min() < -0.9 * BRIGHTNESS_DELTA and np.abs(deltas).mean() > 0.4 * BRIGHTNESS_DELTA
    colour = np.tile(np.array([0.6, 0.3, 0.2], np.float32), (4, 4, 1))
    outs = np.array([distort_color(colour, rng)[0, 0] for _ in range(2000)])
    # Brightness first (spread 0.4 over max 0.6 + delta), then saturation x [0.5, 1.5], capped at 1.
    sat = (outs.max(1) - outs.min(1)) / outs.max(1)
    assert sat.min() == pytest.approx(0.5 * 0.4 / (0.6 + BRIGHTNESS_DELTA), abs=0.005)
    assert sat.max() == pytest.approx(1.0, abs=1e-6)
    assert (outs >= 0).all() and (outs <= 1).all()
    assert np.array_equal(distort_color(colour, rng, "none"), colour)
    with pytest.raises(ValueError, match="unknown colour distortion 'strong'; known: fast, none"):
        distort_color(colour, rng, "strong")


def _big_folder(root, size=(96, 72)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        d = root / split / "n00000000"
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(d / "a.png")
    return root


def test_folder_dataset_applies_tf_transforms(tmp_path):
    from PIL import Image

    root = _big_folder(tmp_path / "inet")
    cfg = tiny_cfg(tmp_path, "imagenet", root)["data"]
    assert (cfg["train_crop"], cfg["eval_crop"], cfg["color_distort"]) == ("tf", "tf", "fast")  # defaults
    train, val, _ = build_dataset(cfg)
    plain, _, _ = build_dataset(dict(cfg, color_distort="none"))
    for epoch in range(5):  # same crop and flip, so only the colour distortion differs
        train.epoch = plain.epoch = epoch
        a, b = train[0][0], plain[0][0]
        assert a.shape == (3, 32, 32) and (a - b).abs().mean() > 0.01
    # Evaluation: TF's central crop (87.5 % of each side) resized to the input, aspect not kept.
    assert tf_central_box(96, 72, 0.875) == (6, 4, 90, 68)
    assert tf_central_box(400, 300, 0.875) == (25, 18, 375, 282)
    with Image.open(root / "val" / "n00000000" / "a.png") as im:
        want = im.convert("RGB").resize((32, 32), Image.BILINEAR, box=(6, 4, 90, 68))
    want = torch.from_numpy(np.asarray(want, np.float32) / 255).permute(2, 0, 1)
    assert torch.allclose(val[0][0], (want - 0.5) / 0.5, atol=1e-6)
    tv, _, _ = build_dataset(dict(cfg, train_crop="torchvision", eval_crop="torchvision"))
    assert tv[0][0].shape == (3, 32, 32) and not torch.allclose(tv[0][0], train[0][0])


def test_every_transform_choice_loads_from_the_command_line():
    from nasnet_core.train.transforms import COLOR_DISTORTIONS, EVAL_CROPS, TRAIN_CROPS

    choices = {"train_crop": TRAIN_CROPS, "eval_crop": EVAL_CROPS, "color_distort": COLOR_DISTORTIONS}
    for key, values in choices.items():
        for v in values:  # a value YAML 1.1 reads as a boolean (off, no, ...) would fail here
            assert load_config(None, [f"data.{key}", v])["data"][key] == v


@pytest.mark.parametrize("key, value, match", [
    ("train_crop", "inception", "data.train_crop must be one of tf, torchvision"),
    ("eval_crop", "resize", "data.eval_crop must be one of tf, torchvision"),
    ("color_distort", "full", "data.color_distort must be one of fast, none"),
    ("area_range", [0.5, 0.1], r"data.area_range must be \[low, high\]"),
    ("aspect_range", [0.75], r"data.aspect_range must be \[low, high\]"),
    ("crop_pct", 1.5, r"data.crop_pct must be in \(0, 1\]"),
])
def test_bad_transform_settings_fail_before_reading(tmp_path, key, value, match):
    cfg = tiny_cfg(tmp_path, "imagenet", tmp_path / "nowhere")["data"]
    with pytest.raises(DataError, match=match):
        build_dataset(dict(cfg, **{key: value}))


# ------------------------------------------------------------------ clipping and cutout
def test_clip_bounds_the_global_norm_of_all_gradients_aux_included(tmp_path):
    cfg = tiny_cfg(tmp_path, "cifar10", make_cifar(tmp_path / "c10"), **{
        "solver.grad_clip": 1e-3, "solver.epochs": 1, "model.drop_path_keep_prob": 1.0})
    trainer = Trainer(cfg)
    trainer.train_epoch()
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert any(n.startswith("aux_head.") for n in grads)
    assert len(grads) == len(list(trainer.model.parameters()))

    def norm(gs):
        return torch.linalg.vector_norm(torch.stack([g.norm() for g in gs])).item()

    total = norm(grads.values())
    aux = norm(g for n, g in grads.items() if n.startswith("aux_head."))
    assert total == pytest.approx(1e-3, rel=1e-3)  # clipped (the raw norm is far above 1e-3)
    assert 0 < aux < total
    trainer.close()


def test_cutout_rows_cut_a_16px_square(tmp_path):
    cfg = load_config(CONFIGS / "cifar10_nasnet_a_6_768_cutout.yaml",
                      ["data.path", str(make_cifar(tmp_path / "c10")), "data.workers", "0"])
    train, val, _ = build_dataset(cfg["data"])
    sides = []
    for i in range(len(train)):
        zero = (train[i][0] == 0).all(0)
        ys, xs = torch.nonzero(zero, as_tuple=True)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert zero.sum() == h * w and h <= 16 and w <= 16  # one square, clipped at the border
        sides.append(max(h, w).item())
    assert max(sides) == 16 and min(sides) >= 8
    assert not any((val[i][0] == 0).all(0).any() for i in range(len(val)))  # evaluation is untouched
    assert math.isclose(cfg["solver"]["lr"], 0.025)


# ------------------------------------------------------------------ search child
def test_every_child_hparam_names_its_source():
    import inspect
    import re

    from nasnet_core.search.child import HPARAM_SOURCES, train_child

    kwargs = set(inspect.signature(train_child).parameters) - {"genotype", "data"}
    assert kwargs == set(HPARAM_SOURCES), "a new train_child hyper-parameter needs its source"
    defaults = {k: p.default for k, p in inspect.signature(train_child).parameters.items() if k in kwargs}
    # Only what appendix A says of the child is labelled "paper".
    paper = {k for k, v in HPARAM_SOURCES.items() if v.startswith("paper:")}
    assert paper == {"N", "epochs", "momentum", "crop_pad", "flip"}
    assert (defaults["N"], defaults["epochs"], defaults["momentum"], defaults["crop_pad"]) == (2, 20, 0.9, 4)
    assert all(v.split(":")[0] in ("paper", "TF-slim", "ours") for v in HPARAM_SOURCES.values())
    # The paper-search config labels each child hyper-parameter with the same source.
    text = (ROOT / "configs" / "search" / "cifar10_paper.yaml").read_text()
    labels = dict(re.findall(r"^ {4}(\w+): \S+\s+# (paper|TF-slim|ours)\b", text, re.M))
    for key in set(labels) & kwargs:
        assert HPARAM_SOURCES[key].startswith(labels[key] + ":"), key
    assert {"N", "epochs", "lr", "batch_size", "weight_decay", "grad_clip", "num_conv_filters"} <= set(labels)
