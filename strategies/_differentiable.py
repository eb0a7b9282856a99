"""Differentiable supernet search in stages: the machinery ``danas`` and ``dnas`` share.

A search is a list of resumable steps: supernet warm-up epochs (single-path, weights only), an
optional class-difficulty ranking, then stages. Each stage trains on a subset of the classes for
some epochs, alternating a weight step (on one half of the search split) and an architecture-logit
step (cross-entropy on the other half plus a FLOPs penalty), then derives the best architecture
under the hard budget, records it, and optionally prunes the weakest candidates of every layer.
``dnas`` is one stage on all classes with no pruning; ``danas`` grows easy-first class subsets while
pruning. A checkpoint is written after every step, so a killed search loses at most one epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xsearch.core import distributed
from xsearch.core.checkpoint import Resumable
from xsearch.core.data import ImageData, split_for_search, stratified_subset
from xsearch.core.errors import SettingError, UserError
from xsearch.core.training import (
    ClassSubset,
    anneal_temperature,
    channels_last,
    check_epoch_images,
    check_finite_weights,
    check_optimizer,
    cosine_with_warmup,
    optimizer_step,
    passes_for,
    repeat_indices,
    resolve_device,
    seed_everything,
    train_epoch,
    weight_optimizer,
)
from xsearch.evaluators import task_of
from xsearch.supernets import SHARING, Supernet

from ._base import (
    Constraints,
    NoEvents,
    SearchEvents,
    SearchResult,
    StageRecord,
    Strategy,
    as_constraints,
    row_from_dict,
)
from ._derive import best_under_budget

SKIP_POLICIES = ("derive", "mixed")
DERIVATIONS = ("accuracy", "probability")
PRUNE_SCORES = ("probability", "blend")


@dataclass
class Stage:
    """One search stage: how many (easiest) classes, how many epochs, and what fraction of candidates survives."""

    num_classes: int
    epochs: int
    keep_fraction: float | None  # None: no pruning after this stage


class DifferentiableSearch(Strategy):
    """Bilevel differentiable search over a supernet, run as resumable stages (see module doc)."""

    rank_classes = False
    data_parallel = True  # the supernet's training is one data-parallel loop (torchrun)
    inherited_scores = True  # stages and derivation queries are valued with the supernet's weights

    def __init__(self, epochs: int = 3, warmup_epochs: int = 3, train_samples: int | None = 20000,
                 batch_size: int = 128, lr: float = 0.1, weight_decay: float = 4e-5, arch_lr: float = 0.01,
                 arch_weight_decay: float = 1e-3, flops_weight: float = 0.2, latency_weight: float = 0.2,
                 path_mode: str = "weighted",
                 temperature_epochs: float = 1.0, optimizer: str = "auto", adamw_lr: float = 2e-3,
                 adamw_weight_decay: float = 0.05, sharing: str = "shared", skip: str = "derive",
                 derive: str = "accuracy", derive_trials: int = 20, prune_score: str = "probability",
                 val_samples: int = 2000, recalibration_batches: int = 10, epoch_images: int | None = None,
                 seed: int = 0, device: str = "auto", show_progress: bool = True) -> None:
        if path_mode not in ("weighted", "gated"):
            raise SettingError(f"search.path_mode must be 'weighted' or 'gated', got {path_mode!r}")
        for key, value, valid in (("sharing", sharing, SHARING), ("skip", skip, SKIP_POLICIES),
                                  ("derive", derive, DERIVATIONS), ("prune_score", prune_score, PRUNE_SCORES)):
            if value not in valid:
                raise SettingError(f"search.{key} must be one of {list(valid)}, got {value!r}")
        self.epoch_images = check_epoch_images("search.epoch_images", epoch_images)
        self.sharing, self.skip, self.derive, self.derive_trials = sharing, skip, derive, derive_trials
        self.prune_score, self.val_samples, self.recalibration_batches = prune_score, val_samples, recalibration_batches
        self.epochs, self.warmup_epochs, self.train_samples = epochs, warmup_epochs, train_samples
        self.batch_size, self.lr, self.weight_decay = batch_size, lr, weight_decay
        self.arch_lr, self.arch_weight_decay, self.flops_weight = arch_lr, arch_weight_decay, flops_weight
        self.latency_weight = latency_weight
        self.path_mode, self.seed, self.show_progress = path_mode, seed, show_progress
        self.temperature_epochs = temperature_epochs
        self.optimizer = check_optimizer(optimizer)
        self.adamw_lr, self.adamw_weight_decay = adamw_lr, adamw_weight_decay
        self.device = resolve_device(device)

    # --- what subclasses decide -------------------------------------------------------
    def stages(self, num_classes: int) -> list[Stage]:
        return [Stage(num_classes, self.epochs, None)]

    def warmup_split(self) -> tuple[int, int]:
        """Warm-up epochs (on all classes, on the first stage's classes): all of them on all classes here."""
        return self.single_path_epochs(), 0

    # --- the search ---------------------------------------------------------------------
    def search(self, space: Any, evaluator: Any, data: ImageData, constraints: Constraints,
               events: SearchEvents | None = None, checkpoint: Path | None = None) -> SearchResult:
        space.check_budget(constraints)
        task = task_of(evaluator)
        if task.name != "classification" and self.prune_score == "blend":
            raise UserError(f"search.prune_score=blend scores candidates by cross-entropy, which task {task.name!r} "
                            "has not; use search.prune_score=probability")
        seed_everything(self.seed)
        w_idx, a_idx = split_for_search(data.train.targets, self.train_samples, self.seed)
        stages = self.stages(data.num_classes)
        supernet = channels_last(Supernet(space, sharing=self.sharing).to(self.device))
        if self.skip == "derive":
            hold_out_parameter_free(supernet)
        model = task.model(space, supernet, data).to(self.device)
        w_opt = weight_optimizer(task.weight_parameters(model, supernet), self.optimizer, space, self.batch_size,
                                 (self.lr, self.weight_decay), (self.adamw_lr, self.adamw_weight_decay))
        self._optimizer_kind = "adamw" if isinstance(w_opt, torch.optim.AdamW) else "sgd"
        a_opt = torch.optim.Adam(supernet.arch_parameters(), lr=self.arch_lr, betas=(0.5, 0.999),
                                 weight_decay=self.arch_weight_decay)
        # an epoch on all classes sees at least epoch_images images (several passes over small data); an
        # epoch on some of the classes the same passes over their images
        passes = passes_for(len(w_idx), self.epoch_images)
        per_epoch = passes * len(w_idx) / self.batch_size
        warm_all, warm_easy = self.warmup_split()
        first = stages[0].num_classes / data.num_classes if stages else 1.0
        planned = (warm_all + warm_easy * first) * per_epoch + sum(s.epochs * per_epoch * s.num_classes / data.num_classes
                                                                   for s in stages)
        scheduler = cosine_with_warmup(w_opt, math.ceil(planned), warmup_steps=math.ceil(min(per_epoch, planned / 10)))
        generator = torch.Generator().manual_seed(self.seed)
        state: dict[str, Any] = {"step": 0, "class_order": list(range(data.num_classes)), "history": [],
                                 "epochs": [], "seconds": 0.0}
        resumable = Resumable(model, {"weights": w_opt, "arch": a_opt}, {"weights": scheduler}, generator)
        saved = resumable.restore(checkpoint, "search") if checkpoint else None
        if saved is not None:
            state = saved
        distributed.broadcast_module(model)  # under torchrun: rank 0's weights everywhere (seeded alike anyway)

        steps: list[tuple[Any, ...]] = [("warmup", e) for e in range(warm_all)]
        if self.rank_classes:
            steps.append(("rank",))
        steps += [("warmup", e, "easy") for e in range(warm_all, warm_all + warm_easy)]
        for s, stage in enumerate(stages):
            steps += [("train", s, e) for e in range(stage.epochs)]
            steps.append(("end_stage", s))

        ctx = _Context(self, space, supernet, data, w_idx, a_idx, w_opt, a_opt, scheduler, generator,
                       constraints, events if events is not None else NoEvents(), task, model, passes)
        while state["step"] < len(steps):
            step = steps[state["step"]]
            t0 = time.time()
            ctx.epochs_done = len(state["epochs"])
            if step[0] == "warmup":
                easy = state["class_order"][: stages[0].num_classes] if len(step) > 2 else None
                state["epochs"].append(ctx.warmup_epoch(step[1], easy))
            elif step[0] == "rank":
                state["class_order"], state["class_ranking"] = ctx.rank_classes()
            elif step[0] == "train":
                stage = stages[step[1]]
                classes = state["class_order"][: stage.num_classes]
                state["epochs"].append(ctx.search_epoch(step[1], len(stages), step[2], stage, classes))
            else:
                stage = stages[step[1]]
                classes = state["class_order"][: stage.num_classes]
                train_seconds = sum(e["seconds"] for e in state["epochs"] if e.get("stage") == step[1] + 1)
                # plain dicts in the checkpoint, so it loads without this module's classes
                state["history"].append(ctx.end_stage(step[1], stage, classes, train_seconds).to_dict())
            state["seconds"] += time.time() - t0
            state["step"] += 1
            if step[0] in ("warmup", "train"):  # never checkpoint weights an overflowing update made infinite
                check_finite_weights(model, f"{step[0]} epoch {len(state['epochs'])}", self.diverge_hint())
            if checkpoint and distributed.is_main():  # under torchrun every rank resumes from rank 0's file
                resumable.save(checkpoint, "search", state)
        return self.finish(ctx, state, checkpoint)

    def single_path_epochs(self) -> int:
        """Epochs of uniform single-path supernet training before the first stage."""
        return self.warmup_epochs

    def diverge_hint(self) -> str:
        """What to change when supernet training diverges (``TrainingDiverged``)."""
        if getattr(self, "_optimizer_kind", "sgd") == "adamw":
            return (f"Lower search.adamw_lr (now {self.adamw_lr:g}) and search again; a diverging logit step "
                    f"points at search.arch_lr (now {self.arch_lr:g}).")
        return (f"Lower search.lr (now {self.lr:g}, SGD per 256 images) and search again; a diverging logit step "
                f"points at search.arch_lr (now {self.arch_lr:g}).")

    def finish(self, ctx: _Context, state: dict[str, Any], checkpoint: Path | None) -> SearchResult:
        """The search's answer: the architecture derived after the last stage (see ``derive``)."""
        history: list[Any] = [row_from_dict(row) for row in state["history"]]
        final = history[-1]
        arch = final.derived_arch
        metrics: dict[str, Any] = {
            "inherited_val_accuracy": final.val_accuracy_all_classes, "derivation": self.derive,
            "class_order": [ctx.data.class_names[c] for c in state["class_order"]],
            "class_ranking": state.get("class_ranking"), "epochs": state["epochs"]}
        if ctx.task.name != "classification":  # the stage records' and queries' "accuracy" is this metric
            metrics["inherited_metric"] = ctx.task.metric
        seconds = state["seconds"]
        if self.derive == "accuracy":
            result = self.derive_by_accuracy(ctx, arch)
            metrics.update(derived_by_probability=arch, inherited_val_accuracy=result.metrics["score"],
                           derivation_queries=result.metrics["queries"])
            arch, seconds = result.arch, seconds + result.search_seconds
            history += result.history
        metrics.update(self.learning_report(ctx, state, metrics["inherited_val_accuracy"]))
        return SearchResult(arch=arch, flops=ctx.space.flops(arch), params=ctx.space.params(arch), metrics=metrics,
                            history=history, search_seconds=seconds)

    def learning_report(self, ctx: _Context, state: dict[str, Any], inherited: float | None) -> dict[str, Any]:
        """What the supernet saw (``phases``: images and steps per phase) and, if it did not learn, a ``warning``.

        Not learned: on classification, the found network's inherited held-out accuracy on all classes
        below twice chance. The run still finishes; the warning names the settings to raise.
        """
        report: dict[str, Any] = {"phases": phase_totals(state["epochs"]), "warning": None}
        chance = 1.0 / ctx.data.num_classes
        if ctx.task.name == "classification" and inherited is not None and inherited < 2 * chance:
            images = sum(p["images"] for p in report["phases"])
            report["warning"] = (
                f"the supernet has not learned: the found network's inherited accuracy is {100 * inherited:.1f} % "
                f"on all classes, below twice chance ({200 * chance:.0f} %), so the search chose among untrained "
                f"networks. It saw {images:,} training images in all; raise search.epoch_images (now "
                f"{self.epoch_images}) or search.warmup_epochs (now {self.warmup_epochs}) and search.epochs "
                f"(now {self.epochs}), or give it more data (search.train_samples, now {self.train_samples}).")
        return report

    def derive_by_accuracy(self, ctx: _Context, by_probability: dict[str, str]) -> SearchResult:
        """The best architecture under the budget by inherited-weight accuracy, among the surviving candidates.

        The candidates alive after the last stage form a small space (``space.restrict``); regularized
        evolution queries ``derive_trials`` of its architectures under the hard budget, each scored by
        its held-out accuracy with the supernet's weights (batch norm recalibrated first,
        ``InheritedWeightsEvaluator``). The population starts from the probability derivation and
        the surviving network with the most FLOPs under the budget (an exact knapsack).
        """
        from .evolution import RegularizedEvolution

        space = ctx.space.restrict(ctx.net.alive_options())
        fullest = best_under_budget(space, {c.label: {o: float(space.flops_table[c.label][o]) for o in c.options}
                                            for c in space.choices}, ctx.budget)
        population = max(2, min(10, self.derive_trials // 3))
        searcher = RegularizedEvolution(max_trials=self.derive_trials, population_size=population,
                                        sample_size=max(1, population // 3), seed=self.seed,
                                        show_progress=self.show_progress)
        searcher.initial = [space.validate(by_probability), fullest]
        return self.query_inherited(ctx, searcher, space, f"{self.name}-derive")

    def query_inherited(self, ctx: _Context, searcher: Any, space: Any, prefix: str) -> SearchResult:
        """``searcher`` over ``space`` under the budget, every query scored with the supernet's weights."""
        from xsearch.evaluators import InheritedWeightsEvaluator

        scorer = InheritedWeightsEvaluator(ctx.net, ctx.w_idx, ctx.val_idx, self.batch_size, self.recalibration_batches,
                                           self.device, task=ctx.task, model=ctx.model)
        return searcher.query(space, scorer, ctx.data, ctx.budget, ctx.events, prefix=prefix)


class _Context:
    """The pieces one search works with, and its step implementations."""

    def __init__(self, strategy: DifferentiableSearch, space: Any, supernet: Any, data: ImageData,
                 w_idx: torch.Tensor, a_idx: torch.Tensor, w_opt: Any, a_opt: Any, scheduler: Any,
                 generator: torch.Generator, budget: Constraints, events: SearchEvents, task: Any,
                 model: nn.Module, passes: int = 1) -> None:
        self.s, self.space, self.net, self.data = strategy, space, supernet, data
        self.task, self.model = task, model  # what the supernet is trained as (a classifier, a detector)
        self.w_idx, self.a_idx = w_idx, a_idx
        self.passes = passes  # passes over the training images per epoch (search.epoch_images on small data)
        # the held-out images every evaluation of the search uses (class ranking, stage records, queries):
        # a class-stratified ``val_samples`` of the logit half
        self.val_idx = stratified_subset(data.train.targets, strategy.val_samples, strategy.seed, indices=a_idx)
        self.w_opt, self.a_opt, self.scheduler, self.generator = w_opt, a_opt, scheduler, generator
        self.budget, self.events = budget, events
        self.weights = task.weight_parameters(model, supernet)
        self.epochs_done = 0  # training epochs finished so far (drives dynamic convolutions' temperature)
        self.alphas = supernet.arch_parameters()

    def _batches(self, indices: torch.Tensor, shuffle: bool = True, augment: bool = True,
                 classes: list[int] | None = None):
        return self.task.batches(self.data, indices, self.s.batch_size, shuffle=shuffle, augment=augment,
                                 generator=self.generator, device=self.s.device, classes=classes)

    def _requires_grad(self, params: list[nn.Parameter], flag: bool) -> None:
        for p in params:
            p.requires_grad_(flag)

    def warmup_epoch(self, epoch: int, classes: list[int] | None = None) -> dict[str, Any]:
        """Train weights along uniformly sampled single paths (cheap, unbiased), on all classes or on ``classes``."""
        self.net.train()
        self.net.set_mode("single")
        self._requires_grad(self.alphas, False)
        t0 = time.time()
        step = self.task.train_step(self.model, self.w_opt, self.scheduler, classes)
        w_idx = self.w_idx if classes is None else self.task.subset_indices(self.data, classes, self.w_idx)
        w_idx = repeat_indices(w_idx, self.passes)
        total = self.data.num_batches(len(w_idx), self.s.batch_size)
        where = "" if classes is None else f" ({len(classes)} easiest classes)"
        metrics = train_epoch(self._batches(w_idx, classes=classes), step, total,
                              f"single-path {epoch + 1}/{self.s.single_path_epochs()}{where}", self.s.show_progress,
                              self._anneal, diverge_hint=self.s.diverge_hint())
        self._requires_grad(self.alphas, True)
        return {"phase": "warmup", "epoch": epoch + 1, "train_loss": metrics.get("train_loss", 0.0),
                "classes": self.data.num_classes if classes is None else len(classes), "easy_classes": classes is not None,
                "images": len(w_idx), "steps": total, "seconds": time.time() - t0}

    def _anneal(self, progress: float) -> None:
        """Anneal dynamic convolutions for ``progress`` (a fraction) into the search's current epoch."""
        anneal_temperature(self.net, self.epochs_done + progress, self.s.temperature_epochs)

    def rank_classes(self, num_paths: int = 4) -> tuple[list[int], list[dict[str, Any]]]:
        """Easy-first class order: per-class accuracy on held-out data, averaged over sampled paths."""
        acc = torch.zeros(self.data.num_classes)
        for i in range(num_paths):
            arch = self.space.sample(seed=self.s.seed * 1000 + i, max_flops=self.budget)
            self.net.set_arch(arch)
            self.task.recalibrate(self.model, self._batches(self.w_idx, augment=False))
            result = self.task.evaluate(self.model, self.data, "train", self.val_idx, device=self.s.device)
            acc += torch.tensor(result["per_class"]) / num_paths
        order = sorted(range(self.data.num_classes), key=lambda c: -float(acc[c]))
        metric = f"heldout_{self.task.metric}"
        ranking = [{"class": self.data.class_names[c], "index": c, metric: float(acc[c])} for c in order]
        return order, ranking

    def search_epoch(self, stage_index: int, num_stages: int, epoch: int, stage: Stage,
                     classes: list[int]) -> dict[str, Any]:
        """One epoch of alternating weight and logit steps on the stage's classes."""
        w_idx = repeat_indices(self.task.subset_indices(self.data, classes, self.w_idx), self.passes)
        a_idx = repeat_indices(self.task.subset_indices(self.data, classes, self.a_idx), self.passes)
        self.model.train()
        self.net.set_mode(self.s.path_mode)
        t0 = time.time()
        total = self.data.num_batches(min(len(w_idx), len(a_idx)), self.s.batch_size)
        alive = self.net.num_alive() / len(self.net.layers)
        desc = (f"stage {stage_index + 1}/{num_stages} epoch {epoch + 1}/{stage.epochs} "
                f"({len(classes)} classes, {alive:.1f} cand/layer)")

        def step(batch: tuple[Any, Any]) -> tuple[dict[str, float], int]:
            batch_w, batch_a = batch
            # weight step: training half, logits frozen
            self._requires_grad(self.alphas, False)
            loss, _ = self.task.loss(self.model, batch_w, classes)
            optimizer_step(loss, self.w_opt, self.scheduler, samples=len(batch_w[1]))
            self._requires_grad(self.alphas, True)
            # logit step: held-out half, weights frozen
            self._requires_grad(self.weights, False)
            arch_loss, extra = self.task.loss(self.model, batch_a, classes)
            arch_loss = arch_loss + self.budget_penalty()
            optimizer_step(arch_loss, self.a_opt, samples=len(batch_a[1]))
            self._requires_grad(self.weights, True)
            # the global batch's means under torchrun (each half its own size); unchanged for one process
            weights, size = distributed.reduce_metrics({"train_loss": float(loss.detach())}, len(batch_w[1]))
            logits, _ = distributed.reduce_metrics(
                {"arch_loss": float(arch_loss.detach()), **{k: v for k, v in extra.items() if k == "arch_accuracy"}},
                len(batch_a[1]))
            return {**weights, **logits}, size

        averages = train_epoch(zip(self._batches(w_idx, classes=classes), self._batches(a_idx, classes=classes)),
                               step, total, desc, self.s.show_progress, self._anneal,
                               diverge_hint=self.s.diverge_hint())
        zeros = {"train_loss": 0.0, "arch_loss": 0.0, "arch_accuracy": 0.0} if self.task.name == "classification" \
            else {"train_loss": 0.0, "arch_loss": 0.0}
        record = {**zeros, **averages}  # zeros: no batch
        record.update(phase="search", stage=stage_index + 1, epoch=epoch + 1, classes=len(classes),
                      images=min(len(w_idx), len(a_idx)), steps=total,
                      expected_flops=float(self.net.expected_flops().detach()), seconds=time.time() - t0)
        if self.budget.latency is not None:
            record["expected_latency_ms"] = float(self.net.expected_cost("latency").detach())
        return record

    def budget_penalty(self) -> torch.Tensor:
        """``flops_weight * |E[FLOPs] / budget - 1|`` plus ``latency_weight * |E[latency] / budget - 1|`` for the
        limits that are set: pulls the distribution toward the budget (zero without one). E[latency] is the
        latency table's per-layer times weighted by the candidates' probabilities, as FBNet's expected latency.

        Two-sided on purpose: above the budget it pushes toward cheaper candidates; below it, it
        counters the drift of weighted supernets toward parameter-free skips, so the derived network
        uses the FLOPs it is allowed.
        """
        penalty = torch.zeros((), device=self.s.device)
        weights = {"flops": self.s.flops_weight, "latency": self.s.latency_weight}
        for kind, limit in self.budget.limits().items():
            if weights[kind]:
                penalty = penalty + weights[kind] * (self.net.expected_cost(kind) / limit - 1.0).abs()
        return penalty

    @torch.no_grad()
    def blend_scores(self, subset: ClassSubset, samples: int = 512) -> dict[str, dict[str, float]]:
        """Pruning scores blending each candidate's probability with its own held-out loss.

        For every layer and mixed candidate ``o``: ``L(o)``, the cross-entropy on ``samples``
        held-out images of the stage's classes with that layer fixed to ``o`` and every other layer
        weighted (batch statistics; the running statistics are restored afterwards). The score is
        ``z(log p(o)) - z(L(o))``, z-scores over the layer's mixed candidates: the softmax and the
        candidate's own loss count equally.
        """
        net = self.net
        idx = stratified_subset(self.data.train.targets, samples, self.s.seed,
                                indices=subset.indices(self.data.train.targets, self.a_idx))
        batches = list(self.data.batches("train", idx, 256, device=self.s.device))
        saved = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.0
        net.train()
        net.set_mode("weighted")
        probs = net.probabilities()
        scores: dict[str, dict[str, float]] = {}
        try:
            for layer in net.layers:
                mixed = layer.mixture_indices()
                losses = {}
                for i in mixed:
                    layer.mode, layer.fixed_index = "fixed", i
                    total, n = 0.0, 0
                    for x, y in batches:
                        logits, target = subset.apply(net(x), y)
                        total += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
                        n += len(y)
                    losses[layer.options[i]] = total / max(1, n)
                layer.mode = "weighted"
                logp = {o: math.log(max(probs[layer.label][o], 1e-12)) for o in losses}
                scores[layer.label] = {o: _z(logp, o) - _z(losses, o) for o in losses}
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            net.load_state_dict({**net.state_dict(), **saved})
        return scores

    def derive(self) -> dict[str, str]:
        scores = {label: {o: math.log(max(p, 1e-12)) for o, p in probs.items()}
                  for label, probs in self.net.probabilities().items()}
        return best_under_budget(self.space, scores, self.budget)

    def end_stage(self, stage_index: int, stage: Stage, classes: list[int], train_seconds: float) -> StageRecord:
        """Derive and report the stage's architecture, then prune the weakest candidates."""
        t0 = time.time()
        arch = self.derive()
        self.net.set_arch(arch)
        self.task.recalibrate(self.model, self._batches(self.task.subset_indices(self.data, classes, self.w_idx),
                                                        augment=False, classes=classes))
        val = self.task.evaluate(self.model, self.data, "train", self.task.subset_indices(self.data, classes, self.val_idx),
                                 classes=classes, device=self.s.device)
        val_all = self.task.evaluate(self.model, self.data, "train", self.val_idx, device=self.s.device)
        self.net.set_mode(self.s.path_mode)
        alive_before = self.net.alive_options()
        pruned: dict[str, list[str]] = {}
        if stage.keep_fraction is not None:
            subset = ClassSubset(classes, self.data.num_classes)
            scores = self.blend_scores(subset) if self.s.prune_score == "blend" else None
            pruned = prune(self.net, self.space, stage.keep_fraction, self.budget, scores)
        seconds = train_seconds + time.time() - t0
        record = StageRecord(
            stage=stage_index + 1,
            classes=[self.data.class_names[c] for c in classes],
            num_classes=len(classes),
            alive_per_layer={k: len(v) for k, v in alive_before.items()},
            alive=alive_before,
            pruned=pruned,
            seconds=seconds,
            val_accuracy=val["score"],
            val_accuracy_all_classes=val_all["score"],
            derived_arch=arch,
            derived_flops=self.space.flops(arch),
            probabilities=self.net.probabilities(),
        )
        self.events.stage(record)
        return record


def phase_totals(epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training images and optimizer steps per supernet phase, summed over its epochs, in order.

    Phases: the warm-up on all classes, the warm-up on the easiest classes (``danas``), each stage.
    """
    phases: list[dict[str, Any]] = []
    for e in epochs:
        if e["phase"] == "warmup":
            name = "warm-up (easy classes)" if e.get("easy_classes") else "warm-up"
        else:
            name = f"stage {e['stage']}"
        if not phases or phases[-1]["phase"] != name:
            phases.append({"phase": name, "classes": e.get("classes"), "epochs": 0, "images": 0, "steps": 0,
                           "seconds": 0.0})
        row = phases[-1]
        row["epochs"] += 1
        row["images"] += int(e.get("images", 0))
        row["steps"] += int(e.get("steps", 0))
        row["seconds"] += float(e.get("seconds", 0.0))
    return phases


def _z(values: dict[str, float], key: str) -> float:
    """The z-score of ``values[key]`` among ``values`` (0 when they are all equal)."""
    mean = sum(values.values()) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values.values()) / len(values))
    return (values[key] - mean) / std if std > 0 else 0.0


def hold_out_parameter_free(supernet: Any) -> None:
    """Keep every parameter-free candidate (``skip``) out of the weighted and gated mixtures.

    In a weighted supernet an identity path lowers the loss before the blocks have learnt anything,
    so its logit wins early and starves the blocks of gradient (the bias of DARTS-like searches
    toward parameter-free operations). Held out, ``skip`` is still sampled in single-path warm-up
    (so sub-networks with skipped layers inherit trained weights), never pruned, and chosen or not
    at derivation by inherited-weight accuracy under the budget.
    """
    for layer in supernet.layers:
        layer.held_out = frozenset(i for i, c in enumerate(layer.candidates) if isinstance(c, nn.Identity))


def prune(supernet: Any, space: Any, keep_fraction: float, max_flops: int | Constraints | None,
          scores: dict[str, dict[str, float]] | None = None) -> dict[str, list[str]]:
    """Keep the ``ceil(keep_fraction * n)`` best of the ``n`` mixed candidates of every layer.

    Best by ``scores`` (per layer and option, higher is better), the softmax probabilities by default.
    Held-out candidates (``MixedLayer.held_out``) are never pruned. Never leaves the budget
    unreachable: if the cheapest surviving network would exceed ``max_flops`` (a FLOPs budget, or
    ``Constraints``: each limit in turn), the cheapest previously alive candidate of a layer is restored
    (biggest saving first) until it fits.
    Returns the pruned options per layer.
    """
    probs = supernet.probabilities()
    alive = supernet.alive_options()
    keep = {}
    for layer in supernet.layers:
        label = layer.label
        held = [layer.options[i] for i in sorted(layer.held_out) if bool(layer.alive[i])]
        ranked = [o for o in probs[label] if o not in held]
        score = scores[label] if scores is not None else probs[label]
        k = max(1, math.ceil(keep_fraction * len(ranked)))
        keep[label] = sorted(ranked, key=lambda o: -score[o])[:k] + held
    for kind, limit in as_constraints(max_flops).limits().items():
        fixed, table = space.cost_table(kind)

        def cheapest(label: str, options: list[str], table: dict = table) -> float:
            return min(table[label][o] for o in options)

        # restore the layers whose pruned cheapest candidate saves the most first
        saving = {label: cheapest(label, keep[label]) - cheapest(label, alive[label]) for label in keep}
        for label in sorted(keep, key=lambda k: -saving[k]):
            if fixed + sum(cheapest(lb, opts) for lb, opts in keep.items()) <= limit:
                break
            restore = min(alive[label], key=lambda o: table[label][o])
            if restore not in keep[label]:
                keep[label].append(restore)
    supernet.set_alive(keep)
    return {label: [o for o in alive[label] if o not in keep[label]] for label in alive}
