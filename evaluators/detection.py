"""Downstream evaluators: a found network's features in torchvision's detectors, scored by ``COCOeval``.

One model shape for every task: the network body's multi-scale features (``PyramidFeatures``),
then the task's torchvision model:

- ``evaluator=detection``: FCOS (anchor-free, one location per anchor, sigmoid focal loss, GIoU,
  centre-ness), or with ``train.detector=retinanet`` RetinaNet (9 anchors per location: 3 scales of
  4x the level's stride by 3 aspect ratios, sigmoid focal loss, smooth-L1 boxes, torchvision's head of
  4 convolutions per branch with GroupNorm), box AP;
- ``evaluator=segmentation``: Mask R-CNN (RPN, RoIAlign box and mask heads), mask AP and box AP;
- ``evaluator=keypoints``: Keypoint R-CNN (RoIAlign keypoint heatmaps), keypoint AP with the
  dataset's OKS sigmas, and box AP.

The features come in two kinds:

- a **backbone space** (``mbv3``, ``micronet``, ``focalnet``): the outputs of the layers that end
  each of the last three strides (``space.feature_levels()``), a torchvision
  ``FeaturePyramidNetwork`` to ``channels`` channels, then ``dyhead_blocks`` full DyHead blocks
  (0: none) between the FPN and the head, as in the DyHead paper; the FCOS head has
  ``head_convs`` 3x3 convolutions (with GroupNorm) per branch;
- the **``dyhead`` space**: its fixed pyramid backbone and the searched DyHead blocks; its own
  head is an FCOS head with no tower (``FCOSHead(num_convs=0)``), so the detector's dense part
  is exactly ``space.flops(arch)``.

Training recipe (CPU-sized, documented in the README): AdamW (``lr``, ``weight_decay``), one warm-up
epoch (or 10 % of training) then cosine decay, random horizontal flips, images resized by the
detector's transform to ``data.image_size``. Metrics are ``COCOeval``'s fractions on the data's
``val`` split (``box_ap``, ``box_ap50``, ``box_ap75``, ``mask_ap``..., ``keypoint_ap``...);
``score`` (what searches maximize) trains on the training split minus ``holdout_images`` held-out
images and reports the AP on those.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xsearch.core.checkpoint import Resumable
from xsearch.core.errors import SettingError, UserError
from xsearch.core.flops import fvcore_macs
from xsearch.core.io import atomic_write
from xsearch.core.training import (
    cosine_with_warmup,
    optimizer_step,
    recalibrate_batchnorm,
    resolve_device,
    retrain_epochs,
    seed_everything,
    train_epoch,
)
from xsearch.search_spaces.blocks.dyhead import DyHeadBlock

from ._base import EVALUATORS, Evaluator
from .tasks import Task

KINDS = ("detection", "segmentation", "keypoints")
IOU_TYPES = {"detection": ("bbox",), "segmentation": ("segm", "bbox"), "keypoints": ("keypoints", "bbox")}
PREFIX = {"bbox": "box", "segm": "mask", "keypoints": "keypoint"}
DYHEAD_STRIDES = (8, 16, 32)  # the dyhead space's pyramid backbone


class PyramidFeatures(nn.Module):
    """A network body's multi-scale features as an ``OrderedDict`` {"0": finest, ...} (torchvision's backbone API).

    ``body``: a ``ChainNetwork`` or a ``Supernet`` (its ``stem`` and ``layers`` are used, shared, not
    copied; the classifier head is not). ``levels``: the layer indices whose outputs are the
    levels, or None when the body already maps an image to a pyramid (the ``dyhead`` space).
    ``fpn=False`` returns the body's own levels (``in_channels`` wide) with no FPN and no DyHead blocks.
    """

    def __init__(self, body: nn.Module, levels: list[int] | None, in_channels: list[int], channels: int,
                 dyhead_blocks: int = 0, fpn: bool = True) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.stem, self.layers, self.levels = body.stem, body.layers, levels
        self.fpn = FeaturePyramidNetwork(in_channels, channels) if levels is not None and fpn else None
        self.blocks = nn.ModuleList(DyHeadBlock(channels, len(in_channels)) for _ in range(dyhead_blocks))
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.stem(x)
        if self.levels is None:
            for layer in self.layers:
                x = layer(x)
            features = list(x)
        else:
            features = []
            for i in range(self.levels[-1] + 1):
                x = self.layers[i](x)
                if i in self.levels:
                    features.append(x)
            if self.fpn is not None:
                features = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
        for block in self.blocks:
            features = block(features)
        return OrderedDict((str(i), f) for i, f in enumerate(features))


class _DenseCore(nn.Module):
    """The dense part of a detector (features and the dense head or RPN head) on a normalised image, for FLOPs."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> Any:
        features = list(self.detector.backbone(x).values())
        head = getattr(self.detector, "head", None)
        if head is not None:
            return head(features)
        return self.detector.rpn.head(features)


