"""Fused execution kernels for mixed layers (Triton on GPU, each beside a PyTorch reference).

Empty for now: mixed layers run through ``supernets._execution.naive_mixed_forward``. Fused
implementations plug in by replacing a supernet's executor (``Supernet.set_executor``).
"""
