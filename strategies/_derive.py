"""Exact derivation: the highest-scoring architecture whose FLOPs fit a hard budget.

FLOPs add up over layers, so this is a multiple-choice knapsack. We solve it exactly with dynamic
programming over layers, keeping only the Pareto frontier of (FLOPs, score) partial solutions; the
frontier stays small because dominated partial architectures are dropped at every layer.
"""

from __future__ import annotations

from typing import Any

from xsearch.core.errors import UserError


def best_under_budget(space: Any, scores: dict[str, dict[str, float]], max_flops: int | None) -> dict[str, str]:
    """Maximise the sum of per-layer ``scores[label][option]`` subject to ``space.flops(arch) <= max_flops``.

    Options missing from ``scores`` (e.g. pruned ones) are not considered.
    """
    if max_flops is None:
        return {label: max(opts, key=opts.get) for label, opts in scores.items()}
    frontier: list[tuple[int, float, tuple[str, ...]]] = [(space.fixed_flops, 0.0, ())]
    for choice in space.choices:
        options = scores[choice.label]
        merged = [(f + space.flops_table[choice.label][o], s + options[o], picks + (o,))
                  for f, s, picks in frontier for o in options]
        merged = [m for m in merged if m[0] <= max_flops]
        merged.sort(key=lambda m: (m[0], -m[1]))
        frontier, best = [], float("-inf")
        for m in merged:  # ascending FLOPs: keep only strictly better scores
            if m[1] > best:
                frontier.append(m)
                best = m[1]
        if not frontier:
            raise UserError(f"no architecture with the remaining candidates fits under {max_flops} MACs")
    _, _, picks = max(frontier, key=lambda m: m[1])
    return dict(zip(space.labels, picks))
