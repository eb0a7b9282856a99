"""Datasets: what a search trains on. ``load_dataset("fashion_mnist")``, ``DATASETS.names()``.

Every loader reads files the user already has (nothing is downloaded) and, when they are missing,
raises a UserError that says where it looked and how to get them. Classification sets load as
``xsearch.core.data.ImageData``; COCO-format sets (``data=coco``) as ``DetectionData``, semantic label maps
(``data=voc_seg``, ``data=coco data.task=semantic``) as ``SegmentationData``. Importing
this package registers every dataset, one module each.
"""

from __future__ import annotations

from ._registry import DATASETS, held_in_memory, in_memory_datasets, load_dataset
from .cifar import load_cifar10, load_cifar100
from .coco import (
    CocoSplit,
    DetectionData,
    coco_evaluate,
    draw_predictions,
    load_coco,
    write_fashion_coco,
)
from .digits import load_digits_data
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .imagefolder import FolderSplit, load_imagefolder, write_image_folder
from .segmentation import SegmentationData, SegmentationSplit
from .voc_seg import load_voc_seg

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "CocoSplit",
    "DetectionData",
    "FolderSplit",
    "SegmentationData",
    "SegmentationSplit",
    "coco_evaluate",
    "draw_predictions",
    "held_in_memory",
    "in_memory_datasets",
    "list_datasets",
    "load_cifar10",
    "load_cifar100",
    "load_coco",
    "load_dataset",
    "load_digits_data",
    "load_fashion_mnist",
    "load_imagefolder",
    "load_voc_seg",
    "write_fashion_coco",
    "write_image_folder",
]


def list_datasets() -> list[str]:
    """Names of the registered datasets (``data=NAME``)."""
    return DATASETS.names()
