"""Several processes (torch.distributed, gloo on the CPU) give one process's result with the same seed.

- The training loop in two processes (``torch.multiprocessing``), with batch norm, dropout and a last
  batch that does not split evenly, ends with the weights, running statistics and losses of one process.
- ``torchrun --nproc_per_node=2 --standalone -m xsearch.cli run`` on the smoke budget derives the same
  architecture as one process, with per-epoch losses and the retraining's losses equal to float
  rounding, and only rank 0 writes a run folder (slow: two runs of the pipeline).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from xsearch.core import distributed
from xsearch.core.training import supervised_step, train_epoch

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-5


def _net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(0.3), nn.Linear(6, 4), nn.BatchNorm1d(4))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    sizes = (12, 12, 7)  # the last batch splits 3 + 4 across two processes
    return [(torch.randn(n, 2, 5, 5, generator=g) * 2 + 1, torch.randint(0, 4, (n,), generator=g)) for n in sizes]


def _train(epochs: int = 2) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    step = supervised_step(model, nn.functional.cross_entropy, opt, None)
    torch.manual_seed(11)  # dropout draws from the global generator, as in the strategies
    history = [train_epoch(_batches(), step, 3, show_progress=False) for _ in range(epochs)]
    return {k: v.clone() for k, v in model.state_dict().items()}, history


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.init("cpu") and distributed.world() == world
    state, history = _train()
    torch.save({"state": state, "history": history, "rng": torch.get_rng_state()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_torchrun_everything_is_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.init("cpu")
    assert (distributed.world(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    batches = _batches()
    assert distributed.shard(batches) is batches
    assert distributed.reduce_metrics({"loss": 0.5}, 7) == ({"loss": 0.5}, 7)


def test_slices_are_contiguous_and_cover_the_batch():
    for length in (0, 1, 7, 64):
        for parts in (1, 2, 3, 8):
            bounds = [distributed.slice_bounds(length, r, parts) for r in range(parts)]
            assert bounds[0][0] == 0 and bounds[-1][1] == length
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_two_processes_train_like_one(tmp_path):
    """Weights, batch-norm running statistics, RNG state and epoch losses of 2 gloo ranks = 1 process."""
    import torch.multiprocessing as mp

    ref_state, ref_history = _train()  # first: the workers fork from a process whose lazy set-up is done
    ref_rng = torch.get_rng_state()
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key, value in ref_state.items():
            if value.is_floating_point():
                torch.testing.assert_close(got["state"][key], value, rtol=RTOL, atol=1e-6, msg=key)
            else:
                assert torch.equal(got["state"][key], value), key
        for ours, theirs in zip(got["history"], ref_history):
            assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=RTOL)
        assert torch.equal(got["rng"], ref_rng)  # same random draws: dropout masks of the global batch
    # a check that can fail: one process on half the batches ends elsewhere
    assert not torch.allclose(ref_state["0.weight"], _net()[0].weight)


# --- the command line under torchrun --------------------------------------------------------
SMOKE = ["data=digits", "budget=smoke", "space=mbv3", "space.num_layers=4", "space.width_mult=0.5",
         "search.train_samples=400", "search.val_samples=100", "search.recalibration_batches=2", "train.epochs=1", "train.train_samples=300", "train.test_samples=200",
         "seed=0", "device=cpu", "progress=false",
         # one pass per epoch and no smaller batches: a few dozen steps, over which one process and two agree to
         # 1e-5; over the hundreds of steps of the preset's epochs, rounding differences of the summed gradients
         # grow into percent-level differences of the loss, as in any chaotic training
         "search.epoch_images=null", "train.epoch_images=null", "train.min_steps=0"]
STRATEGY_SMOKE = {"spos": ["search.max_trials=4", "search.population_size=2", "search.sample_size=1"],
                  "danas": ["search.derive_trials=4"], "dnas": ["search.derive_trials=4"]}


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "XSEARCH_PROGRESS": "0"}
    done = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["danas", "spos", "dnas"])
def test_torchrun_two_processes_search_like_one(tmp_path, strategy):
    one = tmp_path / "one"
    args = [f"strategy={strategy}", *SMOKE, *STRATEGY_SMOKE.get(strategy, [])]
    _run([sys.executable, "-m", "xsearch.cli", "run", *args, f"run_dir={one}",
          f"storage=sqlite:///{tmp_path / 'one.db'}"], REPO)
    runs = tmp_path / "runs"  # a time-stamped folder: rank 0 names it, the other rank learns the name
    _run([*_torchrun(), "--nproc_per_node=2", "--standalone", "-m", "xsearch.cli", "run", *args,
          f"runs_root={runs}", f"storage=sqlite:///{tmp_path / 'two.db'}"], REPO)
    folders = [p for p in runs.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders  # only rank 0 made a run folder
    two = folders[0]
    assert (two / "DONE").exists()
    a, b = (json.loads((d / "search.json").read_text()) for d in (one, two))
    assert a["arch"] == b["arch"]
    epochs_a, epochs_b = a["metrics"]["epochs"], b["metrics"]["epochs"]
    assert len(epochs_a) == len(epochs_b) > 0
    for ea, eb in zip(epochs_a, epochs_b):
        for key in ("train_loss", "arch_loss", "arch_accuracy", "expected_flops"):
            if key in ea:
                assert eb[key] == pytest.approx(ea[key], rel=RTOL), (key, ea, eb)
    ma, mb = (json.loads((d / "metrics.json").read_text())["retrain"] for d in (one, two))
    for ha, hb in zip(ma["history"], mb["history"]):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=RTOL)
    assert mb["test_accuracy"] == pytest.approx(ma["test_accuracy"], abs=1 / 200)  # at most one image flips
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_unsupported_strategy_is_refused_under_torchrun(monkeypatch):
    from xsearch.core.errors import UserError
    from xsearch.evaluators import EVALUATORS
    from xsearch.pipeline import check_distributed

    classification = EVALUATORS.get("classification")()
    with pytest.raises(UserError, match="strategy=danas"):
        check_distributed({"strategy": {"name": "evolution"}}, classification)
    with pytest.raises(UserError, match="launcher"):
        check_distributed({"strategy": {"name": "danas"}, "launcher": "ray"}, classification)
    check_distributed({"strategy": {"name": "danas"}, "launcher": "local"}, classification)


@pytest.mark.slow
def test_a_killed_run_resumes_under_torchrun_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """Killed (one process) after its second search checkpoint, resumed by two processes: one process's result."""
    from xsearch.cli import main

    writes: list[Path] = []
    replace = os.replace

    def kill_after_second_checkpoint(src, dst, *a, **k):
        replace(src, dst, *a, **k)
        writes.append(Path(dst))
        if [p.name for p in writes].count("search_checkpoint.pt") == 2 and Path(dst).parent.name == "killed":
            raise KeyboardInterrupt

    args = ["run", "strategy=danas", *SMOKE, *STRATEGY_SMOKE["danas"], f"storage=sqlite:///{tmp_path / 'x.db'}"]
    monkeypatch.setattr(os, "replace", kill_after_second_checkpoint)
    assert main([*args, f"run_dir={tmp_path / 'reference'}"]) == 0
    writes.clear()
    assert main([*args, f"run_dir={tmp_path / 'killed'}"]) == 130
    assert not (tmp_path / "killed" / "search.json").exists()
    monkeypatch.undo()
    _run([*_torchrun(), "--nproc_per_node=2", "--standalone", "-m", "xsearch.cli", "run",
          f"resume={tmp_path / 'killed'}"], REPO)
    a, b = (json.loads((tmp_path / d / "search.json").read_text()) for d in ("reference", "killed"))
    assert a["arch"] == b["arch"]
    assert len(a["metrics"]["epochs"]) == len(b["metrics"]["epochs"])
    for ea, eb in zip(a["metrics"]["epochs"], b["metrics"]["epochs"]):
        assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=RTOL)
