"""``xsearch bench data``: decoding throughput of folder data (``data=imagefolder``), four ways.

Writes a Fashion-MNIST ImageFolder of PNGs (``images`` training images, a fifth as many for
validation) to a temporary folder, then times full training passes of ``ImageData.batches``
(shuffled, augmented, as the retraining loop reads them) for: decoding in the training process
(``data.workers=0``, the old way), DataLoader worker processes (1 and 2), and the folder decoded
once into memory (``data.cache_mb``; its one-time decode is reported apart). Every way must give
the same batches: the benchmark compares a checksum of them and stops if one differs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from xsearch.core.errors import UserError
from xsearch.datasets import load_dataset, write_image_folder

from ._harness import machine, write_rows

OPTIONS = {"images": int, "image_size": int, "batch_size": int, "passes": int, "seed": int, "fashion_root": str,
           "folder": str, "out": str}
USAGE = ("usage: xsearch bench data [images=4000] [image_size=28] [batch_size=128] [passes=2] [seed=0] "
         "[fashion_root=DIR] [folder=DIR (keep the PNGs there)] [out=FILE.json]")
WAYS = (("in-process (old)", 0, False), ("1 worker", 1, False), ("2 workers", 2, False), ("cached", 2, True))


def _options(overrides: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {"images": 4000, "image_size": 28, "batch_size": 128, "passes": 2, "seed": 0}
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if not sep or key not in OPTIONS:
            raise UserError(f"{arg!r} is not an option of xsearch bench data; {USAGE}")
        try:
            options[key] = OPTIONS[key](value)
        except ValueError:
            raise UserError(f"{key} must be an integer; got {value!r}") from None
    for key in ("images", "image_size", "batch_size", "passes"):
        if options[key] < 1:
            raise UserError(f"{key} must be at least 1, got {options[key]}")
    return options


def write_png_folder(root: Path, images: int, seed: int, fashion_root: str | None = None) -> dict[str, int]:
    """Fashion-MNIST as ``root/{train,val}/<class>/NNNNN.png`` (grayscale): ``images`` training, images // 5 val."""
    data = load_dataset("fashion_mnist", root=fashion_root)
    return write_image_folder(data, root, images, max(10, images // 5), seed)


def _time_passes(data: Any, options: dict[str, Any]) -> tuple[list[float], float, float]:
    """Wall seconds of each training pass over ``data``, the training process's CPU seconds in all, and a
    checksum of every batch of the last pass."""
    seconds, checksum, cpu = [], 0.0, time.process_time()
    for p in range(options["passes"]):
        g = torch.Generator().manual_seed(options["seed"] + p)
        checksum = 0.0
        t0 = time.perf_counter()
        for x, y in data.batches("train", batch_size=options["batch_size"], shuffle=True, augment=True, generator=g):
            checksum += float(x.double().sum()) + float(y.sum())
        seconds.append(time.perf_counter() - t0)
    return seconds, time.process_time() - cpu, checksum


def bench_data(overrides: list[str]) -> list[dict[str, Any]]:
    """Images per second of folder data (Fashion-MNIST PNGs): in-process decoding, 1 and 2 worker processes, cached."""
    options = _options(overrides)
    out = Path(options["out"]) if options.get("out") else None
    keep = options.get("folder")
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="xsearch-bench-data-"))
    if keep and root.exists() and any(root.iterdir()):
        raise UserError(f"folder={root} is not empty; give a new or empty folder for the PNGs")
    try:
        t0 = time.perf_counter()
        counts = write_png_folder(root, options["images"], options["seed"], options.get("fashion_root"))
        print(f"[bench] wrote {counts['train']} train and {counts['val']} val PNGs to {root} in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        rows, reference = [], None
        for label, workers, cached in WAYS:
            load = os.getloadavg()[0]  # other work on the machine: the worker rows need free cores
            t0 = time.perf_counter()
            data = load_dataset("imagefolder", root=str(root), image_size=options["image_size"], workers=workers,
                                cache_mb=1e6 if cached else 0)
            setup = time.perf_counter() - t0
            if ("train" in data.info["cached"]) != cached:
                raise RuntimeError(f"{label}: the training split was {'not ' if cached else ''}cached")
            seconds, cpu, checksum = _time_passes(data, options)
            if reference is None:
                reference = checksum
            elif checksum != reference:
                raise RuntimeError(f"{label}: the batches differ from in-process decoding ({checksum} != {reference})")
            n = counts["train"] * options["passes"]
            row = {"way": label, "workers": workers, "cached": cached, "train_images": counts["train"],
                   "image_size": options["image_size"], "batch_size": options["batch_size"],
                   "passes": options["passes"], "setup_seconds": round(setup, 3),
                   "pass_seconds": [round(s, 3) for s in seconds], "images_per_second": round(n / sum(seconds), 1),
                   "training_process_cpu_ms_per_image": round(1000 * cpu / n, 3),
                   "same_batches": True, "machine": machine(), "cpus": len(os.sched_getaffinity(0)),
                   "load_average_1min": round(load, 2),
                   "torch": torch.__version__}
            rows.append(row)
            write_rows(out, rows)
            print(f"[bench] {label}: {row['images_per_second']:.0f} images/s, {row['training_process_cpu_ms_per_image']:.2f} "
                  f"ms CPU per image in the training process (setup {setup:.2f}s)", flush=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    print(format_data_table(rows))
    return rows


def format_data_table(rows: list[dict[str, Any]]) -> str:
    """The README's table: one line per way of decoding."""
    base = rows[0]["images_per_second"]
    lines = ["| decoding | workers | images/s | vs in-process | training process CPU ms/image | setup (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['way']} | {r['workers'] if not r['cached'] else '-'} | {r['images_per_second']:.0f} | "
                     f"{r['images_per_second'] / base:.1f}x | {r['training_process_cpu_ms_per_image']:.2f} | "
                     f"{r['setup_seconds']:.2f} |")
    return "\n".join(lines)
