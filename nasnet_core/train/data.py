"""Classification data: CIFAR-10 python batches, ImageNet train/val folders, Fashion-MNIST IDX.

Every reader checks its files when the dataset is built, so a wrong path or a malformed
file raises one DataError before training starts. Augmentation draws from a generator
seeded by (seed, epoch, index): a sample's crop/flip does not depend on worker count,
process count or on where a run was resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..common.datasets import DATASETS, DataError, check_root, load_arrays
from .transforms import (
    COLOR_DISTORTIONS,
    EVAL_CROPS,
    TRAIN_CROPS,
    distort_color,
    random_resized_box,
    tf_central_box,
    tf_distorted_box,
)

__all__ = ["DataError", "DatasetInfo", "ArrayDataset", "build_dataset", "build_loader", "EpochSampler",
           "IMAGE_EXTENSIONS", "random_resized_box", "dataset_names"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# ----------------------------------------------------------------------------- datasets
class ArrayDataset(Dataset):
    """Small images held in memory (CIFAR-10, Fashion-MNIST): pad + random crop, flip, cutout."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool, cfg: dict,
                 mean, std, seed: int):
        self.images, self.labels = images, labels  # (N, H, W, C) uint8, (N,) int64
        self.train, self.seed, self.epoch = train, seed, 0
        self.pad, self.hflip, self.cutout = cfg["pad"], cfg["hflip"], cfg["cutout"]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            h, w = img.shape[:2]
            if self.pad:
                p = self.pad
                img = np.pad(img, ((p, p), (p, p), (0, 0)))
                y, x = rng.integers(0, 2 * p + 1, size=2)
                img = img[y:y + h, x:x + w]
            if self.hflip and rng.random() < 0.5:
                img = img[:, ::-1]
        x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float().div_(255)
        x = (x - self.mean) / self.std
        if self.train and self.cutout:
            x = _cutout(x, self.cutout, rng)
        return x, int(self.labels[i])


