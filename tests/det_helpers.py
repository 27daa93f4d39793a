"""Helpers for the nasnet_det tests only (detectron2 configs, tiny inputs); ROOT comes from conftest."""

import torch
from conftest import ROOT

DETECTION_CONFIG_DIRS = ("COCO-Detection", "quick_schedules")
CONFIGS = sorted([str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("Base-*.yaml")]
                 + [str(p.relative_to(ROOT)) for d in DETECTION_CONFIG_DIRS
                    for p in (ROOT / "configs" / d).glob("*.yaml")])


def make_cfg(config_file=None, opts=()):
    """A detectron2 config with nasnet_det keys, an optional shipped file and opts merged."""
    from detectron2.config import get_cfg

    import nasnet_det

    cfg = get_cfg()
    nasnet_det.add_nasnet_config(cfg)
    if config_file:
        cfg.merge_from_file(str(ROOT / config_file))
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_inputs(n=2, size=64, num_classes=3):
    """Random images (CHW uint8-range floats) with one or two gt boxes each."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(0)
    batch = []
    for i in range(n):
        img = torch.randint(0, 256, (3, size, size), generator=g).float()
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 36.0], [20.0, 24.0, 60.0, 60.0]])[: 1 + i % 2])
        inst.gt_classes = torch.tensor([0, 2])[: 1 + i % 2] % num_classes
        batch.append({"image": img, "height": size, "width": size, "instances": inst})
    return batch


def tiny_shapes_val(tmp_path_factory, name: str, count: int = 3):
    """A folder with ``count`` generated shapes val images, registered once as dataset ``name``."""
    from detectron2.data import DatasetCatalog

    from nasnet_det import datasets, shapes

    root = tmp_path_factory.mktemp("shapes")
    shapes.generate(root, "val", count=count)
    if name not in DatasetCatalog.list():
        datasets.register_shapes(name, "val", root)
    return root
