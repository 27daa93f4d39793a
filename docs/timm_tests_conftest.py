"""conftest for running timm's own tests/test_models.py on our models (see docs/interop.md).

Copy it to the root of a timm source tree of the installed timm version as ``conftest.py``.
It registers every nasnet_core model with timm (as ``nc_<name>``) before timm's test module
builds its parameter lists, so ``pytest tests/test_models.py -k nc_`` runs them. timm picks
the models for its ``forward_intermediates`` tests by timm module name (its list includes
``nasnet``); our models come from another module, so ``list_models(module=...)`` is widened to
add them wherever timm asks for its ``nasnet`` module.
"""

import timm

import nasnet_core.interop.timm_compat  # noqa: F401  (registers the models)

_list_models = timm.list_models


def _list_models_with_ours(*args, **kwargs):
    """timm.list_models, plus our models where the query asks for timm's nasnet module."""
    names = _list_models(*args, **kwargs)
    module = kwargs.get("module")
    modules = module if isinstance(module, (list, tuple)) else [module]
    if "nasnet" in modules:
        names = sorted(set(names) | set(_list_models("nc_*")))
    return names


timm.list_models = _list_models_with_ours
