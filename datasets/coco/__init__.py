"""COCO-format detection, instance segmentation and keypoint data, one module per job.

``dataset``: the splits, ``DetectionData`` and ``load_coco`` (``data=coco``); ``evaluation``:
COCOeval's metrics; ``drawing``: predictions drawn over the images; ``fashion_coco``: the built-in
dataset written in that format (``xsearch data fashion-coco DIR``).
"""

from __future__ import annotations

from .dataset import COCO_PERSON_SIGMAS, TASKS, CocoSplit, DetectionData, load_coco
from .drawing import draw_predictions
from .evaluation import coco_evaluate
from .fashion_coco import FASHION_KEYPOINTS, FASHION_SIGMAS, FASHION_SKELETON, write_fashion_coco

__all__ = [
    "COCO_PERSON_SIGMAS",
    "FASHION_KEYPOINTS",
    "FASHION_SIGMAS",
    "FASHION_SKELETON",
    "TASKS",
    "CocoSplit",
    "DetectionData",
    "coco_evaluate",
    "draw_predictions",
    "load_coco",
    "write_fashion_coco",
]
