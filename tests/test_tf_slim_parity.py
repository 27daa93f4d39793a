"""TF-slim NASNet-A checkpoints, converted by tools/convert_weights.py, give TF-slim's own logits.

TF-slim's graph (``nets/nasnet/nasnet.py`` of the vendored tensorflow/models subset) is built in
inference mode with random conv weights (TF's initializers), random BN moving statistics, gamma
and beta and random FC biases, run on two images, and saved as a real TF checkpoint (V2 bundle).
The tool converts it; our model, with the default pad mode ("tf"), must give the same logits
(1e-4 of the largest |logit|).

* mobile at 224: the checkpoint holds what a training run's does: moving-average shadows (holding
  the values the graph ran with; the raw variables hold others, so a converter that took those
  would fail), the auxiliary head (TF-slim's ``_build_aux_head`` on ``Cell_7``, built here in
  inference mode so that it runs), RMSProp slots and ``global_step``; written by TF's SaveV2 op
  (what ``tf.train.Saver`` runs). The converted checkpoint then goes through
  ``train_classifier.py --eval-only`` on a folder whose labels are TF's predictions.
* large at 96 x 96 (stride-2 maps 47, 24, 12, 6, 3: odd and even sizes, so both of TF's SAME
  paddings): an eval graph's checkpoint, saved by ``tf.train.Saver``, no shadows, no aux head.
"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, load_tool
from tf_oracle import tf_v1

import nasnet_core as nc
from nasnet_core.common.config import load_config
from nasnet_core.interop.tf_checkpoint import read_tf_checkpoint
from nasnet_core.train.data import FolderDataset

NUM_TF_CLASSES = 1001  # TF-slim's ImageNet heads: class 0 = background
SIZES = {"mobile": 224, "large": 96}
EVAL_CLASSES = 1000


def _session(tf, graph):
    """A session without grappler's graph rewrites (they cost ~20 s on these graphs, change nothing)."""
    from tensorflow.core.protobuf import rewriter_config_pb2

    opts = tf.GraphOptions(optimizer_options=tf.OptimizerOptions(opt_level=tf.OptimizerOptions.L0),
                           rewrite_options=rewriter_config_pb2.RewriterConfig(disable_meta_optimizer=True))
    return tf.Session(graph=graph, config=tf.ConfigProto(graph_options=opts))


def write_tf_checkpoint(prefix, arrays: dict[str, np.ndarray]) -> str:
    """Write ``arrays`` as a TF V2 checkpoint bundle with TF's SaveV2 op (what tf.train.Saver runs)."""
    tf = tf_v1()
    graph = tf.Graph()
    with graph.as_default():
        names = sorted(arrays)
        feeds = {n: tf.placeholder(tf.as_dtype(arrays[n].dtype), arrays[n].shape) for n in names}
        save = tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                                 tensors=[feeds[n] for n in names])
        with _session(tf, graph) as sess:
            sess.run(save, {feeds[n]: arrays[n] for n in names})
    return str(prefix)


def _randomize(sess, tf, variables, rng) -> None:
    """BN statistics, gamma, beta and biases drawn at random (conv weights keep TF's random init);
    gamma below 1 keeps the activations of the deep random network O(1)."""
    ranges = {"moving_mean": (-0.5, 0.5), "moving_variance": (0.5, 2.0), "gamma": (0.3, 0.7),
              "beta": (-0.3, 0.3), "biases": (-0.3, 0.3)}
    feeds, ops = {}, []
    for v in variables:
        leaf = v.op.name.rsplit("/", 1)[-1]
        if leaf in ranges:
            ph = tf.placeholder(tf.float32, v.shape)
            ops.append(v.assign(ph))
            feeds[ph] = rng.uniform(*ranges[leaf], v.shape.as_list()).astype(np.float32)
    sess.run(ops, feeds)


def parity_images(size: int, rng) -> np.ndarray:
    """Two NHWC images in [-1, 1]: uniform noise, and smooth waves with a little noise."""
    u, v = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size))
    waves = np.stack([np.sin(6 * u + 1), np.cos(4 * v), np.sin(5 * (u + v))], -1)
    return np.stack([rng.uniform(-1, 1, (size, size, 3)),
                     0.8 * waves + 0.1 * rng.uniform(-1, 1, (size, size, 3))]).astype(np.float32)


