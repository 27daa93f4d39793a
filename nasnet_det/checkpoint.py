"""A DetectionCheckpointer that also reads nasnet_core ImageNet checkpoints.

A nasnet_core checkpoint (``{"arch", "config", "state_dict"}``, written by
``nasnet_core.save_checkpoint`` / ``tools/convert_weights.py``) or its detectron2 form
(``{"model", "__author__": "nasnet_core"}``) is mapped onto the detector by unique dotted
suffix: ``cell_11.conv_1x1.conv.weight`` -> ``backbone.nasnet.cell_11.conv_1x1.conv.weight``,
``reduction_cell_1...`` -> ``roi_heads.res5.nasnet.reduction_cell_1...``. Keys left over are
passed on, so fvcore's load report lists them as unexpected (e.g. ``last_linear.*``).
"""

from __future__ import annotations

import logging

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["NASNetCheckpointer", "match_suffixes", "AUTHOR"]

AUTHOR = "nasnet_core"
logger = logging.getLogger(__name__)


def match_suffixes(model_keys, ckpt: dict) -> tuple[dict, list[str]]:
    """Rename ``ckpt`` keys to the model keys they are the longest dotted suffix of.

    Returns (renamed dict incl. unmatched keys under their own name, unmatched key list).
    Raises ValueError when one checkpoint key would fill two model keys.
    """
    owner: dict[str, str] = {}
    for key in model_keys:
        parts = key.split(".")
        for i in range(len(parts)):
            suffix = ".".join(parts[i:])
            if suffix in ckpt:
                if suffix in owner:
                    raise ValueError(f"checkpoint key {suffix!r} matches both {owner[suffix]!r} and "
                                     f"{key!r}; module names must be unique suffixes")
                owner[suffix] = key
                break
    out = {owner.get(k, k): v for k, v in ckpt.items()}
    return out, sorted(set(ckpt) - set(owner))


class NASNetCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer plus nasnet_core checkpoints (both formats), matched by suffix."""

    def _load_file(self, filename):
        loaded = super()._load_file(filename)
        inner = loaded.get("model")
        if isinstance(inner, dict) and isinstance(inner.get("state_dict"), dict) and "arch" in inner:
            logger.info(f"Reading a nasnet_core checkpoint of {inner['arch']} "
                        f"(config {inner.get('config', {})})")
            return {"model": inner["state_dict"], "__author__": AUTHOR, "nasnet_core": True}
        if loaded.get("__author__") == AUTHOR:
            loaded = dict(loaded, nasnet_core=True)
            loaded.pop("matching_heuristics", None)
        return loaded

    def _load_model(self, checkpoint):
        if checkpoint.pop("nasnet_core", False):
            self._convert_ndarray_to_tensor(checkpoint["model"])
            renamed, unmatched = match_suffixes(self.model.state_dict().keys(), checkpoint["model"])
            # FrozenBN has no batch counter: its BN counters are noise, not a mismatch.
            for k in [k for k in unmatched if k.endswith("num_batches_tracked")]:
                unmatched.remove(k)
                renamed.pop(k)
            matched = len(checkpoint["model"]) - len(unmatched)
            logger.info(f"nasnet_core checkpoint: {matched} tensors matched by suffix, "
                        f"{len(unmatched)} unmatched: {', '.join(unmatched) or 'none'}")
            checkpoint["model"] = renamed
        return super()._load_model(checkpoint)
