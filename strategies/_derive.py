"""Exact derivation: the highest-scoring architecture whose FLOPs (and/or predicted latency) fit hard budgets.

FLOPs and the latency table's per-layer times add up over layers, so this is a multiple-choice
knapsack (with two budgets, a two-dimensional one). We solve it exactly with dynamic programming over
layers, keeping only the Pareto frontier of (costs, score) partial solutions; the frontier stays
small because dominated partial architectures are dropped at every layer.
"""

from __future__ import annotations

from typing import Any

from xsearch.core.errors import UserError
from xsearch.search_spaces import Constraints, as_constraints

State = tuple[tuple[float, ...], float, tuple[str, ...]]  # (costs so far, score so far, options so far)


def best_under_budget(space: Any, scores: dict[str, dict[str, float]],
                      max_flops: int | Constraints | None) -> dict[str, str]:
    """Maximise the sum of per-layer ``scores[label][option]`` subject to every limit of ``max_flops`` (a FLOPs
    budget or ``Constraints``: ``space.flops(arch)`` and/or ``space.latency(arch)``).

    Options missing from ``scores`` (e.g. pruned ones) are not considered.
    """
    limits = as_constraints(max_flops).limits()
    if not limits:
        return {label: max(opts, key=opts.get) for label, opts in scores.items()}
    tables = [space.cost_table(kind) for kind in limits]
    bound = tuple(limits.values())
    frontier: list[State] = [(tuple(float(fixed) for fixed, _ in tables), 0.0, ())]
    for choice in space.choices:
        options = scores[choice.label]
        merged = [(tuple(c + t[choice.label][o] for c, (_, t) in zip(costs, tables)), s + options[o], picks + (o,))
                  for costs, s, picks in frontier for o in options]
        merged = [m for m in merged if all(c <= b for c, b in zip(m[0], bound))]
        frontier = pareto(merged)
        if not frontier:
            raise UserError(f"no architecture with the remaining candidates fits within "
                            f"{as_constraints(max_flops).describe()}")
    _, _, picks = max(frontier, key=lambda m: m[1])
    return dict(zip(space.labels, picks))


def pareto(states: list[State]) -> list[State]:
    """The states no other state beats: none with every cost at most and a higher score (ties: the first)."""
    states = sorted(states, key=lambda m: (m[0], -m[1]))
    if states and len(states[0][0]) == 1:  # one cost: ascending cost, keep only strictly better scores
        kept, best = [], float("-inf")
        for m in states:
            if m[1] > best:
                kept.append(m)
                best = m[1]
        return kept
    kept = []
    for m in states:  # ascending first cost: m is beaten only by a kept state
        if not any(k[1] >= m[1] and all(a <= b for a, b in zip(k[0][1:], m[0][1:])) for k in kept):
            kept.append(m)
    return kept
