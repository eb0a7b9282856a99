"""The shared training machinery: the one training loop, the one checkpoint format, the one stratified sampler."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from xsearch.core.checkpoint import CheckpointError, Resumable, read_checkpoint
from xsearch.core.data import split_for_search, stratified_split, stratified_subset
from xsearch.core.errors import UserError
from xsearch.core.training import cosine_with_warmup, optimizer_step, supervised_step, train_epoch

# --- the training loop ----------------------------------------------------------------------


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = cosine_with_warmup(optimizer, 20, warmup_steps=2)
    return model, optimizer, scheduler


def _batches(generator: torch.Generator, n: int = 5, size: int = 6):
    for i in range(n):
        b = size - (i == n - 1)  # a short last batch, as data.batches makes
        yield torch.randn(b, 4, generator=generator), torch.randint(0, 3, (b,), generator=generator)


def test_train_epoch_equals_the_hand_written_loop_it_replaced():
    model, optimizer, scheduler = _setup()
    losses = []
    for x, y in _batches(torch.Generator().manual_seed(1)):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append((float(loss.detach()), len(y)))
    expected = [p.detach().clone() for p in model.parameters()]

    model, optimizer, scheduler = _setup()
    seen = []
    metrics = train_epoch(_batches(torch.Generator().manual_seed(1)),
                          supervised_step(model, nn.functional.cross_entropy, optimizer, scheduler),
                          total=5, show_progress=False, before_step=seen.append)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), expected))
    assert seen == [i / 5 for i in range(5)] and scheduler.last_epoch == 5
    assert metrics == {"train_loss": pytest.approx(sum(v * n for v, n in losses) / sum(n for _, n in losses))}


def test_train_epoch_averages_every_metric_by_batch_size_and_handles_no_batches():
    def step(batch):
        return {"a": float(batch), "b": 1.0}, batch

    assert train_epoch([1, 3], step, total=2, show_progress=False) == {"a": (1 + 9) / 4, "b": 1.0}
    assert train_epoch([], step, total=0, show_progress=False) == {}


def test_optimizer_step_without_scheduler():
    model, optimizer, _ = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer_step(model(torch.ones(2, 4)).sum(), optimizer)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before))


# --- the checkpoint format ------------------------------------------------------------------


def _resumable(seed: int = 0) -> Resumable:
    model, optimizer, scheduler = _setup(seed)
    return Resumable(model, {"weights": optimizer}, {"weights": scheduler}, torch.Generator().manual_seed(seed))


def _train(r: Resumable, epochs: int) -> None:
    step = supervised_step(r.model, nn.functional.cross_entropy, r.optimizers["weights"], r.schedulers["weights"])
    for _ in range(epochs):
        train_epoch(_batches(r.generator), step, total=5, show_progress=False)


def test_resuming_from_a_checkpoint_reproduces_an_uninterrupted_run(tmp_path):
    straight = _resumable()
    _train(straight, 3)

    first = _resumable()
    _train(first, 1)
    first.save(tmp_path / "ckpt.pt", "retrain", {"epoch": 1, "history": [{"loss": 0.5}]})
    expected_draws = (random.random(), torch.rand(2))  # global RNG as the saved run would continue
    torch.manual_seed(123)  # what a fresh process would have
    random.seed(123)

    resumed = _resumable(seed=9)  # different initial weights and generator: all overwritten
    assert resumed.restore(tmp_path / "ckpt.pt", "retrain") == {"epoch": 1, "history": [{"loss": 0.5}]}
    assert random.random() == expected_draws[0] and torch.equal(torch.rand(2), expected_draws[1])
    resumed.restore(tmp_path / "ckpt.pt", "retrain")
    _train(resumed, 2)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), straight.model.parameters()))
    payload = read_checkpoint(tmp_path / "ckpt.pt")
    assert (payload["format"], payload["version"], payload["kind"]) == ("xsearch-checkpoint", 1, "retrain")
    assert set(payload) == {"format", "version", "kind", "model", "optimizers", "schedulers", "generator", "rng",
                            "state"}


def test_no_checkpoint_yet_is_a_fresh_start(tmp_path):
    assert _resumable().restore(tmp_path / "missing.pt", "search") is None
    assert read_checkpoint(tmp_path / "missing.pt") is None


def _write_foreign(path):
    torch.save({"supernet": {}, "w_opt": {}}, path)  # the layout before the one format


def _write_state_dict(path):
    torch.save(nn.Linear(2, 2).state_dict(), path)


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "unreadable"),
    (lambda p: p.write_bytes(b"\x00garbage" * 100), "unreadable"),
    (lambda p: p.write_bytes(b""), "unreadable"),
    (_write_foreign, "not an xsearch checkpoint"),
    (_write_state_dict, "not an xsearch checkpoint"),
])
def test_a_truncated_corrupt_or_foreign_checkpoint_is_named_and_never_skipped(tmp_path, damage, problem):
    path = tmp_path / "search_checkpoint.pt"
    _resumable().save(path, "search", {"step": 1})
    damage(path)
    with pytest.raises(CheckpointError, match=problem) as err:
        _resumable().restore(path, "search")
    assert isinstance(err.value, UserError)
    assert str(path) in str(err.value) and "delete it" in str(err.value)


def test_a_checkpoint_of_another_kind_or_model_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    _resumable().save(path, "retrain", {})
    with pytest.raises(CheckpointError, match="'retrain' checkpoint where a 'search' one"):
        _resumable().restore(path, "search")
    model = nn.Linear(4, 3)
    other = Resumable(model, {"weights": torch.optim.SGD(model.parameters(), lr=0.1)})
    with pytest.raises(CheckpointError, match="does not match"):
        other.restore(path, "retrain")
    with pytest.raises(ValueError, match="kind"):
        _resumable().save(path, "finetune", {})


# --- the stratified sampler ------------------------------------------------------------------

TARGETS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1, 1, 0, 2, 2, 0])  # 8, 6, 6 per class


def test_sampler_keeps_the_outputs_of_the_helpers_it_replaced():
    # indices the separate helpers returned before they became one sampler (seeds 7, 7, 3)
    first, second = split_for_search(TARGETS, 10, seed=7)
    assert (first.tolist(), second.tolist()) == ([19, 0, 15, 8], [9, 12, 14, 10, 11, 17])
    assert stratified_split(TARGETS, 7, size=7)[0].tolist() == [15, 17, 9, 12, 7, 11, 1]
    assert stratified_subset(TARGETS, 6, 3, indices=torch.arange(20)[::2]).tolist() == [12, 4, 2, 16, 10, 8]


def test_sampler_parts_are_stratified_disjoint_and_seeded():
    test, train = stratified_split(TARGETS, 0, cuts=lambda m: (m // 2,))
    assert torch.bincount(TARGETS[test]).tolist() == [4, 3, 3]
    assert sorted(torch.cat([test, train]).tolist()) == list(range(20))
    again = stratified_split(TARGETS, 0, cuts=lambda m: (m // 2,))
    assert torch.equal(test, again[0]) and torch.equal(train, again[1])
    assert not torch.equal(test, stratified_split(TARGETS, 1, cuts=lambda m: (m // 2,))[0])
    for n in range(1, 19):  # a batch: class counts within one of each other while every class has samples left
        counts = torch.bincount(TARGETS[stratified_split(TARGETS, 5, size=n)[0]], minlength=3)
        assert int(counts.sum()) == n and int(counts.max() - counts.min()) <= 1
    assert torch.equal(stratified_subset(TARGETS, None, 0), torch.arange(20))
    with pytest.raises(ValueError, match="exactly one"):
        stratified_split(TARGETS, 0)
