"""Downstream tasks: detection, instance segmentation and keypoints on found networks, and DyHead search.

Everything runs on a tiny built-in fashion-coco (Fashion-MNIST items on 128x128 canvases) at
smoke budgets: these tests check behaviour (training runs, metrics are COCOeval's, FLOPs are exact,
searches run on a detection task, bad input is refused), not accuracy.
"""

from __future__ import annotations

import json

import pytest
import torch

from xsearch.cli import main
from xsearch.core.errors import SettingError, UserError
from xsearch.core.flops import fvcore_macs
from xsearch.datasets import load_coco
from xsearch.evaluators import EVALUATORS, DetectionTask
from xsearch.evaluators.detection import _DenseCore
from xsearch.search_spaces import get_space
from xsearch.search_spaces.__init__ import arch_record

QUIET = {"show_progress": False}


@pytest.fixture(scope="module")
def coco_root(fashion_coco):
    return fashion_coco


@pytest.fixture(scope="module")
def datasets(coco_root):
    return {task: load_coco(str(coco_root), task=task) for task in ("detection", "segmentation", "keypoints")}


def _space(name: str):
    if name == "dyhead":
        return get_space("dyhead", num_classes=10, in_chans=3, image_size=128, channels=16, num_blocks=2)
    return get_space(name, num_classes=10, in_chans=3, image_size=128, width_mult=0.5)


@pytest.mark.parametrize("kind, space_name", [("detection", "mbv3"), ("detection", "dyhead"),
                                              ("segmentation", "micronet"), ("keypoints", "focalnet")])
def test_each_task_trains_and_reports_cocoeval_metrics(datasets, tmp_path, kind, space_name):
    space = _space(space_name)
    arch = space.sample(seed=1)
    evaluator = EVALUATORS.get(kind)(epochs=1, batch_size=8, train_images=16, channels=16, head_convs=0, **QUIET)
    metrics = evaluator.evaluate(space, arch, datasets[kind], seed=0, workdir=tmp_path)
    main_metric = {"detection": "box_ap", "segmentation": "mask_ap", "keypoints": "keypoint_ap"}[kind]
    assert metrics["score"] == metrics[main_metric]
    for key in (main_metric, f"{main_metric}50", "box_ap"):
        assert 0.0 <= metrics[key] <= 1.0
    assert len(metrics[f"per_class_{main_metric}"]) == 10
    assert metrics["test_images"] == 10 and metrics["train_epochs"] == 1
    assert (tmp_path / "predictions.png").stat().st_size > 1000
    assert (tmp_path / "model.pt").exists()
    if space_name == "dyhead":  # the detector's dense part is exactly the space's network
        assert metrics["flops"] == space.flops(arch)


def test_dyhead_detector_flops_are_the_space_flops(datasets):
    space = _space("dyhead")
    task = DetectionTask("detection")
    for arch in ({c.label: "skip" for c in space.choices}, {c.label: "scale_spatial_task" for c in space.choices},
                 space.sample(seed=3)):
        model = task.model(space, space.build(arch), datasets["detection"]).eval()
        assert task.dense_flops(model, datasets["detection"]) == space.flops(arch)
        assert fvcore_macs(_DenseCore(model), input_shape=(3, 128, 128)) == space.flops(arch)


def _ground_truth(split, kind: str, shift: float = 0.0) -> dict[int, dict[str, torch.Tensor]]:
    out = {}
    for i, ann in enumerate(split.annotations):
        pred = {"boxes": ann["boxes"] + shift, "labels": ann["labels"], "scores": torch.ones(len(ann["labels"]))}
        if kind == "segmentation":
            pred["masks"] = torch.roll(ann["masks"], int(shift), dims=-1)[:, None].float()
        if kind == "keypoints":
            points = ann["keypoints"].clone()
            points[..., :2] += shift
            pred["keypoints"] = points
        out[i] = pred
    return out


