"""Training/evaluation glue for tools/train_net.py: config setup, the Trainer, post-eval drawing."""

from __future__ import annotations

import difflib
import logging
import os
import re
import weakref
from pathlib import Path

import detectron2.data.transforms as T
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, default_setup, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from nasnet_core.common.cli import one_line
from nasnet_core.common.config import ConfigError

from . import shapes
from .amp import AutocastTrainer
from .backbone import NASNetBackbone
from .checkpoint import NASNetCheckpointer
from .config import add_nasnet_config
from .fast_eval import maybe_fast_eval
from .meta_arch import META_ARCH
from .roi_heads import NASNetCropHead

__all__ = ["setup_cfg", "setup_cfg_plain", "merge_config", "Trainer", "EVALUATORS", "build_evaluator",
           "eval_output_dir", "visualize_after_eval", "build_augmentations", "ensure_shapes_datasets",
           "used_datasets"]

logger = logging.getLogger("nasnet_det")

EVALUATORS = {
    # metadata evaluator_type -> builder(dataset_name, cfg, output_dir)
    "coco": lambda name, cfg, out: COCOEvaluator(name, tasks=("bbox",), output_dir=out),
}


def _unknown_key(cfg, message: str) -> str | None:
    """``unknown config key A.B (did you mean A.C?)`` for yacs' "Non-existent key" message, else None."""
    m = re.search(r"Non-existent (?:config )?key: (\S+)", message)
    if not m:
        return None
    *parents, last = m.group(1).split(".")
    node = cfg
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    close = difflib.get_close_matches(last, list(node), n=1, cutoff=0.75) if isinstance(node, dict) else []
    hint = f" (did you mean {'.'.join([*parents, close[0]])}?)" if close else ""
    return f"unknown config key {m.group(1)}{hint}"


def _yacs_message(cfg, e: Exception) -> str:
    """One line for a yacs merge error: the unknown key (with a close match) or the error's text."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return _unknown_key(cfg, text) or one_line(text)


def merge_config(cfg, config_file: str, opts=()) -> None:
    """Merge ``config_file`` then the ``opts`` pairs into ``cfg``; one ConfigError naming the file or key.

    Detectron2 / yacs report these as AssertionError, KeyError, ValueError, a YAML error or a
    missing ``_BASE_`` file; each becomes one line that says which file or override is wrong."""
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        cfg.merge_from_file(str(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {one_line(e)}") from None
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path}: its _BASE_ file is not found: {e.filename}") from None
    except AttributeError:
        raise ConfigError(f"config file {path} must hold a mapping of config keys") from None
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        raise ConfigError(f"config file {path}: {_yacs_message(cfg, e)}") from None
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        raise ConfigError(f"config override: {_yacs_message(cfg, e)}") from None


def setup_cfg_plain(config_file: str, opts=()):
    """Config with nasnet_det's keys, ``config_file`` and ``opts`` merged (no logging setup), frozen."""
    cfg = get_cfg()
    add_nasnet_config(cfg)
    merge_config(cfg, config_file, opts)
    cfg.freeze()
    if cfg.CPU_THREADS > 0:
        torch.set_num_threads(cfg.CPU_THREADS)
    return cfg


def setup_cfg(args):
    """Detectron2 config with nasnet_det's keys, the file and opts merged, frozen and logged."""
    cfg = setup_cfg_plain(args.config_file, args.opts)
    # Every dataset name is checked (and shapes data made; COCOEvaluator reads the json when it is
    # built) before anything is written or trained.
    ensure_shapes_datasets(cfg, args.eval_only)
    default_setup(cfg, args)
    return cfg


def used_datasets(cfg, eval_only: bool = False) -> list[str]:
    """The datasets a run reads: DATASETS.TEST with ``eval_only``, else DATASETS.TRAIN and TEST; a
    ValueError naming the first unregistered one (and the registered names)."""
    known = DatasetCatalog.list()
    names = []
    for key in ("TEST",) if eval_only else ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown dataset {name!r} in DATASETS.{key}{hint}; registered: "
                                 f"{', '.join(sorted(known))}")
            names.append(name)
    return names


def ensure_shapes_datasets(cfg, eval_only: bool = False) -> None:
    """Check the datasets the run reads (``used_datasets``) and generate the missing shapes ones."""
    for name in used_datasets(cfg, eval_only):
        root = MetadataCatalog.get(name).get("shapes_root")
        if root is not None:
            shapes.ensure_shapes(root)


def eval_output_dir(cfg, dataset_name: str) -> str:
    """Each test set's own results folder, so test-dev runs never overwrite each other."""
    return os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """The evaluator for ``dataset_name``'s ``evaluator_type`` (see EVALUATORS)."""
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if kind not in EVALUATORS:
        raise ValueError(f"no evaluator for {dataset_name!r} (evaluator_type {kind!r}); "
                         f"known: {', '.join(EVALUATORS)}")
    return EVALUATORS[kind](dataset_name, cfg, output_folder or eval_output_dir(cfg, dataset_name))


