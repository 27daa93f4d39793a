"""File I/O of the project: atomic writes (a crash or kill leaves the old file or the new one, never
a truncated one; a full disk is one DiskFullError line), the one checkpoint writer
(``atomic_torch_save``) and reader (``read_checkpoint``)."""

from __future__ import annotations

import errno
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import ProjectError

__all__ = ["DiskFullError", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save",
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
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    Any failure removes the temp file and leaves ``path`` as it was; a full disk or quota (ENOSPC /
    EDQUOT anywhere in the error's chain) becomes one DiskFullError naming the file and the free space."""
    path = Path(path)
    _writable_target(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: {path.parent} is a file, not a folder")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())  # mkstemp creates 0600; a written file gets the usual mode
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and _out_of_space(e, path.parent)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if full:
            kept = f"{path} is unchanged" if path.exists() else "nothing was written"
            free = _free_bytes(path.parent) / 2**20
            raise DiskFullError(f"no space left on device writing {path} ({free:.1f} MiB free there); "
                                f"{kept}") from e
        raise
    return path


class DiskFullError(ProjectError, OSError):
    """A write that failed for want of space; its message names the file and the space left."""

    errno = errno.ENOSPC


def _out_of_space(error: BaseException, folder: Path) -> bool:
    """Whether ``error`` (or one it was raised from or during) is ENOSPC / EDQUOT; torch's zip writer
    may hide the OSError behind a RuntimeError, so one with under 1 MiB left in ``folder`` counts too."""
    seen, e = set(), error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return isinstance(error, (OSError, RuntimeError)) and _free_bytes(folder) < 2**20


def _free_bytes(folder: Path) -> float:
    """Bytes an unprivileged write may still use on the file system of ``folder`` (or its nearest
    existing parent); inf when that cannot be read."""
    for d in (folder, *folder.parents):
        try:
            st = os.statvfs(d)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return float("inf")


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


def read_checkpoint(path: str | Path, weights_only: bool = True, mmap: bool = False) -> Any:
    """``torch.load`` a checkpoint on the CPU; FileNotFoundError, or one ValueError naming the file.

    ``weights_only=False`` is for the trainer's own checkpoints, which hold RNG states; ``mmap`` maps the
    tensors instead of reading them (a cheap look at a large checkpoint's metadata)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
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