@pytest.mark.parametrize("kind", ["detection", "segmentation", "keypoints"])
def test_cocoeval_through_the_evaluator_is_one_on_ground_truth(datasets, kind):
    data, task = datasets[kind], DetectionTask(kind)
    exact = task.metrics(data, "val", _ground_truth(data.val, kind), None)
    assert exact[task.metric] == pytest.approx(1.0) and exact["box_ap"] == pytest.approx(1.0)
    shifted = task.metrics(data, "val", _ground_truth(data.val, kind, shift=4.0), None)
    assert shifted[task.metric] < 0.9


def test_danas_searches_the_dyhead_for_detection(coco_root, tmp_path):
    args = ["run", "space=dyhead", "strategy=danas", "evaluator=detection", "data=coco", f"data.root={coco_root}",
            "budget=smoke", "space.channels=8", "space.num_blocks=2", "search.epochs=3", "search.warmup_epochs=1",
            "search.batch_size=8", "search.train_samples=null", "search.val_samples=8", "search.derive_trials=3",
            "train.epochs=1", "train.train_images=null", "train.batch_size=8", "train.channels=8", "train.head_convs=0",
            f"runs_root={tmp_path}", "progress=false"]
    assert main(args) == 0
    (run_dir,) = tmp_path.glob("*-dyhead-danas")  # tmp_path also holds the study's artifacts/ folder
    record = json.loads((run_dir / "arch.json").read_text())
    assert record["space"] == "dyhead" and "box_ap" in record["metrics"]
    search = json.loads((run_dir / "search.json").read_text())
    assert search["metrics"]["inherited_metric"] == "box_ap"
    stages = [row for row in search["history"] if "stage" in row and "derived_arch" in row]
    assert [row["num_classes"] for row in stages][-1] == 10 and len(stages) >= 2  # categories grow easy-first
    assert (run_dir / "predictions.png").exists()


@pytest.mark.slow
def test_the_dyhead_detection_search_finishes_at_budget_smoke(coco_root, tmp_path):
    """``budget=smoke`` as a user runs it, no other setting: the DyHead search and the retraining finish."""
    args = ["run", "space=dyhead", "strategy=danas", "evaluator=detection", "data=coco", f"data.root={coco_root}",
            "budget=smoke", f"runs_root={tmp_path}", "progress=false"]
    assert main(args) == 0
    (run_dir,) = tmp_path.glob("*-dyhead-danas")  # tmp_path also holds the study's artifacts/ folder
    assert (run_dir / "DONE").is_file()
    record = json.loads((run_dir / "arch.json").read_text())
    assert record["space"] == "dyhead" and "box_ap" in record["metrics"]
    # the smoke preset's downstream sizes (conf/budget/smoke.yaml) reached the space
    assert {k: record["space_kwargs"][k] for k in ("image_size", "channels", "num_blocks")} == \
        {"image_size": 64, "channels": 32, "num_blocks": 2}
    assert sorted(record["arch"]) == ["block1", "block2"]


def test_a_classification_arch_retrains_downstream(coco_root, tmp_path):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=28, width_mult=0.5)
    arch = space.sample(seed=0)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch_record(space, arch, data="fashion_mnist")))
    args = ["train", str(path), "evaluator=segmentation", "data=coco", f"data.root={coco_root}", "train.epochs=1",
            "train.train_images=null", "train.batch_size=8", "train.channels=16", "train.head_convs=0", f"runs_root={tmp_path / 'runs'}",
            "progress=false"]
    assert main(args) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    record = json.loads((run_dir / "arch.json").read_text())
    assert record["space_kwargs"]["image_size"] == 128 and record["space_kwargs"]["in_chans"] == 3
    assert "mask_ap" in record["metrics"] and record["arch"] == arch


