"""COCO-format detection data (``data=coco``): the dataset, its splits, and the loader that checks the files.

The loaded splits hold every image as a uint8 tensor in memory, with torchvision-style targets
(``boxes`` xyxy in pixels, ``labels`` 1..K with 0 the background, and ``masks`` / ``keypoints``
when the task has them); the ground truth stays a ``pycocotools.coco.COCO`` object for COCOeval.
Every mistake in the files (a missing file, an unknown category, a box outside its image, ...) is
a UserError raised while loading, before any training starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xsearch.core.errors import UserError

from .._registry import DATASETS
from .._splits import TrainValSplits
from ..segmentation import SegmentationData
from .semantic import semantic_from_coco

if TYPE_CHECKING:  # pragma: no cover
    from pycocotools.coco import COCO

TASKS = ("detection", "segmentation", "keypoints", "semantic")  # semantic: label maps (``coco.semantic``)

# COCO's per-keypoint OKS sigmas for its 17 person keypoints (nose, eyes, ears, shoulders, elbows, wrists, hips,
# knees, ankles), as pycocotools' COCOeval uses them by default.
COCO_PERSON_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
                      0.107, 0.107, 0.087, 0.087, 0.089, 0.089)


def _quiet_coco(path: Path) -> COCO:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return COCO(str(path))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a COCO annotation file ({type(exc).__name__}: {exc})") from exc


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """A binary (H, W) mask as COCO's run-length encoding, JSON-ready (``counts`` a string)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


# --- splits and data -------------------------------------------------------------------------

