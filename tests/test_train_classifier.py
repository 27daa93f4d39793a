"""Classification training: data formats, formulas, learning, exact resume, atomic checkpoints."""

import gzip
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, load_tool

import nasnet_core as nc
from nasnet_core.common import fileio
from nasnet_core.common.config import CLASSIFICATION, ConfigError, dump_config, load_config
from nasnet_core.common.datasets import read_idx
from nasnet_core.train import checkpoint as ckpt_mod
from nasnet_core.train import trainer as trainer_mod
from nasnet_core.train.data import DataError, build_dataset, random_resized_box
from nasnet_core.train.optim import LRSchedule, ModelEMA, RMSpropTF, smoothed_cross_entropy
from nasnet_core.train.trainer import Trainer

# Ten clearly different colours: a tiny network separates them in a few steps.
COLOURS = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [128, 128, 0], [0, 0, 128]], np.uint8)
CLASSES = 4  # the tiny sets use 4 of CIFAR's / Fashion-MNIST's 10 labels: chance is 25 %


def coloured_images(n: int, size: int, rng, num_classes=10, channels=3):
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    base = COLOURS[labels][:, None, None, :channels].astype(np.int16)
    noise = rng.integers(-30, 31, size=(n, size, size, channels))
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels


def make_cifar(root: Path, per_batch=12, test=24, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        imgs, labels = coloured_images(test if name == "test_batch" else per_batch, 32, rng, CLASSES)
        data = imgs.transpose(0, 3, 1, 2).reshape(len(imgs), -1)  # CIFAR stores R, G, B planes
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels.tolist(), b"batch_label": name.encode()}, f)
    return root