def build_tf_slim(which: str, folder, extra_images=None, training_checkpoint: bool = False) -> dict:
    """Build TF-slim's NASNet-A ``which`` (inference mode), randomise it, run it on the test images
    (and ``extra_images``), save its checkpoint under ``folder``; returns inputs, outputs, prefix."""
    tf = tf_v1()
    import tf_slim as slim
    from nets.nasnet import nasnet

    t0 = time.perf_counter()
    rng = np.random.default_rng(0 if which == "mobile" else 1)
    images = parity_images(SIZES[which], rng)
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(0)
        x = tf.placeholder(tf.float32, (None, *images.shape[1:]))
        scope = nasnet.nasnet_mobile_arg_scope() if which == "mobile" else nasnet.nasnet_large_arg_scope()
        build = nasnet.build_nasnet_mobile if which == "mobile" else nasnet.build_nasnet_large
        with slim.arg_scope(scope):
            logits, end_points = build(x, NUM_TF_CLASSES, is_training=False)
            outputs = {"logits": logits}
            if training_checkpoint:  # the aux head a training graph has, on Cell_7, in inference mode
                with slim.arg_scope([slim.batch_norm], is_training=False):
                    nasnet._build_aux_head(tf.nn.relu(end_points["Cell_7"]), end_points, NUM_TF_CLASSES,
                                           nasnet.mobile_imagenet_config(), scope="aux_7")
                outputs["aux_logits"] = end_points["AuxLogits"]
        model_vars = tf.global_variables()
        saver = tf.train.Saver(model_vars)
        with _session(tf, graph) as sess:
            sess.run(tf.global_variables_initializer())
            _randomize(sess, tf, model_vars, rng)
            result = sess.run(outputs, {x: images})
            if extra_images is not None:
                result["extra_logits"] = sess.run(logits, {x: extra_images})
            if training_checkpoint:
                values = dict(zip([v.op.name for v in model_vars], sess.run(model_vars)))
                prefix = write_tf_checkpoint(folder / "model.ckpt", _as_training_checkpoint(values))
            else:
                prefix = saver.save(sess, str(folder / "model.ckpt"), write_meta_graph=False)
    result.update(images=images, prefix=prefix, seconds=time.perf_counter() - t0)
    return result


def _as_training_checkpoint(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What TF-slim's training leaves: each variable's moving-average shadow (here: the values the
    graph ran with), the variable itself (other values), RMSProp slots, global_step."""
    out = {}
    for name, v in values.items():
        out[f"{name}/ExponentialMovingAverage"] = v  # tf.train.ExponentialMovingAverage's shadow name
        out[name] = -0.5 * v + 0.1
        out[f"{name}/RMSProp"] = out[f"{name}/RMSProp_1"] = np.zeros_like(v)
    out["global_step"] = np.array(250000, np.int64)
    return out


def convert(prefix, arch: str, out) -> int:
    """tools/convert_weights.py --source tf-slim, called as a user does (exit status)."""
    tool = load_tool("convert_weights")
    return tool.main(["--source", "tf-slim", "--arch", arch, "--input", str(prefix), "--output", str(out)])


def ours(path, images: np.ndarray, aux_after: str | None = None, **overrides):
    """Logits (and aux logits from ``aux_after``) of our model loaded from ``path``, eval mode."""
    meta = torch.load(path, weights_only=True)
    model = nc.create_model(meta["arch"], **{**meta["config"], **overrides}).eval()
    nc.load_checkpoint(model, path)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        if aux_after is None:
            return model(x).numpy(), None
        taps = {aux_after: None}
        outputs = model.forward_cells([model.conv0(x)], taps=taps)
        logits = model.forward_head(torch.relu(outputs[-1]))
        return logits.numpy(), model.aux_head(taps[aux_after]).numpy()


def _diff(a: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """Max absolute difference, it over the largest |ref|, and the largest difference between the
    two images' reference outputs (what depends on the input: it must dwarf the error)."""
    d = float(np.abs(a - ref).max())
    return d, d / float(np.abs(ref).max()), float(np.abs(ref[0] - ref[1]).max())


def _eval_views(folder) -> tuple[list, np.ndarray]:
    """Four JPEGs for the --eval-only test and their eval views (TF-slim's central 0.875 crop,
    resized to 224, [-1, 1]) as our data pipeline makes them, NHWC."""
    from PIL import Image

    rng = np.random.default_rng(5)
    cfg = load_config(None, ["data.dataset", "imagenet"])["data"]
    paths, views = [], []
    for i, (w, h) in enumerate([(300, 250), (256, 256), (240, 320), (400, 300)]):
        u = np.linspace(0, 1, w)[None, :, None]
        pixels = 127 + 100 * np.sin(7 * u * (i + 1) + np.arange(3)) + rng.integers(-20, 21, (h, w, 3))
        path = folder / f"img_{i}.JPEG"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=95)
        x, _ = FolderDataset([(path, 0)], False, cfg, 224, (0.5,) * 3, (0.5,) * 3, 0)[0]
        paths.append(path)
        views.append(x.permute(1, 2, 0).numpy())
    return paths, np.stack(views)


