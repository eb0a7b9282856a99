"""xsearch export: ONNX (run in onnxruntime) and TorchScript (torch.jit.load) files equal the PyTorch network."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xsearch.cli import main
from xsearch.records import save_arch
from xsearch.search_spaces import get_space
from xsearch.search_spaces.blocks.dynamic import DynamicConv2d

ort = pytest.importorskip("onnxruntime")


def _trained_like(space, arch, seed: int) -> torch.nn.Module:
    """``space.build(arch)`` with seeded weights and batch-norm statistics far from a fresh network's."""
    torch.manual_seed(seed)
    net = space.build(arch)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.is_floating_point() and "temperature" not in name:
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=g))
            if name.endswith("running_var"):
                tensor.abs_().add_(0.5)
            if name.endswith("_temperature"):
                tensor.fill_(1.7)
    return net.eval()


def _folder(tmp_path: Path, space, arch, layout: str = "train", seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """An ``xsearch train`` folder (model.pt beside arch.json) or ``xsearch run`` folder (retrain/model.pt)."""
    folder = tmp_path / f"{space.name}-{layout}"
    folder.mkdir()
    save_arch(folder / "arch.json", space, arch, data="digits", evaluator="classification")
    net = _trained_like(space, arch, seed)
    weights = folder / ("retrain/model.pt" if layout == "run" else "model.pt")
    weights.parent.mkdir(exist_ok=True)
    torch.save(net.state_dict(), weights)  # what the classification evaluator writes
    return folder, net


def _onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    return session.run(None, {"images": x.numpy()})[0]


def _dynamic_arch(space) -> dict[str, str]:
    """Alternating dynamic-convolution and DyReLU blocks of the dynamic MobileNetV3 space."""
    pick = []
    for i, choice in enumerate(space.choices):
        wanted = "_dc" if i % 2 == 0 else "_dr"
        pick.append(next((o for o in choice.options if o.endswith(wanted)), choice.options[0]))
    return space.validate(dict(zip([c.label for c in space.choices], pick)))


SPACES = [
    ("mbv3", {}, None),
    ("mbv3", {"dynamic": True}, _dynamic_arch),
    ("micronet", {}, None),
    ("focalnet", {}, None),
]


@pytest.mark.parametrize("name,kwargs,pick", SPACES, ids=["mbv3", "mbv3-dynamic", "micronet", "focalnet"])
def test_onnx_matches_pytorch(tmp_path, name, kwargs, pick):
    space = get_space(name, num_classes=10, in_chans=1, image_size=16, **kwargs)
    arch = pick(space) if pick else space.sample(seed=3)
    folder, net = _folder(tmp_path, space, arch, layout="run")
    assert main(["export", str(folder / "arch.json"), "--format", "onnx"]) == 0
    x = torch.randn(5, *space.input_shape, generator=torch.Generator().manual_seed(7))  # not the traced batch size
    with torch.no_grad():
        expected = net(x).numpy()
    got = _onnx_logits(folder / "model.onnx", x)
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.abs(expected).max() > 1e-2  # the comparison is not of two near-zero outputs


def test_torchscript_matches_pytorch(tmp_path, capsys):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=16, dynamic=True)
    arch = _dynamic_arch(space)
    folder, net = _folder(tmp_path, space, arch, layout="train")
    out = tmp_path / "net.ts"
    assert main(["export", str(folder), "format=torchscript", f"out={out}"]) == 0
    assert str(folder / "model.pt") in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(out))
    for batch in (1, 4):
        x = torch.randn(batch, *space.input_shape, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x), atol=1e-4, rtol=0)


def test_weights_none_exports_the_untrained_network(tmp_path, capsys):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=16)
    arch = space.sample(seed=1)
    save_arch(tmp_path / "arch.json", space, arch)
    assert main(["export", str(tmp_path / "arch.json"), "--format=onnx", "weights=none"]) == 0
    assert "UNTRAINED" in capsys.readouterr().out
    assert (tmp_path / "model.onnx").is_file()