def write_idx(path: Path, arr: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_fashion(root: Path, n_train=60, n_test=24, gz=True, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs, labels = coloured_images(n, 28, rng, CLASSES, channels=1)
        write_idx(root / f"{prefix}-images-idx3-ubyte", imgs[..., 0], gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return root


def make_folder(root: Path, per_class=15, classes=4, seed=0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", per_class // 2)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = rng.integers(36, 48, size=2)
                img = np.clip(COLOURS[c].astype(np.int16) + rng.integers(-30, 31, (h, w, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"img_{i}.JPEG", quality=90)
    return root


def tiny_cfg(tmp_path: Path, dataset: str, data_path: Path, **extra) -> dict:
    over = {
        "model.arch": "nasnet_a_cifar", "model.N": 1, "model.F": 48, "model.aux_head": True,
        "model.drop_path_keep_prob": 0.7, "data.dataset": dataset, "data.path": str(data_path),
        "data.workers": 0, "data.pad": 2, "solver.epochs": 6, "solver.batch_size": 10,
        "solver.lr": 0.1, "solver.weight_decay": 1e-4, "train.output_dir": str(tmp_path / "run"),
        "train.log_every": 1, "train.threads": 1,
    }
    if dataset == "imagenet":
        over["data.image_size"] = 32
    over.update(extra)
    args = [str(x) for kv in over.items() for x in kv]
    return load_config(None, args)


# ------------------------------------------------------------------ formulas
def test_label_smoothing_matches_formula():
    torch.manual_seed(0)
    logits, target, e = torch.randn(6, 10), torch.tensor([0, 3, 9, 2, 2, 7]), 0.1
    q = torch.full((6, 10), e / 10)
    q[torch.arange(6), target] += 1 - e
    expected = -(q * F.log_softmax(logits, -1)).sum(-1).mean()
    assert smoothed_cross_entropy(logits, target, e).item() == pytest.approx(expected.item(), abs=1e-6)
    assert smoothed_cross_entropy(logits, target, 0.0).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), abs=1e-6)


def test_ema_matches_formula():
    model = torch.nn.Linear(3, 1)
    ema = ModelEMA(model, 0.9999)
    w0 = model.weight.detach().clone()
    expected = w0.clone()
    for n in range(3):
        model.weight.data.add_(1.0)
        d = min(0.9999, (1 + n) / (10 + n))  # TF ExponentialMovingAverage with num_updates
        expected = d * expected + (1 - d) * model.weight.detach()
        ema.update(model)
    assert torch.allclose(ema.module.weight, expected, atol=1e-6)
    assert ema.current_decay(0) == pytest.approx(0.1)
    ema.updates = 10**6  # late in training the cap is the configured decay
    before = ema.module.weight.detach().clone()
    model.weight.data.add_(5.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.9999 * before + 0.0001 * model.weight.detach(), atol=1e-6)


def test_lr_schedules_match_formulas():
    base = load_config(None, [])["solver"]
    exp = dict(base, schedule="exponential", lr=0.016, decay_rate=0.97, decay_epochs=2.4,
               warmup_epochs=1.0, staircase=True, epochs=10)
    s = LRSchedule(exp, steps_per_epoch=100)  # decay every 240 steps, 100 warmup steps
    assert s(0) == pytest.approx(0.016 / 100)
    assert s(49) == pytest.approx(0.016 * 50 / 100)
    assert s(239) == pytest.approx(0.016)
    assert s(240) == pytest.approx(0.016 * 0.97)
    assert s(500) == pytest.approx(0.016 * 0.97 ** 2)
    s = LRSchedule(dict(exp, staircase=False), 100)
    assert s(500) == pytest.approx(0.016 * 0.97 ** (500 / 240))
    cos = dict(base, schedule="cosine", lr=0.025, min_lr=0.001, warmup_epochs=0.0, epochs=4)
    s = LRSchedule(cos, 50)  # 200 steps
    assert s(0) == pytest.approx(0.025)
    assert s(100) == pytest.approx(0.001 + 0.5 * 0.024)
    assert s(50) == pytest.approx(0.001 + 0.5 * 0.024 * (1 + math.cos(math.pi / 4)))
    assert s(200) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="known schedules"):
        LRSchedule(dict(cos, schedule="step"), 10)


def test_rmsprop_tf_matches_formula():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSpropTF([p], lr=0.1, decay=0.9, momentum=0.9, eps=1.0)
    ms, mom, w = np.ones(2), np.zeros(2), np.array([1.0, -2.0])
    for g in ([0.5, 1.0], [-0.3, 2.0]):
        p.grad = torch.tensor(g)
        opt.step()
        g = np.array(g)
        ms = 0.9 * ms + 0.1 * g * g
        mom = 0.9 * mom + 0.1 * g / np.sqrt(ms + 1.0)
        w = w - mom
    assert np.allclose(p.detach().numpy(), w, atol=1e-6)


# ------------------------------------------------------------------ config
def test_config_unknown_key_and_round_trip(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown classification config key 'solver\.lrr' \(did you mean "
                                          r"solver\.lr\b.*known keys in 'solver': .*\blr\b"):
        load_config(None, ["solver.lrr", "0.1"])
    with pytest.raises(ConfigError, match="'solver.lr' expects float"):
        load_config(None, ["solver.lr", "fast"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["solver.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: nasnet_a_mobile\n  widht: 3\n")
    with pytest.raises(ConfigError, match="'model.widht'.*known keys"):
        load_config(bad)
    assert all(k.comment.strip() and isinstance(k.default, (k.type, type(None)))
               for k in CLASSIFICATION.keys.values())
    cfg = load_config(None, ["solver.lr", "0.3", "model.N", "2", "train.amp", "off"])
    again = tmp_path / "resolved.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_shipped_configs_resolve():
    files = sorted((ROOT / "configs" / "classification").glob("*.yaml"))
    assert len(files) == 9
    for f in files:
        cfg = load_config(f)
        m = cfg["model"]
        kw = {k: m[k] for k in ("N", "F", "genotype", "drop_path_keep_prob", "dropout") if m[k] is not None}
        mc = nc.get_config(m["arch"], **kw)
        if cfg["data"]["dataset"] == "imagenet":
            assert cfg["solver"]["optimizer"] == "rmsprop" and cfg["solver"]["ema_decay"] == 0.9999
            assert cfg["solver"]["label_smoothing"] == 0.1 and cfg["data"]["image_size"] == mc.image_size
        elif cfg["data"]["dataset"] == "cifar10":
            assert cfg["solver"]["schedule"] == "cosine" and cfg["solver"]["epochs"] == 600
            assert cfg["solver"]["batch_size"] == 32 and mc.drop_path_keep_prob == 0.6


# ------------------------------------------------------------------ data
def test_data_formats_and_transforms(tmp_path):
    cfg = tiny_cfg(tmp_path, "cifar10", make_cifar(tmp_path / "c10"))["data"]
    train, val, info = build_dataset(cfg)
    assert (len(train), len(val), info.num_classes, info.in_chans, info.image_size) == (60, 24, 10, 3, 32)
    x, y = val[0]
    raw = pickle.load(open(tmp_path / "c10" / "test_batch", "rb"), encoding="bytes")
    assert y == raw[b"labels"][0]
    red = raw[b"data"][0, :1024].reshape(32, 32) / 255.0  # R plane, row-major
    assert torch.allclose(x[0] * 0.2470 + 0.4914, torch.tensor(red, dtype=torch.float32), atol=1e-5)
    a, b = train[3], train[3]
    assert torch.equal(a[0], b[0])  # augmentation is a function of (seed, epoch, index)
    train.epoch = 1
    assert not torch.equal(train[3][0], a[0])

    for gz in (True, False):
        cfg = tiny_cfg(tmp_path, "fashion_mnist", make_fashion(tmp_path / f"fm{gz}", gz=gz))["data"]
        train, val, info = build_dataset(cfg)
        assert (len(train), len(val), info.in_chans, info.image_size) == (60, 24, 1, 28)
        assert train[0][0].shape == (1, 28, 28)

    cfg = tiny_cfg(tmp_path, "imagenet", make_folder(tmp_path / "inet"))["data"]
    train, val, info = build_dataset(cfg)
    assert (len(train), len(val), info.num_classes) == (60, 28, 4)
    assert train[0][0].shape == val[5][0].shape == (3, 32, 32)
    assert val[5][1] == 0 and val[27][1] == 3
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, x1, y1 = random_resized_box(50, 40, rng, 0.08)
        area, aspect = (x1 - x0) * (y1 - y0), (x1 - x0) / (y1 - y0)
        assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 40
        assert 0.07 * 2000 <= area <= 2000 and 0.7 <= aspect <= 1.45


def test_bad_data_gives_one_clear_error_before_training(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DataError, match="does not exist"):
        Trainer(tiny_cfg(tmp_path, "cifar10", tmp_path / "nowhere"))
    c10 = make_cifar(tmp_path / "c10")
    (c10 / "data_batch_3").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="cannot read CIFAR-10 batch .*data_batch_3"):
        Trainer(tiny_cfg(tmp_path, "cifar10", c10))
    (c10 / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing: .*data_batch_3"):
        Trainer(tiny_cfg(tmp_path, "cifar10", c10))
    fm = make_fashion(tmp_path / "fm", gz=False)
    f = fm / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: header says shape"):
        Trainer(tiny_cfg(tmp_path, "fashion_mnist", fm))
    with pytest.raises(DataError, match="bad magic"):
        f.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
        read_idx(f)
    inet = make_folder(tmp_path / "inet")
    (inet / "train" / "n00000002" / "img_0.JPEG").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(DataError, match="cannot decode image .*img_0.JPEG"):
        Trainer(tiny_cfg(tmp_path, "imagenet", inet))
    assert not out.exists()  # nothing was written before the error

    c10 = make_cifar(tmp_path / "c10b")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train_classifier.py"), "--config",
                        str(ROOT / "configs" / "classification" / "cifar10_nasnet_a_6_768.yaml"),
                        "--data", str(tmp_path / "missing"), "--output", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "does not exist" in r.stderr and not out.exists()


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("fmt", ["cifar10", "fashion_mnist", "imagenet"])
def test_short_run_learns(tmp_path, fmt):
    makers = {"cifar10": make_cifar, "fashion_mnist": make_fashion, "imagenet": make_folder}
    data = makers[fmt](tmp_path / "d")
    cfg = tiny_cfg(tmp_path, fmt, data)
    trainer = Trainer(cfg)
    before = trainer.evaluate(trainer.model)
    last = trainer.fit()
    trainer.close()
    hist = trainer.history
    chance = 100 / CLASSES
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"], hist
    assert last["val_top1"] >= chance + 40 and last["val_top1"] > before["top1"] + 20, (before, last)
    # The drop-path ramp ends at the configured keep probability (last cell), from 1.0 at step 0.
    assert trainer.model.drop_path_keep_probs()[-1] == pytest.approx(0.7)
    assert trainer.model.drop_path_keep_probs(0) == [1.0] * len(trainer.model.cell_specs)
    assert [h["drop_path_keep"] for h in hist] == sorted((h["drop_path_keep"] for h in hist), reverse=True)
    out = Path(cfg["train"]["output_dir"])
    assert {"config.yaml", "last.pth", "backbone.pth", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert any((out / "tb").glob("events.out.tfevents.*"))
    assert load_config(out / "config.yaml") == cfg
    # The exported backbone is a nasnet_core checkpoint that rebuilds and reproduces the accuracy.
    meta = torch.load(out / "backbone.pth", weights_only=True)
    model = nc.create_model(meta["arch"], **meta["config"])
    nc.load_checkpoint(model, out / "backbone.pth")
    assert trainer.evaluate(model)["top1"] == pytest.approx(last["val_top1"])
    if fmt == "cifar10":
        r = subprocess.run([sys.executable, str(ROOT / "tools" / "train_classifier.py"), "--config",
                            str(out / "config.yaml"), "--eval-only", str(out / "backbone.pth")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["top1"] == pytest.approx(last["val_top1"]) and res["images"] == 24


def _exact_cfg(tmp_path, data, name):
    return tiny_cfg(tmp_path, "cifar10", data, **{
        "train.output_dir": str(tmp_path / name), "train.deterministic": True, "solver.epochs": 2,
        "solver.optimizer": "rmsprop", "solver.lr": 0.01, "solver.schedule": "exponential",
        "solver.decay_epochs": 0.5, "solver.warmup_epochs": 0.5, "solver.ema_decay": 0.99,
        "solver.label_smoothing": 0.1, "model.dropout": 0.3, "model.aux_head": False})


def test_resume_is_exact(tmp_path):
    data = make_cifar(tmp_path / "d", per_batch=8)
    full = Trainer(_exact_cfg(tmp_path, data, "full"))
    full.fit()
    part = Trainer(_exact_cfg(tmp_path, data, "part"))
    part.fit(stop_after_epochs=1)
    assert part.epoch == 1 and not (tmp_path / "part" / "backbone.pth").exists()
    del part
    torch.manual_seed(123)  # a fresh process would start from some other RNG state
    resumed = Trainer(_exact_cfg(tmp_path, data, "part"), resume=True)
    assert (resumed.epoch, resumed.step) == (1, 4)
    resumed.fit()
    for a, b in ((full.model, resumed.model), (full.ema.module, resumed.ema.module)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    oa, ob = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(oa[i]["ms"], ob[i]["ms"]) for i in oa)
    assert full.history[-1]["val_top1"] == resumed.history[-1]["val_top1"]
    assert full.step == resumed.step == 8


def test_interrupt_never_leaves_truncated_checkpoint(tmp_path, monkeypatch):
    data = make_cifar(tmp_path / "d", per_batch=8)
    trainer = Trainer(_exact_cfg(tmp_path, data, "run"))
    trainer.fit(stop_after_epochs=1)
    last = tmp_path / "run" / "last.pth"
    good = last.read_bytes()

    def dying_writer(obj, path):  # the project's atomic writer, killed halfway through the write
        def write_half(f):
            torch.save(obj, f)
            f.truncate(f.tell() // 2)
            raise KeyboardInterrupt
        return fileio.atomic_write(path, write_half)

    monkeypatch.setattr(trainer_mod, "atomic_torch_save", dying_writer)  # the trainer's only writer
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()  # epoch 2 trains, then dies while writing its checkpoint
    monkeypatch.undo()
    assert last.read_bytes() == good
    assert sorted(p.name for p in last.parent.iterdir() if p.suffix == ".tmp") == []
    assert ckpt_mod.load_training_checkpoint(last)["epoch"] == 1
    resumed = Trainer(_exact_cfg(tmp_path, data, "run"), resume=True)
    assert resumed.epoch == 1


def test_benchmark_training_runs_on_cpu(capsys):
    benchmark_training = load_tool("benchmark_training")
    rc = benchmark_training.main(["--device", "cpu", "--recipes", "mobile", "--modes", "fp32", "bf16+cl",
                                  "fp32+ckpt", "--batch-size", "2", "--iters", "1", "--warmup", "1",
                                  "--image-size", "96", "--N", "1", "--F", "192"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "img/s" in ln]
    assert rc == 0 and len(lines) == 3
    assert all(float(ln.split(":")[1].split()[0]) > 0 for ln in lines) and "x fp32" in lines[1]
    saved = [float(ln.split("saved act.")[1].split()[0]) for ln in lines]  # MiB
    assert 0 < saved[2] < saved[0]  # checkpointed: cell inputs + one recomputed cell


def test_cli_flags_do_not_swallow_overrides():
    train_classifier = load_tool("train_classifier")
    a = train_classifier.parse_args(["--config", "c.yaml", "--resume", "solver.epochs", "4"])
    assert a.resume is True and a.resume_from is None and a.overrides == ["solver.epochs", "4"]
