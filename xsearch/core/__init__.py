"""Shared machinery below every component: errors, registry, data, training, checkpoints, atomic files, FLOPs.

Nothing here imports a search space, supernet, evaluator, strategy or the application.
"""