def _cutout(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Zero a size x size square centred at a random pixel (clipped at the border; DeVries 2017)."""
    h, w = x.shape[-2:]
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    y0, y1 = max(0, cy - size // 2), min(h, cy + size - size // 2)
    x0, x1 = max(0, cx - size // 2), min(w, cx + size - size // 2)
    x[:, y0:y1, x0:x1] = 0
    return x


class FolderDataset(Dataset):
    """ImageNet-style ``split/<class>/<image>``. Training: TF-slim's distorted bounding-box crop
    (``data.train_crop tf``) or a torchvision random-resized crop, resized to the square input,
    flip, TF-slim colour distortion (``data.color_distort``). Evaluation: TF's central crop of
    ``crop_pct`` of each side resized to the input (``data.eval_crop tf``), or the shorter side
    resized to size / crop_pct and a centre crop (torchvision)."""

    def __init__(self, samples: list[tuple[Path, int]], train: bool, cfg: dict, size: int,
                 mean, std, seed: int):
        self.samples, self.train, self.size, self.seed, self.epoch = samples, train, size, seed, 0
        self.crop_pct, self.min_scale, self.hflip = cfg["crop_pct"], cfg["min_scale"], cfg["hflip"]
        self.train_crop, self.eval_crop = cfg["train_crop"], cfg["eval_crop"]
        self.color = cfg["color_distort"]
        self.area_range, self.aspect_range = tuple(cfg["area_range"]), tuple(cfg["aspect_range"])
        self.min_covered = cfg["min_object_covered"]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        try:  # a body the header check cannot see (a truncated download): one line naming the file
            with Image.open(path) as im:
                im = im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a corrupt file
            raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}; remove or replace it, "
                            "then continue with --resume") from None
        rng = np.random.default_rng((self.seed, self.epoch, i)) if self.train else None
        im = self.train_image(im, rng) if self.train else self.eval_image(im)
        x = np.asarray(im, dtype=np.float32) / 255
        if self.train:
            x = distort_color(x, rng, self.color)
        x = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
        return (x - self.mean) / self.std, label

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """The training crop (x0, y0, x1, y1) of a ``width`` x ``height`` image."""
        if self.train_crop == "tf":
            return tf_distorted_box(width, height, rng, self.area_range, self.aspect_range, self.min_covered)
        return random_resized_box(width, height, rng, self.min_scale)

    def train_image(self, im, rng: np.random.Generator):
        """Cropped, resized and maybe flipped training image (PIL)."""
        from PIL import Image

        im = im.resize((self.size, self.size), Image.BILINEAR, box=self.crop_box(im.width, im.height, rng))
        if self.hflip and rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return im

    def eval_image(self, im):
        """The evaluation view of ``im`` (PIL): TF central crop + resize, or resize + centre crop."""
        from PIL import Image

        if self.eval_crop == "tf":
            box = tf_central_box(im.width, im.height, self.crop_pct)
            return im.resize((self.size, self.size), Image.BILINEAR, box=box)
        short = int(math.floor(self.size / self.crop_pct + 0.5))
        scale = short / min(im.width, im.height)
        w, h = max(short, round(im.width * scale)), max(short, round(im.height * scale))
        im = im.resize((w, h), Image.BILINEAR)
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return im.crop((left, top, left + self.size, top + self.size))


def _check_transforms(cfg: dict) -> None:
    """One DataError for a malformed ImageNet transform setting."""
    for key, known in (("train_crop", TRAIN_CROPS), ("eval_crop", EVAL_CROPS),
                       ("color_distort", COLOR_DISTORTIONS)):
        if cfg[key] not in known:
            raise DataError(f"data.{key} must be one of {', '.join(known)}, got {cfg[key]!r}")
    for key, hi in (("area_range", 1.0), ("aspect_range", math.inf)):
        r = cfg[key]
        ok = len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
        if not ok or not 0 < r[0] <= r[1] <= hi:
            bound = " <= 1" if hi == 1.0 else ""
            raise DataError(f"data.{key} must be [low, high] with 0 < low <= high{bound}, got {r!r}")
    for key, lo_open in (("crop_pct", True), ("min_scale", True), ("min_object_covered", False)):
        v = cfg[key]
        if not (0 < v <= 1 if lo_open else 0 <= v <= 1):
            raise DataError(f"data.{key} must be in {'(0' if lo_open else '[0'}, 1], got {v}")


# ------------------------------------------------------------------------ builders
def _limit(n: int, limit: int) -> slice:
    return slice(0, min(n, limit) if limit else n)


def _build_arrays(name: str, cfg: dict, seed: int):
    spec = DATASETS[name]
    tr_x, tr_y = load_arrays(name, cfg["path"], train=True)
    va_x, va_y = load_arrays(name, cfg["path"], train=False)
    mean, std = cfg["mean"] or spec.mean, cfg["std"] or spec.std
    return _array_pair(cfg, seed, tr_x, tr_y, va_x, va_y, spec.num_classes, mean, std, name)


def _array_pair(cfg, seed, tr_x, tr_y, va_x, va_y, num_classes, mean, std, name):
    size = tr_x.shape[1]
    if cfg["image_size"] not in (None, size):
        raise DataError(f"{name} images are {size}x{size}; data.image_size={cfg['image_size']} "
                        "is not supported for it (leave it null)")
    if len(mean) != tr_x.shape[-1] or len(std) != tr_x.shape[-1]:
        raise DataError(f"{name} has {tr_x.shape[-1]} channel(s) but data.mean/std give "
                        f"{len(mean)}/{len(std)} values")
    if len(tr_y) == 0 or len(va_y) == 0:
        raise DataError(f"{name}: the training or validation split is empty")
    tr, va = _limit(len(tr_y), cfg["train_limit"]), _limit(len(va_y), cfg["val_limit"])
    train = ArrayDataset(tr_x[tr], tr_y[tr], True, cfg, mean, std, seed)
    val = ArrayDataset(va_x[va], va_y[va], False, cfg, mean, std, seed)
    return train, val, DatasetInfo(num_classes, tr_x.shape[-1], size, tuple(mean), tuple(std))


def _scan_split(root: Path, split: str, classes: list[str] | None):
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"ImageNet-style data needs {folder}/<class>/<image> (folder missing)")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not found:
        raise DataError(f"{folder} has no class sub-folders")
    if classes is None:
        classes = found
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"{folder} has classes not in train/: {extra[:10]}")
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in found:
        files = sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"{folder / c} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        _verify_image(files[0])
        samples += [(p, index[c]) for p in files]
    return samples, classes


def _verify_image(path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a corrupt file
        raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None


def _refuse_unreadable(root: Path, samples: list[tuple[Path, int]]) -> None:
    """DataError naming every image whose header PIL cannot read (a header read, not a decode: about
    0.1 ms an image), so a broken file fails here and not mid-epoch after the run folder was written."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def unreadable(path: Path) -> str | None:
        try:
            with Image.open(path) as im:
                return None if min(im.size) > 0 else f"{path} (size {im.size})"
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a corrupt file
            return f"{path} ({type(e).__name__})"

    with ThreadPoolExecutor(8) as pool:  # threads overlap the reads of a cold or network disk
        bad = [b for b in pool.map(unreadable, (p for p, _ in samples)) if b]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} of the {len(samples)} images under {root} cannot be read as images: "
                        f"{', '.join(bad[:5])}{more}; remove or replace them")


