"""COCOeval's metrics (AP, AP50, ..., AP per class) of torchvision-style predictions on a ``CocoSplit``."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

from .dataset import CocoSplit, mask_to_rle


def coco_evaluate(split: CocoSplit, predictions: dict[int, dict[str, torch.Tensor]], iou_type: str,
                  category_ids: tuple[int, ...], keypoint_sigmas: tuple[float, ...] | None = None,
                  indices: list[int] | None = None) -> dict[str, Any]:
    """COCOeval's metrics of ``predictions`` ({position in split: torchvision-style output in the image's pixels})."""
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm", "keypoints"):
        raise ValueError(f"iou_type must be 'bbox', 'segm' or 'keypoints', not {iou_type!r}")
    positions = list(range(len(split))) if indices is None else [int(i) for i in indices]
    image_ids = [split.image_ids[i] for i in positions]
    chosen = set(positions)
    results = []
    for pos, pred in predictions.items():
        if int(pos) not in chosen:
            continue
        image_id = split.image_ids[int(pos)]
        boxes = pred["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
        if len(boxes) == 0:
            continue
        labels = pred["labels"].detach().cpu().numpy().reshape(-1)
        scores = pred["scores"].detach().float().cpu().numpy().reshape(-1)
        masks = keypoints = None
        if iou_type == "segm":
            masks = (pred["masks"].detach().cpu() > 0.5).numpy()
            masks = masks.reshape(len(boxes), *masks.shape[-2:])
        if iou_type == "keypoints":
            keypoints = pred["keypoints"].detach().float().cpu().numpy().reshape(len(boxes), -1)
        for j in range(len(boxes)):
            x1, y1, x2, y2 = (float(v) for v in boxes[j])
            res = {"image_id": image_id, "category_id": int(category_ids[int(labels[j]) - 1]),
                   "score": float(scores[j]), "bbox": [x1, y1, x2 - x1, y2 - y1]}
            if masks is not None:
                res["segmentation"] = mask_to_rle(masks[j])
            if keypoints is not None:
                res["keypoints"] = [float(v) for v in keypoints[j]]
            results.append(res)
    keys = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100")
    if not results:
        gt_cats = {a["category_id"] for a in split.coco.dataset.get("annotations", []) if a["image_id"] in image_ids}
        return {**{k: 0.0 for k in keys}, "per_class_ap": [0.0 if c in gt_cats else -1.0 for c in category_ids]}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = split.coco.loadRes(results)
        ev = COCOeval(split.coco, dt, iou_type)
        ev.params.imgIds = image_ids
        ev.params.catIds = list(category_ids)
        if iou_type == "keypoints":
            if keypoint_sigmas is None:
                raise ValueError("keypoint evaluation needs keypoint_sigmas")
            ev.params.kpt_oks_sigmas = np.asarray(keypoint_sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = [float(v) for v in ev.stats]
    if iou_type == "keypoints":  # AP, AP50, AP75, AP_M, AP_L, AR(20 detections), ...; no small objects
        out = dict(zip(keys, (s[0], s[1], s[2], -1.0, s[3], s[4], s[5])))
    else:
        out = dict(zip(keys, (s[0], s[1], s[2], s[3], s[4], s[5], s[8])))
    precision = ev.eval["precision"]  # (iou thresholds, recall points, categories, area ranges, max detections)
    per_class = []
    for k in range(len(category_ids)):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class.append(float(p.mean()) if p.size else -1.0)
    out["per_class_ap"] = per_class
    return out

