from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from xsearch.cli import main

SMOKE = ["data=digits", "budget=smoke", "progress=false"]
# a smaller network and fewer images than the smoke budget, for the tests that run whole searches several times
TINY = [*SMOKE, "space.num_layers=4", "space.width_mult=0.5", "search.train_samples=400", "search.val_samples=100",
        "search.derive_trials=3", "train.train_samples=300", "train.test_samples=200"]


def run_cli(args, tmp_path):
    env = {**os.environ, "XSEARCH_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "xsearch", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_smoke_run_on_fashion_mnist_end_to_end(tmp_path, fashion_root):
    proc = run_cli(["run", "space=mbv3", "strategy=danas", "budget=smoke", "constraints.flops=6M",
                    f"runs_root={tmp_path / 'runs'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = next((tmp_path / "runs").glob("*-mbv3-danas"))
    record = json.loads((run_dir / "arch.json").read_text())
    assert set(record) >= {"space", "space_kwargs", "arch", "flops", "params", "metrics", "timm_arch_def"}
    assert record["flops"] <= 6_000_000
    assert 0.0 <= record["metrics"]["test_accuracy"] <= 1.0
    for name in ("config.yaml", "search.png", "stages.csv", "epochs.csv", "retrain/model.pt", "metrics.json"):
        assert (run_dir / name).exists(), name
    assert "test accuracy" in proc.stdout and str(run_dir.name) in proc.stdout and "xsearch dashboard" in proc.stdout
    # every derived architecture is a trial of the run's study, then the derivation's queries; the retrained
    # network is a trial of the study of every run's final networks on this space and data
    storage = f"sqlite:///{tmp_path / 'runs' / 'xsearch.db'}"
    study = optuna.load_study(study_name=run_dir.name, storage=storage)
    trials = study.get_trials()
    search = json.loads((run_dir / "search.json").read_text())
    queries = [h for h in search["history"] if h["kind"] == "query"]
    assert search["metrics"]["derivation"] == "accuracy" and 1 <= len(queries) <= 8  # smoke: 8 derivation queries
    assert search["arch"] == max(queries, key=lambda q: q["score"])["arch"]
    assert [t.user_attrs["kind"] for t in trials] == ["derived"] * 3 + ["query"] * len(queries)
    assert [t.user_attrs["stage"] for t in trials[:3]] == [1, 2, 3]
    assert all(t.values[1] == t.user_attrs["flops"] for t in trials)
    assert trials[2].values[0] == pytest.approx(search["history"][2]["val_accuracy_all_classes"])
    assert trials[0].user_attrs["alive_per_layer"]["layer1"] == 12
    assert study.metric_names == ["inherited accuracy", "FLOPs"]
    final = optuna.load_study(study_name="retrained/mbv3/fashion_mnist/classification", storage=storage)
    assert final.metric_names == ["test accuracy", "FLOPs"] and len(final.trials) == 1
    assert final.trials[0].values[0] == pytest.approx(record["metrics"]["test_accuracy"])
    assert final.trials[0].params == record["arch"] and final.trials[0].user_attrs["run_dir"] == str(run_dir.resolve())


BAD_INPUTS = [
    (["space=foo"], "valid space options: dyhead, focalnet, mbv3, micronet"),
    (["strategy=bar"], "valid strategy options: danas, dnas, evolution, hand, nsga2, random, spos, tpe"),
    (["data=foo"], "valid data options: cifar10"),
    (["search.foo=1"], "valid keys under 'search'"),
    (["nonsense=1"], "valid keys at the top level"),
    (["constraints.flops=abc"], "write e.g. 5M"),
    (["constraints.flops=-5M"], "must be positive"),
    (["seed=abc"], "could not be converted to Integer"),
    (["search.epochs=x"], "could not be converted to Integer"),
    (["search.lr=fast"], "could not be converted to Float"),
    (["constraints.flops=1K"], "smallest network of space 'mbv3'"),
    (["data=fashion_mnist", "data.root=/nonexistent"], "apt-get install dataset-fashion-mnist"),
    (["data=cifar10", "data.root=/nonexistent"], "cifar-10-batches-py"),
    (["data=cifar10"], "needs data.root"),
    (["data=imagefolder", "data.root=/nonexistent"], "train/<class>"),
    (["budget=huge"], "valid budget options: demo, full, smoke"),
    (["device=tpu"], "auto, cpu or cuda"),
    (["strategy=dnas", "search.keep_fraction=0.5"], "valid keys under 'search'"),
    (["search.class_fractions=[0.5,0.2]"], "must rise"),
    (["space.num_layers=2"], "at least 4"),
    (["justaword"], "not an option"),
    (["resume=/nonexistent/run"], "no run there"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_a_clear_error_with_exit_code_2(args, message, capsys, tmp_path):
    assert main(["run", *args, f"runs_root={tmp_path}"] if not args[0].startswith("resume") else ["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xsearch: error: ") and message in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_user_errors_from_a_real_process_have_no_traceback(tmp_path):
    for args in (["run", "space=foo"], ["run", "constraints.flops=1K"], ["frobnicate"], ["train", "missing.json"],
                 ["list", "things"], ["bench", "nothing"]):
        proc = run_cli(args, tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "error" in proc.stderr


def test_list_and_flops_and_train(tmp_path, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("mbv3", "danas", "dnas", "random", "fashion_mnist", "digits", "classification", "smoke"):
        assert word in out
    assert main(["run", *TINY, f"runs_root={tmp_path}", f"run_dir={tmp_path / 'r'}"]) == 0
    capsys.readouterr()
    assert main(["flops", str(tmp_path / "r" / "arch.json")]) == 0
    out = capsys.readouterr().out
    assert "equal" in out and "timm" in out
    assert main(["train", str(tmp_path / "r" / "arch.json"), "train.epochs=1", f"runs_root={tmp_path}"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    trained = next(tmp_path.glob("*-mbv3-train"))
    assert (trained / "model.pt").exists() and json.loads((trained / "arch.json").read_text())["metrics"]


def test_the_run_summary_prints_the_facts_the_run_produced():
    from xsearch.cli import summary_lines
    from xsearch.pipeline import RunSummary

    summary = RunSummary(
        run_dir=Path("runs/r"), arch=["k3_e3", "skip"], flops=280_000, params=180_000, flops_budget=None,
        strategy="danas", evaluator="classification", search_seconds=105.0, stages=[(3, 12.0), (10, 5.0)],
        result={"test_accuracy": 0.9548, "train_epochs": 2, "test_samples": 199, "train_seconds": 40.0,
                "train_images_seen": 8400, "train_steps": 132, "train_batch_size": 64},
        search={"derivation": "accuracy", "derivation_queries": 3,
                "phases": [{"phase": "warm-up", "images": 594, "steps": 10, "epochs": 1, "classes": 10, "seconds": 34}]},
        files=["arch.json", "retrain/model.pt"],
        commands=[("dashboard", "xsearch dashboard sqlite:///x.db"), ("export", "xsearch export runs/r/arch.json")])
    assert summary_lines(summary) == [
        "xsearch run finished: runs/r",
        "  architecture   k3_e3 skip",
        "  test accuracy  95.48%  (retrained from scratch, 2 epochs, 199 test images)",
        "  FLOPs          280K MACs, params 0.180M",
        ("  search         1m45s (danas, classes 3 -> 10, candidates/layer 12.0 -> 5.0, derived by inherited "
         "accuracy over 3 queries)"),
        "  warm-up        594 images, 10 steps (1 epoch on 10 classes, 34s)",
        "  retraining     40s (8,400 images, 132 steps at batch 64)",
        "  run folder     runs/r  (arch.json, retrain/model.pt)",
        "  dashboard      xsearch dashboard sqlite:///x.db",
        "  export         xsearch export runs/r/arch.json"]


def test_run_dir_is_never_overwritten(tmp_path, capsys):
    assert main(["run", *TINY, f"runs_root={tmp_path}", f"run_dir={tmp_path / 'r'}"]) == 0
    assert main(["run", *TINY, f"runs_root={tmp_path}", f"run_dir={tmp_path / 'r'}"]) == 2
    assert "resume=" in capsys.readouterr().err


def _kill_when(proc, path: Path, timeout: float = 300) -> None:
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, "the run finished before it could be interrupted"
        assert time.time() - start < timeout
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("interrupt_at", ["search_checkpoint.pt", "retrain/train_checkpoint.pt"])
def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path, interrupt_at):
    args = ["run", *TINY, "search.epochs=6", "train.epochs=3", f"runs_root={tmp_path / 'runs'}"]
    env = {**os.environ, "XSEARCH_PROGRESS": "0"}
    run_dir = tmp_path / "runs" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "xsearch", *args, f"run_dir={run_dir}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, run_dir / interrupt_at)
    assert not (run_dir / "DONE").exists()
    resumed = run_cli(["run", f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    reference = run_cli([*args, f"run_dir={tmp_path / 'runs' / 'reference'}"], tmp_path)
    assert reference.returncode == 0, reference.stderr
    a = json.loads((run_dir / "search.json").read_text())
    b = json.loads((tmp_path / "runs" / "reference" / "search.json").read_text())
    assert a["arch"] == b["arch"]
    assert len(a["metrics"]["epochs"]) == len(b["metrics"]["epochs"]) == 1 + 6  # warm-up + search, none repeated
    ma = json.loads((run_dir / "arch.json").read_text())["metrics"]
    mb = json.loads((tmp_path / "runs" / "reference" / "arch.json").read_text())["metrics"]
    assert ma["test_accuracy"] == pytest.approx(mb["test_accuracy"], abs=1e-6)
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{tmp_path / 'runs' / 'xsearch.db'}")
    ids = [t.user_attrs["record_id"] for t in study.get_trials()]
    queries = sum(h["kind"] == "query" for h in a["history"])  # the accuracy derivation's queries
    assert queries == sum(h["kind"] == "query" for h in b["history"]) >= 1
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 3 + queries  # stages, queries
    final = optuna.load_study(study_name="retrained/mbv3/digits/classification",
                              storage=f"sqlite:///{tmp_path / 'runs' / 'xsearch.db'}")
    assert sorted(t.user_attrs["run"] for t in final.trials) == ["killed", "reference"]  # once each, resumed or not


def test_dashboard_serves_the_studies_on_the_chosen_port(tmp_path):
    import socket
    import urllib.request

    storage = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(storage=storage, study_name="demo-study", directions=["maximize", "minimize"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "xsearch", "dashboard", storage, f"port={port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = r.read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "dashboard did not start"
                time.sleep(0.5)
        assert "demo-study" in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)
