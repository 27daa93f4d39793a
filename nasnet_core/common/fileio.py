"""File I/O of the project: atomic writes (a crash or kill leaves the old file or the new one, never
a truncated one), the one checkpoint writer (``atomic_torch_save``) and reader (``read_checkpoint``)."""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save",
           "read_checkpoint", "read_yaml_mapping", "remove_stale_temps", "file_mode"]

_UMASK_LOCK = threading.Lock()
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
"""Names ``atomic_write`` gives its temp files: ``.<name>.<random>.tmp``."""


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask."""
    with _UMASK_LOCK:  # reading the umask means setting it; no other thread sees the 0
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def _writable_target(path: Path) -> None:
    """ValueError (a user error: one line from the tools) when ``path`` cannot be a file."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file path to write")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    _writable_target(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: {path.parent} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp creates 0600; a written file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files a killed ``atomic_write`` left in ``folder``; returns them.

    Only for a folder no other process is writing to (a training run's, at its start)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if p.is_file() and _TEMP_NAME.match(p.name))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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
