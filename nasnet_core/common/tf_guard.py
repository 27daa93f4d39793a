"""Keep TensorFlow and triton from crashing one process (imported first by ``nasnet_core``).

Importing triton (torch's compiler backend: the first torch optimizer imports it) after TensorFlow
segfaults the process — their bundled LLVMs clash; the reverse order works. TensorFlow is in the
environment with the ``tf`` extra, and TensorBoard's writers import it whenever it is installed, so a
run that logged a scalar before building its first optimizer crashed. Two guards:

* TensorBoard is pointed at its own TensorFlow stub (its ``tensorboard.compat.notf`` switch), which
  writes the same event files: logging never loads TensorFlow (and saves its import time);
* triton, where installed, is imported now, before anything of ours can load TensorFlow (the TF
  checkpoint reader, the parity tests).
"""

import importlib.util
import sys
import types

__all__ = []

if "tensorboard.compat.notf" not in sys.modules:
    sys.modules["tensorboard.compat.notf"] = types.ModuleType("tensorboard.compat.notf")
if "tensorflow" not in sys.modules and importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
