"""fashion-coco, the built-in COCO-format dataset: Fashion-MNIST items pasted 1 to 4 per black canvas.

``xsearch data fashion-coco DIR`` writes it (PNG images, boxes, instance masks from the items'
pixels, five keypoints per object); ``data=coco data.root=DIR`` reads it back. It also writes the
semantic label maps in Pascal VOC's layout (``SegmentationClass/{train,val}/ID.png``, palette PNGs,
0 = background, 1..10 the classes; ``ImageSets/Segmentation/{train,val}.txt`` with ids such as
``train/000000``; ``class_names.txt``), so ``data=voc_seg data.root=DIR`` reads it as well.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from xsearch.core.errors import UserError
from xsearch.core.io import check_writable

from ..fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from ..segmentation import voc_palette
from .dataset import mask_to_rle

# fashion-coco keypoints: the extreme pixels of an item's mask and its centroid.
FASHION_KEYPOINTS = ("top", "bottom", "left", "right", "centre")
# OKS sigmas for them. COCOeval scores a keypoint by exp(-d^2 / (2 * area * (2 sigma)^2)), so at OKS 0.5 a point may
# be d = 1.18 * sqrt(area) * 2 sigma off. For a typical item (mask area ~800 px, sqrt ~28): 3.3 px for the extremes
# (sigma 0.05), which are single, sharply defined pixels on the outline (like COCO's eyes and nose, 0.025, but our
# objects are small and drawn at low resolution, so a pixel or two of error must still count); 5.3 px for the centre
# (sigma 0.08), which no edge marks, so it is as loosely located as COCO's hips (0.107) and knees (0.087).
FASHION_SIGMAS = (0.05, 0.05, 0.05, 0.05, 0.08)
FASHION_SKELETON = ((5, 1), (5, 2), (5, 3), (5, 4))  # 1-based, COCO's convention: centre to each extreme
FASHION_THRESHOLD = 20  # an item's pixel belongs to it when brighter than this (of 255) after scaling
FASHION_ITEM_SIDE = (24, 64)  # the side of a scaled 28x28 item, in pixels
FASHION_MAX_IOU = 0.3  # an item's box overlaps each earlier one by less than this
FASHION_MIN_VISIBLE = 0.3  # an item covered so much that less than this fraction of its pixels shows is dropped


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _fashion_canvas(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, size: int
                    ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One canvas and its objects (0-based class, visible mask), 1 to 4 items pasted on black."""
    from PIL import Image

    canvas = np.zeros((size, size), dtype=np.uint8)
    objects: list[list[Any]] = []  # [class, full-canvas mask, pixels when pasted]
    placed: list[tuple[int, int, int, int]] = []
    low, high = FASHION_ITEM_SIDE[0], min(FASHION_ITEM_SIDE[1], size)
    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.integers(len(items)))
        side = int(rng.integers(low, high + 1))
        item = np.asarray(Image.fromarray(items[k]).resize((side, side), Image.BILINEAR))
        mask = item > FASHION_THRESHOLD
        pixels = int(mask.sum())
        if pixels < 16:
            continue
        ys, xs = np.nonzero(mask)
        for _attempt in range(20):
            x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
            if all(_box_iou(box, b) < FASHION_MAX_IOU for b in placed):
                break
        else:
            continue
        full = np.zeros((size, size), dtype=bool)
        full[y0:y0 + side, x0:x0 + side] = mask
        for obj in objects:
            obj[1] &= ~full
        region = canvas[y0:y0 + side, x0:x0 + side]
        canvas[y0:y0 + side, x0:x0 + side] = np.where(mask, item, np.maximum(region, item))
        placed.append(box)
        objects.append([int(labels[k]), full, pixels])
    return canvas, [(c, m) for c, m, p in objects if m.sum() >= FASHION_MIN_VISIBLE * p]


