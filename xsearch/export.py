"""``xsearch export``: a found network with its retrained weights as an ONNX or TorchScript file.

The network is rebuilt from its ``arch.json`` (``space.build(arch)``), loaded with the weights its
retraining saved beside it (``retrain/model.pt`` in an ``xsearch run`` folder, ``model.pt`` in an
``xsearch train`` folder), put in eval mode and traced with a dummy batch of the space's input
shape. The file takes the same normalised images the network was trained on (the dataset's mean
and std) and returns class logits; its batch size is free.

Dynamic convolution runs, in training, as one grouped convolution with the batch folded into the
groups: its group count depends on the batch size, which ONNX cannot express. For export each
``DynamicConv2d`` is swapped for ``BatchFreeDynamicConv``, the same per-image aggregated kernel
applied as a batched matrix product over unfolded patches (equal outputs, checked in the tests).
Every export is checked before the command returns: the file is loaded back (onnxruntime,
``torch.jit.load``) and its output compared with the PyTorch network on a batch of another size.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .core.errors import UserError

FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts"}
OPSET = 17  # the TorchScript-based exporter of torch 2.14 writes opsets 7 to 20; 17 is read by every current runtime
TOLERANCE = 1e-4  # largest |exported - PyTorch| logit difference accepted by the check
DETECTOR_TOLERANCE = 1e-3  # largest difference of a detector's outputs (boxes in pixels, scores, mask probabilities)
USAGE = ("usage: xsearch export ARCH_JSON --format onnx|torchscript [out=FILE] [weights=PATH|none]; "
         "ARCH_JSON is a run's arch.json or run folder (format=onnx works too)")


@dataclass
class ExportRequest:
    """What ``xsearch export`` was asked for, checked."""

    arch_path: Path
    format: str
    out: Path | None = None
    weights: str | None = None  # a path, "none" (untrained), or None (look beside arch.json)


def parse_args(args: list[str]) -> ExportRequest:
    """``ARCH_JSON`` then ``--format F`` / ``--format=F`` / ``format=F``, ``out=FILE``, ``weights=PATH|none``."""
    if not args or "=" in args[0] or args[0].startswith("-"):
        raise UserError(USAGE)
    options: dict[str, str] = {}
    rest = list(args[1:])
    while rest:
        arg = rest.pop(0)
        if arg == "--format":
            if not rest:
                raise UserError(f"--format needs a value: {' or '.join(FORMATS)}")
            arg = f"format={rest.pop(0)}"
        elif arg.startswith("--format="):
            arg = arg[2:]
        elif arg.startswith("-"):
            raise UserError(f"{arg!r} is not an option of xsearch export; {USAGE}")
        key, sep, value = arg.partition("=")
        if not sep or key not in ("format", "out", "weights"):
            raise UserError(f"{arg!r} is not an option of xsearch export (valid: --format, format=, out=, weights=); "
                            f"{USAGE}")
        if key in options:
            raise UserError(f"{key} is given twice")
        options[key] = value
    if "format" not in options:
        raise UserError(f"say which format: --format onnx or --format torchscript; {USAGE}")
    if options["format"] not in FORMATS:
        raise UserError(f"unknown export format {options['format']!r}; valid: {', '.join(FORMATS)}")
    out = Path(options["out"]) if options.get("out") else None
    return ExportRequest(Path(args[0]), options["format"], out, options.get("weights") or None)


# --- the network ---------------------------------------------------------------------------

class BatchFreeDynamicConv(nn.Module):
    """A ``DynamicConv2d`` computed without folding the batch into conv groups (exportable with a free batch).

    Same attention, same per-image kernel ``sum_k pi_k W_k``; the convolution is an unfold
    (im2col) and a batched matrix product per group, so no operator attribute depends on the batch.
    """

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        b, _, h, w = x.shape
        k, out, ks, groups, stride = c.num_kernels, c.out_channels, c.kernel_size, c.groups, c.stride
        pad = ks // 2
        per_group = (c.in_channels // groups) * ks * ks
        attn = c.attention(x)
        weight = (attn @ c.weight.reshape(k, -1)).reshape(b, groups, out // groups, per_group)
        cols = F.unfold(x, ks, padding=pad, stride=stride).reshape(b, groups, per_group, -1)
        oh, ow = (h + 2 * pad - ks) // stride + 1, (w + 2 * pad - ks) // stride + 1
        y = torch.matmul(weight, cols).reshape(b, out, oh, ow)
        if c.bias is not None:
            y = y + (attn @ c.bias).reshape(b, out, 1, 1)
        return y


def exportable(model: nn.Module) -> nn.Module:
    """``model`` with every dynamic convolution replaced by ``BatchFreeDynamicConv`` (in place; returned)."""
    from xsearch.search_spaces.blocks.dynamic import DynamicConv2d

    for name, child in model.named_children():
        if isinstance(child, DynamicConv2d):
            setattr(model, name, BatchFreeDynamicConv(child))
        else:
            exportable(child)
    return model


def find_weights(arch_file: Path) -> Path | None:
    """The retrained weights beside ``arch_file``: ``model.pt`` (xsearch train) or ``retrain/model.pt`` (xsearch run)."""
    for candidate in (arch_file.parent / "model.pt", arch_file.parent / "retrain" / "model.pt"):
        if candidate.is_file():
            return candidate
    return None


def _downstream_kind(evaluator: str) -> str | None:
    """The dense task's data (``detection``, ``semantic``, ...) evaluator ``evaluator`` trains on, or None for
    classification."""
    from xsearch.evaluators import EVALUATORS

    try:
        return getattr(EVALUATORS.get(evaluator), "data_task", None)
    except (KeyError, ValueError, UserError):
        return None


def load_network(arch_path: Path, weights: str | None = None) -> tuple[nn.Module, Any, dict[str, Any], Path | None]:
    """(the network in eval mode with its weights, its space, the arch.json record, the weights file or None).

    ``weights``: a ``model.pt`` path, ``"none"`` for the untrained network, or None to use the
    weights beside the arch.json. A downstream record (``xsearch train ... evaluator=detection``, ...)
    gives the whole task model (the found backbone in its detector or segmenter, see ``downstream_model``).
    """
    from xsearch.search_spaces import arch_from_record

    from .records import ARCH_FILE, read_arch_record

    arch_file = arch_path / ARCH_FILE if arch_path.is_dir() else arch_path
    record = read_arch_record(arch_path)
    space, arch = arch_from_record(record, repr(str(arch_file)))
    evaluator = record.get("evaluator")
    if evaluator and _downstream_kind(evaluator):
        model = downstream_model(space, arch, record, arch_file)
    elif getattr(space, "task", "classification") != "classification":
        raise UserError(f"space {space.name!r} builds a {space.task} network (a head over a fixed backbone), and "
                        f"{arch_file} is not a downstream training of it; export the arch.json that 'xsearch train "
                        f"{arch_file} evaluator=detection data=coco data.root=DIR' writes")
    else:
        model = space.build(arch)
    if weights is not None and weights.lower() == "none":
        path = None
    else:
        path = Path(weights) if weights else find_weights(arch_file)
        if path is None:
            raise UserError(f"no retrained weights beside {arch_file} (looked for model.pt and retrain/model.pt). "
                            "Retrain the network with 'xsearch train ARCH_JSON' and export the arch.json it writes, "
                            "pass weights=PATH/model.pt, or weights=none to export the untrained network")
        if not path.is_file():
            raise UserError(f"weights file {str(path)!r} does not exist; pass the model.pt a retraining wrote")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
            raise UserError(f"{path} is not a readable weights file ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict):
            raise UserError(f"{path} holds a {type(state).__name__}, not a state dict saved by xsearch")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"the weights in {path} do not fit the network of {arch_file} ({first}); pass the "
                            "model.pt its retraining wrote") from None
    return model.eval(), space, record, path


# --- downstream models ----------------------------------------------------------------------

# what a downstream model's shape depends on, kept from its data in the arch.json (so export needs no data)
DATA_FACTS = ("image_size", "mean", "std", "class_names", "category_ids", "keypoint_names", "keypoint_sigmas")
# the outputs of a detector's ONNX file, in order, per evaluator kind (torchvision's output dict, flattened)
DETECTOR_OUTPUTS = {"detection": ("boxes", "scores", "labels"),
                    "segmentation": ("boxes", "scores", "labels", "masks"),
                    "keypoints": ("boxes", "scores", "labels", "keypoints", "keypoints_scores")}


def downstream_record(cfg: dict[str, Any], data: Any) -> dict[str, Any]:
    """The ``downstream`` entry of a downstream training's ``arch.json``: the evaluator's settings (``train.*``),
    the data's settings and the facts of the data the model's shape depends on (``DATA_FACTS``, the number of
    classes). ``downstream_model`` rebuilds the model from it without loading the data."""
    from .config import settings_of

    _, train = settings_of(cfg, "evaluator")
    _, data_settings = settings_of(cfg, "data")
    facts: dict[str, Any] = {"num_classes": int(data.num_classes)}
    for key in DATA_FACTS:
        value = getattr(data, key, None)
        if value is not None:
            facts[key] = list(value) if isinstance(value, (tuple, list)) else value
    return {"train": train, "data_settings": data_settings, "data_facts": facts}


def downstream_evaluator(record: dict[str, Any], arch_file: Path) -> Any:
    """The evaluator a downstream record was trained with, rebuilt from its recorded ``train.*`` settings."""
    from xsearch.evaluators import EVALUATORS

    entry = record.get("downstream")
    if not isinstance(entry, dict) or not isinstance(entry.get("data_facts"), dict):
        raise UserError(f"{arch_file} was trained with evaluator={record['evaluator']} by an xsearch that did not "
                        "record the model's settings; train it again with 'xsearch train ARCH_JSON "
                        f"evaluator={record['evaluator']} ...' and export the arch.json that writes")
    return EVALUATORS.get(record["evaluator"])(**{**entry.get("train", {}), "device": "cpu", "show_progress": False})


def downstream_model(space: Any, arch: dict[str, str], record: dict[str, Any], arch_file: Path) -> nn.Module:
    """The untrained task model of a downstream record: its evaluator's ``task.model`` around ``space.build(arch)``,
    with the recorded settings and data facts."""
    from types import SimpleNamespace

    task = downstream_evaluator(record, arch_file).task
    facts = {k: tuple(v) if isinstance(v, list) else v for k, v in record["downstream"]["data_facts"].items()}
    return task.model(space, space.build(arch), SimpleNamespace(**facts))


class DetectorOutputs(nn.Module):
    """A torchvision detector as ONNX takes it: one image (3, H, W), RGB in [0, 1], in; its output dict out as a
    tuple (``DETECTOR_OUTPUTS``), labels 1..K indexing the data's categories as in the metrics."""

    def __init__(self, detector: nn.Module, task: Any) -> None:
        super().__init__()
        self.detector, self.task, self.names = detector, task, DETECTOR_OUTPUTS[task.kind]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.task._from_model(self.detector([image]))[0]
        return tuple(out[name] for name in self.names)


