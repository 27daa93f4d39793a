#!/usr/bin/env python
"""Run a NASNet detector on images, a folder or a video; write images with boxes, names and scores.

    python tools/demo.py --config-file configs/quick_schedules/nasnet_a_mobile_shapes.yaml \
        --input datasets/nasnet_shapes/val --output demo_out --confidence-threshold 0.5 \
        MODEL.WEIGHTS output/nasnet_a_mobile_shapes/model_final.pth
    python tools/demo.py --config-file ... --video-input clip.mp4 --output demo_out

Trailing ``KEY VALUE`` pairs override the config (as in train_net.py); the older spelling
``--opts KEY VALUE ...`` is still read. Files that cannot be read as images are skipped with
one line each and counted at the end; MODEL.WEIGHTS that do not fill the backbone are refused.
Each drawing keeps its image's path below the folder that holds every input (inputs a/x.jpg, b/x.jpg
and b/x.png give OUTPUT/a/x.jpg, OUTPUT/b/x.jpg and OUTPUT/b/x.png): one file per image drawn.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import cv2
import tqdm

from nasnet_core.common.cli import tool_main
from nasnet_core.common.fileio import atomic_write_bytes

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")


def parse_args(argv=None):
    """Command-line arguments."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", required=True, help="detector config (configs/**/*.yaml)")
    ap.add_argument("--input", nargs="+", default=[], help="image files and/or folders of images")
    ap.add_argument("--video-input", help="a video file; every --video-stride-th frame is drawn")
    ap.add_argument("--video-stride", type=int, default=1, help="draw every this-th video frame")
    ap.add_argument("--output", required=True, help="folder for the drawn images")
    ap.add_argument("--confidence-threshold", type=float, default=0.5,
                    help="draw detections scoring at least this")
    ap.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                    help="config overrides in KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth")
    ap.add_argument("--opts", dest="legacy_opts", nargs=argparse.REMAINDER, default=[],
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # --input takes several paths, so pairs written after it land there: they start at the first
    # Detectron2 key (upper-case and dotted, e.g. MODEL.WEIGHTS) that is not an existing path.
    cut = next((i for i, item in enumerate(args.input)
                if CONFIG_KEY.fullmatch(item) and not Path(item).exists()), len(args.input))
    args.input, args.opts = args.input[:cut], [*args.input[cut:], *args.opts, *args.legacy_opts]
    if not args.input and not args.video_input:
        ap.error("give --input and/or --video-input")
    return args


def list_images(inputs) -> list[Path]:
    """Image files named directly or found (sorted) in the given folders, each once."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    seen = set()
    return [p for p in files if not (os.path.abspath(p) in seen or seen.add(os.path.abspath(p)))]


def output_names(files: list[Path]) -> list[Path]:
    """Each image's drawing, relative to --output: its path below the folder holding every input
    (``a/x.jpg``, ``b/x.jpg``, ``b/x.png`` stay three files); other suffixes get ``.jpg`` added."""
    if not files:
        return []
    paths = [Path(os.path.abspath(p)) for p in files]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    rel = [p.relative_to(root) for p in paths]
    return [r if r.suffix.lower() in IMAGE_EXTS else r.with_name(r.name + ".jpg") for r in rel]


def write_image(path: Path, bgr) -> None:
    """Encode ``bgr`` in the format of ``path``'s suffix and write it atomically."""
    ok, data = cv2.imencode(path.suffix, bgr)
    if not ok:
        raise ValueError(f"cannot encode an image as {path.suffix} for {path}")
    atomic_write_bytes(path, data.tobytes())


def read_image(path: Path):
    """The BGR image in ``path``, or None when it cannot be decoded (OpenCV's own warning silenced)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        return cv2.imread(str(path))
    finally:
        cv2.utils.logging.setLogLevel(level)


def frames(video: str, stride: int):
    """(name, BGR frame) of every stride-th frame of a video."""
    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {video}")
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % stride == 0:
            yield Path(f"{Path(video).stem}_{i:06d}.jpg"), frame
        i += 1
    cap.release()


@tool_main
def main(argv=None) -> int:
    """Draw detections for every input image / video frame into --output; exit 2 on bad input."""
    args = parse_args(argv)
    import nasnet_det  # noqa: F401 - registers the NASNet parts
    from nasnet_det.engine import setup_cfg_plain
    from nasnet_det.predictor import Predictor
    from nasnet_det.visualize import draw_instances

    files = list_images(args.input)  # a missing input fails here, before the model is built
    cfg = setup_cfg_plain(args.config_file, args.opts)
    predictor = Predictor(cfg)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    skipped = []

    def items():
        for p, name in zip(files, output_names(files)):
            img = read_image(p)
            if img is None:  # one line, then the next file
                skipped.append(p)
                tqdm.tqdm.write(f"skipped {p}: cannot read it as an image", file=sys.stderr)
                continue
            yield name, img
        if args.video_input:
            yield from frames(args.video_input, args.video_stride)

    written = set()
    for name, bgr in tqdm.tqdm(items(), desc="demo"):
        inst = predictor(bgr)
        inst = inst[inst.scores >= args.confidence_threshold]
        drawn = draw_instances(bgr[:, :, ::-1], inst, predictor.metadata)
        while name in written:  # a video frame named like an image
            name = name.with_name(f"{name.stem}_video{name.suffix}")
        write_image(out / name, drawn[:, :, ::-1])
        written.add(name)
    count = len(written)
    if count == 0 and skipped:
        raise ValueError(f"none of the {len(skipped)} input image(s) could be read")
    note = f"; skipped {len(skipped)} unreadable file(s)" if skipped else ""
    print(f"wrote {count} image(s) to {out}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
