"""File I/O of the project: atomic writes (a crash or kill leaves the old file or the new one, never
a truncated one), the one checkpoint writer (``atomic_torch_save``) and reader (``read_checkpoint``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save",
           "read_checkpoint", "read_yaml_mapping"]


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: str | Path, weights_only: bool = True) -> Any:
    """``torch.load`` a checkpoint on the CPU; FileNotFoundError, or one ValueError naming the file.

    ``weights_only=False`` is for the trainer's own checkpoints, which hold RNG states."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unreadable file
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


def read_yaml_mapping(path: str | Path, error: type[Exception] = ValueError) -> dict:
    """The mapping in the YAML file ``path`` (empty file: {}); ``error`` names what is wrong."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise error(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data
