"""The one writer of a run folder: an exclusive ``flock`` on a lock file in it (a search's
``search.lock``, a training's ``train.lock``), held by the writing process for the whole run.

The kernel drops a flock when its process exits, however it dies (SIGKILL included), so no stale
lock is ever left; the file stays, naming its last holder, and is never deleted (deleting a lock file
lets two processes lock two different files of one name).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from .errors import ProjectError

__all__ = ["FolderBusy", "lock_folder"]


class FolderBusy(ProjectError):
    """Another live process holds the folder's lock."""


def _holder(handle: IO[str]) -> str:
    """`` (pid N on HOST, since TIME)`` as the holder recorded it; empty when it has not yet."""
    handle.seek(0)
    text = " ".join(handle.read().split())
    return f" ({text})" if text else ""


def lock_folder(folder: str | Path, name: str, what: str,
                error: type[Exception] = FolderBusy) -> IO[str]:
    """Take the exclusive flock on ``folder/name`` (created if missing) for this process, held until
    the returned handle is closed; ``error`` naming the folder, ``what`` holds it and its pid if taken.

    The holder writes its pid, host and start time into the file (in place: the lock is on this file's
    inode, so it cannot be replaced by an atomic write)."""
    folder = Path(folder)
    handle = open(folder / name, "a+")  # noqa: SIM115 - held open for the writer's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(handle)
        handle.close()
        raise error(f"{folder} is in use by {what}{holder}; wait for it to finish or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle
