"""Dataset-level accuracy: COCO box AP and panoptic quality of eager PyTorch and every deployed backend, side by
side (``python cli.py evaluate``)."""
