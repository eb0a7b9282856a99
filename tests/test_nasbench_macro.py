"""The ``nasbench_macro`` space against the NAS-Bench-Macro table (params and flops of every key)."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch
from torch import nn

from xsearch.core.errors import UserError
from xsearch.core.flops import fvcore_macs
from xsearch.search_spaces import get_space, list_spaces


@pytest.fixture(scope="module")
def space():
    return get_space("nasbench_macro")


@pytest.fixture(scope="module")
def table(macro_table) -> dict:
    return json.loads(macro_table.read_text())


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_registered_with_eight_three_way_choices(space):
    assert "nasbench_macro" in list_spaces()
    assert space.name == "nasbench_macro"
    assert space.labels == [f"layer{i}" for i in range(1, 9)]
    assert all(c.options == ("identity", "k3_e3", "k5_e6") for c in space.choices)
    assert space.space_kwargs == {"num_classes": 10, "in_chans": 3, "image_size": 32}


def test_table_flops_and_params_for_every_key(space, table):
    assert len(table) == 3 ** 8
    for key, row in table.items():
        arch = space.arch_from_key(key)
        assert space.flops(arch) == row["flops"], key
        assert space.params(arch) == row["params"], key


def test_built_modules_match_table_params(space, table):
    rng = random.Random(0)
    keys = ["00000000", "11111111", "22222222", "22212220"] + rng.sample(sorted(table), 26)
    for key in keys:
        net = space.build(space.arch_from_key(key))
        assert n_params(net) == table[key]["params"], key


def test_identity_is_projection_only_where_shape_changes(space):
    for i, (cin, cout, stride, _) in enumerate(space.plan):
        module = space.build_candidate(i, "identity")
        assert isinstance(module, nn.Identity) == (stride == 1 and cin == cout)
    assert [p[2] for p in space.plan] == [2, 1, 2, 1, 1, 2, 1, 1]


@pytest.mark.parametrize("key", ["00000000", "12021012", "22222222", "21100221"])
def test_fvcore_agrees_with_space_flops(space, key):
    arch = space.arch_from_key(key)
    assert fvcore_macs(space.build(arch), space.input_shape) == space.flops(arch)


def test_other_input_shapes_build_and_count_consistently():
    space = get_space("nasbench_macro", num_classes=7, in_chans=1, image_size=28)
    arch = space.arch_from_key("21021021")
    net = space.build(arch)
    assert fvcore_macs(net, space.input_shape) == space.flops(arch)
    assert n_params(net) == space.params(arch)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_forward_and_backward(space):
    net = space.build(space.arch_from_key("22212220"))
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_key_round_trip(space):
    for key in ["00000000", "22212220", "01201201", "22222222"]:
        assert space.benchmark_key(space.arch_from_key(key)) == key
    for seed in range(10):
        arch = space.sample(seed=seed)
        assert space.arch_from_key(space.benchmark_key(arch)) == arch
    assert space.arch_from_key("12000000")["layer1"] == "k3_e3"
    assert space.arch_from_key("12000000")["layer2"] == "k5_e6"


@pytest.mark.parametrize("key, message", [
    ("2221222", "expected 8"), ("222122200", "expected 8"), ("", "expected 8"),
    ("2221a220", "non-digit"), ("-2212220", "non-digit"), ("22212223", "out of range"),
    (22212220, "must be a string"),
])
def test_bad_keys_raise_user_error(space, key, message):
    with pytest.raises(UserError, match=message):
        space.arch_from_key(key)


def test_benchmark_key_validates_arch(space):
    with pytest.raises(UserError, match="valid options"):
        space.benchmark_key({**space.arch_from_key("00000000"), "layer3": "skip"})
    with pytest.raises(UserError, match="missing choices"):
        space.benchmark_key({"layer1": "identity"})


def test_flops_range_matches_the_readme(space, table):
    assert space.min_flops() == min(r["flops"] for r in table.values()) == 7_713_280
    assert space.max_flops() == max(r["flops"] for r in table.values()) == 105_660_928
    assert space.flops(space.arch_from_key("00000000")) == space.min_flops()
    assert space.flops(space.arch_from_key("22222222")) == space.max_flops()


# --- xsearch data nas-bench-macro: the table fetched on request, checksum-checked --------------------
def test_data_command_copies_the_table_with_its_checksum_and_licence_note(macro_table, tmp_path, capsys):
    from xsearch.cli import main
    from xsearch.core.nasbench import FILE_NAME, NOTICE_NAME, SHA256
    from xsearch.evaluators import TabularEvaluator

    assert main(["data", "nas-bench-macro", str(tmp_path / "nbm"), f"source={macro_table}"]) == 0
    table = tmp_path / "nbm" / FILE_NAME
    assert table.read_bytes() == macro_table.read_bytes()
    assert hashlib.sha256(table.read_bytes()).hexdigest() == SHA256
    notice = (tmp_path / "nbm" / NOTICE_NAME).read_text()
    paper = "Prioritized Architecture Sampling with Monte-Carlo Tree Search"
    for words in ("Apache License, Version 2.0", "Copyright 2021 Xiu Su", paper, "CVPR 2021", "xiusu/NAS-Bench-Macro",
                  SHA256, str(macro_table)):
        assert words in notice
    assert f"evaluator.table={table}" in capsys.readouterr().out
    assert len(TabularEvaluator(str(table)).table) == 3 ** 8
    # a folder holding the table and a file:// URL are sources too
    assert main(["data", "nas-bench-macro", str(tmp_path / "url"), f"source={macro_table.parent.as_uri()}"]) == 0
    assert (tmp_path / "url" / FILE_NAME).read_bytes() == table.read_bytes()


def test_data_command_refuses_a_table_with_another_checksum(synthetic_macro_table, macro_table, tmp_path, capsys):
    from xsearch.cli import main

    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(macro_table.read_bytes() + b"\n")  # still the same JSON, but not the same bytes
    for source in (synthetic_macro_table, tampered):
        assert main(["data", "nas-bench-macro", str(tmp_path / "out"), f"source={source}"]) == 2
        err = capsys.readouterr().err
        assert "SHA-256" in err and "Nothing was written" in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()


def test_no_table_points_to_the_data_command(tmp_path, capsys):
    from xsearch.cli import main

    run = ["run", "space=nasbench_macro", "strategy=random", "evaluator=tabular", f"runs_root={tmp_path}",
           "progress=false"]
    for args in (run, [*run, f"evaluator.table={tmp_path / 'missing.json'}"], ["bench", "strategies"],
                 ["bench", "strategies", f"evaluator.table={tmp_path / 'missing.json'}"]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "xsearch data nas-bench-macro DIR" in err and "Traceback" not in err, err
