"""The Optuna dashboard: metric names, search and final studies kept apart, notes and plots, the
command's checks before serving, and (slow) a real run seen through headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from xsearch.cli import main
from xsearch.core.study import compatible_space, final_metric, final_study_name, open_study, search_metric
from xsearch.dashboard import record_final, run_note, stage_table
from xsearch.records import RunRecorder
from xsearch.search_spaces import get_space
from xsearch.strategies import STRATEGIES, QueryRecord, SearchResult, StageRecord

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def stage(space, n, classes, alive, acc, acc_all):
    arch = space.sample(seed=n)
    return StageRecord(stage=n, classes=classes, num_classes=len(classes),
                       alive_per_layer={c.label: alive for c in space.choices}, alive={}, pruned={}, seconds=2.0 * n,
                       val_accuracy=acc, val_accuracy_all_classes=acc_all, derived_arch=arch,
                       derived_flops=space.flops(arch), probabilities={})


@pytest.fixture(scope="module")
def space():
    return get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4, width_mult=0.5)


# --- what the studies hold ----------------------------------------------------------------
def test_metric_names_say_what_each_value_is():
    from xsearch.evaluators import EVALUATORS

    classification, proxy = EVALUATORS.get("classification")(), EVALUATORS.get("proxy")(proxy="synflow")
    assert search_metric(STRATEGIES.get("danas")(), classification) == "inherited accuracy"
    assert search_metric(STRATEGIES.get("spos")(), classification) == "inherited accuracy"
    assert search_metric(STRATEGIES.get("evolution")(), classification) == "held-out accuracy"
    assert search_metric(STRATEGIES.get("random")(), proxy) == "synflow score"
    assert search_metric(STRATEGIES.get("danas")(), EVALUATORS.get("detection")()) == "inherited box AP"
    assert final_metric(classification) == "test accuracy" and final_metric(proxy) == "synflow score"
    assert final_metric(EVALUATORS.get("detection")()) == "val box AP"
    assert final_study_name("retrained", "mbv3", "digits", classification) == "retrained/mbv3/digits/classification"
    assert final_study_name("evaluated", "mbv3", "digits", proxy) == "evaluated/mbv3/digits/proxy-synflow"


def test_stage_trials_compare_across_stages_and_the_note_tables_them(space, tmp_path):
    study = open_study(f"sqlite:///{tmp_path / 'x.db'}", "run", ["inherited accuracy", "FLOPs"])
    recorder = RunRecorder(tmp_path, space, study)
    rows = [stage(space, 1, ["a", "b", "c"], 12, 0.9, 0.3), stage(space, 2, list("abcdef"), 8, 0.7, 0.5)]
    for row in rows:
        recorder.stage(row)
    assert study.metric_names == ["inherited accuracy", "FLOPs"]
    assert [t.values[0] for t in study.trials] == [0.3, 0.5]  # all classes, not the stage's own (0.9, 0.7)
    assert [t.user_attrs["stage_classes_accuracy"] for t in study.trials] == [0.9, 0.7]
    assert study.trials[0].user_attrs["classes"] == "a, b, c" and study.trials[1].user_attrs["num_classes"] == 6
    table = stage_table(rows)
    assert table.splitlines()[0].startswith("| stage | classes | alive candidates per layer |")
    assert "| 1 | 3: a, b, c | 12 12 12 12 (mean 12.0) | 90.00 % | 30.00 % |" in table
    query = QueryRecord(query=1, arch=rows[1].derived_arch, flops=rows[1].derived_flops, params=1, score=0.55,
                        best_score=0.55, proposals=1, metrics={}, source="danas-derive")
    note = run_note(tmp_path, {"space": "mbv3", "strategy": "danas"}, [*rows, query], "inherited accuracy")
    assert "### Stages" in note and table in note and "1 queries (danas-derive)" in note and "55.00 %" in note
    # search.png of a staged search shows its stages, and its derivation queries in a fourth panel
    from PIL import Image

    from xsearch.records import plot_search

    plot_search(tmp_path, [*rows, query], [], "danas")
    assert Image.open(tmp_path / "search.png").size == (1800, 400)
    plot_search(tmp_path, rows, [], "danas")
    assert Image.open(tmp_path / "search.png").size == (1400, 400)


def test_final_networks_share_one_study_unless_the_choices_differ(space, tmp_path):
    from xsearch.evaluators import EVALUATORS

    storage = f"sqlite:///{tmp_path / 'x.db'}"
    cfg = {"storage": storage, "runs_root": str(tmp_path), "strategy": {"name": "danas"}}
    evaluator = EVALUATORS.get("classification")()
    dynamic = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4, width_mult=0.5, dynamic=True)
    names = []
    for i, sp in enumerate([space, space, dynamic]):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        (run_dir / "search.png").write_bytes(b"\x89PNG fake")
        recorder = RunRecorder(run_dir, sp, open_study(storage, run_dir.name))
        arch = sp.sample(seed=i)
        result = SearchResult(arch=arch, flops=sp.flops(arch), params=sp.params(arch), search_seconds=1.0)
        for _ in range(2):  # a resumed run records its final network once
            final = record_final(recorder, cfg, evaluator, "digits", result, {"test_accuracy": 0.5 + i / 10}, 0.5 + i / 10,
                                 "retrained")
        names.append(final["study"])
    assert names[0] == names[1] == "retrained/mbv3/digits/classification"
    assert names[2].startswith(names[0] + "~")  # Optuna refuses other categorical choices under one parameter name
    shared = optuna.load_study(study_name=names[0], storage=storage)
    assert [t.values[0] for t in shared.trials] == [0.5, 0.6] and shared.metric_names == ["test accuracy", "FLOPs"]
    assert [t.user_attrs["run"] for t in shared.trials] == ["run0", "run1"]
    assert not compatible_space(shared, {c.label: optuna.distributions.CategoricalDistribution(c.options)
                                         for c in dynamic.choices})
    metas = optuna.artifacts.get_all_artifact_meta(shared.trials[0], storage=shared._storage)
    assert [m.filename for m in metas] == ["search.png"]  # attached once, though recorded twice
    assert (tmp_path / "artifacts" / metas[0].artifact_id).read_bytes() == b"\x89PNG fake"


# --- xsearch dashboard refuses, before serving --------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_errors_are_clear_and_come_before_serving(tmp_path, capsys):
    db = tmp_path / "x.db"
    storage = f"sqlite:///{db}"
    optuna.storages.RDBStorage(storage)  # an Optuna file without studies
    (tmp_path / "notes.txt").write_text("not a database")
    cases = [([storage], "holds no studies"),
             ([f"sqlite:///{tmp_path / 'missing.db'}"], "no SQLite study file"),
             ([f"sqlite:///{tmp_path / 'notes.txt'}"], "not an Optuna study file"),
             (["foo://nowhere"], "cannot open Optuna storage"),
             (["postgresql://user:secret@127.0.0.1:1/db"], "cannot open Optuna storage 'postgresql://user:***@"),
             ([storage, "port=99999"], "outside 1..65535"),
             ([storage, "port=0"], "outside 1..65535"),
             ([storage, "port=http"], "could not be converted to Integer"),
             ([storage, "--port", "8080"], "key=value options")]
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'y.db'}", study_name="s")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases.append(([f"sqlite:///{tmp_path / 'y.db'}", f"port={busy.getsockname()[1]}"], "already in use"))
        for args, message in cases:
            assert main(["dashboard", *args]) == 2, args
            err = capsys.readouterr().err
            assert err.startswith("xsearch: error: ") and message in err, (args, err)
            assert "secret" not in err
    proc = subprocess.run([sys.executable, "-m", "xsearch", "dashboard", storage, "port=99999"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "outside 1..65535" in proc.stderr


# --- a real run in a real browser ----------------------------------------------------------
def chromium(url: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={out / 'chromium-profile'}", "--virtual-time-budget=20000"]
    return subprocess.run([CHROMIUM, *flags, *args, url], capture_output=True, text=True, timeout=180, check=False)


def page_text(url: str, out: Path, expect: list[str], tries: int = 3) -> str:
    """The text of the dashboard page at ``url`` once rendered (the dashboard is a single-page app)."""
    text = ""
    for _ in range(tries):
        dom = chromium(url, out, "--dump-dom").stdout
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", dom, flags=re.DOTALL)))
        if all(e in text for e in expect):
            break
    return text


@pytest.mark.slow
def test_a_real_run_in_the_dashboard_through_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/setup.sh installs it)")
    env = {**os.environ, "XSEARCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    runs = tmp_path / "runs"
    run = subprocess.run([sys.executable, "-m", "xsearch", "run", "space=mbv3", "strategy=danas", "data=digits",
                          "budget=smoke", "progress=false", "space.num_layers=4", "space.width_mult=0.5",
                          "search.train_samples=500", "train.epochs=1", "train.train_samples=500",
                          "train.test_samples=300", f"runs_root={runs}", f"run_dir={runs / 'dash-run'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    storage = f"sqlite:///{runs / 'xsearch.db'}"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "xsearch", "dashboard", storage, f"port={port}"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as r:
                    studies = {s["study_name"]: s for s in json.loads(r.read())["study_summaries"]}
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "the dashboard did not start"
                time.sleep(0.5)
        assert set(studies) == {"dash-run", "retrained/mbv3/digits/classification"}
        run_id = studies["dash-run"]["study_id"]
        final_id = studies["retrained/mbv3/digits/classification"]["study_id"]
        # the run's study page: its name, named axes (not "Objective 0"), its best trials, its plot
        page = page_text(f"{base}/dashboard/studies/{run_id}", tmp_path, ["dash-run", "inherited accuracy", "search.png"])
        assert "dash-run" in page and "inherited accuracy" in page and "FLOPs" in page
        assert "Objective 0" not in page and "Best Trials" in page and "search.png" in page
        chromium(f"{base}/dashboard/studies/{run_id}", tmp_path, "--window-size=1400,1000",
                 f"--screenshot={tmp_path / 'dashboard.png'}")
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        if os.environ.get("XSEARCH_DASHBOARD_SCREENSHOT"):
            shutil.copyfile(tmp_path / "dashboard.png", os.environ["XSEARCH_DASHBOARD_SCREENSHOT"])
        # its trials: three stages and the derivation's queries, no retrained network
        n_trials = len(optuna.load_study(study_name="dash-run", storage=storage).trials)
        trials = page_text(f"{base}/dashboard/studies/{run_id}/trials", tmp_path, [f"Trial {n_trials - 1}"])
        assert all(f"Trial {i}" in trials for i in range(n_trials)) and f"Trial {n_trials}" not in trials
        assert "derived" in trials and "stage_classes_accuracy" in trials
        # its note: the stage table
        note = page_text(f"{base}/dashboard/studies/{run_id}/note", tmp_path, ["alive candidates per layer"])
        assert "alive candidates per layer" in note and "inherited accuracy, all classes" in note
        assert "retrained/mbv3/digits/classification" in note
        # the final networks' study
        final = page_text(f"{base}/dashboard/studies/{final_id}", tmp_path, ["test accuracy"])
        assert "retrained/mbv3/digits/classification" in final and "test accuracy" in final
        # the plot itself is served from the artifact store
        meta = optuna.artifacts.get_all_artifact_meta(optuna.load_study(study_name="dash-run", storage=storage))
        with urllib.request.urlopen(f"{base}/artifacts/{run_id}/{meta[0].artifact_id}", timeout=30) as r:
            assert r.read() == (runs / "dash-run" / "search.png").read_bytes()
    finally:
        server.terminate()
        server.wait(timeout=30)
