"""Property tests: no command-line override and no arch.json content ends in a traceback.

Overrides go through ``xsearch run`` with the pipeline's ``run`` replaced by a stand-in that builds
the strategy and evaluator (their checks) and stops: no search runs. arch.json files go through
``xsearch flops FILE``.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xsearch.pipeline
from xsearch.cli import main
from xsearch.config import GROUPS, build_evaluator, build_strategy, compose_defaults, group_options

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


class Stopped(Exception):
    """Raised by the stand-in pipeline once the configuration was accepted and built."""


def _stand_in_run(cfg):
    build_strategy(cfg)
    build_evaluator(cfg)
    raise Stopped


def _valid_keys() -> list[str]:
    keys = set()
    for group in GROUPS:
        for name in group_options(group):
            cfg = compose_defaults({group: name})
            for section in ("space", "search", "data", "train", "evaluator", "constraints", "bench"):
                node = cfg.get(section) or {}
                keys |= {f"{section}.{k}" for k in node}
    return sorted(keys | {"seed", "device", "progress", "storage", "run_dir", "out", "budget"})


KEYS = _valid_keys()
GROUP_NAMES = [*GROUPS, "budget"]
garbage = st.text(min_size=0, max_size=12)
values = st.one_of(
    st.integers(-10 ** 12, 10 ** 12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["null", "true", "false", "[]", "[0.5,1.0]", "[a, b]", "5M", "-5M", "1e400", "${seed}",
                     "${nothing}", "'quoted'", "{a: 1}", "[", "]", "{", "'", "=", "cpu", "cuda", "auto"]),
    garbage,
)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(GROUP_NAMES),
                 st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}", fullmatch=True), garbage)
overrides = st.one_of(
    st.tuples(st.sampled_from(GROUP_NAMES), st.one_of(garbage, st.sampled_from(
        [name for g in GROUP_NAMES for name in group_options(g)]))).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"),
    garbage,
)


@FUZZ
@given(args=st.lists(overrides, max_size=5))
def test_no_override_list_gives_a_traceback(args, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(xsearch.pipeline, "run", _stand_in_run)
    args = [a for a in args if not a.startswith(("runs_root=", "resume="))] + [f"runs_root={tmp_path / 'runs'}"]
    try:
        code = main(["run", *args])
    except Stopped:
        return  # accepted and built: the search would start here
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("xsearch: error: ") and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=False, width=16),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4)), max_leaves=8)
space_kwargs = st.dictionaries(st.sampled_from(["num_classes", "in_chans", "image_size", "width_mult", "num_layers",
                                                "dropout", "dynamic", "act", "depths", "channels", "num_blocks",
                                                "layer_scale", "unknown"]), json_scalars, max_size=3)
records = st.one_of(
    json_values,
    st.fixed_dictionaries({"space": st.one_of(st.sampled_from(group_options("space")), json_scalars),
                           "space_kwargs": st.one_of(space_kwargs, json_values),
                           "arch": st.one_of(json_values, st.dictionaries(
                               st.sampled_from([f"layer{i}" for i in range(1, 9)]),
                               st.sampled_from(["skip", "k3_e3", "k5_e6", "k7_e3_se", "bogus"]), max_size=8))}),
)


@FUZZ
@given(record=records, raw=st.booleans())
def test_no_arch_json_gives_a_traceback(record, raw, tmp_path, capsys):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(record)[:-1] if raw else json.dumps(record))  # raw: a truncated file
    code = main(["flops", str(path)])
    err = capsys.readouterr().err
    assert code in (0, 1, 2), err
    if code == 2:
        assert err.startswith("xsearch: error: ") and "Traceback" not in err


@pytest.mark.parametrize("content", ["", "{", "[]", "null", '{"space": "mbv3"}', '{"space": "mbv3", "arch": {}}'])
def test_broken_arch_files_are_refused_with_a_message(content, tmp_path, capsys):
    path = tmp_path / "arch.json"
    path.write_text(content)
    assert main(["flops", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xsearch: error: ") and "arch" in err
