"""``evaluator=semantic_segmentation``: a found network's features and a light head, one class per pixel.

The model: the network body's multi-scale features (``PyramidFeatures``, as the detectors use them),
then the head of ``train.head``, its logits upsampled (bilinear) to the input size:

- ``fpn`` (default): torchvision's ``FeaturePyramidNetwork`` to ``train.channels``, ``train.dyhead_blocks``
  DyHead blocks (0: none), then Panoptic FPN's semantic branch, one stage per level: a 3x3
  convolution with GroupNorm and ReLU (torchvision's ``Conv2dNormActivation``), upsampled to the
  finest level, summed, a 1x1 classifier. On ``space=dyhead`` the space's fixed pyramid backbone and
  searched DyHead blocks are the features (its FCOS head is not used);
- ``deeplabv3``: torchvision's ``DeepLabHead`` (ASPP with 256 channels, atrous rates 6/12/18 on a
  stride-16 or coarser level, 12/24/36 on a finer one, as the DeepLabv3 paper sets them for output
  strides 16 and 8) on the backbone's coarsest level, no FPN; the ASPP's image-pooling branch
  normalises with GroupNorm instead of batch norm, so a batch of one image trains;
- ``lraspp``: torchvision's ``LRASPPHead`` (MobileNetV3's segmentation head) on the backbone's finest
  ("low") and coarsest ("high") levels, no FPN.

Trained per pixel with cross-entropy (255 = ignore) by the recipe the detectors use
(``fit_downstream``: AdamW, a warm-up epoch then cosine decay, horizontal flips, a checkpoint per
epoch). Metrics come from a confusion matrix over the non-ignored pixels of the ``val`` split, at
the data's ``image_size`` resolution (the maps were resized to it when loaded, nearest-neighbour):
``miou`` (mean IoU over the classes that occur in the ground truth or the prediction, background
included: VOC's convention), ``pixel_accuracy``, ``mean_class_accuracy`` (over classes with ground
truth) and ``per_class_iou`` (-1 for a class absent from both), all fractions; ``score`` is ``miou``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from xsearch.core.errors import SettingError, UserError
from xsearch.core.flops import fvcore_macs
from xsearch.core.io import atomic_write
from xsearch.core.training import recalibrate_batchnorm, resolve_device

from ._base import EVALUATORS, Evaluator
from .detection import PyramidFeatures, check_feature_space, fit_downstream, holdout_split, level_strides
from .tasks import Task

IGNORE = 255  # the label of pixels no loss or metric counts (``xsearch.datasets.segmentation.IGNORE``)
HEADS = ("fpn", "deeplabv3", "lraspp")  # train.head


# --- metrics ------------------------------------------------------------------------------------

def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) pixel counts, rows the true class, columns the predicted one; target pixels >= K (255) are left out."""
    target, prediction = target.reshape(-1).long(), prediction.reshape(-1).long()
    keep = target < num_classes
    index = target[keep] * num_classes + prediction[keep]
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def segmentation_metrics(confusion: torch.Tensor) -> dict[str, Any]:
    """``miou``, ``pixel_accuracy``, ``mean_class_accuracy`` and ``per_class_iou`` of a confusion matrix (see the
    module doc for the conventions)."""
    confusion = confusion.double()
    hits, truth, predicted = confusion.diag(), confusion.sum(1), confusion.sum(0)
    union = truth + predicted - hits
    present = union > 0
    iou = torch.where(present, hits / union.clamp(min=1), torch.full_like(hits, -1.0))
    has_truth = truth > 0
    total = float(confusion.sum())
    return {"miou": float(iou[present].mean()) if present.any() else 0.0,
            "pixel_accuracy": float(hits.sum()) / total if total else 0.0,
            "mean_class_accuracy": float((hits[has_truth] / truth[has_truth]).mean()) if has_truth.any() else 0.0,
            "per_class_iou": [float(v) for v in iou]}


# --- the model ----------------------------------------------------------------------------------