# --- export and check ----------------------------------------------------------------------

def _example(space: Any, batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, *space.input_shape, generator=torch.Generator().manual_seed(seed))


def to_onnx(model: nn.Module, example: torch.Tensor, out: Any, free_batch: bool = True) -> None:
    """Write ``model`` (traced on ``example``) as ONNX to ``out`` (a path or a binary file object): opset ``OPSET``,
    input 'images' (with a free batch axis when ``free_batch``), output 'logits'. ``xsearch export`` and the
    latency tables (``xsearch.latency``) both export with it, so a table times what ``export`` ships."""
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if free_batch else None
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated, and says so on every call
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), out if not isinstance(out, Path) else str(out), dynamo=False,
                          opset_version=OPSET, input_names=["images"], output_names=["logits"], dynamic_axes=axes)


def export_onnx(model: nn.Module, space: Any, out: Path, metadata: dict[str, str]) -> None:
    """Write ``model`` as ONNX (opset ``OPSET``, input 'images' with a free batch axis, output 'logits')."""
    export_onnx_traced(model, _example(space, 2, 0), out, metadata)


def export_onnx_traced(model: nn.Module, example: torch.Tensor, out: Path, metadata: dict[str, str]) -> None:
    """``to_onnx`` traced on ``example``, checked by ``onnx.checker`` and with ``metadata`` in the file."""
    to_onnx(model, example, out)
    finish_onnx(out, metadata)