def level_strides(space: Any) -> tuple[list[int] | None, list[int], list[int]]:
    """(levels, channels per level, strides) of ``space``'s features (levels None for the dyhead space)."""
    if getattr(space, "task", "classification") == "detection":
        return None, [space.channels] * len(DYHEAD_STRIDES), list(DYHEAD_STRIDES)
    if not hasattr(space, "feature_levels"):
        raise UserError(f"space {space.name!r} gives no multi-scale features, so no detector can use it")
    info = space.feature_info()
    return space.feature_levels(), [i["num_chs"] for i in info], [i["reduction"] for i in info]


def check_feature_space(space: Any, evaluator: str) -> None:
    """Raise UserError unless ``space`` gives multi-scale features a dense evaluator can use: a backbone space
    with ``feature_levels`` or the ``dyhead`` space (detection evaluators and semantic segmentation share this)."""
    task = getattr(space, "task", "classification")
    if task not in ("classification", "detection"):
        raise UserError(f"space {space.name!r} builds {task} networks, which evaluator {evaluator!r} cannot use")
    if task == "classification" and not hasattr(space, "feature_levels"):
        raise UserError(f"space {space.name!r} gives no multi-scale features for evaluator {evaluator!r}; "
                        "use space=mbv3, micronet, focalnet or dyhead")


DETECTORS = ("fcos", "retinanet")  # train.detector of evaluator=detection


