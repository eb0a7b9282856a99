"""Latency tables: every candidate of every layer timed where the network will run, and the prediction they give.

``xsearch latency table space=NAME [runtime=onnxruntime|torch] [batch=1] [threads=1] [out=FILE]`` times, at
its real input shape (the space sized for ``data=``, as a run sizes it):

- the stem and the head, and every candidate of every searchable layer, each alone: exported to ONNX
  with the same exporter as ``xsearch export`` (dynamic convolutions in their exportable form) and run
  by onnxruntime's CPU provider, or called as a PyTorch module under ``torch.inference_mode``;
- one call of the cheapest real graph at the stem's input (a ReLU): the runtime's own cost per call,
  which every module timed alone pays once and a whole network pays once in all;
- ``calibrate`` random networks whole, to fit the correction of the per-layer sum.

Each time is the median of ``repeats`` samples after ``warmup`` calls, a sample being as many calls as
take at least 2 ms (its mean); the quartiles are kept as the spread. The file (JSON) holds the machine,
the runtime and library versions, the settings, every time and the calibration; it is rewritten after
each layer, so a killed build resumes where it stopped (same file, same settings).

The prediction. A network's predicted time is ``scale * raw + per_layer * (layers run) + offset`` with
``raw = stem + head - call + sum over its layers of (candidate - call)`` (a skipped layer costs 0):
each module timed alone paid the per-call cost once, the whole network pays it once. ``scale``,
``per_layer`` and ``offset`` are a least-squares fit (on relative error) of measured against predicted
time over the calibration networks, which absorbs what a sum of separate calls misses (operator fusion
across layers, each layer's output buffer and hand-over inside one graph, caches warm with the previous
layer's output). The prediction stays a sum over layers, so it is a budget like FLOPs: the
space takes it with ``SearchSpace.use_latency`` and every strategy, the knapsack derivation and
the differentiable searches' expected latency use it as they use the FLOPs table.
``xsearch latency check`` times ``networks`` other random networks whole and reports the error.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core.errors import UserError
from .core.io import atomic_write
from .core.training import progress

FORMAT = 1
HEADER_KEYS = ("format", "space", "space_kwargs", "input_shape", "runtime", "device", "batch", "threads",
               "warmup", "repeats")
CALIBRATION_SEED, CHECK_SEED = 10_000, 20_000  # the random networks of the fit and of the check never meet
MIN_SAMPLE_S = 0.002


# --- timing ------------------------------------------------------------------------------
def time_calls(call: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] = lambda: None,
               threads: int | None = None) -> dict[str, float]:
    """``call``'s time per call in ms: median and quartiles of ``repeats`` samples, each the mean over as many
    calls as take at least 2 ms, after ``warmup`` calls. ``threads``: torch's intra-op threads meanwhile
    (restored after; onnxruntime sessions carry their own)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _time_calls(call, warmup, repeats, sync)
    finally:
        torch.set_num_threads(before)