class CocoSplit:
    """One split: images in memory, torchvision-style targets, and the COCO ground truth for evaluation."""

    def __init__(self, images: list[torch.Tensor], annotations: list[dict[str, torch.Tensor]], image_ids: list[int],
                 coco: COCO) -> None:
        self.images = images
        self.annotations = annotations
        self.image_ids = image_ids
        self.coco = coco
        self.classes_per_image = [frozenset((a["labels"] - 1).tolist()) for a in annotations]
        largest = [int(a["labels"][a["area"].argmax()]) - 1 if len(a["labels"]) else 0 for a in annotations]
        self.targets = torch.tensor(largest, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: torch.Tensor, classes: set[int] | None = None
              ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Images as float (3, H, W) in [0, 1] and cloned target dicts; with ``classes`` (0-based), only their objects."""
        images, targets = [], []
        for i in torch.as_tensor(index).reshape(-1).tolist():
            images.append(self.images[i].float().div_(255.0))
            ann = self.annotations[i]
            if classes is not None:
                keep = torch.tensor([int(c) - 1 in classes for c in ann["labels"]], dtype=torch.bool)
                targets.append({k: v[keep].clone() for k, v in ann.items()})
            else:
                targets.append({k: v.clone() for k, v in ann.items()})
        return images, targets


@dataclass
class DetectionData(TrainValSplits):
    """A detection / instance segmentation / keypoint dataset in COCO format."""

    name: str
    train: CocoSplit
    val: CocoSplit
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    image_size: int = 128
    keypoint_names: tuple[str, ...] | None = None
    keypoint_sigmas: tuple[float, ...] | None = None
    flip_pairs: tuple[tuple[int, int], ...] = ()
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_masks(self) -> bool:
        return all(bool(s.annotations) and "masks" in s.annotations[0] for s in (self.train, self.val))

    @property
    def has_keypoints(self) -> bool:
        return all(bool(s.annotations) and "keypoints" in s.annotations[0] for s in (self.train, self.val))

    def batches(self, split: str, indices: torch.Tensor | None = None, batch_size: int = 16, shuffle: bool = False,
                augment: bool = False, generator: torch.Generator | None = None, device: torch.device | str | None = None,
                classes: set[int] | None = None) -> Iterator[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]]:
        """(images, targets) batches of ``split``: images float (3, H, W) in [0, 1] (the model normalises with
        ``mean``/``std``); ``augment`` flips each image horizontally with probability 1/2, targets with it."""
        data = self.split(split)
        if indices is None:
            indices = torch.arange(len(data))
        indices = torch.as_tensor(indices).reshape(-1)
        if shuffle:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        for start in range(0, len(indices), batch_size):
            images, targets = data.batch(indices[start:start + batch_size], classes)
            if augment:
                flips = torch.rand(len(images), generator=generator) < 0.5
                for j in torch.nonzero(flips).reshape(-1).tolist():
                    images[j], targets[j] = self._flip(images[j], targets[j])
            if device is not None:
                images = [x.to(device, non_blocking=True) for x in images]
                targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            yield images, targets

    def _flip(self, image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        width = image.shape[-1]
        out = dict(target)
        boxes = target["boxes"].clone()
        boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
        out["boxes"] = boxes
        if "masks" in target:
            out["masks"] = target["masks"].flip(-1)
        if "keypoints" in target:
            kp = target["keypoints"].clone()
            kp[..., 0] = torch.where(kp[..., 2] > 0, width - kp[..., 0], kp[..., 0])
            if self.flip_pairs:
                perm = list(range(kp.shape[1]))
                for a, b in self.flip_pairs:
                    perm[a], perm[b] = b, a
                kp = kp[:, perm]
            out["keypoints"] = kp
        return image.flip(-1), out


# --- loading ---------------------------------------------------------------------------------

def _flip_pairs_from_names(names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Pairs of keypoints a horizontal flip swaps, from their names ('left_eye' <-> 'right_eye', 'left' <-> 'right')."""
    index = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, n in enumerate(names):
        if "left" in n:
            j = index.get(n.replace("left", "right"))
            if j is not None and j != i:
                pairs.append((i, j))
    return tuple(pairs)


def _find_file(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _load_image(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("L", "LA", "1"):
            arr = np.asarray(im.convert("L"))
            return torch.from_numpy(arr.copy()).unsqueeze(0).expand(3, -1, -1)  # a view: grey images cost one channel
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _load_split(split: str, ann_path: Path, image_dir: Path, task: str, max_images: int | None,
                keypoint_count: int | None) -> tuple[CocoSplit, dict[int, dict], int | None]:
    coco = _quiet_coco(ann_path)
    cats = coco.cats
    if not cats:
        raise UserError(f"{ann_path} has no categories")
    cat_ids = sorted(cats)
    label_of = {c: i + 1 for i, c in enumerate(cat_ids)}
    anns_all = coco.dataset.get("annotations", [])
    for a in anns_all:
        if a.get("category_id") not in cats:
            raise UserError(f"{ann_path}: annotation {a.get('id')} (image {a.get('image_id')}) has unknown category "
                            f"{a.get('category_id')!r}; the file's categories are {cat_ids}")
        if a.get("image_id") not in coco.imgs:
            raise UserError(f"{ann_path}: annotation {a.get('id')} names image {a.get('image_id')}, "
                            "which the file's 'images' list lacks")
    if task == "segmentation" and not any(a.get("segmentation") for a in anns_all):
        raise UserError(f"task=segmentation needs segmentations, but {ann_path} has none; use data.task=detection "
                        "or an annotation file with 'segmentation' polygons or RLE")
    if task == "keypoints":
        counts = {len(cats[c].get("keypoints") or []) for c in cat_ids}
        if not any(a.get("keypoints") for a in anns_all) or counts == {0}:
            raise UserError(f"task=keypoints needs keypoints, but {ann_path} has none (its categories need "
                            "'keypoints' names and its annotations 'keypoints' lists); use data.task=detection")
        with_kp = {c for c in cat_ids if cats[c].get("keypoints")}
        counts = {len(cats[c]["keypoints"]) for c in with_kp}
        if len(counts) != 1 or (keypoint_count is not None and counts != {keypoint_count}):
            raise UserError(f"{ann_path}: categories name different numbers of keypoints ({sorted(counts)}"
                            + (f", the other split {keypoint_count}" if keypoint_count is not None else "")
                            + "); one model predicts one fixed set")
        keypoint_count = counts.pop()

    image_ids = sorted(coco.imgs)
    if max_images:
        image_ids = image_ids[:max_images]
    images, targets = [], []
    for image_id in image_ids:
        meta = coco.imgs[image_id]
        path = image_dir / meta["file_name"]
        if not path.is_file():
            raise UserError(f"{ann_path} names image {meta['file_name']!r} (id {image_id}), but {path} does not exist; "
                            f"the {split} images belong in {image_dir} (or set data.{split}_images=DIR)")
        image = _load_image(path)
        height, width = image.shape[1:]
        if (meta.get("height", height), meta.get("width", width)) != (height, width):
            raise UserError(f"{path} is {width}x{height} pixels, but {ann_path} says {meta.get('width')}x"
                            f"{meta.get('height')}")
        boxes, labels, areas, crowd, masks, keypoints = [], [], [], [], [], []
        for a in coco.imgToAnns.get(image_id, []):
            where = f"{ann_path}: annotation {a.get('id')} of image {meta['file_name']!r} ({width}x{height})"
            bbox = a.get("bbox")
            if not bbox or len(bbox) != 4:
                raise UserError(f"{where} has no 'bbox' [x, y, width, height]")
            x, y, w, h = (float(v) for v in bbox)
            if not (w > 0 and h > 0):
                raise UserError(f"{where} has a box of non-positive size {bbox} ([x, y, width, height])")
            if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
                raise UserError(f"{where} has a box {bbox} ([x, y, width, height]) outside the image")
            if task == "keypoints":
                kp = a.get("keypoints") or []
                if kp and len(kp) != 3 * keypoint_count:
                    raise UserError(f"{where} has {len(kp) / 3:g} keypoints, but its category "
                                    f"{a['category_id']} has {keypoint_count}")
                if "num_keypoints" not in a:  # COCOeval reads it
                    a["num_keypoints"] = int(sum(1 for v in kp[2::3] if v > 0))
            if a.get("iscrowd", 0):
                continue  # crowd regions stay in `coco` (COCOeval ignores matches to them) but train nothing
            if task == "segmentation" and not a.get("segmentation"):
                raise UserError(f"{where} has no segmentation (task=segmentation needs one on every object)")
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)])
            labels.append(label_of[a["category_id"]])
            areas.append(float(a.get("area") or w * h))
            crowd.append(0)
            if task == "segmentation":
                with warnings.catch_warnings():  # pycocotools' decoder trips a numpy 2 DeprecationWarning
                    warnings.simplefilter("ignore", DeprecationWarning)
                    masks.append(coco.annToMask(a))
            if task == "keypoints":
                kp = a.get("keypoints") or [0.0] * (3 * keypoint_count)
                keypoints.append(np.asarray(kp, dtype=np.float32).reshape(keypoint_count, 3))
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.long),
                  "area": torch.tensor(areas, dtype=torch.float32),
                  "iscrowd": torch.tensor(crowd, dtype=torch.long)}
        if task == "segmentation":
            target["masks"] = (torch.from_numpy(np.stack(masks)) if masks
                               else torch.zeros((0, height, width), dtype=torch.uint8))
        if task == "keypoints":
            target["keypoints"] = (torch.from_numpy(np.stack(keypoints)) if keypoints
                                   else torch.zeros((0, keypoint_count, 3), dtype=torch.float32))
        images.append(image)
        targets.append(target)
    return CocoSplit(images, targets, image_ids, coco), cats, keypoint_count


