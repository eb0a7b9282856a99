"""Fused kernels for supernet layers: Triton on the GPU, each beside its PyTorch reference.

Each entry point takes ``backend="auto" | "triton" | "torch"``: ``auto`` runs Triton for CUDA
tensors when Triton imports and the reference otherwise; ``triton`` forces the Triton path (on CPU
tensors through Triton's interpreter, ``TRITON_INTERPRET=1``, as the tests do). This package imports
Triton, and runs ``triton.jit``, only at a kernel's first launch, so the interpreter switch is read
then (even where PyTorch itself imported Triton earlier).

* ``mixed_depthwise_conv``: weighted sum of 3/5/7 depthwise convs on one input as one pass (merged
  kernel).
* ``mixconv_depthwise``: depthwise conv of channel blocks with kernels of different sizes as one pass
  (the depthwise step of a fused mixed layer; Triton skips each channel's zero taps).
* ``dynamic_conv``: dynamic convolution with per-sample aggregated kernels (Triton path: depthwise
  and 1x1 layouts; others use the reference).
* ``shift_max``: Dynamic Shift-Max.

Where they run: ``supernets.fused.FusedExecution`` (a supernet's default execution policy) calls
``mixconv_depthwise`` for the fused depthwise pass, and swaps the supernet's ``DynamicConv2d`` and
``DynamicShiftMax`` modules for ``FusedDynamicConv2d`` / ``FusedDynamicShiftMax``, whose forward
calls ``dynamic_conv`` / ``shift_max``; with the policy's ``backend="auto"`` each runs Triton on
CUDA and the PyTorch reference (the blocks' own arithmetic) on the CPU.
"""

from ._triton import triton_available
from .dynamic_conv import dynamic_conv, dynamic_conv_reference
from .mixed_depthwise import (
    mixconv_depthwise,
    mixconv_depthwise_reference,
    mixed_depthwise_conv,
    mixed_depthwise_reference,
)
from .shift_max import shift_max, shift_max_reference

__all__ = ["dynamic_conv", "dynamic_conv_reference", "mixconv_depthwise", "mixconv_depthwise_reference",
           "mixed_depthwise_conv", "mixed_depthwise_reference", "shift_max", "shift_max_reference",
           "triton_available"]
