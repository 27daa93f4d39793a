#!/usr/bin/env python
"""Draw a COCO results json over its dataset; with two results files, side by side (paper Fig. 10).

    python tools/visualize_json_results.py --dataset nasnet_shapes_val \
        --input output/nasnet_a_mobile_shapes/inference/nasnet_shapes_val/coco_instances_results.json \
        --output vis_out --confidence-threshold 0.5
    python tools/visualize_json_results.py --dataset coco_2014_minival8k \
        --input a/coco_instances_results.json b/coco_instances_results.json --titles R50-C4 NASNet-A

--gt adds a panel with the dataset's ground truth (for images that have annotations). One colour
per class in every image; images with a short side under 512 px are upscaled before drawing.
"""

from __future__ import annotations

import argparse
import sys

from nasnet_core.common.cli import tool_main


@tool_main
def main(argv=None) -> int:
    """Write one image per dataset image (up to --max-images) into --output; exit 2 on bad input."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", required=True, help="one results json, or two to compare")
    ap.add_argument("--dataset", required=True, help="registered dataset the results are over")
    ap.add_argument("--output", required=True, help="folder for the drawn images")
    ap.add_argument("--confidence-threshold", type=float, default=0.5,
                    help="draw detections scoring at least this")
    ap.add_argument("--max-images", type=int, default=0, help="0: all")
    ap.add_argument("--titles", nargs="+", help="panel titles for a comparison")
    ap.add_argument("--gt", action="store_true", help="draw the ground truth in a panel beside them")
    args = ap.parse_args(argv)
    from detectron2.data import DatasetCatalog

    import nasnet_det  # noqa: F401 - registers the datasets
    from nasnet_det.visualize import draw_results

    if args.dataset not in DatasetCatalog.list():
        known = ", ".join(sorted(DatasetCatalog.list()))
        raise ValueError(f"unknown dataset {args.dataset!r}; registered: {known}")
    written = draw_results(args.dataset, args.input, args.output, args.confidence_threshold, args.max_images,
                           args.titles, ground_truth=args.gt)
    print(f"wrote {len(written)} image(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