@pytest.fixture(scope="module")
def tf_mobile(tf_models, tmp_path_factory):
    paths, views = _eval_views(tmp_path_factory.mktemp("eval_images"))
    out = build_tf_slim("mobile", tmp_path_factory.mktemp("tf_mobile"), views, training_checkpoint=True)
    return dict(out, eval_paths=paths)


@pytest.fixture(scope="module")
def mobile_converted(tf_mobile, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "nasnet_a_mobile.pth"
    t0 = time.perf_counter()
    assert convert(tf_mobile["prefix"], "nasnet_a_mobile", out) == 0
    tf_mobile["convert_seconds"] = time.perf_counter() - t0
    return out


@pytest.mark.slow
def test_mobile_logits_equal_tf_slim(tf_mobile, mobile_converted, capsys):
    logits, aux = ours(mobile_converted, tf_mobile["images"], aux_after="cell_7")
    ref, ref_aux = tf_mobile["logits"][:, 1:], tf_mobile["aux_logits"][:, 1:]  # no background class
    assert logits.shape == ref.shape == (2, 1000) and aux.shape == ref_aux.shape
    (d, rel, spread), (d_aux, rel_aux, spread_aux) = _diff(logits, ref), _diff(aux, ref_aux)
    with capsys.disabled():
        print(f"\n[tf-slim parity] mobile 224: logits max |diff| {d:.3g}, rel {rel:.3g} (|logit| max "
              f"{np.abs(ref).max():.3g}, image 1 vs 2 up to {spread:.3g}); aux logits max |diff| "
              f"{d_aux:.3g}, rel {rel_aux:.3g} (image 1 vs 2 up to {spread_aux:.3g}); TF build+run+save "
              f"{tf_mobile['seconds']:.1f} s, convert {tf_mobile['convert_seconds']:.1f} s")
    assert rel <= 1e-4 and rel_aux <= 1e-4
    assert spread > 1000 * d and spread_aux > 1000 * d_aux  # the input matters far more than the error
    # The check sees padding: timm's zero-counting stride-2 average pools are off by far more.
    timm_pad, _ = ours(mobile_converted, tf_mobile["images"], pad_mode="timm")
    assert _diff(timm_pad, ref)[1] > 100 * rel
    meta = torch.load(mobile_converted, weights_only=True)
    assert meta["source"] == "tf-slim" and meta["config"]["pad_mode"] == "tf"
    assert meta["state_dict"]["aux_head.conv.weight"].shape == (768, 128, 4, 4)
    nc.load_checkpoint(nc.create_model("nasnet_a_mobile", aux_head=False), mobile_converted)  # aux skipped
    # The shadows were converted, not the raw variables (which hold -0.5 v + 0.1).
    raw = read_tf_checkpoint(tf_mobile["prefix"], use_ema=False)["final_layer/FC/biases"][1:]
    assert not np.allclose(meta["state_dict"]["last_linear.bias"].numpy(), raw)


@pytest.mark.slow
def test_converted_checkpoint_evaluates_through_train_classifier(tf_mobile, mobile_converted, tmp_path,
                                                                  capsys):
    """--eval-only on an ImageNet-style folder (1000 classes) whose val labels are TF-slim's
    predictions for the same eval views: top-1 must be 100 %."""
    root = tmp_path / "imagenet"
    tiny = tf_mobile["eval_paths"][0].read_bytes()
    wnids = [f"n{i:08d}" for i in range(EVAL_CLASSES)]
    for wnid in wnids:  # train/ defines the class list (sorted wnids, as TF-slim's labels 1..1000)
        (root / "train" / wnid).mkdir(parents=True)
        (root / "train" / wnid / "a.JPEG").write_bytes(tiny)
    predicted = tf_mobile["extra_logits"][:, 1:].argmax(1)
    for path, label in zip(tf_mobile["eval_paths"], predicted):
        (root / "val" / wnids[label]).mkdir(parents=True, exist_ok=True)
        (root / "val" / wnids[label] / path.name).write_bytes(path.read_bytes())
    tool = load_tool("train_classifier")
    capsys.readouterr()
    rc = tool.main(["--config", str(ROOT / "configs/classification/imagenet_nasnet_a_mobile.yaml"),
                    "--data", str(root), "--output", str(tmp_path / "run"), "--eval-only",
                    str(mobile_converted), "data.workers", "0", "solver.batch_size", "4",
                    "train.threads", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    res = json.loads(out.strip().splitlines()[-1])
    assert res["images"] == 4 and res["top1"] == 100.0 and res["source"] == "exported weights", res
    assert not (tmp_path / "run").exists()  # evaluation writes nothing


# ----------------------------------------------------------------------- refusals
def _refused(prefix, arch, out, capsys=None) -> str:
    """Convert ``prefix`` as ``arch``, in this process (or, without ``capsys``, as a command in a
    fresh one, as a user runs it); assert one error line and nothing written; return the line."""
    if capsys is None:
        r = subprocess.run([sys.executable, str(ROOT / "tools/convert_weights.py"), "--source", "tf-slim",
                            "--arch", arch, "--input", str(prefix), "--output", str(out)],
                           capture_output=True, text=True, timeout=600)
        rc, err = r.returncode, r.stderr
    else:
        rc = convert(prefix, arch, out)
        err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # nothing written
    return err


@pytest.mark.slow
def test_missing_extra_and_misshaped_variables_are_named(tf_mobile, tmp_path):
    """Run as a command: TensorFlow is loaded before torch builds the model to check against."""
    arrays = read_tf_checkpoint(tf_mobile["prefix"])
    del arrays["cell_3/1x1/weights"]
    arrays["cell_3/comb_iter_9/left/extra/weights"] = np.zeros((1, 1, 4, 4), np.float32)
    arrays["cell_5/beginning_bn/gamma"] = np.ones(45, np.float32)
    prefix = write_tf_checkpoint(tmp_path / "bad" / "model.ckpt", arrays)
    err = _refused(prefix, "nasnet_a_mobile", tmp_path / "out.pth")
    assert "TF-slim checkpoint does not fit nasnet_a_mobile" in err
    assert "unmatched checkpoint keys (1): cell_3/comb_iter_9/left/extra/weights" in err
    assert "missing from the checkpoint (1): cell_3/1x1/weights" in err
    assert "cell_5/beginning_bn/gamma: checkpoint (45,) vs model (88,)" in err


@pytest.mark.slow
def test_mobile_checkpoint_as_large_is_refused(tf_mobile, tmp_path, capsys):
    err = _refused(tf_mobile["prefix"], "nasnet_a_large", tmp_path / "out.pth", capsys)
    assert "refusing to convert a TF-slim checkpoint with 12 normal cells, 44 filters, 32 stem filters " \
           "as nasnet_a_large (18 normal cells, 168 filters, 96 stem filters); it looks like " \
           "nasnet_a_mobile: convert it with --arch nasnet_a_mobile" in err


def _structure_only(which: str) -> dict[str, np.ndarray]:
    """The variables a structure check reads, shaped as TF-slim's ``which`` has them."""
    cells, filters, stem = (18, 168, 96) if which == "large" else (12, 44, 32)
    return {"conv0/weights": np.zeros((3, 3, 3, stem), np.float32),
            "cell_0/1x1/weights": np.zeros((1, 1, 4 * filters, filters), np.float32),
            f"cell_{cells - 1}/1x1/weights": np.zeros((1, 1, 4, 4), np.float32)}


@pytest.mark.parametrize("which, arch", [("large", "nasnet_a_mobile"), ("mobile", "nasnet_a_large")])
def test_checkpoint_of_the_other_size_is_refused(which, arch, tmp_path, capsys):
    prefix = write_tf_checkpoint(tmp_path / which / "model.ckpt", _structure_only(which))
    err = _refused(prefix, arch, tmp_path / "out.pth", capsys)
    structure = "18 normal cells, 168 filters, 96 stem filters" if which == "large" else \
        "12 normal cells, 44 filters, 32 stem filters"
    assert f"checkpoint with {structure} as {arch}" in err
    assert f"it looks like nasnet_a_{which}: convert it with --arch nasnet_a_{which}" in err


def test_checkpoint_of_another_network_is_refused(tmp_path, capsys):
    prefix = write_tf_checkpoint(tmp_path / "inception" / "model.ckpt",
                                 {"InceptionV3/Conv2d_1a_3x3/weights": np.zeros((3, 3, 3, 32), np.float32)})
    err = _refused(prefix, "nasnet_a_mobile", tmp_path / "out.pth", capsys)
    assert "not a TF-slim NASNet checkpoint: no conv0/weights and cell_0/1x1/weights among its 1 variables " \
           "(first: InceptionV3/Conv2d_1a_3x3/weights)" in err


def test_missing_tf_checkpoint_is_named(tmp_path, capsys):
    err = _refused(tmp_path / "none" / "model.ckpt", "nasnet_a_mobile", tmp_path / "out.pth", capsys)
    assert f"no TensorFlow checkpoint at {tmp_path / 'none' / 'model.ckpt'}" in err


def test_without_tensorflow_the_tool_names_the_extra(tmp_path):
    (tmp_path / "model.ckpt.index").write_bytes(b"")
    code = ("import sys, runpy; sys.modules['tensorflow'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "tools/convert_weights.py"), "--source",
                        "tf-slim", "--arch", "nasnet_a_mobile", "--input", str(tmp_path / "model.ckpt"),
                        "--output", str(tmp_path / "out.pth")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr == "error: reading TensorFlow checkpoints needs TensorFlow: pip install 'nasnet[tf]'\n"
    assert not (tmp_path / "out.pth").exists()


# ----------------------------------------------------------------------- large
@pytest.mark.slow
def test_large_logits_equal_tf_slim(tf_models, tmp_path, capsys):
    (tmp_path / "tf").mkdir()
    tf_large = build_tf_slim("large", tmp_path / "tf")
    out = tmp_path / "nasnet_a_large.pth"
    t0 = time.perf_counter()
    assert convert(tf_large["prefix"], "nasnet_a_large", out) == 0
    seconds = time.perf_counter() - t0
    meta = torch.load(out, weights_only=True)
    assert not any(k.startswith("aux_head.") for k in meta["state_dict"])  # an eval graph has none
    logits, _ = ours(out, tf_large["images"])  # built for 331, runs at any size (aux head off in eval)
    ref = tf_large["logits"][:, 1:]
    d, rel, spread = _diff(logits, ref)
    with capsys.disabled():
        print(f"\n[tf-slim parity] large 96: logits max |diff| {d:.3g}, rel {rel:.3g} (|logit| max "
              f"{np.abs(ref).max():.3g}, image 1 vs 2 up to {spread:.3g}); TF build+run+save "
              f"{tf_large['seconds']:.1f} s, convert {seconds:.1f} s")
    assert rel <= 1e-4
    assert spread > 1000 * d


def test_help_lists_tf_slim(capsys):
    with pytest.raises(SystemExit) as e:
        load_tool("convert_weights").main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "tf-slim" in out.split("--source")[1] and "model.ckpt" in out
