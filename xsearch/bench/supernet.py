"""``xsearch bench supernet``: the cost of one supernet training step: per-candidate (plain, fused) and shared weights.

CPU (always): the configured space's supernet (default ``mbv3``, every candidate alive, weighted
path mode, channels-last batches of ``bench.supernet_batch`` images of the space's input size) is
trained one SGD step at a time, plain (``fused=False``) and fused (``fused=True``) on the same
weights, and plain again in NCHW layout (weights and batches contiguous), the steps interleaved so
that all see the same machine state; the median step of each is reported, with the largest
difference of the plain and fused outputs and gradients on one batch. Beside them, on every
device: the shared-weight supernet (``sharing="shared"``, weighted) and the single largest
candidate network alone, the shared step's target being at most 1.5x the largest network's.

CUDA (when a GPU is visible): the same two steps on the GPU, a training step of the single largest
candidate network alone (the fused step's target is within 1.5x of it), and each Triton kernel
(forward and backward) against the PyTorch code it replaces and against cuDNN where cuDNN has the
operation, on shapes from the supernet's layers.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from xsearch.config import build_space
from xsearch.core.errors import UserError
from xsearch.supernets import Supernet

from ._harness import configure, machine, markdown_table, output_path, write_rows


def _sgd_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(nets: dict[str, torch.nn.Module], inputs: dict[str, torch.Tensor], y: torch.Tensor, steps: int,
               warmup: int) -> dict[str, float]:
    """Median seconds of one SGD training step of each net on its input, steps interleaved across the nets."""
    opts = {k: torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9) for k, n in nets.items()}
    times: dict[str, list[float]] = {k: [] for k in nets}
    for i in range(warmup + steps):
        for k, net in nets.items():
            _sync(y.device)
            t0 = time.perf_counter()
            _sgd_step(net, opts[k], inputs[k], y)
            _sync(y.device)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _output_and_grads(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list]:
    net.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout draws in every net
    out = net(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), [p.grad for p in net.parameters()]


def _grad_rel_diff(grads: list, reference: list) -> float:
    """Largest gradient difference, each relative to the largest entry of that reference gradient (at least 1e-2)."""
    rel = 0.0
    for g, r in zip(grads, reference):
        if g is not None and r is not None:
            rel = max(rel, float((g.double() - r.double()).abs().max() / r.abs().max().clamp_min(1e-2)))
    return rel


def compare_outputs(naive: torch.nn.Module, fused: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                    float64: bool = False) -> dict[str, float]:
    """Largest output difference, and largest gradient difference relative to that gradient's scale.

    With ``float64``, both are also compared with the plain net run in float64 on the same batch:
    the float32 rounding error each execution has on its own, the scale against which their
    difference from each other is read.
    """
    out_n, grads_n = _output_and_grads(naive, x, y)
    out_f, grads_f = _output_and_grads(fused, x, y)
    result = {"max_abs_diff": float((out_f - out_n).abs().max()), "output_scale": float(out_n.abs().max()),
              "max_grad_rel_diff": _grad_rel_diff(grads_f, grads_n)}
    if float64:
        reference = copy.deepcopy(naive).double()
        _, grads_64 = _output_and_grads(reference, x.double(), y)
        result.update(naive_vs_float64_grad_rel_diff=_grad_rel_diff(grads_n, grads_64),
                      fused_vs_float64_grad_rel_diff=_grad_rel_diff(grads_f, grads_64))
    return result


def _nchw_tensor(t: torch.Tensor) -> torch.Tensor:
    # explicit NCHW strides: ``contiguous()`` keeps the NHWC strides of a one-channel tensor
    return torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)


def largest_arch(space: Any) -> dict[str, str]:
    """Per layer the option with the most MACs: the single largest candidate network."""
    return {c.label: max(c.options, key=lambda o: space.flops_table[c.label][o]) for c in space.choices}


def _cuda_ms(fn: Callable[[], torch.Tensor], reps: int = 20) -> float:
    """Median milliseconds of forward + backward (CUDA events), after warm-up."""
    def run() -> None:
        out = fn()
        out.backward(torch.ones_like(out))

    for _ in range(3):
        run()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _mixconv_reference(x: torch.Tensor, ks: list[torch.Tensor], stride: int) -> torch.Tensor:
    """What ``mixconv_depthwise`` replaces: one depthwise conv per channel group, concatenated."""
    c = ks[0].shape[0]
    return torch.cat([F.conv2d(p, k, None, stride, k.shape[-1] // 2, 1, c) for p, k in zip(x.split(c, 1), ks)], 1)


def _mixed_reference(x: torch.Tensor, ks: list[torch.Tensor], w: torch.Tensor, stride: int) -> torch.Tensor:
    """What ``mixed_depthwise_conv`` replaces: the weighted sum of one depthwise conv per kernel size."""
    c = x.shape[1]
    return sum(w[i] * F.conv2d(x, k, None, stride, k.shape[-1] // 2, 1, c) for i, k in enumerate(ks))


def kernel_rows(batch: int, device: torch.device) -> list[dict[str, Any]]:
    """Each Triton kernel against the PyTorch code it replaces (and cuDNN where it applies), on CUDA."""
    from xsearch.supernets.kernels import (
        dynamic_conv,
        dynamic_conv_reference,
        mixconv_depthwise,
        mixed_depthwise_conv,
        shift_max,
        shift_max_reference,
    )

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device).requires_grad_()

    rows = []
    for c, size, stride in [(144, 28, 2), (216, 14, 1), (360, 7, 1), (1008, 4, 1)]:
        # mbv3 fused depthwise pass: one block per kernel size 3/5/7, c channels each
        x = leaf(batch, 3 * c, size, size)
        ks = [leaf(c, 1, k, k) for k in (3, 5, 7)]
        rows.append({"kernel": "mixconv_depthwise", "shape": f"{batch}x{3 * c}x{size}x{size} k3/5/7 s{stride}",
                     "triton_ms": _cuda_ms(partial(mixconv_depthwise, x, ks, stride, backend="triton")),
                     "reference_ms": _cuda_ms(partial(_mixconv_reference, x, ks, stride)),
                     "cudnn_ms": _cuda_ms(partial(mixconv_depthwise, x, ks, stride, backend="torch"))})
        x = leaf(batch, c, size, size)
        w = torch.softmax(torch.randn(3, device=device), 0).requires_grad_()
        rows.append({"kernel": "mixed_depthwise_conv", "shape": f"{batch}x{c}x{size}x{size} k3+5+7 s{stride}",
                     "triton_ms": _cuda_ms(partial(mixed_depthwise_conv, x, ks, w, stride, backend="triton")),
                     "reference_ms": _cuda_ms(partial(_mixed_reference, x, ks, w, stride)),
                     "cudnn_ms": _cuda_ms(partial(mixed_depthwise_conv, x, ks, w, stride, backend="torch"))})
    for cin, cout, k, groups, size in [(72, 72, 3, 72, 14), (72, 72, 7, 72, 14), (24, 144, 1, 1, 14), (240, 40, 1, 1, 7)]:
        x = leaf(batch, cin, size, size)
        pi = torch.softmax(torch.randn(batch, 4, device=device), 1).requires_grad_()
        bank = leaf(4, cout, cin // groups, k, k)
        rows.append({"kernel": "dynamic_conv", "shape": f"{batch}x{cin}x{size}x{size} -> {cout} k{k} g{groups}",
                     "triton_ms": _cuda_ms(partial(dynamic_conv, x, pi, bank, None, 1, groups, backend="triton")),
                     "reference_ms": _cuda_ms(partial(dynamic_conv_reference, x, pi, bank, None, 1, groups)),
                     "cudnn_ms": None})
    for c, size in [(96, 14), (240, 7)]:
        x = leaf(batch, c, size, size)
        a = leaf(batch, c, 2, 2)
        rows.append({"kernel": "shift_max", "shape": f"{batch}x{c}x{size}x{size} J=K=2",
                     "triton_ms": _cuda_ms(partial(shift_max, x, a, c // 4, backend="triton")),
                     "reference_ms": _cuda_ms(partial(shift_max_reference, x, a, c // 4)), "cudnn_ms": None})
    for row in rows:
        row["speedup_vs_reference"] = row["reference_ms"] / row["triton_ms"]
    return rows


def supernet_rows(space: Any, batch: int, steps: int, warmup: int, device: torch.device) -> dict[str, Any]:
    """Plain and fused step times of ``space``'s supernet on ``device`` (and, on CUDA, the largest network's)."""
    from xsearch.core.data import channels_last_tensor
    from xsearch.core.training import channels_last, convert_4d

    c, h = space.in_chans, space.image_size
    torch.manual_seed(0)
    naive = channels_last(Supernet(space, mode="weighted", fused=False).to(device)).train()
    fused = copy.deepcopy(naive)
    fused.fused = True
    x = channels_last_tensor(torch.randn(batch, c, h, h, device=device))
    y = torch.randint(0, space.num_classes, (batch,), device=device)
    result: dict[str, Any] = compare_outputs(naive, fused, x, y, float64=device.type == "cpu")
    nets: dict[str, torch.nn.Module] = {"naive": naive, "fused": fused}
    inputs = {"naive": x, "fused": x}
    if device.type == "cpu":  # the plain step in NCHW: what channels-last batches and weights save
        nets["naive_nchw"] = convert_4d(copy.deepcopy(naive), _nchw_tensor)
        inputs["naive_nchw"] = _nchw_tensor(x)
    # the shared-weight supernet (candidates as slices of one widest block per layer) and its target,
    # the single largest candidate network alone
    torch.manual_seed(0)
    nets["shared"] = channels_last(Supernet(space, mode="weighted", sharing="shared").to(device)).train()
    nets["largest"] = channels_last(space.build(largest_arch(space)).to(device)).train()
    inputs["shared"] = inputs["largest"] = x
    seconds = time_steps(nets, inputs, y, steps, warmup)
    result.update(naive_step_seconds=seconds["naive"], fused_step_seconds=seconds["fused"],
                  fused_over_naive=seconds["fused"] / seconds["naive"])
    if "naive_nchw" in seconds:
        result.update(naive_nchw_step_seconds=seconds["naive_nchw"],
                      channels_last_speedup=seconds["naive_nchw"] / seconds["naive"])
    result.update(largest_network_step_seconds=seconds["largest"], fused_over_largest=seconds["fused"] / seconds["largest"],
                  shared_step_seconds=seconds["shared"], shared_over_largest=seconds["shared"] / seconds["largest"],
                  shared_layers=sum(type(layer).__name__ == "SharedMixedLayer" for layer in nets["shared"].layers))
    return result


def bench_supernet(overrides: list[str]) -> dict[str, Any]:
    """Time plain and fused supernet steps (see the module docstring); table printed, JSON to ``out=FILE.json``."""
    cfg = configure(overrides)
    bench = cfg["bench"]
    batch, steps, warmup = int(bench["supernet_batch"]), int(bench["supernet_steps"]), int(bench["supernet_warmup"])
    if batch < 1 or steps < 1 or warmup < 0:
        raise UserError(f"bench.supernet_batch and bench.supernet_steps must be at least 1 and bench.supernet_warmup "
                        f"at least 0; got {batch}, {steps}, {warmup}")
    space = build_space(cfg, None)
    shapes = {"space": space.name, "input": [batch, space.in_chans, space.image_size, space.image_size],
              "layers": len(space.choices), "candidates_per_layer": [len(c.options) for c in space.choices],
              "path_mode": "weighted", "memory_format": "channels_last"}
    print(f"[bench] supernet {space.name}: batch {batch}, {steps} timed steps after {warmup}, on the CPU ...", flush=True)
    cpu = supernet_rows(space, batch, steps, warmup, torch.device("cpu"))
    payload: dict[str, Any] = {"machine": machine(), "device": "cpu", "cpu_threads": torch.get_num_threads(),
                               "shapes": shapes, **cpu, "gpu": None}
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        print(f"[bench] supernet {space.name} on {torch.cuda.get_device_name(0)} ...", flush=True)
        gpu = supernet_rows(space, batch, steps, warmup, dev)
        gpu.update(name=torch.cuda.get_device_name(0), kernels=kernel_rows(batch, dev))
        payload["gpu"] = gpu
    else:
        payload["gpu_note"] = "no CUDA device visible: GPU step times and Triton kernel timings not measured"
    print(format_supernet(payload))
    out = output_path(cfg)
    if out is not None:
        write_rows(out, payload)
        print(f"[bench] wrote {cfg['out']}")
    return payload


def format_supernet(p: dict[str, Any]) -> str:
    """The README tables of a ``bench supernet`` payload: step times per device, then (CUDA) the kernels."""
    def shared(r: dict[str, Any], digits: int) -> list[str]:  # rows written before the shared supernet lack these
        if "shared_step_seconds" not in r:
            return ["-", "-" if "largest_network_step_seconds" not in r else
                    f"{r['largest_network_step_seconds']:.{digits}f}", "-"]
        return [f"{r['shared_step_seconds']:.{digits}f}", f"{r['largest_network_step_seconds']:.{digits}f}",
                f"{r['shared_over_largest']:.2f}"]

    steps = [[f"CPU, {p['cpu_threads']} threads", f"{p['naive_nchw_step_seconds']:.3f}", f"{p['naive_step_seconds']:.3f}",
              f"{p['fused_step_seconds']:.3f}", f"{p['fused_over_naive']:.2f}", *shared(p, 3), f"{p['max_abs_diff']:.2g}"]]
    g = p.get("gpu")
    if g:
        steps.append([g["name"], "-", f"{g['naive_step_seconds']:.4f}", f"{g['fused_step_seconds']:.4f}",
                      f"{g['fused_over_naive']:.2f}", *shared(g, 4), f"{g['max_abs_diff']:.2g}"])
    lines = [(f"machine: {p['machine']}; {p['shapes']['space']} supernet, input {p['shapes']['input']}, "
              f"candidates per layer {p['shapes']['candidates_per_layer']}"), "",
             markdown_table(["device", "naive step, NCHW (s)", "naive step (s)", "fused step (s)", "fused / naive",
                             "shared step (s)", "largest net alone (s)", "shared / largest", "max abs diff"],
                            "lllllllll", steps)]
    if g:
        kernels = [[r["kernel"], r["shape"], f"{r['triton_ms']:.3f}", f"{r['reference_ms']:.3f}",
                    "-" if r["cudnn_ms"] is None else f"{r['cudnn_ms']:.3f}", f"{r['speedup_vs_reference']:.2f}x"]
                   for r in g["kernels"]]
        lines += ["", markdown_table(["kernel", "shape", "Triton (ms)", "PyTorch it replaces (ms)", "cuDNN (ms)",
                                      "speed-up"], "llllll", kernels)]
    else:
        lines.append(f"\nGPU: {p.get('gpu_note')}")
    if "naive_vs_float64_grad_rel_diff" in p:
        lines += ["", (f"gradients, largest difference relative to each gradient's scale (float32, CPU): fused vs "
                       f"plain {p['max_grad_rel_diff']:.2g}; against the plain net in float64: plain "
                       f"{p['naive_vs_float64_grad_rel_diff']:.2g}, fused {p['fused_vs_float64_grad_rel_diff']:.2g}")]
    return "\n".join(lines)
