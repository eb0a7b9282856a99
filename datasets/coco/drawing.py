"""``predictions.png``: a grid of images with their ground truth and a detector's predictions drawn over them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .dataset import CocoSplit


def draw_predictions(split: CocoSplit, predictions: dict[int, dict], class_names, path, indices: list[int],
                     score_threshold: float = 0.3) -> None:
    """A grid of the images at ``indices``: ground truth thin and dashed, predictions (score >= threshold) labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    indices = [int(i) for i in indices]
    n = max(len(indices), 1)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        image = split.images[i].permute(1, 2, 0).numpy()
        ax.imshow(image)
        gt = split.annotations[i]
        for box in gt["boxes"].tolist():
            ax.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, lw=0.8,
                                       ls="--", ec="white"))
        pred = predictions.get(i)
        if pred:
            scores = pred["scores"].detach().float().cpu()
            keep = torch.nonzero(scores >= score_threshold).reshape(-1).tolist()
            boxes = pred["boxes"].detach().float().cpu()
            labels = pred["labels"].detach().cpu()
            overlay = np.zeros((*image.shape[:2], 4), dtype=np.float32)
            for j in keep:
                label = int(labels[j])
                colour = colours((label - 1) % 10)
                x1, y1, x2, y2 = boxes[j].tolist()
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.6, ec=colour))
                name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
                ax.text(x1, y1, f"{name} {float(scores[j]):.2f}", fontsize=6, color="black", va="bottom",
                        bbox={"facecolor": colour, "alpha": 0.8, "pad": 0.5, "lw": 0})
                if "masks" in pred:
                    m = (pred["masks"][j].detach().float().cpu().reshape(image.shape[:2]) > 0.5).numpy()
                    overlay[m] = (*colour[:3], 0.45)
                if "keypoints" in pred:
                    kp = pred["keypoints"][j].detach().float().cpu().reshape(-1, 3)
                    ax.scatter(kp[:, 0], kp[:, 1], s=12, c=[colour], edgecolors="black", linewidths=0.3)
            if "masks" in pred and keep:
                ax.imshow(overlay)
        ax.set_title(f"#{i} (image {split.image_ids[i]})", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