@pytest.mark.parametrize("groups,stride,bias,kernel", [(1, 1, False, 1), (4, 2, True, 3), (8, 1, False, 5)])
def test_batch_free_dynamic_conv_equals_per_image_convolution(groups, stride, bias, kernel):
    from xsearch.export import BatchFreeDynamicConv

    torch.manual_seed(0)
    conv = DynamicConv2d(8, 16, kernel, stride=stride, groups=groups, bias=bias, temperature=2.0).eval()
    x = torch.randn(3, 8, 9, 9)
    with torch.no_grad():
        got = BatchFreeDynamicConv(conv)(x)
        attn = conv.attention(x)
        reference = []
        for i in range(3):  # the definition: image i convolved with its own kernel sum_k pi_ik W_k
            w = torch.einsum("k,koihw->oihw", attn[i], conv.weight)
            b = attn[i] @ conv.bias if bias else None
            reference.append(F.conv2d(x[i:i + 1], w, b, stride, kernel // 2, 1, groups))
    torch.testing.assert_close(got, torch.cat(reference), atol=1e-5, rtol=1e-5)


def _bad(args: list[str], capsys, *needles: str) -> None:
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_bad_inputs_exit_2(tmp_path, capsys):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=16)
    arch = space.sample(seed=0)
    folder, _ = _folder(tmp_path, space, arch)
    _bad([str(folder), "--format", "pdf"], capsys, "unknown export format 'pdf'", "onnx, torchscript")
    _bad([str(folder)], capsys, "--format onnx")
    _bad([str(folder), "--opset", "11"], capsys, "'--opset' is not an option")
    _bad([str(tmp_path / "missing" / "arch.json"), "--format", "onnx"], capsys, "does not exist")
    bare = tmp_path / "bare"
    bare.mkdir()
    save_arch(bare / "arch.json", space, arch)
    _bad([str(bare), "--format", "onnx"], capsys, "no retrained weights", "weights=none")
    _bad([str(bare), "--format", "onnx", f"weights={tmp_path / 'nope.pt'}"], capsys, "does not exist")
    five_classes = get_space("mbv3", num_classes=5, in_chans=1, image_size=16)
    torch.save(five_classes.build(arch).state_dict(), bare / "model.pt")
    _bad([str(bare), "--format", "onnx"], capsys, "do not fit the network")
    downstream = tmp_path / "detection"
    downstream.mkdir()
    save_arch(downstream / "arch.json", space, arch, evaluator="detection")
    torch.save({}, downstream / "model.pt")
    _bad([str(downstream), "--format", "onnx"], capsys, "evaluator=detection", "did not record", "train it again")
    head = get_space("dyhead")
    heads = tmp_path / "dyhead"
    heads.mkdir()
    save_arch(heads / "arch.json", head, head.sample(seed=0))
    _bad([str(heads), "--format", "onnx", "weights=none"], capsys, "not a downstream training", "evaluator=detection")
    assert not list(tmp_path.rglob("*.onnx"))


# --- downstream models: the found backbone in its torchvision detector ---------------------------------------------

def _downstream_run(tmp_path: Path, fashion_coco: Path, evaluator: str, *extra: str) -> Path:
    """An ``xsearch train`` folder of a downstream model (1 epoch on 8 fashion-coco canvases)."""
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=28, width_mult=0.5)
    found = tmp_path / "found"
    found.mkdir(exist_ok=True)
    save_arch(found / "arch.json", space, space.sample(seed=0), data="fashion_mnist")
    runs = tmp_path / f"runs-{evaluator}-{len(list(tmp_path.glob('runs-*')))}"
    assert main(["train", str(found / "arch.json"), f"evaluator={evaluator}", "data=coco", f"data.root={fashion_coco}",
                 "budget=smoke", "train.epochs=1", "train.train_images=8", "train.batch_size=4", "train.channels=32",
                 *(["train.score_threshold=0.0"] if evaluator != "semantic_segmentation" else []), *extra,
                 f"runs_root={runs}", "progress=false"]) == 0
    (arch,) = runs.rglob("arch.json")
    return arch.parent


