"""TensorFlow's own NASNet code as a test oracle: the vendored tensorflow/models subset
(``../shared/vendor/tf-models-nasnet-*.tar.gz``), unpacked once per test session into a temporary
folder, put on ``sys.path`` with its TF 2.x shims installed. Tests that use it skip, with the
reason shown, only where TensorFlow or the archive is truly absent.

Import TensorFlow only through ``tf_v1()`` (after this module set ``TF_USE_LEGACY_KERAS``).
"""

import os
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE_GLOB = "tf-models-nasnet-*.tar.gz"


def find_archive() -> Path | None:
    """The vendored archive beside the checkout (``../shared/vendor``), or $NASNET_TF_MODELS_ARCHIVE."""
    if os.environ.get("NASNET_TF_MODELS_ARCHIVE"):
        return Path(os.environ["NASNET_TF_MODELS_ARCHIVE"])
    found = sorted((ROOT.parent / "shared" / "vendor").glob(ARCHIVE_GLOB))
    return found[-1] if found else None


def tf_v1():
    """``tensorflow.compat.v1`` with graph mode on; skips the test when TensorFlow is absent."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # the OD API needs Keras 2 (tf-keras)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from nasnet_core.interop.tf_checkpoint import TFCheckpointError, import_tensorflow

    try:  # triton before TensorFlow, or a later torch import of triton segfaults the test session
        import_tensorflow()
    except TFCheckpointError:
        pass  # importorskip below gives the reason
    tf = pytest.importorskip("tensorflow.compat.v1", reason="TensorFlow absent (pip install -e '.[tf]')")
    tf.disable_eager_execution()
    return tf


@pytest.fixture(scope="session")
def tf_models(tmp_path_factory) -> Path:
    """The archive unpacked into a session temp folder, its research/ and research/slim/ on sys.path,
    the TF 2.x shims installed; yields the unpacked root."""
    archive = find_archive()
    if archive is None or not archive.is_file():
        pytest.skip(f"TF reference archive absent (looked for ../shared/vendor/{ARCHIVE_GLOB})")
    tf_v1()
    root = tmp_path_factory.mktemp("tf_models")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    for sub in ("smoke", "research/slim", "research"):
        path = str(root / sub)
        if path not in sys.path:
            sys.path.insert(0, path)
    import tf_compat_shims

    tf_compat_shims.install_all()
    return root
