"""conftest for running timm's own tests/test_models.py on our models (see docs/interop.md).

Copy it to the root of a timm source tree of the installed timm version as ``conftest.py``;
it registers every nasnet_core model with timm (as ``nc_<name>``) before timm's test module
builds its parameter lists, so ``pytest tests/test_models.py -k nc_`` runs them.
"""

import nasnet_core.timm_compat  # noqa: F401  (registers the models)
