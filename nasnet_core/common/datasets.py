"""Readers for the standard dataset files: CIFAR-10 python batches and IDX (Fashion-MNIST).

The one dataset-reader module of the project: classification training and the search's
child training both read through ``DATASETS`` / ``load_arrays`` (images (N, H, W, C) uint8,
labels (N,) int64). Every reader checks its file and raises one DataError naming the file
and what is wrong.
"""

from __future__ import annotations

import gzip
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DataError", "read_cifar_batch", "read_idx", "find_file", "load_cifar10",
           "load_fashion_mnist", "ArrayDatasetSpec", "DATASETS", "load_arrays", "check_root"]


class DataError(ValueError):
    """The dataset path is wrong or one of its files is malformed."""


# ----------------------------------------------------------------------------- readers
def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) from one CIFAR-10 python pickle batch."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch file missing: {path}")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed batch
        raise DataError(f"cannot read CIFAR-10 batch {path}: {type(e).__name__}: {e}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} "
                        f"{data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (plain or .gz); raises DataError on a bad header or a size mismatch."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says shape {dims} ({expected} bytes of data) but the file "
                        f"holds {len(raw) - header} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def find_file(root: Path, names: list[str], what: str) -> Path:
    """The first of ``names`` that exists in ``root``; DataError naming ``what`` otherwise."""
    for n in names:
        if (root / n).is_file():
            return root / n
    raise DataError(f"{what} not found in {root} (looked for {', '.join(names)})")


def load_cifar10(root: Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 train (5 batches, 50k) or test split: images (N, 32, 32, 3) uint8, labels."""
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    parts = [read_cifar_batch(root / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_fashion_mnist(root: Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST train (60k) or t10k split from IDX files (plain or .gz): (N, 28, 28, 1) uint8, labels."""
    root = Path(root)
    split, prefix = ("train", "train") if train else ("val", "t10k")
    imgs = read_idx(find_file(root, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images-idx3-ubyte.gz"],
                              f"Fashion-MNIST {split} images"))
    labs = read_idx(find_file(root, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels-idx1-ubyte.gz"],
                              f"Fashion-MNIST {split} labels"))
    if imgs.ndim != 3 or imgs.dtype != np.uint8 or labs.ndim != 1:
        raise DataError(f"Fashion-MNIST {split}: expected uint8 images (N, H, W) and labels (N,), "
                        f"got {imgs.dtype} {imgs.shape} and {labs.shape}")
    if len(imgs) != len(labs):
        raise DataError(f"Fashion-MNIST {split}: {len(imgs)} images but {len(labs)} labels")
    if labs.size and labs.max() > 9:
        raise DataError(f"Fashion-MNIST {split}: labels must be 0..9, found {labs.max()}")
    return imgs[..., None], labs.astype(np.int64)


@dataclass(frozen=True)
class ArrayDatasetSpec:
    """An in-memory dataset: its reader ``(root, train) -> (images NHWC uint8, labels)``, class
    count and default per-channel normalisation."""

    reader: Callable[[Path, bool], tuple[np.ndarray, np.ndarray]]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, ArrayDatasetSpec] = {
    "cifar10": ArrayDatasetSpec(load_cifar10, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fashion_mnist": ArrayDatasetSpec(load_fashion_mnist, 10, (0.2860,), (0.3530,)),
}


def check_root(path: str | Path, dataset: str) -> Path:
    """``path`` as an existing folder; DataError naming the dataset otherwise."""
    if not path:
        raise DataError(f"no data path for {dataset}: set data.path or pass --data")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{dataset} data path does not exist or is not a folder: {root}")
    return root


def load_arrays(name: str, root: str | Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) uint8 and labels (N,) int64 of a registered in-memory dataset's split."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name].reader(check_root(root, name), train)
