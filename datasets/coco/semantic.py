"""``data=coco data.task=semantic``: COCO instance masks painted into semantic label maps (``SegmentationData``).

Per image, in the annotation file's order (a later annotation paints over an earlier one): an
object's mask gets its category's class (1..K in the order of the sorted category ids; 0 is the
background), a crowd region gets 255 (ignored by the loss and the metrics). Images and maps are
then resized to ``image_size`` square (maps nearest-neighbour).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from xsearch.core.errors import UserError

from ..segmentation import IGNORE, SegmentationData, SegmentationSplit, resize_pair


def semantic_label(split: Any, position: int, label_of: dict[int, int]) -> np.ndarray:
    """The (H, W) uint8 label map of image ``position`` of ``split`` at its own size."""
    coco = split.coco
    meta = coco.imgs[split.image_ids[position]]
    height, width = split.images[position].shape[1:]
    label = np.zeros((height, width), dtype=np.uint8)
    for a in coco.imgToAnns.get(meta["id"], []):
        value = IGNORE if a.get("iscrowd", 0) else label_of[a["category_id"]]
        if a.get("segmentation"):
            with warnings.catch_warnings():  # pycocotools' decoder trips a numpy 2 DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = coco.annToMask(a).astype(bool)
        else:  # a crowd region given by its box only
            x, y, w, h = (round(float(v)) for v in a["bbox"])
            mask = np.zeros_like(label, dtype=bool)
            mask[max(y, 0):y + h, max(x, 0):x + w] = True
        label[mask] = value
    return label


def semantic_from_coco(data: Any) -> SegmentationData:
    """``data`` (a ``DetectionData`` loaded with instance masks) as semantic label maps; class names ("background", *categories)."""
    from PIL import Image

    names = ("background", *data.class_names)
    if len(names) >= IGNORE:
        raise UserError(f"data.task=semantic holds at most {IGNORE - 1} categories (255 marks ignored pixels); "
                        f"the annotation files have {len(data.class_names)}")
    label_of = {c: i + 1 for i, c in enumerate(data.category_ids)}
    splits = {}
    for name in ("train", "val"):
        split = data.split(name)
        images, labels = [], []
        for i in range(len(split)):
            label = semantic_label(split, i, label_of)
            image = Image.fromarray(split.images[i].permute(1, 2, 0).contiguous().numpy())
            pixels, label_map = resize_pair(image, label, data.image_size)
            images.append(pixels)
            labels.append(label_map)
        size = data.image_size
        splits[name] = SegmentationSplit(torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8),
                                         torch.stack(labels) if labels else torch.zeros(0, size, size, dtype=torch.uint8),
                                         [split.coco.imgs[i]["file_name"] for i in split.image_ids], len(names))
    return SegmentationData(data.name, splits["train"], splits["val"], names, image_size=data.image_size,
                            mean=data.mean, std=data.std, info={**data.info, "task": "semantic"})