@pytest.mark.parametrize("args, message", [
    (["evaluator=detection", "data=digits"], "classification dataset"),
    (["evaluator=classification", "data=coco", "data.root=ROOT"], "detection annotations"),
    (["evaluator=keypoints", "space=dyhead", "data=coco", "data.root=ROOT"], "backbone space"),
    (["evaluator=detection", "data=coco"], "xsearch data fashion-coco"),
    (["evaluator=detection", "data=coco", "data.root=ROOT", "search.prune_score=blend", "space=dyhead"], "blend"),
])
def test_bad_downstream_input_exits_2(coco_root, tmp_path, capsys, args, message):
    args = [a.replace("ROOT", str(coco_root)) for a in args]
    code = main(["run", "budget=smoke", f"runs_root={tmp_path}", "progress=false", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("space, strategy", [("dyhead", "random"), ("dyhead", "spos"), ("mbv3", "dnas")])
def test_other_strategies_search_on_detection(coco_root, tmp_path, space, strategy):
    own = {"random": ["search.max_trials=2"],
           "spos": ["search.max_trials=3", "search.warmup_epochs=1", "search.batch_size=8", "search.val_samples=8"],
           "dnas": ["search.epochs=1", "search.warmup_epochs=1", "search.batch_size=8", "search.val_samples=8",
                    "search.derive_trials=2", "search.train_samples=null"]}[strategy]
    space_settings = (["space.channels=8", "space.num_blocks=2"] if space == "dyhead" else
                      ["space.width_mult=0.5", "space.num_layers=4"])
    args = ["run", f"space={space}", f"strategy={strategy}", "evaluator=detection", "data=coco",
            f"data.root={coco_root}", "budget=smoke", *space_settings, *own,
            "train.epochs=1", "train.train_images=null", "train.batch_size=8", "train.channels=8",
            "train.head_convs=0", "train.holdout_images=8", f"runs_root={tmp_path}", "progress=false"]
    assert main(args) == 0
    (run_dir,) = tmp_path.glob(f"*-{space}-{strategy}")  # tmp_path also holds the study's artifacts/ folder
    trials = (run_dir / "trials.csv").read_text().splitlines()
    assert len(trials) >= 3  # header, the queries, the retrained network
    assert "box_ap" in json.loads((run_dir / "arch.json").read_text())["metrics"]


def test_retinanet_beside_fcos(datasets, tmp_path):
    from torchvision.models.detection import FCOS, RetinaNet

    space = _space("mbv3")
    arch = space.sample(seed=1)
    evaluator = EVALUATORS.get("detection")(epochs=1, batch_size=8, train_images=16, channels=16, detector="retinanet",
                                            **QUIET)
    model = evaluator.task.model(space, space.build_features(arch), datasets["detection"])
    assert isinstance(model, RetinaNet) and model.anchor_generator.num_anchors_per_location() == [9] * 3
    metrics = evaluator.evaluate(space, arch, datasets["detection"], seed=0, workdir=tmp_path)
    assert 0.0 <= metrics["box_ap"] <= 1.0 and metrics["score"] == metrics["box_ap"]
    assert len(metrics["per_class_box_ap"]) == 10 and (tmp_path / "predictions.png").exists()
    assert metrics["flops"] > space.feature_flops(arch)  # the dense part counts the RetinaNet head too
    fcos = EVALUATORS.get("detection")(channels=16, head_convs=0, **QUIET).task.model(space, space.build_features(arch),
                                                                         datasets["detection"])
    assert isinstance(fcos, FCOS)  # the default stays FCOS


@pytest.mark.parametrize("kind, settings, message", [
    ("detection", {"detector": "yolo"}, "valid: fcos, retinanet"),
    ("segmentation", {"detector": "retinanet"}, "is for evaluator=detection"),
])
def test_bad_detector_settings_are_refused(kind, settings, message):
    with pytest.raises(SettingError, match=message):
        EVALUATORS.get(kind)(**settings, **QUIET)


def test_retinanet_refuses_the_dyhead_space():
    with pytest.raises(UserError, match="FCOS head"):
        EVALUATORS.get("detection")(detector="retinanet", **QUIET).check(_space("dyhead"))
