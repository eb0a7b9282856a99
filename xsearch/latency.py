"""Latency tables: every candidate of every layer timed where the network will run, and the prediction they give.

``xsearch latency table space=NAME [runtime=onnxruntime|torch] [batch=1] [threads=1] [out=FILE]`` times, at
its real input shape (the space sized for ``data=``, as a run sizes it):

- the stem and the head, and every candidate of every searchable layer, each alone: exported to ONNX
  with the same exporter as ``xsearch export`` (dynamic convolutions in their exportable form) and run
  by onnxruntime's CPU provider, or called as a PyTorch module under ``torch.inference_mode``;
- one call of the cheapest real graph at the stem's input (a ReLU): the runtime's own cost per call,
  which every module timed alone pays once and a whole network pays once in all;
- ``calibrate`` random networks whole, to fit the correction of the per-layer sum, and ``networks``
  other random networks whole, to check the prediction.

Every item is timed in the same rounds: a round times each item once (a sample: the mean over as
many calls as take at least 2 ms), in a shuffled order, and the table keeps each item's median over
``repeats`` rounds and its quartiles as the spread. On a shared or virtual machine the speed shifts by
tens of percent for seconds at a time; items timed one after another would each see another state,
and their sum would not add up to a whole network timed later (seen here: 10-23 % errors with items
timed in turn, 2-4 % with rounds). The file (JSON) holds the machine, the runtime and library
versions, the settings, every sample and the summaries; it is rewritten after each round, so a killed
build resumes at the round where it stopped (same file, same settings).

The prediction. A network's predicted time is ``scale * raw + per_layer * (layers run) + offset`` with
``raw = stem + head - call + sum over its layers of (candidate - call)`` (a skipped layer costs 0):
each module timed alone paid the per-call cost once, the whole network pays it once. ``scale``,
``per_layer`` and ``offset`` are a least-squares fit (on relative error) of measured against predicted
time over the ``calibrate`` networks, which absorbs what a sum of separate calls misses (operator
fusion across layers, each layer's output buffer and hand-over inside one graph). ``networks`` other
random networks, timed in the same rounds and never used in the fit, are the table's own check
(``check`` in the file, printed by ``xsearch latency table``). The prediction stays a sum over layers,
so it is a budget like FLOPs: the space takes it with ``SearchSpace.use_latency`` and every strategy,
the knapsack derivation and the differentiable searches' expected latency use it as they use the
FLOPs table. ``xsearch latency check`` times random networks whole again, later: the error then also
holds the machine's drift since the table was made.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
def stats(samples: list[float], inner: int) -> dict[str, float]:
    """Median and quartiles (ms) of one item's samples; ``calls_per_sample`` how many calls each sample averaged."""
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_ms": statistics.median(samples), "p25_ms": q[0], "p75_ms": q[2], "calls_per_sample": inner}


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` (None: unchanged) for the block, restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Pool:
    """Items timed together: every round times each item once, in a shuffled (seeded) order, so that every item
    sees the same mix of the machine's states (on a shared or virtual machine the speed shifts by tens of
    percent for seconds at a time; items timed one after the other would each see a different state).

    A sample is the mean over as many calls as take at least 2 ms (``inner``, fixed per item after
    ``warmup`` calls). ``samples`` may start with earlier rounds' samples (a resumed build).
    """

    def __init__(self, calls: dict[str, tuple[Callable[[], Any], Callable[[], None]]], warmup: int,
                 threads: int | None = None, samples: dict[str, list[float]] | None = None) -> None:
        self.calls, self.threads = calls, threads
        self.samples = {k: list((samples or {}).get(k, [])) for k in calls}
        self.inner: dict[str, int] = {}
        with torch_threads(self.threads):
            for key, (call, sync) in calls.items():
                for _ in range(max(warmup, 1)):
                    call()
                sync()
                t0 = time.perf_counter()
                call()
                sync()
                self.inner[key] = max(1, math.ceil(MIN_SAMPLE_S / max(time.perf_counter() - t0, 1e-6)))

    def round(self, seed: int) -> None:
        order = sorted(self.calls)
        random.Random(seed).shuffle(order)
        with torch_threads(self.threads):
            for key in order:
                call, sync = self.calls[key]
                n = self.inner[key]
                t0 = time.perf_counter()
                for _ in range(n):
                    call()
                sync()
                self.samples[key].append((time.perf_counter() - t0) / n * 1e3)

    def stats(self, key: str) -> dict[str, float]:
        return stats(self.samples[key], self.inner[key])


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
    if getattr(space, "task", "classification") != "classification":
        raise UserError(f"latency tables time the chain of a classification space (mbv3, micronet, focalnet, "
                        f"nasbench_macro); space {space.name!r} builds {space.task} heads over feature maps, which "
                        "a latency table does not cover yet; use constraints.flops for it")
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
    if not isinstance(table, dict) or table.get("format") != FORMAT or "samples" not in table:
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
    """Time every module of ``space`` and the calibration and check networks (see the module doc) into ``out``,
    resuming the rounds a killed build saved there."""
    head = header(space, settings, device)
    table: dict[str, Any] = {**head, "calibrate": int(settings["calibrate"]), "networks": int(settings["networks"]),
                             "rounds_done": 0, "samples": {}}
    if out.exists():
        saved = read_table(out)
        check_fits(saved, space, out, settings, device)
        if (saved.get("calibrate"), saved.get("networks")) == (table["calibrate"], table["networks"]):
            table = saved
    table.update(machine=machine(), versions=versions())
    out.parent.mkdir(parents=True, exist_ok=True)
    calibration = [space.sample(seed=CALIBRATION_SEED + k) for k in range(table["calibrate"])]
    check = [space.sample(seed=CHECK_SEED + k) for k in range(table["networks"])]
    rounds = head["repeats"]
    bar = progress(None, rounds, f"latency table {space.name} ({head['runtime']})", show_progress)
    bar.update(table["rounds_done"])
    if table["rounds_done"] < rounds:
        pool = Pool(table_calls(space, head, device, calibration + check), head["warmup"], head["threads"],
                    table["samples"])
        while table["rounds_done"] < rounds:
            pool.round(table["rounds_done"])
            table["samples"], table["inner"] = pool.samples, pool.inner
            table["rounds_done"] += 1
            atomic_write(out, lambda f: json.dump(table, f))
            bar.update(1)
    bar.close()
    summarise(space, table, calibration, check)
    atomic_write(out, lambda f: json.dump(table, f))
    return table


def table_calls(space: Any, head: dict[str, Any], device: torch.device, archs: list[dict[str, str]]
                ) -> dict[str, tuple[Callable[[], Any], Callable[[], None]]]:
    """What a table times, by key: ``call`` (the per-call cost), ``stem``, ``head``, ``LABEL/OPTION`` for every
    candidate that is not a skip, and ``net/K`` for the whole networks ``archs``."""
    stem_in, inputs, head_in = layer_inputs(space)

    def call(module: nn.Module, shape: torch.Size) -> tuple[Callable[[], Any], Callable[[], None]]:
        example = torch.randn(head["batch"], *shape[1:], generator=torch.Generator().manual_seed(0))
        return make_call(module, example, head["runtime"], head["threads"], device)

    calls = {"call": call(nn.ReLU(), stem_in), "stem": call(space.build_stem(), stem_in),
             "head": call(space.build_head(), head_in)}
    for i, choice in enumerate(space.choices):
        for option in choice.options:
            module = space.build_candidate(i, option)
            if not isinstance(module, nn.Identity):
                calls[f"{choice.label}/{option}"] = call(module, inputs[i])
    for k, arch in enumerate(archs):
        calls[f"net/{k}"] = call(space.build(arch), stem_in)
    return calls


SKIPPED = {"median_ms": 0.0, "p25_ms": 0.0, "p75_ms": 0.0, "calls_per_sample": 0}


def summarise(space: Any, table: dict[str, Any], calibration: list[dict[str, str]],
              check: list[dict[str, str]]) -> None:
    """Fill ``table``'s per-module times, the calibration (fitted on ``calibration``) and the check rows
    (``check``: networks the fit never saw, timed in the same rounds) from its samples."""
    samples, inner = table["samples"], table["inner"]
    for key in ("call", "stem", "head"):
        table[key] = stats(samples[key], inner[key])
    table["layers"] = {c.label: {o: (stats(samples[f"{c.label}/{o}"], inner[f"{c.label}/{o}"])
                                     if f"{c.label}/{o}" in samples else dict(SKIPPED)) for o in c.options}
                       for c in space.choices}

    def rows(archs: list[dict[str, str]], first: int) -> list[dict[str, Any]]:
        out = []
        for k, arch in enumerate(archs):
            t = stats(samples[f"net/{first + k}"], inner[f"net/{first + k}"])
            out.append({"arch": arch, "flops": space.flops(arch), "raw_ms": raw_time(table, arch),
                        "layers_run": layers_run(table, arch), "measured_ms": t["median_ms"],
                        "p25_ms": t["p25_ms"], "p75_ms": t["p75_ms"]})
        return out

    table["calibration"] = fit(rows(calibration, 0), table)
    table["check"] = error_rows(space, table, rows(check, len(calibration)))


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
    """``count`` random networks (seeds ``seed``, ``seed + 1``...) timed whole now, in one ``Pool`` on the table's
    runtime and settings: arch, raw sum, measured time."""
    archs = [space.sample(seed=seed + k) for k in range(count)]
    times = measure_archs(space, table, archs, device, show_progress, what)
    return [{"arch": arch, "flops": space.flops(arch), "raw_ms": raw_time(table, arch),
             "layers_run": layers_run(table, arch), "measured_ms": t["median_ms"], "p25_ms": t["p25_ms"],
             "p75_ms": t["p75_ms"]} for arch, t in zip(archs, times)]


def measure_archs(space: Any, table: dict[str, Any], archs: list[dict[str, str]], device: torch.device,
                  show_progress: bool = False, what: str = "networks") -> list[dict[str, float]]:
    """Each of ``archs`` built and timed whole, together in one ``Pool`` (same rounds, same machine states)."""
    stem_in, _, _ = layer_inputs(space)
    example = torch.randn(table["batch"], *stem_in[1:], generator=torch.Generator().manual_seed(0))
    calls = {f"net/{k}": make_call(space.build(a), example, table["runtime"], table["threads"], device)
             for k, a in enumerate(archs)}
    pool = Pool(calls, table["warmup"], table["threads"])
    for r in progress(range(table["repeats"]), table["repeats"], f"{what} ({table['runtime']})", show_progress):
        pool.round(r)
    return [pool.stats(f"net/{k}") for k in range(len(archs))]


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
    done = path.exists() and "check" in read_table(path)
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
    s = summary(table["check"])
    print(f"  check, {s['networks']} other random networks timed in the same rounds: mean absolute error "
          f"{100 * s['mae']:.1f}% (plain sum {100 * s['raw_mae']:.1f}%), worst {100 * s['max_error']:.1f}%")


def print_check(space: Any, table: dict[str, Any], path: Path, rows: list[dict[str, Any]]) -> None:
    print(f"{'measured ms':>12} {'predicted':>10} {'error':>7} {'raw sum':>8} {'raw err':>8}  architecture")
    for r in rows:
        print(f"{r['measured_ms']:12.3f} {r['predicted_ms']:10.3f} {100 * r['error']:+6.1f}% {r['raw_ms']:8.3f} "
              f"{100 * r['raw_error']:+7.1f}%  {' '.join(r['arch'].values())}")
    s = summary(rows)
    print(f"{space.name} on {table['runtime']} ({path}): {s['networks']} random networks of {s['min_ms']:.3g} to "
          f"{s['max_ms']:.3g} ms; mean absolute error {100 * s['mae']:.1f}% (sum of layer times alone "
          f"{100 * s['raw_mae']:.1f}%), worst {100 * s['max_error']:.1f}%")
    own = summary(table["check"])
    print(f"(timed now; the table's own check, {own['networks']} networks timed in the table's rounds: "
          f"{100 * own['mae']:.1f}%; a larger error now is the machine's drift since then)")
