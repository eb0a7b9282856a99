"""Semantic segmentation data: ``SegmentationData``, what ``data=voc_seg`` and ``data=coco data.task=semantic`` return.

Every image and its label map are resized to ``image_size`` x ``image_size`` when loaded (images
bilinear, maps nearest-neighbour) and held in memory as uint8: a label map holds the class index of
each pixel, 0..K-1 (``class_names``), with ``IGNORE`` (255) for pixels no loss or metric counts.
Also here: the Pascal VOC palette the label-map PNGs are written with, and ``predictions.png``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._splits import TrainValSplits

IGNORE = 255  # the label-map value of pixels no loss or metric counts (VOC's object boundaries, COCO's crowds)


def voc_palette() -> list[int]:
    """Pascal VOC's colour map as a flat list of 768 RGB values (class i's colour at 3i..3i+2; 255, the boundary, is cream)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):  # VOC's bit interleaving: bit 0, 1, 2 of the class go to the top bits of r, g, b
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def resize_pair(image: Any, label: np.ndarray | None, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A PIL image (any mode) and its (H, W) label map as uint8 tensors (3, size, size) and (size, size)."""
    from PIL import Image

    rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    out = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()
    if label is None:
        return out, None
    labels = Image.fromarray(np.asarray(label, dtype=np.uint8))
    if labels.size != (size, size):
        labels = labels.resize((size, size), Image.NEAREST)
    return out, torch.from_numpy(np.asarray(labels).copy())


class SegmentationSplit:
    """One split: ``images`` uint8 (N, 3, S, S), ``labels`` uint8 (N, S, S), the images' ``names``.

    ``classes_per_image``: the classes each label map holds (ignore left out), for class subsets;
    ``targets``: one class per image (the largest non-background class, else background), for stratified samples.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, names: list[str], num_classes: int) -> None:
        self.images, self.labels, self.names = images, labels, names
        counts = torch.stack([torch.bincount(m.reshape(-1).long(), minlength=256)[:num_classes] for m in labels]) \
            if len(labels) else torch.zeros(0, num_classes, dtype=torch.long)
        self.classes_per_image = [frozenset(torch.nonzero(c).reshape(-1).tolist()) for c in counts]
        objects = counts.clone()
        if num_classes > 1:
            objects[:, 0] = 0
        largest = objects.argmax(1) if len(objects) else torch.zeros(0, dtype=torch.long)
        self.targets = torch.where(objects.sum(1) > 0, largest, torch.zeros_like(largest))

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class SegmentationData(TrainValSplits):
    """A semantic segmentation dataset: train and val splits of images and label maps, all ``image_size`` square."""

    name: str
    train: SegmentationSplit
    val: SegmentationSplit
    class_names: tuple[str, ...]
    image_size: int = 128
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    info: dict[str, Any] = field(default_factory=dict)
    task = "semantic"  # what evaluators check (``Evaluator.check_data``)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def batches(self, split: str, indices: torch.Tensor | None = None, batch_size: int = 16, shuffle: bool = False,
                augment: bool = False, generator: torch.Generator | None = None, device: torch.device | str | None = None,
                classes: set[int] | list[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) batches of ``split``: images float (B, 3, S, S) in [0, 1] (the model normalises with
        ``mean``/``std``), labels long (B, S, S); ``augment`` flips each image and its map horizontally with
        probability 1/2; with ``classes`` the pixels of every other class become ``IGNORE``."""
        data = self.split(split)
        indices = torch.arange(len(data)) if indices is None else torch.as_tensor(indices).reshape(-1)
        if shuffle:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        keep = None
        if classes is not None:
            keep = torch.zeros(256, dtype=torch.bool)
            keep[list(classes)] = True
        for start in range(0, len(indices), batch_size):
            index = indices[start:start + batch_size]
            images = data.images[index].float().div_(255.0)
            labels = data.labels[index].long()
            if augment:
                flips = torch.rand(len(index), generator=generator) < 0.5
                images[flips], labels[flips] = images[flips].flip(-1), labels[flips].flip(-1)
            if keep is not None:
                labels = torch.where(keep[labels], labels, torch.full_like(labels, IGNORE))
            if device is not None:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            yield images, labels


def draw_segmentation(split: SegmentationSplit, predictions: dict[int, torch.Tensor], class_names: tuple[str, ...],
                      path: str | Path, alpha: float = 0.55) -> None:
    """``predictions.png``: per image of ``predictions`` ({position: (S, S) class map}), the ground truth and the
    prediction coloured over it with the VOC palette, and a legend of the classes shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = np.asarray(voc_palette(), dtype=np.float32).reshape(256, 3) / 255.0
    shown = sorted(predictions)
    rows = max(1, math.ceil(len(shown) / 2))
    fig, axes = plt.subplots(rows, 4, figsize=(11, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    present: set[int] = set()
    for k, i in enumerate(shown):
        image = split.images[i].permute(1, 2, 0).numpy().astype(np.float32) / 255.0
        for j, (what, label) in enumerate((("truth", split.labels[i]), ("predicted", predictions[i]))):
            label = label.cpu().numpy().astype(np.int64)
            present |= set(np.unique(label).tolist())
            ax = axes.flat[2 * k + j]
            painted = np.where((label > 0)[..., None], (1 - alpha) * image + alpha * colours[label], image)
            ax.imshow(painted)
            ax.set_title(f"#{i} {what}", fontsize=7)
    names = {**{c: n for c, n in enumerate(class_names)}, IGNORE: "ignore"}
    handles = [Patch(color=colours[c], label=names.get(c, str(c))) for c in sorted(present) if c > 0]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
