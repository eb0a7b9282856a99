"""Several ``xsearch run`` workers on one study (``study=NAME storage=URL``), against a real PostgreSQL server.

The fixture starts a private server from Debian's ``postgresql`` binaries (``/usr/lib/postgresql/*/bin``):
``initdb`` into a temporary folder as the ``postgres`` user (the server refuses root), listening on
127.0.0.1 at a free port with its socket in that folder, and stops it afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from xsearch.cli import main
from xsearch.records import RunRecorder
from xsearch.search_spaces import get_space
from xsearch.strategies import STRATEGIES, Constraints, NoEvents, SharedStudy
from xsearch.strategies._multi_trial import worker_seed

BUDGET = 30_000_000  # MACs; NAS-Bench-Macro: a few hundred of its 6,561 networks fit


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    found = [Path(p) for p in found if (Path(p) / "initdb").exists() and (Path(p) / "pg_ctl").exists()]
    return found[-1] if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """``postgresql://postgres@127.0.0.1:PORT/xsearch`` on a private server, stopped after the module."""
    bindir = postgres_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL missing: the set-up (scripts/setup.sh) must install Debian's postgresql")
        pytest.skip("PostgreSQL binaries not found in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    as_postgres: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="xsearch-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    port, data, log = free_port(), root / "data", root / "server.log"

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_postgres, *cmd], check=False, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr or done.stdout}"
                               + (log.read_text() if log.exists() else ""))

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "xsearch")
        yield f"postgresql://postgres@127.0.0.1:{port}/xsearch"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       check=False, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def start_workers(n: int, storage: str, study: str, runs_root: Path, table: Path, strategy: str = "random",
                  max_trials: int = 30, extra: tuple[str, ...] = ()) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "XSEARCH_PROGRESS": "0"}
    args = ["space=nasbench_macro", f"strategy={strategy}", "evaluator=tabular", f"evaluator.table={table}",
            "constraints.flops=30M", f"search.max_trials={max_trials}", f"study={study}", f"storage={storage}",
            f"runs_root={runs_root}", "progress=false", *extra]
    return [subprocess.Popen([sys.executable, "-m", "xsearch", "run", *args, f"run_dir={runs_root / f'w{i}'}"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(n)]


def check_shared_search(procs: list[subprocess.Popen], storage: str, study: str, runs_root: Path,
                        max_trials: int = 30) -> dict:
    """Every worker exits 0; the study holds exactly ``max_trials`` distinct queries, all under the budget."""
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n\n".join(outputs)
    space = get_space("nasbench_macro")
    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    queries = [t for t in trials if t.user_attrs.get("kind") == "query"]
    done = [t for t in queries if t.state == optuna.trial.TrialState.COMPLETE]
    keys = [t.user_attrs["arch_key"] for t in done]
    assert len(done) == max_trials, Counter(t.state.name for t in queries)
    assert len(set(keys)) == max_trials, [k for k, c in Counter(keys).items() if c > 1]  # none evaluated twice
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("yielded") for t in queries
               if t not in done)  # every other claim yielded; nothing left RUNNING
    for t in done:
        arch = {c.label: t.params[c.label] for c in space.choices}
        assert "|".join(arch[c.label] for c in space.choices) == t.user_attrs["arch_key"]
        assert space.flops(arch) == t.values[1] <= BUDGET  # the budget never broken
    workers = Counter(t.user_attrs["worker"] for t in done)
    best = max(done, key=lambda t: t.values[0])
    for i in range(len(procs)):  # each worker finished its own folder with the study's best
        folder = runs_root / f"w{i}"
        assert (folder / "DONE").is_file()
        record = (folder / "arch.json").read_text()
        assert best.user_attrs["benchmark_key"] in record
    return {"done": done, "workers": workers, "yielded": len(queries) - len(done), "outputs": outputs}


def race(storage: str, study_name: str, workers: int = 4, max_trials: int = 10, pool: int = 16) -> list:
    """``workers`` threads, each with its own study object (own connections), claim the same ``pool``
    architectures in the same order (the worst case: every claim races); a claim that goes on is finished
    at once. Returns the study's trials."""
    from xsearch.core.study import SharedClaims
    from xsearch.strategies import QueryRecord
    from xsearch.strategies._multi_trial import arch_key

    space = get_space("nasbench_macro")
    archs = list({arch_key(space, a): a for a in (space.sample(seed=i, max_flops=BUDGET) for i in range(3 * pool))
                  }.values())[:pool]  # distinct
    optuna.create_study(storage=storage, study_name=study_name, directions=["maximize", "minimize"])
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            claims = SharedClaims(SharedStudy(study, f"t{i}"), space, "random", max_trials, BUDGET)
            for n, arch in enumerate(archs):
                outcome, trial, _ = claims.claim(arch, arch_key(space, arch))
                if outcome == "stop":
                    return
                if outcome == "mine":
                    claims.finish(trial, QueryRecord(query=n + 1, arch=arch, flops=space.flops(arch), params=0,
                                                     score=n / pool, best_score=n / pool, proposals=n + 1,
                                                     metrics={"score": n / pool}, source="random"))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return optuna.load_study(study_name=study_name, storage=storage).get_trials()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_racing_claims_never_duplicate_nor_exceed_the_budget(backend, request, tmp_path):
    storage = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'r.db'}"
    trials = race(storage, f"race-{backend}", workers=3, max_trials=6, pool=10)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    keys = [t.user_attrs["arch_key"] for t in done]
    assert len(done) == 6 and len(set(keys)) == 6  # the first 6 architectures, each evaluated once
    assert sorted(t.user_attrs["query"] for t in done) == list(range(1, 7))
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs["yielded"] for t in trials if t not in done)
    print(f"{backend}: {len(trials) - len(done)} claims yielded")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_three_workers_share_one_postgres_study(postgres_url, macro_table, tmp_path, strategy):
    t0 = time.time()
    procs = start_workers(3, postgres_url, f"shared-{strategy}", tmp_path, macro_table, strategy,
                          extra=("search.population_size=8", "search.sample_size=3") if strategy == "evolution" else ())
    got = check_shared_search(procs, postgres_url, f"shared-{strategy}", tmp_path)
    print(f"{strategy}: 3 workers, {len(got['done'])} queries {dict(got['workers'])}, {got['yielded']} claims "
          f"yielded, {time.time() - t0:.1f} s")