def _build_imagenet(cfg: dict, seed: int, arch_size: int):
    _check_transforms(cfg)
    root = check_root(cfg["path"], "imagenet")
    train_s, classes = _scan_split(root, "train", None)
    val_s, _ = _scan_split(root, "val", classes)
    size = cfg["image_size"] or arch_size
    mean, std = cfg["mean"] or (0.5, 0.5, 0.5), cfg["std"] or (0.5, 0.5, 0.5)
    train_s, val_s = train_s[_limit(len(train_s), cfg["train_limit"])], \
        val_s[_limit(len(val_s), cfg["val_limit"])]
    _refuse_unreadable(root, train_s + val_s)
    return (FolderDataset(train_s, True, cfg, size, mean, std, seed),
            FolderDataset(val_s, False, cfg, size, mean, std, seed),
            DatasetInfo(len(classes), 3, size, tuple(mean), tuple(std)))


def dataset_names() -> list[str]:
    """Datasets classification training reads: the in-memory ones (common.datasets) and imagenet."""
    return [*DATASETS, "imagenet"]


def build_dataset(cfg: dict, seed: int = 0, arch_size: int = 224):
    """``(train, val, DatasetInfo)`` for ``cfg['dataset']``; checks every file it will need."""
    name = cfg["dataset"]
    if name == "imagenet":
        return _build_imagenet(cfg, seed, arch_size)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return _build_arrays(name, cfg, seed)


# ------------------------------------------------------------------------ sampling
class EpochSampler(Sampler):
    """Indices for one process: a permutation seeded by (seed, epoch), padded to a multiple of
    the world size and strided by rank (shuffle=False: in order, unpadded, for evaluation)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1, shuffle: bool = True, seed: int = 0):
        self.n, self.rank, self.world, self.shuffle, self.seed, self.epoch = n, rank, world, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation of ``epoch``."""
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        idx = torch.randperm(self.n, generator=g).tolist()
        idx += idx[: (-self.n) % self.world]
        return idx[self.rank::self.world]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def build_loader(dataset, batch_size: int, train: bool, workers: int, pin_memory: bool,
                 seed: int, rank: int = 0, world: int = 1) -> DataLoader:
    """DataLoader over an EpochSampler; training drops the last partial batch."""
    sampler = EpochSampler(len(dataset), rank, world, shuffle=train, seed=seed)
    if train and len(sampler) < batch_size:
        raise DataError(f"the training split has {len(sampler)} examples per process, fewer than "
                        f"one batch of {batch_size}; lower solver.batch_size")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=train, persistent_workers=False)
