"""Size arithmetic every block family shares: channel rounding and convolution output sizes.

Below every block module, so that the families import it and not one another.
"""

from __future__ import annotations


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% below it."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def conv_out_size(size: int, kernel_size: int, stride: int) -> int:
    """Spatial output size of a convolution with 'same'-style padding ``kernel_size // 2``."""
    pad = kernel_size // 2
    return (size + 2 * pad - kernel_size) // stride + 1