@pytest.mark.slow
def test_workers_share_a_sqlite_study_the_same_way(macro_table, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = start_workers(3, storage, "shared", tmp_path, macro_table, "random", max_trials=20)
    check_shared_search(procs, storage, "shared", tmp_path, max_trials=20)


def test_claims_in_one_process_keep_the_budget_and_reuse_other_workers_scores(postgres_url, macro_table):
    """Two workers in turn (no race): the second reuses the first's scores and stops at max_trials in all."""
    from xsearch.evaluators import TabularEvaluator

    space, tabular = get_space("nasbench_macro"), TabularEvaluator(str(macro_table))
    study = optuna.create_study(storage=postgres_url, study_name="in-turn", directions=["maximize", "minimize"])

    class Worker(NoEvents):
        def __init__(self, name: str) -> None:
            self.name = name

        def shared_study(self) -> SharedStudy:
            return SharedStudy(study, self.name)

    first = STRATEGIES.get("random")(max_trials=12, seed=0, show_progress=False)
    a = first.search(space, tabular, None, Constraints(BUDGET), Worker("a"))
    assert len(a.history) == 12 and a.metrics["queries"] == 12 and a.metrics["worker_queries"] == 12
    # the same strategy and seed as another worker: same proposals as "a" would make, other seed offset
    second = STRATEGIES.get("random")(max_trials=20, seed=0, show_progress=False)
    b = second.search(space, tabular, None, Constraints(BUDGET), Worker("b"))
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 20 and len(b.history) == 8 and b.metrics["queries"] == 20
    assert len({t.user_attrs["arch_key"] for t in done}) == 20
    assert b.metrics["score"] == max(t.values[0] for t in done) and b.flops <= BUDGET
    # worker "a" again (as a resumed one) with a larger budget: its first 12 proposals are in the study
    # and cost no query, the next 5 are new
    third = STRATEGIES.get("random")(max_trials=25, seed=0, show_progress=False)
    c = third.search(space, tabular, None, Constraints(BUDGET), Worker("a"))
    # worker "a"'s proposals are the stream of seed worker_seed(0, "a"), which an unshared search replays:
    # its first run queried the stream's first 12, and its resumed run the first 5 after them that no
    # worker had queried yet (those of "b" cost it no query either)
    stream = [h.arch for h in STRATEGIES.get("random")(max_trials=40, seed=worker_seed(0, "a"), show_progress=False)
              .search(space, tabular, None, Constraints(BUDGET), None).history]
    assert [h.arch for h in a.history] == stream[:12]
    before = {space.benchmark_key(h.arch) for h in a.history + b.history}
    assert [h.arch for h in c.history] == [arch for arch in stream if space.benchmark_key(arch) not in before][:5]
    assert len(c.history) == 5 and c.metrics["queries"] == 25
    assert not {space.benchmark_key(h.arch) for h in c.history} & {space.benchmark_key(h.arch) for h in a.history}


def test_a_study_of_another_search_is_refused(postgres_url, macro_table, tmp_path, capsys):
    space = get_space("nasbench_macro")
    study = optuna.create_study(storage=postgres_url, study_name="other-budget", directions=["maximize", "minimize"])
    from xsearch.core.study import SharedClaims
    from xsearch.strategies._multi_trial import arch_key

    arch = space.sample(seed=0, max_flops=BUDGET)
    SharedClaims(SharedStudy(study, "first"), space, "random", 3, 40_000_000).claim(arch, arch_key(space, arch))
    assert main(["run", "space=nasbench_macro", "strategy=random", "evaluator=tabular",
                 f"evaluator.table={macro_table}", "search.max_trials=3", "study=other-budget",
                 f"storage={postgres_url}", f"runs_root={tmp_path}", "progress=false", "constraints.flops=30M"]) == 2
    err = capsys.readouterr().err
    assert "holds another search" in err and "FLOPs budget 40000000" in err and "Traceback" not in err


def test_resumed_worker_fails_its_stale_claims(postgres_url, macro_table, tmp_path):
    """A killed worker leaves a RUNNING claim; resuming its run folder frees it and finishes the search."""
    space = get_space("nasbench_macro")
    study = optuna.create_study(storage=postgres_url, study_name="stale", directions=["maximize", "minimize"])
    (tmp_path / "w").mkdir()
    recorder = RunRecorder(tmp_path / "w", space, study, shared=True)
    assert recorder.shared_study().worker == RunRecorder(tmp_path / "w", space, study, shared=True).worker
    arch = space.sample(seed=1, max_flops=BUDGET)
    from xsearch.core.study import SharedClaims
    from xsearch.strategies._multi_trial import arch_key

    claims = SharedClaims(recorder.shared_study(), space, "random", 5, BUDGET)
    outcome, trial, _ = claims.claim(arch, arch_key(space, arch))
    assert outcome == "mine" and trial.number == 0  # then the worker "dies"
    SharedClaims(recorder.shared_study(), space, "random", 5, BUDGET)  # the resumed worker
    assert study.get_trials()[0].state == optuna.trial.TrialState.FAIL


@pytest.mark.parametrize("url, says", [
    ("postgresql://postgres@127.0.0.1:{closed}/xsearch", "is the server running"),
    ("postgresql:/no-host", "Could not parse"),
    ("mysql://user@127.0.0.1/db", "Failed to import"),
])
def test_bad_storage_url_exits_2_before_any_run_folder(url, says, tmp_path, macro_table, capsys):
    url = url.format(closed=free_port())
    code = main(["run", "space=nasbench_macro", "strategy=random", "evaluator=tabular",
                 f"evaluator.table={macro_table}", "search.max_trials=3", "study=s", f"storage={url}",
                 f"runs_root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_workers_started_in_the_same_second_get_a_run_folder_each(tmp_path):
    from xsearch.records import new_run_dir

    folders = [new_run_dir(tmp_path, "nasbench_macro", "random") for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() for f in folders)


def test_a_killed_workers_claim_is_freed_once_its_heartbeat_stops(tmp_path):
    """Heartbeats (``heartbeat=``): a claim whose worker stopped beating is failed by the others after the
    grace period (4 heartbeats), and the architecture is theirs; a claim still beating is never failed."""
    from xsearch.core.study import SharedClaims, open_study
    from xsearch.strategies._multi_trial import arch_key

    space = get_space("nasbench_macro")
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    workers = []
    for name in ("dead", "alive", "other"):
        (tmp_path / name).mkdir()
        study = open_study(storage, "beats", heartbeat=1)
        workers.append(SharedClaims(RunRecorder(tmp_path / name, space, study, shared=True).shared_study(),
                                    space, "random", 5, BUDGET))
    dead, alive, other = workers
    a, b = space.sample(seed=1, max_flops=BUDGET), space.sample(seed=2, max_flops=BUDGET)
    outcome, dead_claim, _ = dead.claim(a, arch_key(space, a))
    assert outcome == "mine"
    dead.stop_beat(dead_claim)  # the worker is killed: its claim stays RUNNING, nobody beats for it
    outcome, alive_claim, _ = alive.claim(b, arch_key(space, b))
    assert outcome == "mine"
    t0, got = time.time(), []
    waiter = threading.Thread(target=lambda: got.append(other.claim(a, arch_key(space, a))), daemon=True)
    waiter.start()  # waits for the dead claim, then takes it over
    waiter.join(timeout=60)
    waited = time.time() - t0
    assert got, "the other worker still waits for the killed worker's claim after 60 s"
    outcome, mine, _ = got[0]
    assert outcome == "mine" and mine.number != dead_claim.number
    assert waited >= 2, waited  # not before the dead claim went stale
    states = {t.number: t.state for t in other.study.get_trials()}
    assert states[dead_claim.number] == optuna.trial.TrialState.FAIL
    assert states[alive_claim.number] == optuna.trial.TrialState.RUNNING  # 4+ s old, but still beating
    from xsearch.strategies import QueryRecord

    late = QueryRecord(query=1, arch=a, flops=space.flops(a), params=space.params(a), score=0.5, best_score=0.5,
                       proposals=1, metrics={"score": 0.5}, source="random")
    with pytest.warns(UserWarning, match="freed as stale"):  # the stalled worker's late result: recorded apart
        dead.finish(dead_claim, late)
    assert other.study.get_trials()[dead_claim.number].state == optuna.trial.TrialState.FAIL
    for claims, trial in ((alive, alive_claim), (other, mine)):
        claims.stop_beat(trial)
        claims.study.tell(trial, state=optuna.trial.TrialState.FAIL)
