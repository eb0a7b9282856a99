"""A NaN or infinite loss stops training with a clear error, before any NaN weight is stepped or saved."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from xsearch.core.checkpoint import read_checkpoint
from xsearch.core.errors import UserError
from xsearch.core.training import (
    NonFiniteLoss,
    TrainingDiverged,
    check_finite_weights,
    cosine_with_warmup,
    optimizer_step,
    supervised_step,
    train_epoch,
)
from xsearch.evaluators import ClassificationEvaluator, classification
from xsearch.records import save_arch
from xsearch.search_spaces import get_space


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = cosine_with_warmup(optimizer, total_steps=10, warmup_steps=2)
    batches = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(5)]
    return model, optimizer, scheduler, batches


def _poisoned(bad_call: int, value: float):
    """cross-entropy, times ``value`` on its ``bad_call``-th call (1-based)."""
    calls = itertools.count(1)

    def loss_fn(logits, y):
        loss = nn.functional.cross_entropy(logits, y)
        return loss * value if next(calls) == bad_call else loss

    return loss_fn


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_train_epoch_stops_at_the_bad_batch_without_stepping_the_weights(value, shown):
    model, optimizer, scheduler, batches = _tiny()
    snapshots = {}

    def before_step(t):
        snapshots[round(t * 5)] = {k: v.clone() for k, v in model.state_dict().items()}

    step = supervised_step(model, _poisoned(3, value), optimizer, scheduler)
    with pytest.raises(TrainingDiverged) as info:
        train_epoch(batches, step, 5, "stage 2/3 epoch 1/1 (4 classes)", False, before_step,
                    diverge_hint="Lower search.lr.")
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert 'training diverged in "stage 2/3 epoch 1/1 (4 classes)"' in message
    assert f"the loss became {shown} at batch 3/5" in message and "last checkpoint" in message
    assert message.endswith("Lower search.lr.")
    for key, before in snapshots[2].items():  # the weights as they were before the bad step
        assert torch.equal(model.state_dict()[key], before), key
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert scheduler.last_epoch == 2  # two good steps; the bad one did not step the scheduler


def test_without_a_hint_the_message_says_to_lower_the_learning_rate():
    model, optimizer, scheduler, batches = _tiny()
    step = supervised_step(model, _poisoned(1, float("nan")), optimizer, scheduler)
    with pytest.raises(TrainingDiverged, match=r'"single-path 1/3": the loss became nan at batch 1/5.*'
                                               r"Lower the learning rate"):
        train_epoch(batches, step, 5, "single-path 1/3", False)


def test_optimizer_step_refuses_a_non_finite_loss_before_backward():
    model, optimizer, scheduler, batches = _tiny()
    x, y = batches[0]
    optimizer_step(nn.functional.cross_entropy(model(x), y), optimizer, scheduler)
    weights = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    momenta = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLoss):
        optimizer_step(nn.functional.cross_entropy(model(x), y) * float("nan"), optimizer, scheduler)
    for p, w, g, m in zip(model.parameters(), weights, grads, momenta):
        assert torch.equal(p, w) and torch.equal(p.grad, g) and torch.equal(optimizer.state[p]["momentum_buffer"], m)
    assert scheduler.last_epoch == 1


def test_check_finite_weights_names_the_tensor():
    model, *_ = _tiny()
    check_finite_weights(model, "train epoch 1/2")
    with torch.no_grad():
        model[2].bias[1] = float("inf")
    with pytest.raises(TrainingDiverged, match=r'"train epoch 1/2": 2.bias became inf although every loss was finite'):
        check_finite_weights(model, "train epoch 1/2", "Lower train.lr.")


def _retraining(digits, monkeypatch, wrap_loss=None, after_step=None):
    """A 2-epoch, 4-batch-per-epoch (249 images) retraining of a small mbv3 on digits, with the step instrumented."""
    real = classification.supervised_step

    def instrumented(model, loss_fn, optimizer, scheduler):
        step = real(model, wrap_loss(loss_fn) if wrap_loss else loss_fn, optimizer, scheduler)
        calls = itertools.count(1)

        def run(batch):
            out = step(batch)
            if after_step is not None:
                after_step(next(calls), model)
            return out

        return run

    monkeypatch.setattr(classification, "supervised_step", instrumented)
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4)
    evaluator = ClassificationEvaluator(epochs=2, train_samples=250, test_samples=128, batch_size=64, min_steps=0, device="cpu",
                                        show_progress=False)
    return space, space.sample(seed=0), evaluator


def test_a_diverged_retraining_keeps_the_finite_checkpoint_of_epoch_1(digits, monkeypatch, tmp_path):
    def wrap_loss(loss_fn):
        calls = itertools.count(1)
        return lambda logits, y: loss_fn(logits, y) * (float("nan") if next(calls) == 6 else 1.0)

    space, arch, evaluator = _retraining(digits, monkeypatch, wrap_loss=wrap_loss)
    with pytest.raises(TrainingDiverged) as info:
        evaluator.evaluate(space, arch, digits, seed=0, workdir=tmp_path)
    message = str(info.value)
    assert '"train epoch 2/2": the loss became nan at batch 2/4' in message
    assert "train.lr (now 0.2" in message and "train.optimizer=adamw" in message
    checkpoint = read_checkpoint(tmp_path / "train_checkpoint.pt", "retrain")
    assert checkpoint["state"]["epoch"] == 1
    tensors = list(checkpoint["model"].values())
    for opt in checkpoint["optimizers"].values():
        tensors += [t for s in opt["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert tensors and all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    assert all(math.isfinite(v) for v in checkpoint["state"]["history"][0].values())
    assert not (tmp_path / "model.pt").exists()


def test_weights_made_infinite_by_a_finite_loss_are_never_checkpointed(digits, monkeypatch, tmp_path):
    def after_step(call, model):
        if call == 4:  # the last step of epoch 1
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")

    space, arch, evaluator = _retraining(digits, monkeypatch, after_step=after_step)
    with pytest.raises(TrainingDiverged, match=r'"train epoch 1/2": .* became inf although every loss was finite'):
        evaluator.evaluate(space, arch, digits, seed=0, workdir=tmp_path)
    assert not (tmp_path / "train_checkpoint.pt").exists() and not (tmp_path / "model.pt").exists()


def test_xsearch_train_with_an_absurd_learning_rate_exits_2_with_the_message(tmp_path):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4)
    save_arch(tmp_path / "arch.json", space, space.sample(seed=0), data="digits")
    env = {**os.environ, "XSEARCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "xsearch", "train", str(tmp_path / "arch.json"), "budget=smoke",
                           "train.lr=1e30", "progress=false", "device=cpu", f"runs_root={tmp_path / 'runs'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert 'xsearch: error: training diverged in "train epoch 1/' in proc.stderr
    assert "Lower train.lr (now 1e+30" in proc.stderr
    (run_dir,) = (tmp_path / "runs").glob("*-train")
    assert not any((run_dir / f).exists() for f in ("model.pt", "metrics.json", "train_checkpoint.pt"))
