"""The run recorder: atomic files, idempotent trials, typed history rows, and run-folder faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
import yaml

from xsearch.cli import main
from xsearch.core.errors import UserError
from xsearch.records import RunRecorder, load_arch, save_arch
from xsearch.search_spaces import get_space
from xsearch.strategies import QueryRecord, SearchResult, StageRecord

SMOKE = ["data=digits", "budget=smoke", "progress=false"]


@pytest.fixture(scope="module")
def space():
    return get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4, width_mult=0.5)


def stage_row(space, stage=1):
    arch = space.sample(seed=stage)
    return StageRecord(stage=stage, classes=["a", "b"], num_classes=2, alive_per_layer={c.label: 3 for c in space.choices},
                       alive={c.label: list(c.options[:3]) for c in space.choices}, pruned={}, seconds=1.5,
                       val_accuracy=0.5, val_accuracy_all_classes=0.25, derived_arch=arch,
                       derived_flops=space.flops(arch), probabilities={})


def query_row(space, query=1, seed=0):
    arch = space.sample(seed=seed)
    return QueryRecord(query=query, arch=arch, flops=space.flops(arch), params=space.params(arch), score=0.1 * query,
                       best_score=0.1 * query, proposals=query, metrics={"score": 0.1 * query, "val_samples": 200},
                       source="evolution")


def study():
    return optuna.create_study(directions=["maximize", "minimize"])


def test_a_failing_write_leaves_the_previous_file(space, tmp_path, monkeypatch):
    recorder = RunRecorder(tmp_path, space)
    first = recorder.save_arch(space.sample(seed=1))
    recorder.save_result(SearchResult(arch=first["arch"], flops=1, params=1, history=[stage_row(space)]))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    for write in (lambda: recorder.save_arch(space.sample(seed=2)),
                  lambda: recorder.save_result(SearchResult(arch=first["arch"], flops=2, params=2)),
                  lambda: recorder.write_metrics({"x": 1}), recorder.finish):
        with pytest.raises(OSError, match="No space"):
            write()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no new, changed or temporary file


def test_trials_are_recorded_once_per_record_id(space, tmp_path):
    s = study()
    for _ in range(2):  # a resumed run reports its finished stages and queries again, through a new recorder
        recorder = RunRecorder(tmp_path, space, s)
        recorder.stage(stage_row(space, 1))
        recorder.query(query_row(space, 1), seconds=3.0)
        recorder.trial(space.sample(seed=9), 0.9, "retrained", {"kind": "retrained"})
    trials = s.get_trials()
    assert [t.user_attrs["record_id"] for t in trials] == ["stage1", "evolution-q1", "retrained"]
    derived, query = trials[0], trials[1]
    # a stage's value is its inherited accuracy on all classes (comparable across stages), not on its own classes
    assert derived.values == [0.25, space.flops(derived.params)] and derived.user_attrs["kind"] == "derived"
    assert derived.user_attrs["stage"] == 1 and derived.user_attrs["stage_classes_accuracy"] == 0.5
    assert derived.user_attrs["classes"] == "a, b" and derived.user_attrs["alive_candidates"] == "3 3 3 3"
    assert query.values[0] == 0.1 and query.user_attrs["kind"] == "query" and query.user_attrs["val_samples"] == 200
    assert "score" in query.user_attrs and query.user_attrs["query"] == 1
    replay = json.loads((tmp_path / "search_trials.json").read_text())
    assert len(replay["queries"]) == 1 and replay["seconds"] == 3.0
    assert RunRecorder(tmp_path, space).saved_queries() == (replay["queries"], 3.0)


def test_typed_rows_round_trip_through_search_json(space, tmp_path):
    result = SearchResult(arch=space.sample(seed=0), flops=5, params=6, metrics={"epochs": [{"phase": "warmup"}]},
                          history=[stage_row(space, 1), stage_row(space, 2)], search_seconds=2.0)
    recorder = RunRecorder(tmp_path, space)
    assert recorder.saved_result() is None
    recorder.save_result(result)
    again = RunRecorder(tmp_path, space).saved_result()
    assert again == result and all(isinstance(h, StageRecord) for h in again.history)
    queries = SearchResult(arch=space.sample(seed=0), flops=5, params=6, history=[query_row(space, 1), query_row(space, 2, 1)])
    assert SearchResult.from_dict(json.loads(json.dumps(queries.to_dict()))) == queries
    # search.json written before rows had a kind still loads, by their keys
    legacy = queries.to_dict()
    for row in legacy["history"]:
        del row["kind"], row["source"]
    assert all(isinstance(h, QueryRecord) for h in SearchResult.from_dict(legacy).history)
    # rows still read like the dicts they replaced
    assert result.history[0]["num_classes"] == 2 and "alive_per_layer" in result.history[0]


def test_tables_dispatch_on_the_row_type(space, tmp_path):
    import pandas as pd

    recorder = RunRecorder(tmp_path, space)
    recorder.write_search(SearchResult(arch={}, flops=0, params=0, history=[stage_row(space)],
                                       metrics={"epochs": [{"phase": "search", "train_loss": 1.0, "arch_loss": 2.0}]}),
                          "staged")
    assert list(pd.read_csv(tmp_path / "stages.csv").columns) == [
        "stage", "num_classes", "classes", "alive_total", "alive_mean_per_layer", "seconds", "val_accuracy",
        "val_accuracy_all_classes", "derived_flops"]
    assert (tmp_path / "epochs.csv").is_file() and (tmp_path / "search.png").is_file()
    recorder.write_search(SearchResult(arch={}, flops=0, params=0, history=[query_row(space)]), "queries")
    columns = list(pd.read_csv(tmp_path / "trials.csv").columns)
    assert columns == ["query", "score", "best_score", "flops", "params", "proposals", *space.labels]


def test_save_and_load_arch_round_trip_and_errors(tmp_path):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=28, width_mult=0.75)
    arch = space.sample(seed=5)
    save_arch(tmp_path / "arch.json", space, arch, metrics={"test_accuracy": 0.9})
    loaded_space, loaded = load_arch(tmp_path)
    assert loaded == arch and loaded_space.space_kwargs == space.space_kwargs
    record = json.loads((tmp_path / "arch.json").read_text())
    assert record["flops"] == space.flops(arch) and record["timm_arch_def"]
    with pytest.raises(UserError, match="does not exist"):
        load_arch(tmp_path / "missing.json")
    for text, message in [("{nope", "not a valid arch.json"), ("[1, 2]", "holds a list"),
                          ('{"arch": {}}', "needs 'space'"), ('{"space": "mbv3", "arch": {"layer1": "x"}}', "missing")]:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(UserError, match=message):
            load_arch(tmp_path / "bad.json")


def _refused(args, capsys, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("xsearch: error: ") and message in err and "Traceback" not in err
    return err


def test_unusable_run_dir_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import xsearch.pipeline

    monkeypatch.setattr(xsearch.pipeline, "build_data", lambda cfg: pytest.fail("data loaded before the check"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for run_dir, message in [("/proc/xsearch-run", "cannot be written"), (a_file, "is a file"),
                             (a_file / "sub", "is a file")]:
        _refused(["run", *SMOKE, f"runs_root={tmp_path}", f"run_dir={run_dir}"], capsys, message)
    _refused(["run", *SMOKE, f"runs_root={a_file}"], capsys, "runs_root=")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


CONFIGS = [("", "is empty"), ("space: [unclosed\n", "not a readable YAML file"), ("- a\n- b\n", "a list, not a mapping"),
           ("just text\n", "a str, not a mapping"), ("space: {name: mbv3}\nseed: 0\n", "lacks strategy")]


@pytest.mark.parametrize("text,message", CONFIGS, ids=[m for _, m in CONFIGS])
def test_resume_of_a_broken_config_is_refused(tmp_path, capsys, text, message):
    (tmp_path / "config.yaml").write_text(text)
    _refused(["run", f"resume={tmp_path}"], capsys, message)


def test_resume_with_a_corrupt_checkpoint_is_refused_and_keeps_the_file(tmp_path, capsys):
    from xsearch.config import compose, validate

    cfg = {**validate(compose(SMOKE)), "_run_dir": str(tmp_path), "storage": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "search_checkpoint.pt").write_bytes(b"not a checkpoint")
    _refused(["run", f"resume={tmp_path}"], capsys, "search_checkpoint.pt")
    assert (tmp_path / "search_checkpoint.pt").read_bytes() == b"not a checkpoint"
    assert not (tmp_path / "search.json").exists()


def test_faults_exit_2_without_a_traceback_in_a_real_process(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text("")
    env = {**os.environ, "XSEARCH_PROGRESS": "0"}
    for args in (["run", *SMOKE, "run_dir=/proc/xsearch-run"], ["run", f"resume={tmp_path / 'empty'}"]):
        proc = subprocess.run([sys.executable, "-m", "xsearch", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "xsearch: error:" in proc.stderr, proc.stderr
