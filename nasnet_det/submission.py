"""COCO evaluation-server submissions: the zipped ``detections_<testset>_<alg>_results.json``.

A test set is submittable when its metadata has ``submission_testset`` (``coco_2017_test-dev``:
``test-dev2017``). After ``--eval-only``, its ``coco_instances_results.json`` is checked against
the test set's image ids and written, zipped, under the name the server expects.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path

from detectron2.data import MetadataCatalog

from nasnet_core.common.fileio import atomic_write

from .engine import eval_output_dir

__all__ = ["alg_name", "testset_image_ids", "write_submission", "write_submissions"]

logger = logging.getLogger("nasnet_det")

_ALG = re.compile(r"^[A-Za-z0-9-]+$")


def alg_name(cfg, config_file: str | None = None) -> str:
    """``TEST.SUBMISSION_ALG``, or the config file's name with underscores as hyphens."""
    alg = cfg.TEST.SUBMISSION_ALG or (Path(config_file).stem.replace("_", "-") if config_file else "")
    if not _ALG.match(alg):
        raise ValueError(f"submission algorithm name {alg!r} must be letters, digits and hyphens "
                         "(the server splits the file name at underscores); set TEST.SUBMISSION_ALG")
    return alg


def testset_image_ids(dataset_name: str) -> set[int]:
    """Image ids of a test set, read from its metadata's ``json_file`` (COCO image info)."""
    json_file = MetadataCatalog.get(dataset_name).get("json_file")
    if json_file is None or not os.path.isfile(json_file):
        raise FileNotFoundError(f"{dataset_name}: its image info json {json_file} is missing")
    with open(json_file) as f:
        return {int(img["id"]) for img in json.load(f)["images"]}


def write_submission(results_json: str | Path, image_ids: set[int], testset: str, alg: str,
                     out_dir: str | Path, overwrite: bool = False) -> Path:
    """Check ``results_json``'s image ids against ``image_ids`` and write the zipped submission."""
    results_json = Path(results_json)
    with open(results_json) as f:
        results = json.load(f)
    if not isinstance(results, list) or not all(isinstance(r, dict) and "image_id" in r for r in results):
        raise ValueError(f"{results_json} is not a COCO results list (dicts with image_id)")
    foreign = sorted({int(r["image_id"]) for r in results} - image_ids)
    if foreign:
        raise ValueError(f"{results_json}: {len(foreign)} image id(s) are not {testset} images "
                         f"(e.g. {foreign[:5]}); refusing to write a {testset} submission")
    name = f"detections_{testset}_{alg}_results"
    out = Path(out_dir) / f"{name}.zip"
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; remove it or pass --overwrite")

    def write_zip(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            z.write(results_json, arcname=f"{name}.json")

    return atomic_write(out, write_zip)


def write_submissions(cfg, config_file: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write the submission of every submittable set in ``DATASETS.TEST``; log where each is."""
    written = []
    for name in cfg.DATASETS.TEST:
        testset = MetadataCatalog.get(name).get("submission_testset")
        if testset is None:
            continue
        out_dir = eval_output_dir(cfg, name)
        results = Path(out_dir) / "coco_instances_results.json"
        if not results.is_file():
            raise FileNotFoundError(f"{name}: no results at {results}; run the evaluation first")
        path = write_submission(results, testset_image_ids(name), testset, alg_name(cfg, config_file),
                                out_dir, overwrite)
        logger.info(f"{name}: COCO server submission written to {path} (upload this zip)")
        written.append(path)
    return written