def finish_onnx(out: Path, metadata: dict[str, str]) -> None:
    """Check the ONNX file ``out`` with ``onnx.checker`` and write ``metadata`` into it."""
    import onnx

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))


def export_torchscript(model: nn.Module, space: Any, out: Path) -> None:
    """Write ``model`` traced to TorchScript (``torch.jit.load`` reads it; free batch size)."""
    with warnings.catch_warnings():  # torch.jit.trace is deprecated in torch 2.14, and says so on every call
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example(space, 2, 0), check_trace=False)
        torch.jit.save(traced, str(out))


def run_exported(path: Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """The exported file's output for ``x``: onnxruntime (CPU) for ONNX, ``torch.jit.load`` for TorchScript."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(x)


def check_images(record: dict[str, Any], arch_file: Path, count: int = 4) -> list[torch.Tensor]:
    """The first ``count`` validation images (3, H, W), RGB in [0, 1], of a downstream record's data: a detector is
    traced on the first and checked on the others (real images, so the check sees real detections)."""
    import inspect

    from xsearch.datasets import DATASETS

    entry = record["downstream"]
    settings = dict(entry.get("data_settings") or {})
    loader = DATASETS.get(record.get("data") or "coco")
    if "max_images" in inspect.signature(loader).parameters:
        settings["max_images"] = count
    try:
        data = loader(**settings)
    except UserError as exc:
        raise UserError(f"exporting {arch_file} traces and checks the model on its validation images, but its data "
                        f"cannot be loaded: {exc}") from None
    split = data.val
    return [split.images[i].float().div(255.0) for i in range(min(count, len(split)))]


def export_detector(model: nn.Module, task: Any, record: dict[str, Any], arch_file: Path, out: Path,
                    metadata: dict[str, str]) -> tuple[float, int]:
    """Write a downstream detector (``DetectorOutputs``) as ONNX, traced on a validation image, and check it in
    onnxruntime against PyTorch on the other validation images; returns (the largest difference, images checked)."""
    import onnxruntime

    wrapper = DetectorOutputs(model, task).eval()
    images = check_images(record, arch_file)
    names = list(wrapper.names)
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated, and says so on every call
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (images[0],), str(out), dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=names, dynamic_axes={n: {0: "detections"} for n in names})
    finish_onnx(out, metadata)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst, checked = 0.0, images[1:] or images
    for i, image in enumerate(checked):
        with torch.no_grad():
            expected = wrapper(image)
        got = session.run(names, {"image": image.numpy()})
        for name, want, have in zip(names, expected, got):
            have = torch.from_numpy(have)
            if have.shape != want.shape:
                raise RuntimeError(f"the exported file {out} disagrees with the PyTorch model on validation image "
                                   f"{i + 1}: {name} has shape {tuple(have.shape)}, PyTorch {tuple(want.shape)}")
            if want.numel():
                worst = max(worst, float((have.double() - want.double()).abs().max()))
    if not worst <= DETECTOR_TOLERANCE:
        raise RuntimeError(f"the exported file {out} disagrees with the PyTorch model (largest difference "
                           f"{worst:.3g} > {DETECTOR_TOLERANCE})")
    return worst, len(checked)


def export_segmenter(model: nn.Module, record: dict[str, Any], arch_file: Path, out: Path,
                     metadata: dict[str, str]) -> tuple[float, int]:
    """Write a semantic segmenter as ONNX with a free batch axis (traced on two validation images) and check it in
    onnxruntime against PyTorch on a batch of three others; returns (the largest logit difference, images checked)."""
    images = torch.stack(check_images(record, arch_file, count=5))
    export_onnx_traced(model, images[:2], out, metadata)
    check = images[2:] if len(images) > 2 else images
    with torch.no_grad():
        expected = model(check)
    got = run_exported(out, "onnx", check)
    diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
    if not diff <= DETECTOR_TOLERANCE:
        raise RuntimeError(f"the exported file {out} disagrees with the PyTorch model (largest difference {diff:.3g}, "
                           f"shapes {tuple(got.shape)} and {tuple(expected.shape)})")
    return diff, len(check)


def export(request: ExportRequest) -> dict[str, Any]:
    """Export the network of ``request``; returns what was written and the check's largest difference."""
    model, space, record, weights = load_network(request.arch_path, request.weights)
    arch_file = request.arch_path / "arch.json" if request.arch_path.is_dir() else request.arch_path
    out = request.out or arch_file.parent / FORMATS[request.format]
    if out.is_dir():
        raise UserError(f"out={out} is a folder; give a file name (e.g. {out / FORMATS[request.format]})")
    if not out.parent.is_dir():
        raise UserError(f"out={out}: folder {out.parent} does not exist")
    kind = _downstream_kind(record.get("evaluator") or "")
    if kind:
        return export_downstream(model, space, record, weights, arch_file, out, request.format)
    model = exportable(model)
    metadata = {"xsearch_space": space.name, "xsearch_space_kwargs": json.dumps(space.space_kwargs),
                "xsearch_arch": json.dumps(record["arch"]), "input_shape": json.dumps(list(space.input_shape)),
                "data": str(record.get("data")), "weights": str(weights) if weights else "none (untrained)",
                "input": "images normalised with the training data's mean and std, NCHW float32"}
    if request.format == "onnx":
        export_onnx(model, space, out, metadata)
    else:
        export_torchscript(model, space, out)
    x = _example(space, 3, 1)  # another batch size than the trace's, to check the batch axis is free
    with torch.no_grad():
        expected = model(x)
    got = run_exported(out, request.format, x)
    diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
    if not diff <= TOLERANCE:
        raise RuntimeError(f"the exported {request.format} file {out} disagrees with the PyTorch network "
                           f"(largest difference {diff:.3g}, shapes {tuple(got.shape)} and {tuple(expected.shape)})")
    return {"out": out, "format": request.format, "weights": weights, "space": space.name,
            "input_shape": tuple(space.input_shape), "num_classes": int(expected.shape[1]), "max_abs_diff": diff}


def export_downstream(model: nn.Module, space: Any, record: dict[str, Any], weights: Path | None, arch_file: Path,
                      out: Path, fmt: str) -> dict[str, Any]:
    """Export a downstream training's model (``xsearch train ... evaluator=detection|segmentation|keypoints``)."""
    evaluator = record["evaluator"]
    if fmt != "onnx":
        raise UserError(f"{arch_file} holds a {evaluator} model; xsearch export writes downstream models as ONNX "
                        "only: use --format onnx")
    facts = record["downstream"]["data_facts"]
    model = exportable(model).eval()
    metadata = {"xsearch_space": space.name, "xsearch_space_kwargs": json.dumps(space.space_kwargs),
                "xsearch_arch": json.dumps(record["arch"]), "xsearch_evaluator": evaluator,
                "xsearch_train": json.dumps(record["downstream"].get("train", {})),
                "class_names": json.dumps(facts.get("class_names")), "data": str(record.get("data")),
                "weights": str(weights) if weights else "none (untrained)"}
    from xsearch.evaluators.detection import DetectionTask

    task = downstream_evaluator(record, arch_file).task
    size = facts["image_size"]
    if not isinstance(task, DetectionTask):  # a semantic segmenter: a plain batch-in, logits-out network
        metadata["input"] = (f"'images', float32 (batch, 3, {size}, {size}), RGB in [0, 1]; the graph normalises "
                             "them as in training")
        metadata["outputs"] = f"'logits' (batch, {facts['num_classes']}, {size}, {size}): class_names[argmax]"
        diff, checked = export_segmenter(model, record, arch_file, out, metadata)
        return {"out": out, "format": fmt, "weights": weights, "space": space.name, "evaluator": evaluator,
                "inputs": f"images (batch, 3, {size}, {size}), RGB in [0, 1]",
                "outputs": f"logits (batch, {facts['num_classes']}, {size}, {size})", "num_classes": facts["num_classes"],
                "max_abs_diff": diff, "checked_on": f"a batch of {checked} validation images"}
    metadata["input"] = (f"one image 'image', float32 (3, {size}, {size}) (the training size; resize others first), "
                         "RGB in [0, 1]; the graph normalises it as in training")
    metadata["outputs"] = (", ".join(DETECTOR_OUTPUTS[task.kind]) + ": boxes (N, 4) as x1 y1 x2 y2 in the input's "
                           "pixels, labels 1..K (class_names[label - 1])")
    diff, checked = export_detector(model, task, record, arch_file, out, metadata)
    return {"out": out, "format": fmt, "weights": weights, "space": space.name, "evaluator": evaluator,
            "inputs": f"one image (3, {size}, {size}), RGB in [0, 1]", "outputs": ", ".join(DETECTOR_OUTPUTS[task.kind]),
            "num_classes": facts["num_classes"], "max_abs_diff": diff,
            "checked_on": f"{checked} validation image{'s' if checked != 1 else ''}"}
