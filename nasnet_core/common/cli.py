"""What every tool in tools/ shares: bad input ends in one ``error:`` line on stderr and exit code 2.

The project's own errors (ConfigError, DataError, CheckpointMismatch, GenotypeError, SpaceError
are ValueErrors; StoreError; a missing file) are caught here, at the top of each tool, so no
tool prints a traceback for input it rejects.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import ProjectError

__all__ = ["USER_ERRORS", "run_tool", "tool_main", "one_line", "parse_with_overrides", "positive_int",
           "refuse_existing"]



USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, ProjectError)


def one_line(error: BaseException) -> str:
    """``str(error)`` on one line."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


def run_tool(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; on a project error print ``error: <message>`` (one line) and return 2."""
    try:
        return main(argv) or 0
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def tool_main(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Decorator for a tool's ``main(argv)``: the same function, run through ``run_tool``."""
    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        return run_tool(main, argv)
    return wrapper


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
                         dest: str = "overrides") -> argparse.Namespace:
    """``parser.parse_args`` for a tool with trailing ``KEY VALUE`` overrides (positional ``dest``):
    pairs given after options too (``--config c.yaml solver.epochs 1 --output X train.threads 1``)
    join ``dest``; an unknown option is still an argparse error."""
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-") and not _is_number(a)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    setattr(args, dest, [*(getattr(args, dest) or []), *rest])
    return args


def refuse_existing(path, force: bool) -> None:
    """ValueError when ``path`` is given and exists and ``force`` is not set (no silent overwrite)."""
    if path and Path(path).exists() and not force:
        raise ValueError(f"{path} exists; pass --force to overwrite it")


def positive_int(text: str) -> int:
    """argparse ``type`` for counts and sizes: an integer >= 1 (argparse's one error line otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
