"""A DetectionCheckpointer that also reads nasnet_core ImageNet checkpoints.

A nasnet_core checkpoint (``{"arch", "config", "state_dict"}``, written by
``nasnet_core.save_checkpoint`` / ``tools/convert_weights.py``) or its detectron2 form
(``{"model", "__author__": "nasnet_core"}``) is mapped onto the detector by unique dotted
suffix: ``cell_11.conv_1x1.conv.weight`` -> ``backbone.nasnet.cell_11.conv_1x1.conv.weight``,
``reduction_cell_1...`` -> ``roi_heads.res5.nasnet.reduction_cell_1...``. Keys left over are
passed on, so fvcore's load report lists them as unexpected (e.g. ``last_linear.*``).

Every checkpoint (these, detectron2's own, ``model_final.pth``) must fill every NASNet tensor
of the model (backbone and C4 ROI-head cells) with the right shape; otherwise one
CheckpointMismatch lists what is missing or mis-shaped and nothing is loaded. RPN, FPN and
box-predictor tensors may be absent or differ (another number of classes), as in Detectron2.
"""

from __future__ import annotations

import logging
import os

from detectron2.checkpoint import DetectionCheckpointer

from nasnet_core.interop.convert import CheckpointMismatch

__all__ = ["NASNetCheckpointer", "match_suffixes", "check_backbone_filled", "AUTHOR"]

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


def _part(key: str) -> str:
    """The module a NASNet key belongs to: everything up to the name after ``nasnet``."""
    parts = key.split(".")
    return ".".join(parts[: parts.index("nasnet") + 2])


def _by_part(keys: list[str]) -> str:
    """``a.nasnet.cell_0 (6 tensors), ...`` for ``keys``, in order of first appearance."""
    groups: dict[str, int] = {}
    for k in keys:
        groups[_part(k)] = groups.get(_part(k), 0) + 1
    return ", ".join(f"{g} ({n} tensor{'s' if n > 1 else ''})" for g, n in groups.items())


def check_backbone_filled(model_state: dict, ckpt_state: dict, source: str) -> int:
    """Raise one CheckpointMismatch unless ``ckpt_state`` fills every NASNet tensor of the model.

    The NASNet tensors are the backbone's (and the C4 ROI head's cells): every key with a
    ``nasnet`` component, BN batch counters aside. RPN, FPN and box-predictor tensors may be
    absent or differ (an ImageNet classifier has none; a detector of another class count
    differs in its box predictor). Returns how many NASNet tensors were checked."""
    required = {k: v for k, v in model_state.items()
                if "nasnet" in k.split(".") and not k.endswith("num_batches_tracked")}
    missing = [k for k in required if k not in ckpt_state]
    wrong = [(k, tuple(ckpt_state[k].shape), tuple(v.shape)) for k, v in required.items()
             if k in ckpt_state and tuple(ckpt_state[k].shape) != tuple(v.shape)]
    if not missing and not wrong:
        return len(required)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_by_part(missing)}")
    if wrong:
        k, got, want = wrong[0]
        problems.append(f"wrong shape {len(wrong)}: {_by_part([w[0] for w in wrong])}; first {k} "
                        f"checkpoint {got} vs model {want}")
    filled = len(required) - len(missing) - len(wrong)
    raise CheckpointMismatch(
        f"{source} fills {filled} of the {len(required)} backbone tensors of this detector "
        f"({'; '.join(problems)}); give a checkpoint of the same network (MODEL.NASNET.ARCH, N, F, "
        "GENOTYPE) -- only the classifier and box-predictor heads may differ")


class NASNetCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer plus nasnet_core checkpoints (both formats), matched by suffix.

    Any checkpoint that does not fill every NASNet tensor of the model is refused with one
    CheckpointMismatch (``check_backbone_filled``) before anything is loaded."""

    def load(self, path, *args, **kwargs):
        """Load ``path`` (see fvcore's Checkpointer.load); remembers it for the error message.

        FileNotFoundError for a local path that is not a file (fvcore asserts it)."""
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        self._source = path
        return super().load(path, *args, **kwargs)

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
        if checkpoint.get("matching_heuristics", False):  # detectron2 renames these itself; check after
            return self._load_renamed_by_heuristics(checkpoint)
        state = {k.removeprefix("module."): v for k, v in checkpoint["model"].items()}
        check_backbone_filled(self.model.state_dict(), state, str(getattr(self, "_source", "checkpoint")))
        return super()._load_model(checkpoint)

    def _load_renamed_by_heuristics(self, checkpoint):
        """Load a checkpoint detectron2 renames by heuristics, refusing it if the backbone is not filled."""
        from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

        self._convert_ndarray_to_tensor(checkpoint["model"])
        checkpoint["model"] = align_and_update_state_dicts(
            self.model.state_dict(), checkpoint["model"],
            c2_conversion=checkpoint.get("__author__", None) == "Caffe2")
        checkpoint["matching_heuristics"] = False
        check_backbone_filled(self.model.state_dict(), checkpoint["model"],
                              str(getattr(self, "_source", "checkpoint")))
        return super()._load_model(checkpoint)