def build_augmentations(cfg, is_train: bool) -> list:
    """Fixed square resize when INPUT.FIXED_SIZE > 0 (the paper), else shortest-edge; none under
    INPUT.TF_RESIZE (the model resizes as TF); flip in training."""
    if cfg.INPUT.TF_RESIZE:
        if cfg.MODEL.META_ARCHITECTURE != META_ARCH:
            raise ValueError(f"INPUT.TF_RESIZE needs MODEL.META_ARCHITECTURE {META_ARCH} (the model resizes "
                             f"as TF), got {cfg.MODEL.META_ARCHITECTURE}")
        augs = []
    elif cfg.INPUT.FIXED_SIZE > 0:
        augs = [T.Resize((cfg.INPUT.FIXED_SIZE, cfg.INPUT.FIXED_SIZE))]
    elif is_train:
        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                     cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    else:
        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    if is_train and cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    return augs


class DropPathStep(hooks.HookBase):
    """Feeds the iteration number to ScheduledDropPath in the backbone and the ROI head."""

    def before_step(self):
        """Set the drop-path step of every NASNet part of the model."""
        model = self.trainer.model
        model = getattr(model, "module", model)
        for part in model.modules():
            if isinstance(part, (NASNetBackbone, NASNetCropHead)):
                part.set_training_step(self.trainer.iter)


class Trainer(DefaultTrainer):
    """DefaultTrainer with NASNet checkpoint loading, per-dataset evaluators, fixed-size inputs and
    SOLVER.AMP on CPU too (bf16 autocast, see nasnet_det.amp)."""

    def __init__(self, cfg):
        if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
            self._init_cpu_ddp(cfg)  # builds its NASNetCheckpointer itself
        else:
            super().__init__(cfg)
            if cfg.SOLVER.AMP.ENABLED:  # detectron2's AMPTrainer needs CUDA: autocast on any device
                t = self._trainer
                self._trainer = AutocastTrainer(t.model, t.data_loader, t.optimizer)
            # Reads nasnet_core ImageNet checkpoints in MODEL.WEIGHTS (and everything detectron2 reads).
            self.checkpointer = NASNetCheckpointer(self.checkpointer.model, cfg.OUTPUT_DIR,
                                                   **self.checkpointer.checkpointables)

    def _init_cpu_ddp(self, cfg) -> None:
        """DefaultTrainer.__init__ with the model in DDP *without* device_ids: detectron2 passes the
        local rank, which DDP rejects for a CPU module; gloo processes on CPU need none."""
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = DistributedDataParallel(model, broadcast_buffers=False)
        loop = AutocastTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = loop(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = NASNetCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter, self.max_iter, self.cfg = 0, cfg.SOLVER.MAX_ITER, cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test on the BN-folded inference copy of ``model`` when TEST.FAST_EVAL is on
        (nasnet_det.fast_eval; the trained model is not changed)."""
        return super().test(cfg, maybe_fast_eval(cfg, model), evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """See :func:`build_evaluator`."""
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        """Train loader with :func:`build_augmentations`."""
        return build_detection_train_loader(
            cfg, mapper=DatasetMapper(cfg, True, augmentations=build_augmentations(cfg, True)))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Test loader with :func:`build_augmentations`."""
        return build_detection_test_loader(
            cfg, dataset_name,
            mapper=DatasetMapper(cfg, False, augmentations=build_augmentations(cfg, False)))

    def build_hooks(self):
        """DefaultTrainer's hooks plus the drop-path step hook."""
        return [DropPathStep()] + super().build_hooks()


def visualize_after_eval(cfg) -> list[Path]:
    """Draw the detections of each test set's results json into OUTPUT_DIR/vis/<dataset>/ (beside the
    ground truth with TEST.VIS_GT)."""
    from .visualize import draw_results

    written = []
    if cfg.TEST.VIS_MAX_IMAGES <= 0:
        return written
    for name in cfg.DATASETS.TEST:
        results = Path(eval_output_dir(cfg, name)) / "coco_instances_results.json"
        if not results.is_file():
            logger.warning(f"no results json for {name} at {results}; nothing drawn")
            continue
        out = Path(cfg.OUTPUT_DIR) / "vis" / name
        written += draw_results(name, [results], out, cfg.TEST.VIS_THRESHOLD, cfg.TEST.VIS_MAX_IMAGES,
                                ground_truth=cfg.TEST.VIS_GT)
        logger.info(f"drew {len(written)} images with detections into {out}")
    return written
