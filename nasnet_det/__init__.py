"""nasnet_det: NASNet-A as a Detectron2 backbone (Faster R-CNN, C4 and FPN).

Not implemented yet; see the project's issue tracker.
"""
