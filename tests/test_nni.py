"""NNI interop (xsearch/nni.py): xsearch spaces as NNI 3 model spaces, NNI's exports back as arch.json.

The NNI tests need NNI, which lives in its own environment (``bash scripts/setup-nni.sh``), so they skip
where it is missing; run them with ``.venv-nni/bin/python -m pytest tests/test_nni.py``. The conversion
(``arch_from_nni``, ``xsearch nni-import``) and the check that the core never imports NNI run everywhere.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from xsearch.cli import main as cli_main
from xsearch.core.errors import UserError
from xsearch.core.flops import fvcore_macs
from xsearch.nni import arch_from_nni, network_from_nni, save_nni_arch, to_nni_space
from xsearch.records import load_arch
from xsearch.search_spaces import SKIP, get_space, list_spaces

# NNI 3.0 on torch 2.14: importing it warns that torch.nn.Buffer "is not a nn.Module" (harmless here);
# nni.trace on TensorDataset warns that its tensors are positional arguments
pytestmark = [pytest.mark.filterwarnings("ignore:.*is found to be not a nn.Module:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:Found positional arguments:UserWarning")]
ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_classes": 10, "in_chans": 1, "image_size": 8, "width_mult": 0.25, "num_layers": 5}
SMALL_ARGS = [f"space.{k}={v}" for k, v in SMALL.items() if k != "num_classes"]


@pytest.fixture(scope="module")
def space():
    """A small mbv3 space for sklearn's 8x8 digits: 5 layers of 12 candidates, the last may skip."""
    return get_space("mbv3", **SMALL)


@pytest.fixture(scope="module")
def nni():
    return pytest.importorskip("nni")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target)


