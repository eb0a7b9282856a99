"""NNI interop: an xsearch space as an NNI 3 model space, and an architecture NNI exports back as ``arch.json``.

``to_nni_space(space)`` gives an ``nni.nas.nn.pytorch.ModelSpace`` holding the space's stem, one
``LayerChoice`` per choice (labelled as the choice, its candidates the modules ``space.build_candidate``
builds for each option, keyed by option name) and the head, so NNI's multi-trial strategies (``Random``,
``RegularizedEvolution``, ...) and one-shot strategies (``DARTS``, ``ENAS``, ``RandomOneShot``, ...) search
it. A sample NNI draws or exports is ``{choice label: option name}``: an xsearch arch dict. The frozen
model ``nni_space.freeze(arch)`` has the module names of ``space.build(arch)`` (``stem``, ``layers.<i>``,
``head``), so its state dict loads into the xsearch network and both compute the same function.

``arch_from_nni(space, exported)`` validates what NNI exported (``export_top_models(formatter="dict")``
or one of its elements) and returns the xsearch arch; ``save_nni_arch`` writes it as ``arch.json``
(``xsearch.records.save_arch``), which ``xsearch train`` retrains and ``xsearch flops`` counts; the
command is ``xsearch nni-import EXPORTED.json space=mbv3 [space.KEY=VALUE ...] [out=arch.json]``.

NNI is an optional dependency (``bash scripts/setup-nni.sh`` builds ``.venv-nni``); nothing but this
module and the CLI command imports it, and only ``to_nni_space`` needs it: converting an export works
without NNI installed. Every choice of the xsearch spaces is a layer choice (depth is the ``skip``
option, an ``nn.Identity`` candidate), so no ``nni.choice`` value choices are needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from xsearch.core.errors import UserError
from xsearch.search_spaces import Arch, ChainNetwork, SearchSpace, get_space

SETUP_HINT = ("NNI is not installed in this environment; build its own environment with `bash scripts/setup-nni.sh` "
              "and run `.venv-nni/bin/python` (or `.venv-nni/bin/xsearch`) there")

_MODEL_SPACE_CLASS: type | None = None
_SPACES: dict[str, SearchSpace] = {}


def _space(name: str, kwargs: dict[str, Any]) -> SearchSpace:
    """``get_space(name, **kwargs)``, built once per process: NNI rebuilds the model space for every trial, and
    a space's tables cost a build of every candidate (spaces are not changed after construction)."""
    key = json.dumps([name, kwargs], sort_keys=True, default=str)
    if key not in _SPACES:
        _SPACES[key] = get_space(name, **kwargs)
    return _SPACES[key]


def _model_space_class() -> type:
    """``XsearchModelSpace``: defined on first use so that importing this module does not import NNI."""
    global _MODEL_SPACE_CLASS
    if _MODEL_SPACE_CLASS is not None:
        return _MODEL_SPACE_CLASS
    try:
        from nni.nas.nn.pytorch import LayerChoice, ModelSpace
    except ImportError as exc:
        raise UserError(f"{SETUP_HINT} ({exc})") from None

    class XsearchModelSpace(ModelSpace):
        """An xsearch space as an NNI model space: ``head(layers(stem(x)))``, each layer an NNI ``LayerChoice``.

        Built from plain data (``space_name``, ``space_kwargs``, and ``options``: the options each choice
        keeps, for a restricted space), so NNI can record and rebuild it.
        """

        def __init__(self, space_name: str, space_kwargs: dict[str, Any],
                     options: dict[str, list[str]] | None = None) -> None:
            super().__init__()
            space = _space(space_name, space_kwargs)
            if options is not None:
                space = space.restrict(options)
            self.stem = space.build_stem()
            self.layers = nn.ModuleList(
                LayerChoice({option: space.build_candidate(i, option) for option in choice.options},
                            label=choice.label)
                for i, choice in enumerate(space.choices))
            self.head = space.build_head()

        def forward(self, x):
            x = self.stem(x)
            for layer in self.layers:
                x = layer(x)
            return self.head(x)

    XsearchModelSpace.__module__ = __name__
    XsearchModelSpace.__qualname__ = XsearchModelSpace.__name__
    _MODEL_SPACE_CLASS = XsearchModelSpace
    return XsearchModelSpace


def __getattr__(name: str) -> Any:
    """``xsearch.nni.XsearchModelSpace`` (NNI and pickle look the class up by name): imports NNI."""
    if name == "XsearchModelSpace":
        return _model_space_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_chain(space: SearchSpace) -> None:
    """Refuse a space whose ``build`` is not the stem, one module per choice, the head (all registered ones are)."""
    if type(space).build is not SearchSpace.build:
        raise UserError(f"space {space.name!r} builds its network its own way ({type(space).__name__}.build); "
                        "to_nni_space needs a chain space (stem, one layer per choice, head), as every "
                        "registered space is")


