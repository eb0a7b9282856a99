"""Typed configuration: schemas from the registries, defaults from the constructors, every mistake exit 2 before work."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re

import pytest
import yaml
from hydra.core.config_store import ConfigStore

from xsearch.cli import main, usage
from xsearch.config import (
    GROUPS,
    KINDS,
    SIZED_BY_DATA,
    build_data,
    build_evaluator,
    build_space,
    build_strategy,
    compose,
    compose_defaults,
    group_options,
    parameters,
    schema,
    settings,
    validate,
)
from xsearch.core.errors import UserError

COMPONENTS = [(group, name) for group, kind in KINDS.items() for name in kind.registry.names()]
IDS = [f"{group}={name}" for group, name in COMPONENTS]


def run_refused(args, tmp_path, capsys) -> str:
    """Run ``xsearch run args`` and return its error message; it must exit 2 before creating any run folder."""
    runs = tmp_path / "runs"
    assert main(["run", *args, f"runs_root={runs}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xsearch: error: ") and "Traceback" not in err
    assert not runs.exists() or not any(runs.iterdir()), "work was done before the error"
    return err


# --- the failures the issue lists ----------------------------------------------------------
ISSUE_FAILURES = [
    (["space=nasbench_macro", "strategy=evolution", "evaluator=proxy", "search.population_size=abc"],
     ["search.population_size=abc", "Integer", "defaults to 20"]),
    (["train.lr=-1"], ["train.lr=-1.0 must be greater than 0"]),
    (["strategy=evolution", "search.epochs=50"],
     ["'search.epochs'", "strategy 'evolution'", ("max_trials, parallel_queries, population_size, prescreen, "
                                                  "prescreen_factor, pruner, pruner_min_epochs, pruner_reduction_factor, "
                                                  "sample_size")]),
    (["data=digits", "search.train_samples=5"], ["search.train_samples=5 is too few", "use at least 16"]),
    (["data=digits", "train.train_samples=3"], ["train.train_samples=3 is too few", "use at least"]),
]


@pytest.mark.parametrize("args,words", ISSUE_FAILURES, ids=[" ".join(a) for a, _ in ISSUE_FAILURES])
def test_the_issues_mistakes_exit_2_with_a_message_before_any_work(args, words, tmp_path, capsys):
    err = run_refused([*args, "budget=smoke"], tmp_path, capsys)
    for word in words:
        assert word in err


# --- types and ranges, table-driven --------------------------------------------------------
BAD_VALUES = [
    ("seed=abc", "Integer"),
    ("seed=1.5", "Integer"),
    ("search.epochs=x", "Integer"),
    ("search.epochs=2.5", "Integer"),
    ("search.epochs=0", "must be at least 1"),
    ("search.warmup_epochs=-1", "must be at least 0"),
    ("search.batch_size=0", "must be at least 1"),
    ("search.lr=fast", "Float"),
    ("search.lr=0", "must be greater than 0"),
    ("search.lr=inf", "finite"),
    ("search.lr=nan", "finite"),
    ("search.weight_decay=-1e-4", "at least 0"),
    ("search.class_fractions=3", "ListConfig"),
    ("search.class_fractions=[a,b]", "Float"),
    ("search.class_fractions=[0.5,0.2]", "must rise"),
    ("search.keep_fraction=0", "greater than 0"),
    ("search.path_mode=both", "weighted"),
    ("train.epochs=0", "at least 1"),
    ("train.label_smoothing=1", "below 1"),
    ("train.optimizer=adam", "optimizer"),
    ("train.train_samples=0", "at least 1"),
    ("space.width_mult=-1", "greater than 0"),
    ("space.dropout=1.5", "below 1"),
    ("space.num_layers=2", "at least 4"),
    ("space.act=gelu", "hswish"),
    ("space.num_classes=-1", "space.num_classes=-1 must be at least 1"),
    ("space.in_chans=0", "space.in_chans=0 must be at least 1"),
    ("constraints.flops=abc", "write e.g. 5M"),
    ("constraints.flops=-5M", "positive"),
    ("constraints.flops=1K", "smallest network of space 'mbv3'"),
    ("device=tpu", "auto, cpu or cuda"),
    ("progress=maybe", "not a valid bool"),
    ("search.lr=${nothing}", "nothing"),
    ("search.lr=[", "invalid options"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_bad_value_is_refused_with_a_message_and_no_work(override, message, tmp_path, capsys):
    assert message in run_refused(["data=digits", "budget=smoke", override], tmp_path, capsys)


# --- unknown keys, per component ------------------------------------------------------------
@pytest.mark.parametrize("group,name", COMPONENTS, ids=IDS)
def test_a_setting_the_component_does_not_have_is_refused_naming_the_valid_ones(group, name, tmp_path, capsys):
    section = KINDS[group].section(name)
    err = run_refused([f"{group}={name}", f"{section}.not_a_setting=1"], tmp_path, capsys)
    assert f"'{section}.not_a_setting'" in err
    for field in dataclasses.fields(schema(group, name)):
        assert field.name in err


@pytest.mark.parametrize("args,message", [
    (["nonsense=1"], "valid keys at the top level"),
    (["search=3"], "is a section"),
    (["space.name=micronet"], "space=NAME"),
    (["~seed"], "not an option"),
    (["justaword"], "not an option"),
    (["evaluator=proxy", "train.lr=0.1"], "trains nothing"),
    (["space=foo"], "valid space options: dyhead, focalnet, mbv3, micronet, nasbench_macro"),
    (["budget=huge"], "valid budget options: demo, full, smoke"),
    (["strategy=spos", "search.derive_trials=3"], "strategy 'spos' has no such setting"),  # dnas's, never read
    (["heartbeat=0"], "heartbeat=0 must be at least 1"),
])
def test_unknown_keys_and_names_are_refused(args, message, tmp_path, capsys):
    assert message in run_refused(args, tmp_path, capsys)


# --- what a constructor raises: a refused setting is exit 2, anything else a bug --------------
@pytest.mark.parametrize("args,message", [
    (["search.class_fractions=[0.5,0.2]"], "strategy 'danas': search.class_fractions must rise"),
    (["strategy=spos", "search.searcher=danas"], "strategy 'spos': search.searcher must be a multi-trial strategy"),
    (["evaluator=proxy", "evaluator.proxy=nothing"], "evaluator 'proxy': unknown proxy 'nothing'"),
    (["evaluator=detection", "train.channels=48"], "evaluator 'detection': train.channels=48 must be a multiple of 32"),
    (["space.act=gelu"], "space 'mbv3': act must be 'hswish' or 'relu'"),
])
def test_a_setting_a_constructor_refuses_exits_2_naming_the_component(args, message, tmp_path, capsys):
    assert message in run_refused(["data=digits", "budget=smoke", *args], tmp_path, capsys)


def test_a_setting_error_is_a_user_error_and_a_value_error():
    from xsearch.core.errors import SettingError
    from xsearch.strategies import STRATEGIES

    assert issubclass(SettingError, UserError) and issubclass(SettingError, ValueError)
    with pytest.raises(ValueError, match="must rise"):  # library callers that catch ValueError keep working
        STRATEGIES.get("danas")(class_fractions=[0.5, 0.2])


def _broken(cls, monkeypatch, error: Exception) -> None:
    """Make ``cls``'s constructor raise ``error`` (a bug), keeping its signature (the schemas read it)."""
    original = cls.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(cls, "__init__", init)