@pytest.mark.parametrize("evaluator,extra", [("detection", ()), ("detection", ("train.detector=retinanet",)),
                                             ("segmentation", ()), ("keypoints", ())])
def test_downstream_models_export_to_onnx_equal_to_their_predictions(tmp_path, fashion_coco, capsys, evaluator, extra):
    import json

    import onnx

    from xsearch.datasets import load_coco
    from xsearch.export import DETECTOR_OUTPUTS, downstream_evaluator, load_network

    folder = _downstream_run(tmp_path, fashion_coco, evaluator, *extra)
    capsys.readouterr()
    assert main(["export", str(folder), "--format", "onnx"]) == 0
    assert "checked: onnxruntime outputs equal" in capsys.readouterr().out
    path = folder / "model.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["xsearch_evaluator"] == evaluator and len(json.loads(meta["class_names"])) == 10
    # the reference: the evaluator's own prediction path (its batching, its label mapping) on the reloaded weights
    record = json.loads((folder / "arch.json").read_text())
    model = load_network(folder)[0]
    task = downstream_evaluator(record, folder / "arch.json").task
    data = load_coco(str(fashion_coco), task=evaluator)
    expected = task.predict(model, data, "val", torch.tensor([3, 7]))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = DETECTOR_OUTPUTS[task.kind]
    detections = 0
    for i in (3, 7):
        got = dict(zip(names, session.run(list(names), {"image": data.val.images[i].float().div(255).numpy()})))
        assert set(got) <= set(expected[i]) | {"keypoints_scores"}
        for name in names:
            want = expected[i][name]
            assert got[name].shape == tuple(want.shape), name
            np.testing.assert_allclose(got[name], want.numpy(), atol=1e-3, err_msg=name)
        detections += len(got["boxes"])
    assert detections > 0  # score_threshold 0: the check compared real detections, not two empty lists


def test_downstream_export_refusals(tmp_path, fashion_coco, capsys):
    import json
    import shutil

    folder = _downstream_run(tmp_path, fashion_coco, "detection")
    _bad([str(folder), "--format", "torchscript"], capsys, "ONNX only", "--format onnx")
    record = json.loads((folder / "arch.json").read_text())
    moved = tmp_path / "moved-data"
    shutil.copytree(fashion_coco, moved)
    record["downstream"]["data_settings"]["root"] = str(tmp_path / "gone")
    (folder / "arch.json").write_text(json.dumps(record))
    _bad([str(folder), "--format", "onnx"], capsys, "validation images", "gone")
    assert not list(folder.glob("*.onnx"))


@pytest.mark.parametrize("head", ["fpn", "lraspp"])
def test_semantic_segmenter_exports_with_a_free_batch_equal_to_its_predictions(tmp_path, fashion_coco, capsys, head):
    import json

    from xsearch.datasets import load_coco
    from xsearch.export import downstream_evaluator, load_network

    folder = _downstream_run(tmp_path, fashion_coco, "semantic_segmentation", f"train.head={head}")
    capsys.readouterr()
    assert main(["export", str(folder), "--format", "onnx"]) == 0
    assert "a batch of 3 validation images" in capsys.readouterr().out
    record = json.loads((folder / "arch.json").read_text())
    model = load_network(folder)[0]
    task = downstream_evaluator(record, folder / "arch.json").task
    data = load_coco(str(fashion_coco), task="semantic")
    maps = task.predict(model, data, "val", [1, 4, 6, 9])  # the evaluator's own path: its batching, its argmax
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    images = torch.stack([data.val.images[i] for i in (1, 4, 6, 9)]).float().div(255)
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    assert logits.shape == (4, 11, 128, 128)  # background and the 10 categories
    agree = np.mean([(logits[j].argmax(0) == maps[i].numpy()).mean() for j, i in enumerate((1, 4, 6, 9))])
    assert agree > 0.999  # the same class on every pixel but, at most, an exact tie