@DATASETS.register("coco")
def load_coco(root: str | None = None, task: str | None = None, image_size: int = 128,
              train_annotations: str | None = None, val_annotations: str | None = None,
              train_images: str | None = None, val_images: str | None = None, max_images: int | None = None,
              keypoint_sigmas: list[float] | None = None) -> DetectionData | SegmentationData:
    """COCO-format detection, instance segmentation, keypoints or semantic maps (data.task=...) from data.root=DIR.

    DIR holds annotations/instances_{train,val}.json (or person_keypoints_/keypoints_{train,val}.json for
    task=keypoints) and the images in DIR/train/ and DIR/val/; explicit paths override. Make one with
    ``xsearch data fashion-coco DIR``.
    """
    task = task or "detection"  # the configuration fills it from the evaluator (evaluator=segmentation -> masks)
    if task not in TASKS:
        raise UserError(f"data.task must be one of {', '.join(TASKS)}; got {task!r}")
    if task == "semantic":  # the instance masks, painted into label maps
        return semantic_from_coco(load_coco(root, "segmentation", image_size, train_annotations, val_annotations,
                                            train_images, val_images, max_images))
    explicit = {"train": (train_annotations, train_images), "val": (val_annotations, val_images)}
    if not root and not all(all(v) for v in explicit.values()):
        raise UserError("data=coco needs data.root=DIR, a folder with annotations/instances_{train,val}.json and the "
                        "images in DIR/train/ and DIR/val/ (or data.train_annotations, data.val_annotations, "
                        "data.train_images, data.val_images). Make the built-in one with: "
                        "xsearch data fashion-coco DIR")
    base = Path(root) if root else None
    if base is not None and not base.is_dir():
        raise UserError(f"data.root {str(base)!r} is not a folder. data=coco needs a folder with "
                        "annotations/instances_{train,val}.json and the images in train/ and val/; make the built-in "
                        f"one with: xsearch data fashion-coco {base}")
    stems = (("person_keypoints", "keypoints") if task == "keypoints" else ("instances",))
    splits, cats, count, paths = {}, None, None, {}
    for split, (ann, img) in explicit.items():
        if ann:
            candidates = [Path(ann)]
        else:
            candidates = [base / "annotations" / f"{stem}_{split}{year}.json"  # type: ignore[operator]
                          for year in ("", "2017") for stem in stems]
        ann_path = _find_file(candidates)
        if ann_path is None:
            raise UserError(f"no {split} annotation file for data.task={task}; looked for "
                            + ", ".join(str(p) for p in candidates)
                            + (f". Set data.{split}_annotations=FILE" if not ann else "")
                            + ". Make the built-in data with: xsearch data fashion-coco DIR")
        if img:
            image_dir = Path(img)
        else:
            image_dir = next((d for d in (base / split, base / f"{split}2017") if d.is_dir()),  # type: ignore[operator]
                             base / split)  # type: ignore[operator]
        split_data, split_cats, count = _load_split(split, ann_path, image_dir, task, max_images, count)
        if cats is not None and sorted(cats) != sorted(split_cats):
            raise UserError(f"the train and val annotation files have different categories ({sorted(cats)} and "
                            f"{sorted(split_cats)})")
        splits[split], cats, paths[split] = split_data, split_cats, (ann_path, image_dir)
    assert cats is not None
    cat_ids = tuple(sorted(cats))
    kw: dict[str, Any] = {}
    if task == "keypoints":
        cat = next(cats[c] for c in cat_ids if cats[c].get("keypoints"))
        names = tuple(cat["keypoints"])
        file_sigmas = [c.get("oks_sigmas") for s in splits.values() for c in s.coco.cats.values() if c.get("oks_sigmas")]
        sigmas = keypoint_sigmas or (file_sigmas[0] if file_sigmas else None)
        if not sigmas and len(names) == len(COCO_PERSON_SIGMAS):
            sigmas = COCO_PERSON_SIGMAS
        if not sigmas:
            raise UserError(f"no OKS sigmas for the {len(names)} keypoints ({', '.join(names)}): the file's categories "
                            "carry no 'oks_sigmas'; pass data.keypoint_sigmas=[...], one per keypoint")
        if len(sigmas) != len(names):
            raise UserError(f"{len(sigmas)} keypoint sigmas for {len(names)} keypoints ({', '.join(names)})")
        kw.update(keypoint_names=names, keypoint_sigmas=tuple(float(s) for s in sigmas),
                  flip_pairs=tuple(tuple(p) for p in cat.get("flip_pairs", ())) or _flip_pairs_from_names(names))
    info_block = splits["train"].coco.dataset.get("info") or {}
    if isinstance(info_block, dict) and info_block.get("mean") and info_block.get("std"):
        kw.update(mean=tuple(float(v) for v in info_block["mean"]), std=tuple(float(v) for v in info_block["std"]))
    name = str(info_block.get("dataset", "coco")) if isinstance(info_block, dict) else "coco"
    info = {"root": str(base) if base else None, "task": task,
            **{f"{s}_annotations": str(p[0]) for s, p in paths.items()},
            **{f"{s}_images": str(p[1]) for s, p in paths.items()}}
    return DetectionData(name, splits["train"], splits["val"], tuple(str(cats[c]["name"]) for c in cat_ids), cat_ids,
                         image_size=image_size, info=info, **kw)