# --- without NNI -------------------------------------------------------------------------------
def test_only_xsearch_nni_imports_nni():
    """No source file but xsearch/nni.py imports NNI, and xsearch/nni.py only inside functions (importing it
    does not import NNI: converting an export works without NNI)."""
    wrong = []
    for folder in ("xsearch", "search_spaces", "supernets", "evaluators", "strategies"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "xsearch" / "nni.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                wrong += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "nni"]
    assert not wrong, wrong
    module = ast.parse((ROOT / "xsearch" / "nni.py").read_text())
    top_level = [n for n in module.body if isinstance(n, (ast.Import, ast.ImportFrom))]  # not inside functions
    assert top_level and not any(
        (n.module or "").split(".")[0] == "nni" if isinstance(n, ast.ImportFrom) else
        any(a.name.split(".")[0] == "nni" for a in n.names) for n in top_level)


def test_arch_from_nni_reads_what_nni_exports(space):
    arch = space.sample(seed=1)
    assert arch_from_nni(space, arch) == arch
    assert arch_from_nni(space, [arch, space.sample(seed=2)]) == arch  # export_top_models: the first
    prefixed = {f"model/{k}": v for k, v in arch.items()}
    assert arch_from_nni(space, prefixed) == arch
    by_index = {c.label: c.options.index(arch[c.label]) for c in space.choices}  # a LayerChoice over a list
    assert arch_from_nni(space, by_index) == arch
    assert arch_from_nni(space, {**arch, "layer5": SKIP})["layer5"] == SKIP


@pytest.mark.parametrize("exported, message", [
    ([], "empty list"),
    ("k3_e3", "is a dict"),
    ({"layer1": "k3_e3", "lr": 0.1}, "'lr' is not a choice"),
    ({"layer1": "k9_e3"}, "does not fit space"),
    ({"layer1": SKIP}, "does not fit space"),  # layer1 strides: no skip
])
def test_arch_from_nni_refuses_what_does_not_fit(space, exported, message):
    with pytest.raises(UserError, match=message):
        arch_from_nni(space, exported)


def test_nni_import_writes_an_arch_json_that_flops_and_train_accept(space, tmp_path, capsys):
    arch = {**space.sample(seed=4), "layer5": SKIP}
    exported = tmp_path / "exported.json"
    exported.write_text(json.dumps([arch]))
    out = tmp_path / "found" / "arch.json"
    assert cli_main(["nni-import", str(exported), "space=mbv3", *SMALL_ARGS, f"out={out}"]) == 0
    loaded_space, loaded = load_arch(out)
    assert loaded == arch and loaded_space.space_kwargs == space.space_kwargs
    record = json.loads(out.read_text())
    assert record["flops"] == space.flops(arch) == fvcore_macs(space.build(arch), space.input_shape)
    assert record["source"] == "nni"
    assert cli_main(["flops", str(out)]) == 0  # exit 1 when fvcore disagrees with the table
    assert f"{space.flops(arch)} MACs" in capsys.readouterr().out
    runs = tmp_path / "runs"
    assert cli_main(["train", str(out), "data=digits", "train.epochs=1", f"runs_root={runs}"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    (run,) = [d for d in runs.iterdir() if d.is_dir()]
    assert load_arch(run / "arch.json")[1] == arch


@pytest.mark.parametrize("args", [
    ["missing.json", "space=mbv3"],
    ["{export}"],  # no space=
    ["{export}", "space=mbv3"],  # the default 8-layer space: the export does not fit
    ["{export}", "space=nope", *SMALL_ARGS],
])
def test_nni_import_bad_input_exits_2_before_writing(space, tmp_path, args):
    export = tmp_path / "exported.json"
    export.write_text(json.dumps(space.sample(seed=0)))
    args = [a.replace("{export}", str(export)) for a in args]
    assert cli_main(["nni-import", *args, f"out={tmp_path / 'arch.json'}"]) == 2
    assert not (tmp_path / "arch.json").exists()


def test_to_nni_space_without_nni_says_how_to_install(space):
    try:
        import nni  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="setup-nni.sh"):
            to_nni_space(space)
    else:
        pytest.skip("NNI is installed here")


# --- with NNI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spaces(nni):
    """name -> (space, its NNI model space), built once: every registered space (mbv3 small), defaults otherwise."""
    built = {}

    def get(name):
        if name not in built:
            space = get_space(name, **(SMALL if name == "mbv3" else {}))
            built[name] = space, to_nni_space(space)
        return built[name]
    return get


@pytest.mark.parametrize("name", list_spaces())
def test_one_layer_choice_per_choice_over_the_same_candidates(spaces, name):
    from nni.nas.nn.pytorch import LayerChoice

    space, model_space = spaces(name)
    choices = [m for m in model_space.modules() if isinstance(m, LayerChoice)]
    assert [c.label for c in choices] == space.labels
    assert list(model_space.simplify()) == space.labels
    for i, (layer, choice) in enumerate(zip(choices, space.choices)):
        assert layer.names == list(choice.options)
        for option in choice.options:
            ours = {k: v.shape for k, v in space.build_candidate(i, option).state_dict().items()}
            assert {k: v.shape for k, v in layer[option].state_dict().items()} == ours, (choice.label, option)


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor of a network's output (a tensor, or lists and dicts of them as dyhead's), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    items = [out[k] for k in sorted(out)] if isinstance(out, dict) else list(out)
    return [t for item in items for t in _tensors(item)]


@pytest.mark.parametrize("name", list_spaces())
def test_frozen_model_is_the_xsearch_network(spaces, name):
    """NNI's model for an arch has build(arch)'s module names; with its weights copied both give the same output."""
    space, model_space = spaces(name)
    archs = [{c.label: SKIP if SKIP in c.options else c.options[-1] for c in space.choices}]
    archs += [space.sample(seed=s) for s in range(2 if name == "mbv3" else 0)]
    for arch in archs:
        frozen = model_space.freeze(arch)
        assert not any(type(m).__name__ == "LayerChoice" for m in frozen.modules())
        net = network_from_nni(space, frozen, arch)
        assert list(net.state_dict()) == list(frozen.state_dict())
        torch.manual_seed(0)
        x = torch.randn(2, *space.input_shape)
        frozen.eval(), net.eval()
        with torch.no_grad():
            ours, theirs = net(x), frozen(x)
        assert len(_tensors(ours)) > 0 and len(_tensors(ours)) == len(_tensors(theirs))
        assert all(torch.equal(a, b) for a, b in zip(_tensors(ours), _tensors(theirs)))
        assert fvcore_macs(frozen, space.input_shape) == space.flops(arch)


def test_model_space_travels_as_plain_data(nni, space):
    """What NNI sends a trial process (nni.dump: the class by path and its JSON arguments) and pickle rebuild it."""
    import pickle

    model_space = to_nni_space(space)
    dumped = nni.dump(model_space)
    assert '"path:xsearch.nni.XsearchModelSpace"' in dumped and '"space_name": "mbv3"' in dumped
    for copy in (nni.load(dumped), pickle.loads(pickle.dumps(model_space))):
        assert type(copy).__name__ == "XsearchModelSpace" and list(copy.simplify()) == space.labels
        arch = space.sample(seed=5)
        assert list(copy.freeze(arch).state_dict()) == list(space.build(arch).state_dict())


def test_restricted_space_keeps_its_options(nni, space):
    narrowed = space.restrict({"layer1": ["k3_e3", "k5_e6"], "layer5": ["k3_e3", SKIP]})
    model_space = to_nni_space(narrowed)
    simplified = model_space.simplify()
    assert list(simplified["layer1"].values) == ["k3_e3", "k5_e6"]
    assert list(simplified["layer5"].values) == ["k3_e3", SKIP]
    assert len(simplified["layer2"].values) == len(space.choices[1].options)


def _train_and_report(model, steps: int, seen: list):
    """NNI's functional evaluator: a few SGD steps on digits, then the accuracy on the last 397 images."""
    import nni
    from sklearn.datasets import load_digits

    seen.append(model)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, 1400, (64,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        nni.report_final_result((model(x[1400:]).argmax(1) == y[1400:]).float().mean().item())


def _check_export(space, exported, tmp_path, capsys):
    arch = arch_from_nni(space, exported)
    record = save_nni_arch(tmp_path / "arch.json", space, exported)
    assert record["arch"] == arch and record["flops"] == space.flops(arch)
    assert cli_main(["flops", str(tmp_path / "arch.json")]) == 0
    assert "equal" in capsys.readouterr().out
    return arch


@pytest.mark.parametrize("strategy", ["Random", "RegularizedEvolution"])
def test_multi_trial_strategy_searches_an_xsearch_space(nni, space, strategy, tmp_path, capsys):
    from nni.nas import strategy as strategies
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment, NasExperimentConfig

    seen: list = []
    kwargs = {"population_size": 2, "sample_size": 2} if strategy == "RegularizedEvolution" else {"seed": 0}
    config = NasExperimentConfig("sequential", "simplified")
    config.max_trial_number = 3
    config.experiment_working_directory = str(tmp_path / "nni-experiments")
    experiment = NasExperiment(to_nni_space(space), FunctionalEvaluator(_train_and_report, steps=5, seen=seen),
                               getattr(strategies, strategy)(**kwargs), config)
    try:
        experiment.run()
        models = list(experiment.strategy.list_models(sort=False))  # in the order they were trained
        top = experiment.export_top_models(top_k=1, formatter="dict")
    finally:
        experiment.stop()
    assert len(models) == len(seen) == 3 and all(0.0 <= m.metric <= 1.0 for m in models)
    for model, module in zip(models, seen):  # every trained model was xsearch's network for its sample
        arch = arch_from_nni(space, model.sample)
        assert list(module.state_dict()) == list(space.build(arch).state_dict())
        assert fvcore_macs(module, space.input_shape) == space.flops(arch)
    assert top[0] == max(models, key=lambda m: m.metric).sample
    _check_export(space, top, tmp_path, capsys)


@pytest.mark.parametrize("strategy", ["DARTS", "GumbelDARTS", "Proxyless", "RandomOneShot"])
def test_one_shot_strategy_searches_an_xsearch_space(nni, space, digits, strategy, tmp_path, capsys):
    from nni.nas import strategy as strategies
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    from nni.nas.experiment import NasExperiment
    from torch.utils.data import TensorDataset

    x, y = digits
    train = nni.trace(TensorDataset)(x[:1400], y[:1400])
    val = nni.trace(TensorDataset)(x[1400:], y[1400:])
    evaluator = Classification(train_dataloaders=DataLoader(train, batch_size=64, shuffle=True),
                               val_dataloaders=DataLoader(val, batch_size=128), num_classes=10, max_epochs=1,
                               limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                               enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    experiment = NasExperiment(to_nni_space(space), evaluator, getattr(strategies, strategy)())
    experiment.config.experiment_working_directory = str(tmp_path / "nni-experiments")
    try:
        experiment.run()
        (top,) = experiment.export_top_models()  # once: RandomOneShot draws a new sample per export
        exported, model = [top.sample], top.executable_model()
    finally:
        experiment.stop()
    arch = _check_export(space, exported, tmp_path, capsys)
    # the network NNI hands out for the export, with its supernet-trained weights, is xsearch's network
    net = network_from_nni(space, model, arch)
    model.eval(), net.eval()
    with torch.no_grad():
        assert torch.equal(model(x[:16]), net(x[:16]))
