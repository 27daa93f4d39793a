"""Helpers shared by the test files: the repository root, loading a tool script, BN randomisation;
the guard that fails the run when a test leaves files in the checkout."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from tf_oracle import tf_models  # noqa: F401 - the session fixture, for the TF parity tests

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.stem for p in (ROOT / "tools").glob("*.py"))
# Not part of the checkout's content: the venv, git's and the tools' caches.
UNWATCHED = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "nasnet.egg-info"}
_BEFORE = pytest.StashKey[dict]()


def checkout_files(root: Path = ROOT) -> dict[str, tuple[int, int]]:
    """{path relative to ``root``: (size, mtime_ns)} of every file (and ``folder/``: (0, 0)) in the
    checkout, ignored ones too (datasets/, output/, runs/), less UNWATCHED folders; links not followed."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in UNWATCHED]
        for name in dirs:  # an empty new folder counts too
            found[os.path.relpath(os.path.join(folder, name), root) + "/"] = (0, 0)
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return found


def checkout_changes(before: dict, after: dict) -> list[str]:
    """``+ path`` (new), ``- path`` (removed), ``~ path`` (changed) between two checkout_files()."""
    return ([f"+ {p}" for p in sorted(after.keys() - before.keys())]
            + [f"- {p}" for p in sorted(before.keys() - after.keys())]
            + [f"~ {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]])


def pytest_sessionstart(session):
    """Snapshot the checkout before the first test."""
    session.config.stash[_BEFORE] = checkout_files()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run (exit 1) when the checkout gained, lost or changed files: tests write only
    under tmp_path (set DETECTRON2_DATASETS, OUTPUT_DIR, cwd or the output flag there)."""
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    changes = checkout_changes(before, checkout_files())
    if not changes:
        return
    shown = "\n  ".join(changes[:20]) + (f"\n  ... and {len(changes) - 20} more" if len(changes) > 20 else "")
    message = f"the tests changed {len(changes)} file(s) in the checkout {ROOT}:\n  {shown}"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_sep("=", "files written into the checkout", red=True)
        reporter.write_line(message)
    else:
        print(message)
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED



@pytest.fixture(autouse=True)
def _seed():
    """Seed 0 for every test, and torch's thread count restored after it: a tool run in-process
    (train_net's CPU_THREADS 1) must not change the float summation order of later tests (the TF
    parity test's detections include NMS decisions that can sit within float noise of a threshold)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def randomize_bn(model: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