@pytest.mark.parametrize("command,group,name,error", [
    ("run", "strategy", "random", TypeError("unsupported operand type(s): a bug")),
    ("run", "evaluator", "classification", ValueError("a bug, not a setting")),
    ("flops", "space", "mbv3", TypeError("a bug in the space")),
])
def test_any_other_exception_of_a_constructor_is_a_traceback_not_exit_2(command, group, name, error, tmp_path,
                                                                          monkeypatch):
    _broken(KINDS[group].registry.get(name), monkeypatch, error)
    with pytest.raises(type(error), match=re.escape(str(error))):
        main([command, f"{group}={name}", "data=digits", "budget=smoke", f"runs_root={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


# --- one source of truth ------------------------------------------------------------------
def test_config_groups_are_the_registries():
    repo = ConfigStore.instance().repo
    for group, kind in KINDS.items():
        assert group_options(group) == kind.registry.names()
        assert sorted(name.removesuffix(".yaml") for name in repo[group]) == kind.registry.names()
    text = usage()
    for group in GROUPS:
        assert f"{group}={'|'.join(group_options(group))}" in text


@pytest.mark.parametrize("group,name", COMPONENTS, ids=IDS)
def test_defaults_are_the_constructors(group, name):
    """Every setting's default is the constructor's (the data-sized ones default to null: from the data)."""
    expected = {}
    for key, param in parameters(KINDS[group].registry.get(name)).items():
        if key in KINDS[group].supplied:
            continue
        default = param.default
        expected[key] = None if group == "space" and key in SIZED_BY_DATA else (
            list(default) if isinstance(default, tuple) else default)
    assert settings(group, name) == expected
    composed = compose_defaults({group: name})[KINDS[group].section(name)]
    assert {k: v for k, v in composed.items() if k != "name"} == expected


def test_a_budget_presets_only_the_keys_the_components_have_and_the_user_wins():
    smoke = validate(compose(["budget=smoke", "search.epochs=6"]))
    assert smoke["search"]["epochs"] == 6 and smoke["search"]["warmup_epochs"] == 1
    assert smoke["train"]["epochs"] == 2 and smoke["budget"] == "smoke"
    evolution = validate(compose(["budget=full", "strategy=evolution"]))
    assert set(evolution["search"]) == {f.name for f in dataclasses.fields(schema("strategy", "evolution"))}
    proxy = validate(compose(["budget=full", "evaluator=proxy"]))
    assert proxy["train"] == {} and proxy["evaluator"]["batch_size"] == 64  # full's train.batch_size is not the proxy's


def test_the_resolved_config_is_plain_yaml_that_builds_again(tmp_path):
    cfg = validate(compose(["strategy=spos", "data=digits", "budget=smoke", "progress=false"]))
    again = yaml.safe_load(yaml.safe_dump(cfg))  # what resume= reads back from the run's config.yaml
    assert again == cfg
    assert type(build_strategy(again)).__name__ == "SinglePathOneShot"
    assert build_evaluator(again).epochs == 2
    data = build_data(again)
    assert build_space(again, data).input_shape == data.input_shape


def test_builders_refuse_settings_a_component_does_not_take():
    cfg = validate(compose(["strategy=evolution"]))
    cfg["search"]["epochs"] = 3  # e.g. an old config.yaml
    with pytest.raises(UserError, match="no setting search.epochs"):
        build_strategy(cfg)


def test_constructor_signatures_have_no_catch_all_for_loaders():
    for name in KINDS["data"].registry.names():
        kinds = [p.kind for p in inspect.signature(KINDS["data"].registry.get(name)).parameters.values()]
        assert inspect.Parameter.VAR_KEYWORD not in kinds, name


def test_one_grammar_for_the_dashboard(capsys):
    assert main(["dashboard", "--port", "8080"]) == 2
    assert "port=8080" in capsys.readouterr().err
    assert main(["dashboard", "port=abc"]) == 2
    assert "port=abc" in capsys.readouterr().err
    assert main(["dashboard", "portt=1"]) == 2
    assert "port" in capsys.readouterr().err


def test_list_shows_each_item_with_its_docstring_and_settings(capsys):
    assert main(["list", "strategies"]) == 0
    out = capsys.readouterr().out
    for name in KINDS["strategy"].registry.names():
        doc = inspect.getdoc(KINDS["strategy"].registry.get(name)).splitlines()[0].rstrip(".")
        assert f"{name}" in out and doc in out
    assert main(["list", "settings", "strategy=evolution"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["search"] == settings("strategy", "evolution")
