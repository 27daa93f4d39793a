"""Reading TensorFlow checkpoints (V2 bundle: ``model.ckpt.index`` + ``model.ckpt.data-*``).

TF-slim evaluates its NASNet checkpoints with the exponential-moving-average shadow variables
(``<var>/ExponentialMovingAverage``) in place of the trained ones, and the OD API's released
detectors store them the same way when they were trained with a moving average: where a shadow
exists it replaces its variable. Optimizer slots (``<var>/RMSProp``, ``/Momentum``, ``/Adam``...)
and bookkeeping scalars (``global_step``) are dropped. TensorFlow is needed only here, as the
``tf`` extra; without it the error says which extra to install.

Import TensorFlow only through ``import_tensorflow``: triton (which torch imports lazily, e.g. for
meta-device tensors or ``torch.compile``) loaded *after* TensorFlow crashes the process with a
segmentation fault (their bundled LLVMs clash); loaded before, both work. It also keeps TF's C++
start-up lines (printed before ``TF_CPP_MIN_LOG_LEVEL`` is read) off stderr, so a tool's error stays
its one line; they are replayed if the import fails.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["TF_EXTRA_HINT", "TFCheckpointError", "import_tensorflow", "resolve_tf_checkpoint",
           "read_tf_checkpoint"]

TF_EXTRA_HINT = "reading TensorFlow checkpoints needs TensorFlow: pip install 'nasnet[tf]'"
EMA_SUFFIX = "/ExponentialMovingAverage"
# Optimizer slot variables and training bookkeeping: never model weights.
_NOT_WEIGHTS = re.compile(r"(^|/)(global_step|RMSProp(_1)?|Momentum|Adam(_1)?|beta[12]_power)$")


class TFCheckpointError(ValueError):
    """A path that is not a readable TensorFlow V2 checkpoint, or TensorFlow missing."""


def import_tensorflow(module: str = "tensorflow"):
    """Import ``module`` of TensorFlow, triton first where installed (see the module docstring);
    TFCheckpointError naming the ``tf`` extra when TensorFlow is absent."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if importlib.util.find_spec("triton") is not None:
            importlib.import_module("triton")
    except ImportError:
        pass  # a broken triton: torch cannot load it either
    with tempfile.TemporaryFile() as log:
        try:
            with _fd2_to(log):
                return importlib.import_module(module)
        except ImportError:
            raise TFCheckpointError(TF_EXTRA_HINT) from None
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise


@contextlib.contextmanager
def _fd2_to(file):
    """File descriptor 2 (where C++ code writes too) pointed at ``file`` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def resolve_tf_checkpoint(path: str | Path) -> str:
    """The checkpoint prefix for ``path``: a prefix, its ``.index`` / ``.data-*`` file, or a folder."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.index"))
        if len(indexes) != 1:
            found = ", ".join(p.name for p in indexes) or "none"
            raise TFCheckpointError(f"{path} must hold exactly one TF checkpoint (*.index files: {found}); "
                                    "give the checkpoint prefix, e.g. DIR/model.ckpt")
        return str(indexes[0].with_suffix(""))
    text = str(path)
    text = re.sub(r"\.(index|data-\d{5}-of-\d{5})$", "", text)
    if not Path(text + ".index").is_file():
        raise FileNotFoundError(f"no TensorFlow checkpoint at {path} (expected {text}.index and "
                                f"{text}.data-*)")
    return text


def read_tf_checkpoint(path: str | Path, use_ema: bool = True) -> dict[str, np.ndarray]:
    """Every weight of a TF checkpoint as ``{variable name: array}`` (TF layout, e.g. HWIO kernels);
    with ``use_ema`` a variable's moving-average shadow, where stored, replaces it."""
    prefix = resolve_tf_checkpoint(path)
    py_checkpoint_reader = import_tensorflow("tensorflow.python.training.py_checkpoint_reader")
    try:
        reader = py_checkpoint_reader.NewCheckpointReader(prefix)
    except Exception as e:  # TF raises its own DataLossError / NotFoundError types
        raise TFCheckpointError(f"{prefix} is not a readable TensorFlow checkpoint: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    names = sorted(reader.get_variable_to_shape_map())
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name.endswith(EMA_SUFFIX) or _NOT_WEIGHTS.search(name):
            continue
        source = name + EMA_SUFFIX if use_ema and name + EMA_SUFFIX in names else name
        out[name] = np.asarray(reader.get_tensor(source))
    return out