def _fashion_keypoints(mask: np.ndarray) -> list[float]:
    """Top-most, bottom-most, left-most, right-most pixel and centroid of ``mask``, at pixel centres, visibility 2.

    Along the extreme row (column) the point is the mean of its pixels, so a horizontal flip maps each point exactly
    onto its flipped counterpart (left and right swapping)."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    points = [(xs[ys == top].mean(), top), (xs[ys == bottom].mean(), bottom), (left, ys[xs == left].mean()),
              (right, ys[xs == right].mean()), (xs.mean(), ys.mean())]
    out: list[float] = []
    for x, y in points:
        out += [round(float(x) + 0.5, 2), round(float(y) + 0.5, 2), 2]
    return out


def write_fashion_coco(out_dir: str | Path, train: int = 4000, val: int = 500, size: int = 128, seed: int = 0,
                       fashion_root: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Write fashion-coco: Fashion-MNIST items (train items for train, test items for val) pasted 1 to 4 per black
    ``size`` x ``size`` canvas, as PNG images and COCO annotation files (boxes, masks, 5 keypoints per object), and
    the same objects as VOC-layout semantic label maps (see the module doc)."""
    from PIL import Image
    from tqdm import tqdm

    for name, value, least in (("train", train, 1), ("val", val, 1), ("size", size, 32)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UserError(f"fashion-coco {name} must be an integer of at least {least}; got {value!r}")
    check_writable(out_dir, "out_dir")
    start = time.perf_counter()
    fm = load_fashion_mnist(fashion_root)
    out = Path(out_dir)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (out / "class_names.txt").write_text("".join(f"{n}\n" for n in ("background", *FASHION_MNIST_CLASSES)))
    palette = voc_palette()
    categories = [{"id": i + 1, "name": n, "supercategory": "fashion"} for i, n in enumerate(FASHION_MNIST_CLASSES)]
    kp_categories = [{**c, "keypoints": list(FASHION_KEYPOINTS), "skeleton": [list(s) for s in FASHION_SKELETON],
                      "oks_sigmas": list(FASHION_SIGMAS)} for c in categories]
    train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    counts: dict[str, Any] = {"out_dir": str(out)}
    mean = std = None
    for split, n, source, rng in (("train", train, fm.train, train_rng), ("val", val, fm.test, val_rng)):
        items = source.images[:, 0].numpy()
        labels = source.targets.numpy()
        (out / split).mkdir(exist_ok=True)
        (out / "SegmentationClass" / split).mkdir(parents=True, exist_ok=True)
        images, instances, keypoints = [], [], []
        total, total_sq = 0.0, 0.0
        for i in tqdm(range(n), desc=f"fashion-coco {split}", disable=not show_progress, leave=False):
            canvas, objects = _fashion_canvas(rng, items, labels, size)
            file_name = f"{i:06d}.png"
            Image.fromarray(canvas, mode="L").save(out / split / file_name, compress_level=1)
            image_id = i + 1
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            pixels = canvas.astype(np.float64) / 255.0
            total, total_sq = total + pixels.mean(), total_sq + (pixels ** 2).mean()
            label = np.zeros((size, size), dtype=np.uint8)
            for c, mask in objects:
                label[mask] = c + 1  # the visible masks are disjoint: one class per pixel
            semantic = Image.fromarray(label, mode="P")
            semantic.putpalette(palette)
            semantic.save(out / "SegmentationClass" / split / file_name, compress_level=1)
            for c, mask in objects:
                ys, xs = np.nonzero(mask)
                x1, y1 = int(xs.min()), int(ys.min())
                ann = {"id": len(instances) + 1, "image_id": image_id, "category_id": c + 1, "iscrowd": 0,
                       "bbox": [x1, y1, int(xs.max()) + 1 - x1, int(ys.max()) + 1 - y1], "area": int(mask.sum()),
                       "segmentation": mask_to_rle(mask)}
                instances.append(ann)
                keypoints.append({**ann, "keypoints": _fashion_keypoints(mask), "num_keypoints": 5})
        if split == "train":
            m = total / n
            mean, std = (m,) * 3, (math.sqrt(max(total_sq / n - m * m, 1e-12)),) * 3
        info = {"description": "fashion-coco: Fashion-MNIST items on black canvases, written by xsearch",
                "dataset": "fashion_coco", "version": "1", "seed": seed, "size": size, "split": split,
                "mean": [round(v, 4) for v in mean], "std": [round(v, 4) for v in std]}  # type: ignore[union-attr]
        for stem, anns, cats in (("instances", instances, categories), ("keypoints", keypoints, kp_categories)):
            doc = {"info": info, "licenses": [], "images": images, "annotations": anns, "categories": cats}
            (out / "annotations" / f"{stem}_{split}.json").write_text(json.dumps(doc, separators=(",", ":")))
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{split}/{i:06d}\n" for i in range(n)))
        counts[f"{split}_images"] = n
        counts[f"{split}_objects"] = len(instances)
    counts["seconds"] = round(time.perf_counter() - start, 2)
    return counts
