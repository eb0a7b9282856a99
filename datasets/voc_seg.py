"""``data=voc_seg``: semantic segmentation in Pascal VOC's folder layout, as ``SegmentationData``.

``DIR/ImageSets/Segmentation/{train,val}.txt`` name the images (one id a line), ``DIR/JPEGImages/ID.jpg``
(or ``.jpeg``, ``.png``) holds each image and ``DIR/SegmentationClass/ID.png`` its label map: an
indexed ("P", the VOC palette) or grey ("L") PNG whose pixel values are class indices, 255 = ignore.
Without a ``JPEGImages/`` folder the images are looked up under ``DIR`` itself (an id may hold a
folder, ``train/000001``: that is how ``xsearch data fashion-coco DIR`` writes its maps, so
``data=voc_seg data.root=DIR`` reads fashion-coco too); ``data.images=DIR`` names another folder.
Class names: ``data.class_names=[...]``, else ``DIR/class_names.txt`` (one a line, as imgviz and
labelme write it; a leading ``__ignore__`` line is skipped), else VOC's 21. Every mistake in the
files is a UserError naming the file, raised while loading, before any training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xsearch.core.errors import UserError

from ._registry import DATASETS
from .segmentation import IGNORE, SegmentationData, SegmentationSplit, resize_pair

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _class_names(base: Path, given: list[str] | None) -> tuple[tuple[str, ...], str]:
    """(names, where they came from)."""
    if given:
        return tuple(str(n) for n in given), "data.class_names"
    path = base / "class_names.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if names and names[0] == "__ignore__":  # labelme's convention: that name is label -1, not a class
            names = names[1:]
        if len(names) < 2:
            raise UserError(f"{path} names {len(names)} class(es); it needs one name a line, background first, "
                            "at least 2")
        return tuple(names), str(path)
    return VOC_CLASSES, "VOC's 21 classes (no class_names.txt in data.root)"


def _read_label(path: Path, image_size: tuple[int, int], image_path: Path, names: tuple[str, ...],
                names_from: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            if mode not in ("P", "L"):
                raise UserError(f"{path} is a {mode} image; a label map must be indexed: a palette ('P') or grey ('L') "
                                "PNG whose pixel values are class indices (255 = ignore). Convert colour maps to a "
                                "palette image, each colour to its class index (VOC's SegmentationClass PNGs are "
                                "palette images)")
            label = np.asarray(im)
    except OSError as exc:
        raise UserError(f"{path} is not a readable PNG label map ({exc})") from exc
    if size != image_size:
        raise UserError(f"{path} is {size[0]}x{size[1]} pixels but its image {image_path} is "
                        f"{image_size[0]}x{image_size[1]}; a label map must be the size of its image")
    values = np.unique(label)
    bad = [int(v) for v in values if v >= len(names) and v != IGNORE]
    if bad:
        raise UserError(f"{path} holds class index(es) {bad}, but there are {len(names)} classes (0..{len(names) - 1}, "
                        f"from {names_from}; 255 = ignore). Name every class (DIR/class_names.txt or "
                        "data.class_names=[...]) or fix the map")
    return label


def _load_split(split: str, base: Path, image_dir: Path, image_size: int, names: tuple[str, ...], names_from: str,
                max_images: int | None) -> SegmentationSplit:
    from PIL import Image

    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise UserError(f"data=voc_seg: no {split} split file {list_file}; it lists the {split} image ids, one a "
                        "line (Pascal VOC's layout: ImageSets/Segmentation/{train,val}.txt, JPEGImages/, "
                        "SegmentationClass/)")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"{list_file} lists no images")
    if max_images:
        ids = ids[:max_images]
    images, labels = [], []
    for image_id in ids:
        candidates = [image_dir / f"{image_id}{s}" for s in IMAGE_SUFFIXES]
        image_path = next((p for p in candidates if p.is_file()), None)
        if image_path is None:
            raise UserError(f"{list_file} names {image_id!r}, but no image {candidates[0]} (or .jpeg, .png) exists; "
                            "the images belong in DIR/JPEGImages/ (or set data.images=DIR)")
        label_path = base / "SegmentationClass" / f"{image_id}.png"
        if not label_path.is_file():
            raise UserError(f"{list_file} names {image_id!r}, but its label map {label_path} does not exist")
        try:
            with Image.open(image_path) as im:
                im.load()
                image = im
        except OSError as exc:
            raise UserError(f"{image_path} is not a readable image ({exc})") from exc
        label = _read_label(label_path, image.size, image_path, names, names_from)
        pixels, label_map = resize_pair(image, label, image_size)
        images.append(pixels)
        labels.append(label_map)
    return SegmentationSplit(torch.stack(images), torch.stack(labels), ids, len(names))


@DATASETS.register("voc_seg")
def load_voc_seg(root: str | None = None, image_size: int = 128, class_names: list[str] | None = None,
                 images: str | None = None, max_images: int | None = None) -> SegmentationData:
    """Semantic segmentation in Pascal VOC's layout from data.root=DIR (see the module doc), resized to image_size."""
    if not root:
        raise UserError("data=voc_seg needs data.root=DIR, a Pascal-VOC-style folder: ImageSets/Segmentation/"
                        "{train,val}.txt, JPEGImages/, SegmentationClass/ (xsearch data fashion-coco DIR writes one)")
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"data.root {str(base)!r} is not a folder; data=voc_seg needs ImageSets/Segmentation/"
                        "{train,val}.txt, JPEGImages/ and SegmentationClass/ under it")
    if image_size < 32:
        raise UserError(f"data.image_size={image_size} is too small; use at least 32")
    names, names_from = _class_names(base, class_names)
    image_dir = Path(images) if images else (base / "JPEGImages" if (base / "JPEGImages").is_dir() else base)
    splits = {s: _load_split(s, base, image_dir, image_size, names, names_from, max_images) for s in ("train", "val")}
    info = {"root": str(base), "images": str(image_dir), "class_names_from": names_from, "task": "semantic"}
    return SegmentationData("voc_seg", splits["train"], splits["val"], names, image_size=image_size, info=info)