def to_nni_space(space: SearchSpace) -> Any:
    """``space`` as an NNI 3 ``ModelSpace``: one ``LayerChoice`` per choice over the same candidate modules.

    Labels are the choice labels and candidate names the option names, so NNI's samples and exports are
    xsearch arch dicts; ``to_nni_space(space).freeze(arch)`` has the structure and module names of
    ``space.build(arch)``. A restricted space (``space.restrict``) keeps its narrowed options.
    UserError when NNI is not installed.
    """
    _check_chain(space)
    cls = _model_space_class()
    full = _space(space.name, space.space_kwargs)
    narrowed = [c.options for c in space.choices] != [c.options for c in full.choices]
    options = {c.label: list(c.options) for c in space.choices} if narrowed else None
    return cls(space.name, space.space_kwargs, options)


def _unwrap(exported: Any) -> Any:
    """One architecture dict from what NNI exported: a dict, or a list of them (the first is the top model)."""
    if isinstance(exported, list):
        if not exported:
            raise UserError("the NNI export is an empty list: it holds no architecture")
        exported = exported[0]
    if not isinstance(exported, dict):
        raise UserError(f"an NNI export is a dict {{label: choice}} (export_top_models(formatter='dict')) or a list "
                        f"of them, got {type(exported).__name__}")
    return exported


def arch_from_nni(space: SearchSpace, exported: Any) -> Arch:
    """The xsearch arch of an NNI export (a dict ``{label: option}`` or a list of them, the first taken).

    Labels may carry a model-space prefix (``"model/layer1"``); a value may be the option name or its
    index among the choice's options (an NNI ``LayerChoice`` over a list). Keys that are no choice of
    ``space`` (e.g. an evaluator's hyperparameters) are an error, so a space that does not match the
    export is caught. UserError naming what is wrong and the valid labels and options.
    """
    exported = _unwrap(exported)
    by_label = {c.label: c for c in space.choices}
    arch: dict[str, Any] = {}
    for key, value in exported.items():
        label = str(key).rsplit("/", 1)[-1]
        if label not in by_label:
            raise UserError(f"NNI export key {key!r} is not a choice of space {space.name!r} "
                            f"{space.space_kwargs}; valid labels: {space.labels}. Pass the space the search ran on "
                            "(space=NAME space.KEY=VALUE ...)")
        if label in arch:
            raise UserError(f"NNI export names choice {label!r} twice")
        options = by_label[label].options
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(options):
            value = options[value]
        arch[label] = value
    try:
        return space.validate(arch)
    except UserError as exc:
        raise UserError(f"the NNI export does not fit space {space.name!r} {space.space_kwargs}: {exc}. Pass the "
                        "space the search ran on (space=NAME space.KEY=VALUE ...)") from None


def save_nni_arch(path: str | Path, space: SearchSpace, exported: Any) -> dict[str, Any]:
    """Write ``arch.json`` for an NNI export (``arch_from_nni``); returns the record (flops, params, ...)."""
    from .records import save_arch

    return save_arch(path, space, arch_from_nni(space, exported), source="nni")


def network_from_nni(space: SearchSpace, model: nn.Module, arch: Arch) -> ChainNetwork:
    """``space.build(arch)`` with the weights of ``model``, NNI's frozen model for ``arch`` (same module names)."""
    net = space.build(arch)
    net.load_state_dict(model.state_dict())
    return net


IMPORT_USAGE = ("usage: xsearch nni-import EXPORTED.json space=NAME [space.KEY=VALUE ...] [out=arch.json] "
                "(the space and its settings the NNI search ran on, e.g. space=mbv3 space.num_layers=5)")


def nni_import(args: list[str]) -> int:
    """``xsearch nni-import EXPORTED.json space=NAME [space.KEY=VALUE ...] [out=arch.json]``: write arch.json.

    ``EXPORTED.json`` holds what NNI's ``export_top_models(formatter="dict")`` returned (a list: the first
    is taken) or one such dict. Every input is checked before anything is written (UserError, exit 2).
    """
    from xsearch.search_spaces import format_flops

    from .config import build_space, compose, validate
    from .records import check_writable

    files = [a for a in args if "=" not in a]
    if len(files) != 1 or not any(a.startswith("space=") for a in args):
        raise UserError(IMPORT_USAGE)
    outs = [a.split("=", 1)[1] for a in args if a.startswith("out=")]
    out = Path(outs[-1] if outs else "arch.json")
    if not out.name or out.is_dir():
        raise UserError(f"out={str(out)!r} is a folder; give the file to write, e.g. out={out / 'arch.json'}")
    overrides = [a for a in args if "=" in a and not a.startswith("out=")]
    path = Path(files[0])
    try:
        exported = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the NNI export {str(path)!r}: {exc}. {IMPORT_USAGE}") from None
    space = build_space(validate(compose(overrides)), None)
    arch = arch_from_nni(space, exported)
    check_writable(out.parent, "out")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = save_nni_arch(out, space, arch)
    print(f"arch      {record['arch']}")
    print(f"FLOPs     {record['flops']} MACs ({format_flops(record['flops'])}), params {record['params']}")
    print(f"wrote     {out} (xsearch flops {out}; xsearch train {out})")
    return 0