def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch, one stage per level: 3x3 conv + GroupNorm + ReLU, upsample to the finest
    level, sum, 1x1 classifier. Input: the FPN's levels, finest first; output: logits at the finest level."""

    def __init__(self, channels: int, levels: int, num_classes: int) -> None:
        super().__init__()
        from torchvision.ops.misc import Conv2dNormActivation

        self.stages = nn.ModuleList(Conv2dNormActivation(channels, channels, 3, norm_layer=_group_norm)
                                    for _ in range(levels))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        out = self.stages[0](features[0])
        for stage, f in zip(self.stages[1:], features[1:]):
            out = out + F.interpolate(stage(f), size=size, mode="bilinear", align_corners=False)
        return self.classifier(out)


class SemanticSegmenter(nn.Module):
    """Features and a head (``kind``: fpn, deeplabv3, lraspp): float images (B, 3, H, W) in [0, 1] -> logits
    (B, K, H, W). Normalises with the data's ``mean``/``std`` itself, as torchvision's detectors do."""

    def __init__(self, features: PyramidFeatures, head: nn.Module, kind: str, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        super().__init__()
        self.features, self.head, self.kind = features, head, kind
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        levels = list(self.features((images - self.mean) / self.std).values())
        if self.kind == "fpn":
            logits = self.head(levels)
        elif self.kind == "deeplabv3":
            logits = self.head(levels[-1])
        else:
            logits = self.head({"low": levels[0], "high": levels[-1]})
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


# --- the task -----------------------------------------------------------------------------------

class SemanticTask(Task):
    """Semantic segmentation on a ``SegmentationData``: per-pixel cross-entropy, per-class IoU, mIoU."""

    name = "semantic_segmentation"
    metric = "miou"

    def __init__(self, channels: int = 64, head: str = "fpn", dyhead_blocks: int = 0) -> None:
        self.channels, self.head, self.dyhead_blocks = channels, head, dyhead_blocks

    def model(self, space: Any, body: nn.Module, data: Any) -> nn.Module:
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead
        from torchvision.models.segmentation.lraspp import LRASPPHead

        levels, in_channels, strides = level_strides(space)
        k = data.num_classes
        if levels is None:  # the dyhead space: its pyramid and searched blocks are the features (fpn head only)
            features = PyramidFeatures(body, None, in_channels, space.channels)
            return SemanticSegmenter(features, SemanticFPNHead(space.channels, len(in_channels), k), "fpn",
                                     data.mean, data.std)
        if self.head == "fpn":
            features = PyramidFeatures(body, levels, in_channels, self.channels, self.dyhead_blocks)
            head: nn.Module = SemanticFPNHead(self.channels, len(in_channels), k)
        else:
            features = PyramidFeatures(body, levels, in_channels, self.channels, fpn=False)
            if self.head == "deeplabv3":
                head = DeepLabHead(in_channels[-1], k, (6, 12, 18) if strides[-1] >= 16 else (12, 24, 36))
                pooling = head[0].convs[-1]  # ASPPPooling: pool, 1x1 conv, batch norm, ReLU
                pooling[2] = _group_norm(pooling[2].num_features)
            else:
                head = LRASPPHead(in_channels[0], in_channels[-1], k, inter_channels=128)
        return SemanticSegmenter(features, head, self.head, data.mean, data.std)

    def flops(self, model: nn.Module, data: Any) -> int:
        """MACs of the whole segmenter (features, head, classifier) for one ``data.image_size`` image (fvcore)."""
        was = model.training
        macs = fvcore_macs(model, input_shape=data.input_shape)
        model.train(was)
        return macs

    # --- batches and loss ---------------------------------------------------------------
    def batches(self, data: Any, indices: torch.Tensor, batch_size: int, shuffle: bool = True, augment: bool = True,
                generator: torch.Generator | None = None, device: Any = "cpu",
                classes: list[int] | None = None):
        return data.batches("train", indices, batch_size, shuffle=shuffle, augment=augment, generator=generator,
                            device=device, classes=classes)

    def subset_indices(self, data: Any, classes: list[int], indices: torch.Tensor) -> torch.Tensor:
        wanted = set(classes)
        per_image = data.train.classes_per_image
        return torch.tensor([int(i) for i in indices if wanted & per_image[int(i)]], dtype=torch.long)

    @staticmethod
    def _restrict(logits: torch.Tensor, labels: torch.Tensor, classes: list[int] | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """With ``classes``: their logits only, labels renumbered 0..len-1 and every other class ignored."""
        if classes is None:
            return logits, labels, None
        kept = torch.tensor(sorted(classes), dtype=torch.long, device=logits.device)
        renumber = torch.full((256,), IGNORE, dtype=torch.long, device=labels.device)
        renumber[kept.to(labels.device)] = torch.arange(len(kept), device=labels.device)
        return logits.index_select(1, kept), renumber[labels], kept

    def loss(self, model: nn.Module, batch: Any, classes: list[int] | None = None) -> tuple[torch.Tensor, dict]:
        images, labels = batch
        logits, labels, _ = self._restrict(model(images), labels, classes)
        if not bool((labels != IGNORE).any()):  # every pixel ignored: no gradient, not NaN
            return logits.sum() * 0.0, {}
        return F.cross_entropy(logits, labels, ignore_index=IGNORE), {}

    def recalibrate(self, model: nn.Module, batches: Any, max_batches: int = 20) -> None:
        recalibrate_batchnorm(model, batches, max_batches=max_batches)

    # --- metrics ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, split: str, indices: torch.Tensor | None = None,
                 classes: list[int] | None = None, device: Any = "cpu", batch_size: int = 16) -> dict[str, Any]:
        """``score`` (mIoU; with ``classes``, the mean IoU of those present, the prediction among them only),
        ``per_class`` (IoU), ``loss``, ``samples`` and the metrics of ``segmentation_metrics``."""
        was = model.training
        model.eval()
        k = data.num_classes
        confusion = torch.zeros(k, k, dtype=torch.long)
        total_loss, pixels, samples = 0.0, 0, 0
        for images, labels in data.batches(split, indices, batch_size, device=device, classes=classes):
            logits, target, kept = self._restrict(model(images), labels, classes)
            counted = int((target != IGNORE).sum())
            if counted:
                total_loss += float(F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum"))
            pixels += counted
            prediction = logits.argmax(1) if kept is None else kept[logits.argmax(1)]
            confusion += confusion_matrix(prediction, labels, k)
            samples += len(images)
        model.train(was)
        result = segmentation_metrics(confusion)
        per_class = result["per_class_iou"]
        score = result["miou"]
        if classes is not None:
            values = [per_class[c] for c in classes if per_class[c] >= 0]
            score = sum(values) / len(values) if values else 0.0
        return {"score": score, "per_class": per_class, "loss": total_loss / max(pixels, 1), "samples": samples,
                **result}

    @torch.no_grad()
    def predict(self, model: nn.Module, data: Any, split: str, positions: list[int], device: Any = "cpu"
                ) -> dict[int, torch.Tensor]:
        """{position: the predicted (S, S) class map} of the images at ``positions`` of ``split``."""
        was = model.training
        model.eval()
        out: dict[int, torch.Tensor] = {}
        index = torch.tensor(positions, dtype=torch.long)
        for images, _ in data.batches(split, index, len(positions) or 1, device=device):
            out.update(zip(positions, model(images).argmax(1).cpu()))
        model.train(was)
        return out


# --- the evaluator ------------------------------------------------------------------------------

@EVALUATORS.register("semantic_segmentation")
class SemanticSegmentationEvaluator(Evaluator):
    """Train a found network's features and a segmentation head on label maps; mIoU and pixel accuracy.

    See the module doc for the model, the recipe and the metrics. ``workdir`` gets the weights
    (``model.pt``), a resumable checkpoint per epoch and ``predictions.png`` (a few validation images,
    ground truth beside the prediction, VOC colours).
    """

    name = "semantic_segmentation"
    data_task = "semantic"  # data=coco loads the instance masks as label maps
    reports_accuracy = False
    trains = True

    def __init__(self, epochs: int = 6, batch_size: int = 16, lr: float = 2e-3, weight_decay: float = 0.05,
                 channels: int = 64, head: str = "fpn", dyhead_blocks: int = 0, train_images: int | None = 1500,
                 test_images: int | None = None, holdout_images: int = 300, device: str = "auto",
                 show_progress: bool = True) -> None:
        for key, value, least in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("channels", channels, 8),
                                  ("dyhead_blocks", dyhead_blocks, 0), ("holdout_images", holdout_images, 1)):
            if value < least:
                raise SettingError(f"train.{key} must be at least {least}, got {value}")
        if head not in HEADS:
            raise SettingError(f"train.head={head!r} is not a segmentation head; valid: {', '.join(HEADS)}")
        if dyhead_blocks and head != "fpn":
            raise SettingError(f"train.dyhead_blocks={dyhead_blocks} needs train.head=fpn (DyHead blocks work on an "
                               f"FPN's levels; train.head={head} uses the backbone's own)")
        self.head = head
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.train_images, self.test_images, self.holdout_images = train_images, test_images, holdout_images
        self.device, self.show_progress = resolve_device(device), show_progress
        self.task = SemanticTask(channels, head, dyhead_blocks)

    @property
    def metric_name(self) -> str:
        return "mIoU"

    # --- checks -------------------------------------------------------------------------
    def check(self, space: Any) -> None:
        task = getattr(space, "task", "classification")
        if task == "detection" and self.head != "fpn":
            raise UserError(f"space {space.name!r} is a pyramid of searched DyHead blocks, which only train.head=fpn "
                            f"uses (train.head={self.head} needs a backbone space: mbv3, micronet or focalnet)")
        check_feature_space(space, self.name)

    def check_data(self, data: Any) -> None:
        """Refuse data without label maps (classification images, or COCO data loaded for detection)."""
        if getattr(data, "task", None) == "semantic":
            return
        if hasattr(data, "category_ids"):
            raise UserError(f"evaluator={self.name} trains on label maps, but data={data.name} was loaded with "
                            f"data.task={data.info.get('task')}; leave data.task unset (or set data.task=semantic)")
        raise UserError(f"evaluator={self.name} trains on label maps, but data={data.name} is a classification "
                        "dataset; use data=voc_seg data.root=DIR (Pascal VOC's layout) or data=coco data.root=DIR "
                        "(make both with `xsearch data fashion-coco DIR`)")

    # --- evaluation ---------------------------------------------------------------------
    def evaluate(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0,
                 workdir: Path | None = None) -> dict[str, Any]:
        from xsearch.core.data import stratified_subset

        self.check_data(data)
        train_idx = stratified_subset(data.train.targets, self.train_images, seed)
        model, history, elapsed = fit_downstream(self, space, arch, data, train_idx, seed, workdir)
        test_idx = stratified_subset(data.val.targets, self.test_images, seed) if self.test_images else None
        t0 = time.time()
        result = self.task.evaluate(model, data, "val", test_idx, device=self.device, batch_size=self.batch_size)
        if workdir is not None:
            from xsearch.datasets.segmentation import draw_segmentation

            weights = model.state_dict()
            atomic_write(Path(workdir) / "model.pt", lambda f: torch.save(weights, f), binary=True)
            shown = (test_idx.tolist() if test_idx is not None else list(range(len(data.val))))[:4]
            predictions = self.task.predict(model, data, "val", shown, self.device)
            draw_segmentation(data.val, predictions, data.class_names, Path(workdir) / "predictions.png")
        metrics = {k: result[k] for k in ("miou", "pixel_accuracy", "mean_class_accuracy", "per_class_iou")}
        return {"score": result["miou"], **metrics, "val_loss": result["loss"],
                "flops": self.task.flops(model, data), "space_flops": space.flops(arch),
                "test_images": result["samples"], "train_images": len(train_idx), "train_epochs": self.epochs,
                "train_seconds": elapsed, "eval_seconds": time.time() - t0, "history": history, "seed": seed}

    def score(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0,
              report: Any = None) -> dict[str, Any]:  # no per-epoch reports (reports_epochs)
        self.check_data(data)
        train_idx, val_idx = holdout_split(data, self.holdout_images, self.train_images, seed)
        model, _, elapsed = fit_downstream(self, space, arch, data, train_idx, seed, None)
        result = self.task.evaluate(model, data, "train", val_idx, device=self.device, batch_size=self.batch_size)
        return {"score": result["score"], "val_miou": result["score"], "holdout_images": result["samples"],
                "train_epochs": self.epochs, "train_seconds": elapsed, "seed": seed}