class DetectionTask(Task):
    """Detection, instance segmentation or keypoints on a ``DetectionData`` with a torchvision detector."""

    def __init__(self, kind: str = "detection", channels: int = 64, head_convs: int = 1, dyhead_blocks: int = 0,
                 score_threshold: float = 0.05, detector: str = "fcos") -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        self.detector = detector
        self.name, self.kind = kind, kind
        self.metric = f"{PREFIX[IOU_TYPES[kind][0]]}_ap"
        self.channels, self.head_convs, self.dyhead_blocks = channels, head_convs, dyhead_blocks
        self.score_threshold = score_threshold

    # --- the model ----------------------------------------------------------------------
    def model(self, space: Any, body: nn.Module, data: Any) -> nn.Module:
        from torchvision.models.detection import FCOS, KeypointRCNN, MaskRCNN, RetinaNet
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, RPNHead, TwoMLPHead
        from torchvision.models.detection.fcos import FCOSHead
        from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.models.detection.retinanet import RetinaNetHead
        from torchvision.ops import MultiScaleRoIAlign

        levels, in_channels, strides = level_strides(space)
        dyhead_space = levels is None
        channels = space.channels if dyhead_space else self.channels
        features = PyramidFeatures(body, levels, in_channels, channels, 0 if dyhead_space else self.dyhead_blocks)
        size = data.image_size
        common = {"min_size": size, "max_size": size, "image_mean": list(data.mean), "image_std": list(data.std)}
        k = data.num_classes
        if self.kind == "detection" and self.detector == "retinanet":
            scales = tuple(tuple(4 * s * 2 ** (i / 3) for i in range(3)) for s in strides)
            anchors = AnchorGenerator(scales, ((0.5, 1.0, 2.0),) * len(strides))
            head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], k,
                                 norm_layer=lambda c: nn.GroupNorm(math.gcd(32, c), c))
            return RetinaNet(features, k, anchor_generator=anchors, head=head, score_thresh=self.score_threshold,
                             detections_per_img=50, **common)
        if self.kind == "detection":
            head = body.head if dyhead_space else FCOSHead(channels, 1, k, num_convs=self.head_convs)
            anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
            return FCOS(features, k, anchor_generator=anchors, head=head, score_thresh=self.score_threshold,
                        detections_per_img=50, **common)
        names = [str(i) for i in range(len(strides))]
        rpn_anchors = AnchorGenerator(tuple((16 * 2 ** i,) for i in range(len(strides))), ((0.5, 1.0, 2.0),) * len(strides))
        rcnn = dict(rpn_anchor_generator=rpn_anchors, rpn_head=RPNHead(channels, 3),
                    rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=200, rpn_pre_nms_top_n_test=300,
                    rpn_post_nms_top_n_test=100, box_batch_size_per_image=128, box_detections_per_img=50,
                    box_score_thresh=self.score_threshold,
                    box_roi_pool=MultiScaleRoIAlign(names, 7, 2), box_head=TwoMLPHead(channels * 49, 256),
                    box_predictor=FastRCNNPredictor(256, k + 1), **common)
        if self.kind == "segmentation":
            return MaskRCNN(features, mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
                            mask_head=MaskRCNNHeads(channels, [channels, channels], 1),
                            mask_predictor=MaskRCNNPredictor(channels, channels, k + 1), **rcnn)
        points = len(data.keypoint_names or ())
        return KeypointRCNN(features, keypoint_roi_pool=MultiScaleRoIAlign(names, 14, 2),
                            keypoint_head=KeypointRCNNHeads(channels, [channels] * 4),
                            keypoint_predictor=KeypointRCNNPredictor(channels, points), **rcnn)

    def dense_flops(self, model: nn.Module, data: Any) -> int:
        """MACs of the dense part (features, and FCOS's head or the RPN head) for one ``data.image_size`` image."""
        was = model.training
        model.eval()
        macs = fvcore_macs(_DenseCore(model), input_shape=(3, data.image_size, data.image_size))
        model.train(was)
        return macs

    # --- batches and loss ---------------------------------------------------------------
    def _to_model(self, targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        if self.kind != "detection":
            return targets
        # FCOS's and RetinaNet's sigmoid classifiers have one output per category: labels 1..K -> 0..K-1
        return [{**t, "labels": t["labels"] - 1} for t in targets]

    def _from_model(self, outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        if self.kind != "detection":
            return outputs
        return [{**o, "labels": o["labels"] + 1} for o in outputs]

    def batches(self, data: Any, indices: torch.Tensor, batch_size: int, shuffle: bool = True, augment: bool = True,
                generator: torch.Generator | None = None, device: Any = "cpu",
                classes: list[int] | None = None):
        return data.batches("train", indices, batch_size, shuffle=shuffle, augment=augment, generator=generator,
                            device=device, classes=set(classes) if classes is not None else None)

    def subset_indices(self, data: Any, classes: list[int], indices: torch.Tensor) -> torch.Tensor:
        wanted = set(classes)
        per_image = data.train.classes_per_image
        keep = [int(i) for i in indices if wanted & per_image[int(i)]]
        return torch.tensor(keep, dtype=torch.long)

    def loss(self, model: nn.Module, batch: Any, classes: list[int] | None = None) -> tuple[torch.Tensor, dict]:
        images, targets = batch
        losses = model(images, self._to_model(targets))
        total = sum(losses.values())
        return total, {k: float(v.detach()) for k, v in losses.items()}

    def recalibrate(self, model: nn.Module, batches: Any, max_batches: int = 20) -> None:
        """Batch-norm statistics of the features, re-estimated on ``batches`` (the detector's own transform applied)."""
        transform, backbone = model.transform, model.backbone

        class _Features(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.backbone = backbone

            def forward(self, images: list[torch.Tensor]) -> Any:
                return self.backbone(transform(images)[0].tensors)

        recalibrate_batchnorm(_Features(), batches, max_batches=max_batches)

    # --- metrics ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, data: Any, split: str, indices: torch.Tensor | None,
                batch_size: int = 16, device: Any = "cpu") -> dict[int, dict[str, torch.Tensor]]:
        """{position in the split: the model's output dict on the image's own pixels}."""
        was = model.training
        model.eval()
        positions = list(range(len(getattr(data, split if split != "test" else "val"))) if indices is None
                         else [int(i) for i in indices])
        outputs: dict[int, dict[str, torch.Tensor]] = {}
        index = torch.tensor(positions, dtype=torch.long)
        start = 0
        for images, _ in data.batches(split, index, batch_size, device=device):
            for pos, out in zip(positions[start:start + len(images)], self._from_model(model(images))):
                outputs[pos] = {k: v.cpu() for k, v in out.items()}
            start += len(images)
        model.train(was)
        return outputs

    def metrics(self, data: Any, split: str, predictions: dict[int, dict[str, torch.Tensor]],
                indices: list[int] | None) -> dict[str, Any]:
        from xsearch.datasets.coco import coco_evaluate

        coco_split = data.train if split == "train" else data.val
        out: dict[str, Any] = {}
        for iou in IOU_TYPES[self.kind]:
            result = coco_evaluate(coco_split, predictions, iou, data.category_ids,
                                   keypoint_sigmas=data.keypoint_sigmas if iou == "keypoints" else None,
                                   indices=indices)
            prefix = PREFIX[iou]
            for key in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100"):
                if key in result:
                    out[f"{prefix}_{key}"] = float(result[key])
            out[f"per_class_{prefix}_ap"] = [float(v) for v in result["per_class_ap"]]
        return out

    def evaluate(self, model: nn.Module, data: Any, split: str, indices: torch.Tensor | None = None,
                 classes: list[int] | None = None, device: Any = "cpu") -> dict[str, Any]:
        predictions = self.predict(model, data, split, indices, device=device)
        positions = sorted(predictions)
        result = self.metrics(data, split, predictions, positions)
        per_class = result[f"per_class_{self.metric}"]
        score = result[self.metric]
        if classes is not None:  # the mean AP over the subset's categories that have ground truth here
            values = [per_class[c] for c in classes if per_class[c] >= 0]
            score = sum(values) / len(values) if values else 0.0
        return {"score": score, "per_class": per_class, "samples": len(positions), **result}


class DetectionEvaluator(Evaluator):
    """Train a found network's features in a torchvision detector on COCO-format data; COCOeval metrics.

    See the module doc for the model and the recipe. ``workdir`` gets the weights (``model.pt``),
    a resumable checkpoint per epoch and ``predictions.png`` (a few validation images).
    """

    name = "detection"
    kind = data_task = "detection"
    reports_accuracy = False
    trains = True

    def __init__(self, epochs: int = 6, batch_size: int = 16, lr: float = 2e-3, weight_decay: float = 0.05,
                 channels: int = 64, head_convs: int = 1, dyhead_blocks: int = 0, train_images: int | None = 1500,
                 test_images: int | None = None, holdout_images: int = 300, score_threshold: float = 0.05,
                 detector: str = "fcos", device: str = "auto", show_progress: bool = True) -> None:
        for key, value, least in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("channels", channels, 8),
                                  ("head_convs", head_convs, 0), ("dyhead_blocks", dyhead_blocks, 0),
                                  ("holdout_images", holdout_images, 1)):
            if value < least:
                raise SettingError(f"train.{key} must be at least {least}, got {value}")
        if detector == "fcos" and head_convs > 0 and channels % 32:
            raise SettingError(f"train.channels={channels} must be a multiple of 32 when train.head_convs > 0 (the FCOS "
                             "tower's GroupNorm has 32 groups); use train.channels=32, 64, ... or train.head_convs=0")
        if detector not in DETECTORS:
            raise SettingError(f"train.detector={detector!r} is not a detector; valid: {', '.join(DETECTORS)}")
        if detector != "fcos" and self.kind != "detection":
            raise SettingError(f"train.detector={detector} is for evaluator=detection; evaluator={self.kind} uses "
                               f"{'Mask' if self.kind == 'segmentation' else 'Keypoint'} R-CNN (leave train.detector unset)")
        self.detector = detector
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.train_images, self.test_images, self.holdout_images = train_images, test_images, holdout_images
        self.device, self.show_progress = resolve_device(device), show_progress
        self.task = DetectionTask(self.kind, channels, head_convs, dyhead_blocks, score_threshold, detector)

    # --- checks -------------------------------------------------------------------------
    def check(self, space: Any) -> None:
        task = getattr(space, "task", "classification")
        if task == "detection" and self.detector != "fcos":
            raise UserError(f"space {space.name!r} searches an FCOS head (its DyHead blocks end in FCOS's "
                            f"classifier); train.detector={self.detector} needs a backbone space: use space=mbv3, "
                            "micronet or focalnet, or train.detector=fcos")
        if task == "detection" and self.kind != "detection":
            raise UserError(f"space {space.name!r} is a detection head (FCOS); evaluator {self.name!r} needs a "
                            "backbone space: use space=mbv3, micronet or focalnet, or evaluator=detection")
        check_feature_space(space, self.name)

    def check_data(self, data: Any) -> None:
        """Refuse data this evaluator cannot train on (classification images, or annotations without masks/keypoints)."""
        if getattr(data, "task", None) == "semantic":
            raise UserError(f"evaluator={self.name} trains on COCO-format annotations, but data={data.name} holds "
                            "semantic label maps; use evaluator=semantic_segmentation, or data=coco without "
                            "data.task=semantic")
        if not hasattr(data, "category_ids"):
            raise UserError(f"evaluator={self.name} trains on COCO-format annotations, but data={data.name} is a "
                            "classification dataset; use data=coco data.root=DIR (make one with `xsearch data "
                            "fashion-coco DIR`)")
        if self.kind == "segmentation" and not data.has_masks:
            raise UserError(f"evaluator=segmentation needs instance masks, but data={data.name} has none; use "
                            "annotations with 'segmentation' fields (instances_*.json)")
        if self.kind == "keypoints" and not data.has_keypoints:
            raise UserError(f"evaluator=keypoints needs keypoint annotations, but data={data.name} has none; use "
                            "data.task=keypoints with person_keypoints_*.json or keypoints_*.json")

    # --- evaluation ---------------------------------------------------------------------
    def holdout(self, data: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(training indices, held-out indices) of the training split for ``score``: ``holdout_images`` (at most a fifth)."""
        return holdout_split(data, self.holdout_images, self.train_images, seed)

    def evaluate(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0,
                 workdir: Path | None = None) -> dict[str, Any]:
        from xsearch.core.data import stratified_subset

        self.check_data(data)
        train_idx = stratified_subset(data.train.targets, self.train_images, seed)
        model, history, elapsed = self._fit(space, arch, data, train_idx, seed, workdir)
        test_idx = (stratified_subset(data.val.targets, self.test_images, seed) if self.test_images else None)
        t0 = time.time()
        predictions = self.task.predict(model, data, "val", test_idx, self.batch_size, self.device)
        metrics = self.task.metrics(data, "val", predictions, sorted(predictions))
        if workdir is not None:
            weights = model.state_dict()
            atomic_write(Path(workdir) / "model.pt", lambda f: torch.save(weights, f), binary=True)
            self._draw(data, predictions, Path(workdir) / "predictions.png")
        return {"score": metrics[self.task.metric], **metrics, "flops": self.task.dense_flops(model, data),
                "space_flops": space.flops(arch), "test_images": len(predictions), "train_images": len(train_idx),
                "train_epochs": self.epochs, "train_seconds": elapsed, "eval_seconds": time.time() - t0,
                "history": history, "seed": seed}

    def score(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0,
              report: Any = None) -> dict[str, Any]:  # no per-epoch reports (reports_epochs)
        self.check_data(data)
        train_idx, val_idx = self.holdout(data, seed)
        model, _, elapsed = self._fit(space, arch, data, train_idx, seed, None)
        result = self.task.evaluate(model, data, "train", val_idx, device=self.device)
        return {"score": result["score"], f"val_{self.task.metric}": result["score"], "holdout_images": result["samples"],
                "train_epochs": self.epochs, "train_seconds": elapsed, "seed": seed}

    def _draw(self, data: Any, predictions: dict[int, dict[str, torch.Tensor]], path: Path) -> None:
        from xsearch.datasets.coco import draw_predictions

        shown = sorted(predictions)[:6]
        draw_predictions(data.val, predictions, data.class_names, path, shown)

    def _fit(self, space: Any, arch: dict[str, str], data: Any, train_idx: torch.Tensor, seed: int,
             workdir: Path | None) -> tuple[nn.Module, list[dict[str, float]], float]:
        return fit_downstream(self, space, arch, data, train_idx, seed, workdir)


def holdout_split(data: Any, holdout_images: int, train_images: int | None, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices) of ``data``'s training split: ``holdout_images`` held out (at most a
    fifth), ``train_images`` of the rest (stratified by ``data.train.targets``; None: all)."""
    from xsearch.core.data import stratified_subset

    n = len(data.train)
    n_val = max(1, min(holdout_images, n // 5))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))
    return stratified_subset(data.train.targets, train_images, seed, indices=perm[n_val:]), perm[:n_val]


def fit_downstream(evaluator: Any, space: Any, arch: dict[str, str], data: Any, train_idx: torch.Tensor, seed: int,
                   workdir: Path | None) -> tuple[nn.Module, list[dict[str, float]], float]:
    """Train ``evaluator.task``'s model around ``space.build(arch)`` on ``train_idx``: the downstream recipe.

    AdamW (``evaluator.lr``, ``weight_decay``), one warm-up epoch (at most 10 %) then cosine decay,
    ``evaluator.epochs`` epochs of shuffled, flipped batches of ``batch_size``; with ``workdir`` a
    resumable checkpoint per epoch (``retrain_epochs``). Returns (model, per-epoch history, seconds).
    """
    seed_everything(seed)
    body = space.build(arch)
    model = evaluator.task.model(space, body, data).to(evaluator.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=evaluator.lr, weight_decay=evaluator.weight_decay)
    steps = data.num_batches(len(train_idx), evaluator.batch_size)
    scheduler = cosine_with_warmup(optimizer, steps * evaluator.epochs,
                                   warmup_steps=min(steps, steps * evaluator.epochs // 10))
    generator = torch.Generator().manual_seed(seed)
    resumable = Resumable(model, {"weights": optimizer}, {"weights": scheduler}, generator)
    hint = (f"Lower train.lr (now {evaluator.lr:g}, the AdamW learning rate of evaluator={evaluator.name}) and "
            "train again.")

    def step(batch: Any) -> tuple[dict[str, float], int]:
        loss, parts = evaluator.task.loss(model, batch)
        optimizer_step(loss, optimizer, scheduler)
        return {"train_loss": float(loss.detach()), **parts}, len(batch[0])

    def run_epoch(epoch: int) -> tuple[str, dict[str, float]]:
        batches = evaluator.task.batches(data, train_idx, evaluator.batch_size, shuffle=True, augment=True,
                                         generator=generator, device=evaluator.device)
        desc = f"{evaluator.name} epoch {epoch + 1}/{evaluator.epochs}"
        metrics = train_epoch(batches, step, steps, desc, evaluator.show_progress, diverge_hint=hint)
        return desc, {k: float(v) for k, v in metrics.items()}

    history, elapsed = retrain_epochs(model, resumable, workdir, evaluator.epochs, run_epoch, hint)
    return model, history, elapsed


@EVALUATORS.register("segmentation")
class SegmentationEvaluator(DetectionEvaluator):
    """Instance segmentation with Mask R-CNN on the found features: mask AP and box AP (see the module doc)."""

    name = "segmentation"
    kind = data_task = "segmentation"


@EVALUATORS.register("keypoints")
class KeypointEvaluator(DetectionEvaluator):
    """Keypoints with Keypoint R-CNN on the found features: keypoint AP (the data's OKS sigmas) and box AP."""

    name = "keypoints"
    kind = data_task = "keypoints"


EVALUATORS.register("detection")(DetectionEvaluator)