def _time_calls(call: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    for _ in range(max(warmup, 1)):
        call()
    sync()
    t0 = time.perf_counter()
    call()
    sync()
    once = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, math.ceil(MIN_SAMPLE_S / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            call()
        sync()
        samples.append((time.perf_counter() - t0) / inner * 1e3)
    q = statistics.quantiles(samples, n=4)
    return {"median_ms": statistics.median(samples), "p25_ms": q[0], "p75_ms": q[2], "calls_per_sample": inner}


def make_call(module: nn.Module, example: torch.Tensor, runtime: str, threads: int,
              device: torch.device) -> tuple[Callable[[], Any], Callable[[], None]]:
    """(one inference call of ``module`` on ``example`` in ``runtime``, the device synchronisation)."""
    module = copy.deepcopy(module).eval()
    if runtime == "onnxruntime":
        import onnxruntime

        from .export import exportable, to_onnx

        buffer = io.BytesIO()
        to_onnx(exportable(module), example, buffer, free_batch=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        feed = {"images": example.numpy()}
        return (lambda: session.run(None, feed)), (lambda: None)
    module, x = module.to(device), example.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call() -> Any:
        with torch.inference_mode():
            return module(x)

    return call, sync


def layer_inputs(space: Any) -> tuple[torch.Size, list[torch.Size], torch.Size]:
    """Input shapes (batch 1) of the stem, of each searchable layer and of the head, read off a built network."""
    net = space.build({c.label: next((o for o in c.options if o != "skip"), c.options[0]) for c in space.choices})
    shapes: dict[str, torch.Size] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            shapes[name] = args[0].shape
        return hook

    hooks = [m.register_forward_pre_hook(keep(name))
             for name, m in [("stem", net.stem), ("head", net.head), *((str(i), m) for i, m in enumerate(net.layers))]]
    with torch.no_grad():
        net.eval()(torch.zeros(1, *space.input_shape))
    for h in hooks:
        h.remove()
    return shapes["stem"], [shapes[str(i)] for i in range(len(space.choices))], shapes["head"]


# --- the table -----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform()}


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def header(space: Any, settings: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"format": FORMAT, "space": space.name, "space_kwargs": space.space_kwargs,
            "input_shape": list(space.input_shape), "runtime": settings["runtime"], "device": device.type,
            "batch": int(settings["batch"]), "threads": int(settings["threads"]), "warmup": int(settings["warmup"]),
            "repeats": int(settings["repeats"])}


def default_path(runs_root: str | Path, space: Any, settings: dict[str, Any], device: torch.device) -> Path:
    """``<runs_root>/latency/<space>-<runtime>-b<batch>-t<threads>-<hash of the space's settings>.json``."""
    digest = hashlib.sha1(json.dumps(header(space, settings, device), sort_keys=True).encode()).hexdigest()[:8]
    name = f"{space.name}-{settings['runtime']}-{device.type}-b{settings['batch']}-t{settings['threads']}-{digest}.json"
    return Path(runs_root) / "latency" / name


def read_table(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"latency table {path} does not exist; make one with `xsearch latency table space=NAME "
                        f"out={path}` or leave latency.table unset (null) to build it on the fly") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"latency table {path} is not a readable JSON file ({exc}); make it again with "
                        "`xsearch latency table`") from None
    if not isinstance(table, dict) or table.get("format") != FORMAT or "layers" not in table:
        raise UserError(f"{path} is not an xsearch latency table (format {FORMAT}); make one with `xsearch latency table`")
    return table


def check_fits(table: dict[str, Any], space: Any, path: Path, settings: dict[str, Any] | None = None,
               device: torch.device | None = None) -> None:
    """UserError when ``table`` was measured for another space (or, with ``settings``, other settings)."""
    want = header(space, settings, device) if settings is not None else {
        "space": space.name, "space_kwargs": space.space_kwargs, "input_shape": list(space.input_shape)}
    diff = [f"{k}: table {table.get(k)!r}, here {v!r}" for k, v in want.items() if table.get(k) != v]
    if diff:
        raise UserError(f"latency table {path} was measured for other settings ({'; '.join(diff)}); build one "
                        f"for these with `xsearch latency table space={space.name} ...` (another out=FILE)")


def build_table(space: Any, settings: dict[str, Any], out: Path, device: torch.device,
                show_progress: bool = True) -> dict[str, Any]:
    """Time every module of ``space`` (see the module doc) into ``out``, resuming a partial file there."""
    head = header(space, settings, device)
    table: dict[str, Any] = {**head, "machine": machine(), "versions": versions(), "layers": {}}
    if out.exists():
        saved = read_table(out)
        check_fits(saved, space, out, settings, device)
        table = {**saved, "machine": machine(), "versions": versions()}
    batch, threads, runtime = head["batch"], head["threads"], head["runtime"]
    warmup, repeats = head["warmup"], head["repeats"]

    def timed(module: nn.Module, shape: torch.Size) -> dict[str, float]:
        example = torch.randn(batch, *shape[1:], generator=torch.Generator().manual_seed(0))
        call, sync = make_call(module, example, runtime, threads, device)
        return time_calls(call, warmup, repeats, sync, threads=threads)

    def save() -> None:
        atomic_write(out, lambda f: json.dump(table, f, indent=1))

    out.parent.mkdir(parents=True, exist_ok=True)
    stem_in, inputs, head_in = layer_inputs(space)
    todo = sum(len(c.options) for c in space.choices) + 3
    bar = progress(None, todo, f"latency table {space.name} ({runtime})", show_progress)
    for name, build, shape in (("call", lambda: nn.ReLU(), stem_in), ("stem", space.build_stem, stem_in),
                               ("head", space.build_head, head_in)):
        if name not in table:
            table[name] = timed(build(), shape)
            save()
        bar.update(1)
    for i, choice in enumerate(space.choices):
        row = table["layers"].setdefault(choice.label, {})
        for option in choice.options:
            if option not in row:
                module = space.build_candidate(i, option)
                row[option] = ({"median_ms": 0.0, "p25_ms": 0.0, "p75_ms": 0.0, "calls_per_sample": 0}
                               if isinstance(module, nn.Identity) else timed(module, inputs[i]))
            bar.update(1)
        save()
    bar.close()
    if len(table.get("calibration", {}).get("networks", [])) < int(settings["calibrate"]):
        networks = measure_networks(space, table, int(settings["calibrate"]), CALIBRATION_SEED, device, show_progress,
                                    "calibration")
        table["calibration"] = fit(networks, table)
        save()
    return table


def raw_parts(table: dict[str, Any]) -> tuple[float, dict[str, dict[str, float]]]:
    """(fixed, per-layer) terms of the uncalibrated prediction: each module's own time minus the per-call cost."""
    call = table["call"]["median_ms"]
    layers = {label: {o: (t["median_ms"] - call if t["calls_per_sample"] else 0.0) for o, t in row.items()}
              for label, row in table["layers"].items()}
    return table["stem"]["median_ms"] + table["head"]["median_ms"] - call, layers


def raw_time(table: dict[str, Any], arch: dict[str, str]) -> float:
    fixed, layers = raw_parts(table)
    return fixed + sum(layers[k][v] for k, v in arch.items())


def layers_run(table: dict[str, Any], arch: dict[str, str]) -> int:
    """How many of ``arch``'s layers run (are not skipped)."""
    return sum(1 for k, v in arch.items() if table["layers"][k][v]["calls_per_sample"])


def predicted_parts(table: dict[str, Any]) -> tuple[float, dict[str, dict[str, float]]]:
    """(fixed, per-layer) terms of the calibrated prediction ``scale * raw + per_layer * layers run + offset``:
    still a sum over layers (a skipped layer adds nothing)."""
    fixed, layers = raw_parts(table)
    cal = table.get("calibration") or {"scale": 1.0, "per_layer": 0.0, "offset": 0.0}
    a, c, b = cal["scale"], cal["per_layer"], cal["offset"]
    return a * fixed + b, {label: {o: (a * t + c if table["layers"][label][o]["calls_per_sample"] else 0.0)
                                   for o, t in row.items()} for label, row in layers.items()}


def fit(networks: list[dict[str, Any]], table: dict[str, Any] | None = None) -> dict[str, Any]:
    """``measured = scale * raw + per_layer * layers run + offset`` fitted to ``networks`` (rows of
    ``measure_networks``) by least squares on the relative error (each row weighted by 1 / measured), as
    the prediction is judged; ``per_layer`` is what a layer costs inside a whole network beyond its time
    alone (its output buffer, the hand-over between operators).

    A fit is kept only if it is physical: a positive scale and, with ``table``, a positive time for the
    space's fastest network. Otherwise (too few or too alike networks) the simpler fits are tried in
    turn: ``scale * raw + offset``, then ``scale * raw`` alone (the ratio of the means).
    """
    import numpy as np

    y = np.array([n["measured_ms"] for n in networks])
    w = 1.0 / y
    full = np.array([[n["raw_ms"], n["layers_run"], 1.0] for n in networks])
    for used in ((0, 1, 2), (0, 2)):
        coef = np.zeros(3)
        coef[list(used)], *_ = np.linalg.lstsq(full[:, used] * w[:, None], y * w, rcond=None)
        fitted = {"scale": float(coef[0]), "per_layer": float(coef[1]), "offset": float(coef[2])}
        if fitted["scale"] > 0 and (table is None or _fastest({**table, "calibration": fitted}) > 0):
            return {**fitted, "networks": networks}
    scale = float(y.mean() / full[:, 0].mean())
    return {"scale": scale, "per_layer": 0.0, "offset": 0.0, "networks": networks}


def _fastest(table: dict[str, Any]) -> float:
    fixed, layers = predicted_parts(table)
    return fixed + sum(min(row.values()) for row in layers.values())


def measure_networks(space: Any, table: dict[str, Any], count: int, seed: int, device: torch.device,
                     show_progress: bool = True, what: str = "check") -> list[dict[str, Any]]:
    """``count`` random networks (seeds ``seed``, ``seed + 1``...) timed whole: arch, raw sum, measured time."""
    rows = []
    for k in progress(range(count), count, f"{what} networks ({table['runtime']})", show_progress):
        arch = space.sample(seed=seed + k)
        measured = measure_arch(space, table, arch, device)
        rows.append({"arch": arch, "flops": space.flops(arch), "raw_ms": raw_time(table, arch),
                     "layers_run": layers_run(table, arch),
                     "measured_ms": measured["median_ms"], "p25_ms": measured["p25_ms"], "p75_ms": measured["p75_ms"]})
    return rows


def attach(space: Any, table: dict[str, Any], path: str | Path) -> None:
    """Give ``space`` the table's calibrated prediction (``space.latency``), after checking it was made for it."""
    check_fits(table, space, Path(path))
    fixed, layers = predicted_parts(table)
    space.use_latency(fixed, layers, {"table": str(path), "runtime": table["runtime"], "device": table["device"],
                                      "batch": table["batch"], "threads": table["threads"]})


def table_for(space: Any, settings: dict[str, Any], runs_root: str | Path, device: torch.device,
              show_progress: bool = True) -> tuple[dict[str, Any], Path]:
    """``latency.table`` when set (checked against the space), else the default table, built if missing."""
    if settings.get("table"):
        path = Path(settings["table"])
        table = read_table(path)
        check_fits(table, space, path)
        return table, path
    path = default_path(runs_root, space, settings, device)
    done = path.exists() and "calibration" in read_table(path)
    if not done:
        print(f"latency table: timing every candidate of {space.name} on {settings['runtime']} into {path} "
              "(minutes; resumable)", flush=True)
    table = build_table(space, settings, path, device, show_progress) if not done else read_table(path)
    return table, path


def table_device(cfg: dict[str, Any]) -> torch.device:
    """Where ``latency.runtime`` runs: onnxruntime on the CPU, torch on the run's device."""
    from .core.training import resolve_device

    return resolve_device(cfg["device"]) if cfg["latency"]["runtime"] == "torch" else torch.device("cpu")


def use_table(cfg: dict[str, Any], space: Any) -> tuple[dict[str, Any], Path]:
    """Give ``space`` the latency table of ``cfg``'s ``latency.*`` (``latency.table``, or the default one under
    ``<runs_root>/latency/``, built when missing): what ``xsearch run`` and the benchmarks do under
    ``constraints.latency``."""
    table, path = table_for(space, cfg["latency"], cfg["runs_root"], table_device(cfg), cfg["progress"])
    attach(space, table, path)
    return table, path


def measure_arch(space: Any, table: dict[str, Any], arch: dict[str, str], device: torch.device) -> dict[str, float]:
    """``arch`` built and timed whole on the table's runtime and settings (the median and quartiles, ms)."""
    stem_in, _, _ = layer_inputs(space)
    example = torch.randn(table["batch"], *stem_in[1:], generator=torch.Generator().manual_seed(0))
    call, sync = make_call(space.build(arch), example, table["runtime"], table["threads"], device)
    return time_calls(call, table["warmup"], table["repeats"], sync, threads=table["threads"])


def error_rows(space: Any, table: dict[str, Any], networks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each network's measured time, its raw-sum and calibrated predictions and their relative errors."""
    fixed, layers = predicted_parts(table)
    rows = []
    for n in networks:
        predicted = fixed + sum(layers[k][v] for k, v in n["arch"].items())
        rows.append({**n, "predicted_ms": predicted, "error": predicted / n["measured_ms"] - 1.0,
                     "raw_error": n["raw_ms"] / n["measured_ms"] - 1.0})
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean absolute relative error of the calibrated and raw predictions, the worst one, and the time range."""
    return {"networks": len(rows), "mae": statistics.fmean(abs(r["error"]) for r in rows),
            "raw_mae": statistics.fmean(abs(r["raw_error"]) for r in rows),
            "max_error": max(abs(r["error"]) for r in rows),
            "min_ms": min(r["measured_ms"] for r in rows), "max_ms": max(r["measured_ms"] for r in rows)}


# --- the command ---------------------------------------------------------------------------
SHORT_KEYS = ("table", "runtime", "batch", "threads", "warmup", "repeats", "calibrate", "networks")
USAGE = ("usage: xsearch latency table|check space=NAME [space.KEY=VALUE ...] [data=NAME] [runtime=onnxruntime|torch] "
         "[batch=1] [threads=1] [warmup=10] [repeats=25] [calibrate=10] [networks=30] [table=FILE] [out=FILE] "
         "[device=cpu|cuda]")


def command(args: list[str]) -> int:
    """``xsearch latency table ...`` (build or finish a table) and ``xsearch latency check ...`` (time random
    networks whole against the table's prediction); see the module doc."""
    from .config import build_data, build_space, compose, validate

    if not args or args[0] not in ("table", "check"):
        raise UserError(f"say what to do: xsearch latency table ... or xsearch latency check ...; {USAGE}")
    what, rest = args[0], args[1:]
    bad = [a for a in rest if "=" not in a]
    if bad:
        raise UserError(f"xsearch latency {what}: {bad[0]!r} is not KEY=VALUE; {USAGE}")
    overrides = [f"latency.{a}" if a.split("=", 1)[0] in SHORT_KEYS else a for a in rest]
    cfg = validate(compose(overrides))
    settings = cfg["latency"]
    device = table_device(cfg)
    space = build_space(cfg, build_data(cfg))
    if what == "table":
        out = Path(cfg["out"]) if cfg.get("out") else (Path(settings["table"]) if settings.get("table")
                                                       else default_path(cfg["runs_root"], space, settings, device))
        table = build_table(space, settings, out, device, cfg["progress"])
        print_table(space, table, out)
        return 0
    table, path = table_for(space, settings, cfg["runs_root"], device, cfg["progress"])
    networks = measure_networks(space, table, int(settings["networks"]), CHECK_SEED, device, cfg["progress"])
    rows = error_rows(space, table, networks)
    print_check(space, table, path, rows)
    if cfg.get("out"):
        out = Path(cfg["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: json.dump({"table": str(path), "summary": summary(rows), "networks": rows}, f,
                                              indent=1))
        print(f"rows written to {out}")
    return 0


def family_speed(space: Any, table: dict[str, Any]) -> dict[str, float]:
    """Milliseconds per million MACs of each kind of candidate (its option name without the kernel size, e.g.
    ``e6_se``), summed over the layers where it occurs: which block families are fast per FLOP here."""
    ms: dict[str, float] = {}
    macs: dict[str, float] = {}
    for choice in space.choices:
        for option, t in table["layers"][choice.label].items():
            if not t["calls_per_sample"]:
                continue
            family = "_".join(p for p in option.split("_") if not (p.startswith("k") and p[1:].isdigit()))
            ms[family] = ms.get(family, 0.0) + t["median_ms"] - table["call"]["median_ms"]
            macs[family] = macs.get(family, 0.0) + space.flops_table[choice.label][option] / 1e6
    return {f: ms[f] / macs[f] for f in sorted(ms, key=lambda f: ms[f] / macs[f]) if macs[f] > 0}


def print_table(space: Any, table: dict[str, Any], path: Path) -> None:
    cal = table["calibration"]
    print(f"latency table {path}: {space.name} on {table['runtime']} ({table['device']}, batch {table['batch']}, "
          f"{table['threads']} thread(s)), {table['machine']['cpu']}")
    print(f"  per call {table['call']['median_ms'] * 1e3:.1f} us, stem {table['stem']['median_ms']:.3f} ms, "
          f"head {table['head']['median_ms']:.3f} ms")
    print(f"  calibration over {len(cal['networks'])} networks: measured = {cal['scale']:.3f} x sum "
          f"+ {cal['per_layer'] * 1e3:.1f} us x layers + {cal['offset'] * 1e3:.1f} us")
    fixed, layers = predicted_parts(table)
    slowest = fixed + sum(max(row.values()) for row in layers.values())
    print(f"  predicted range {_fastest(table):.3g} to {slowest:.3g} ms")
    print("  ms per million MACs by block family: "
          + ", ".join(f"{f} {v:.3g}" for f, v in family_speed(space, table).items()))


def print_check(space: Any, table: dict[str, Any], path: Path, rows: list[dict[str, Any]]) -> None:
    print(f"{'measured ms':>12} {'predicted':>10} {'error':>7} {'raw sum':>8} {'raw err':>8}  architecture")
    for r in rows:
        print(f"{r['measured_ms']:12.3f} {r['predicted_ms']:10.3f} {100 * r['error']:+6.1f}% {r['raw_ms']:8.3f} "
              f"{100 * r['raw_error']:+7.1f}%  {' '.join(r['arch'].values())}")
    s = summary(rows)
    print(f"{space.name} on {table['runtime']} ({path}): {s['networks']} random networks of {s['min_ms']:.3g} to "
          f"{s['max_ms']:.3g} ms; mean absolute error {100 * s['mae']:.1f}% (sum of layer times alone "
          f"{100 * s['raw_mae']:.1f}%), worst {100 * s['max_error']:.1f}%")
