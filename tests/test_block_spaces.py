"""The block-zoo spaces' own promises (dynamic candidates, detection task, searchable depth, annealing,
optimizer) and end-to-end searches; the contract every space keeps is in test_space_contracts.py."""

from __future__ import annotations

import json

import pytest
import torch

from xsearch.cli import main
from xsearch.core.errors import UserError
from xsearch.search_spaces import SKIP, get_space
from xsearch.search_spaces.blocks import DynamicConv2d, DyReLU


def test_mbv3_dynamic_switch_adds_dynamic_conv_and_dyrelu_candidates():
    static, dynamic = get_space("mbv3"), get_space("mbv3", dynamic=True)
    for a, b in zip(static.choices, dynamic.choices):
        assert set(a.options) < set(b.options)
        assert len([o for o in b.options if o != SKIP]) == 24
    dc = dynamic.build({c.label: "k3_e3_dc" for c in dynamic.choices})
    dr = dynamic.build({c.label: "k3_e3_dr" for c in dynamic.choices})
    assert sum(isinstance(m, DynamicConv2d) for m in dc.modules()) == 3 * len(dynamic.choices)
    assert sum(isinstance(m, DyReLU) for m in dr.modules()) == 2 * len(dynamic.choices)
    arch = {c.label: "k3_e3" for c in dynamic.choices}
    assert dynamic.flops(arch) == static.flops(arch) and dynamic.to_timm(arch) == static.to_timm(arch)
    assert dynamic.to_timm({c.label: "k3_e3_dc" for c in dynamic.choices}) is None


def test_dyhead_space_is_refused_by_classification_evaluators(capsys):
    assert main(["run", "space=dyhead", "data=digits", "budget=smoke", "progress=false"]) == 2
    assert "detection" in capsys.readouterr().err
    assert main(["flops", "space=dyhead", "space.num_blocks=2", "space.channels=16", "+space.image_size=64"]) == 0
    assert "equal" in capsys.readouterr().out


def test_focalnet_depth_is_searchable_but_each_stage_keeps_a_block():
    space = get_space("focalnet")
    firsts = [0, 2, 4]
    for i, c in enumerate(space.choices):
        assert (SKIP in c.options) == (i not in firsts)
    with pytest.raises(UserError):
        get_space("focalnet", depths=[0, 1, 1])


def test_dynamic_temperature_is_annealed_by_retraining(digits):
    from xsearch.evaluators import ClassificationEvaluator

    space = get_space("mbv3", dynamic=True, num_classes=10, in_chans=1, image_size=8, num_layers=4)
    arch = {c.label: "k3_e3_dc" for c in space.choices}
    evaluator = ClassificationEvaluator(epochs=2, train_samples=256, test_samples=128, batch_size=64,
                                        temperature_epochs=1.0, device="cpu", show_progress=False)
    model, _, _, _ = evaluator._fit(space, arch, digits, torch.arange(256), 0, None)
    temps = {m.temperature for m in model.modules() if isinstance(m, DynamicConv2d)}
    assert temps == {1.0}


@pytest.mark.slow
@pytest.mark.parametrize("space", ["micronet", "focalnet", "mbv3"])
def test_danas_searches_the_new_spaces_end_to_end(space, tmp_path):
    extra = ["space.dynamic=true", "space.num_layers=4"] if space == "mbv3" else []
    args = ["run", f"space={space}", "strategy=danas", "data=digits", "budget=smoke", "progress=false",
            "search.train_samples=600", "search.val_samples=100", "search.derive_trials=3", "train.epochs=1",
            "train.train_samples=300", "train.test_samples=200", *extra, f"runs_root={tmp_path}", f"run_dir={tmp_path / 'r'}"]
    assert main(args) == 0
    record = json.loads((tmp_path / "r" / "arch.json").read_text())
    rebuilt = get_space(space, **record["space_kwargs"])
    assert rebuilt.flops(record["arch"]) == record["flops"]
    assert 0.0 <= record["metrics"]["test_accuracy"] <= 1.0


def test_optimizer_auto_follows_the_space_and_bad_names_are_refused():
    from xsearch.core.training import weight_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    for name, kind, expected in [("focalnet", "auto", torch.optim.AdamW), ("mbv3", "auto", torch.optim.SGD),
                                 ("focalnet", "sgd", torch.optim.SGD), ("mbv3", "adamw", torch.optim.AdamW)]:
        opt = weight_optimizer(params, kind, get_space(name), 128, (0.2, 5e-5), (2e-3, 0.05))
        assert type(opt) is expected, (name, kind)
    sgd = weight_optimizer(params, "auto", get_space("mbv3"), 128, (0.2, 5e-5), (2e-3, 0.05))
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.1) and sgd.param_groups[0]["nesterov"]
    assert main(["run", "space=focalnet", "data=digits", "budget=smoke", "train.optimizer=adam"]) == 2
