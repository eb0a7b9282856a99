from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("XSEARCH_PROGRESS", "0")
# Under pytest-xdist every worker is its own torch process: one thread each, or two workers on two
# cores oversubscribe them (the fast suite took 21 min instead of 8 in CI). Set before torch is
# imported; subprocesses the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


def _no_cuda() -> bool:
    """No usable GPU, judged without importing torch (whose import may pull in Triton)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return True
    return not any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"))


# Without a GPU the Triton kernels run through Triton's interpreter. The switch must be set before
# anything imports Triton: Triton's own library functions (tl.sum, tl.maximum, ...) are jitted at
# its import, compiled or interpreted according to this variable at that moment.
if _no_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")
FASHION = Path("/usr/share/datasets/fashion-mnist")
NAS_BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "nas-bench-macro"


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    """Fashion-MNIST is part of the set-up; in CI its absence is a failure, elsewhere a skip."""
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST missing: the set-up must install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FASHION


@pytest.fixture(scope="session")
def fashion_coco(tmp_path_factory) -> Path:
    """A tiny built-in fashion-coco (40 training and 10 validation canvases), written once per session."""
    from xsearch.datasets import write_fashion_coco

    root = tmp_path_factory.mktemp("fashion-coco")
    write_fashion_coco(root, train=40, val=10, seed=0, show_progress=False)
    return root


@pytest.fixture(scope="session")
def digits():
    from xsearch.datasets import load_dataset

    return load_dataset("digits")


def find_macro_table() -> Path | None:
    """NAS-Bench-Macro's table: $XSEARCH_NAS_BENCH_MACRO, else ../shared/benchmarks beside the repository."""
    candidates = [os.environ.get("XSEARCH_NAS_BENCH_MACRO"), NAS_BENCH / "nas-bench-macro_cifar10.json",
                  Path("/work/shared/benchmarks/nas-bench-macro/nas-bench-macro_cifar10.json")]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="session")
def macro_table() -> Path:
    """Path of the NAS-Bench-Macro table (third-party data, never committed); skip when absent."""
    path = find_macro_table()
    if path is None:
        pytest.skip("NAS-Bench-Macro table not found; set XSEARCH_NAS_BENCH_MACRO=PATH or keep ../shared beside "
                    "the repository")
    return path


@pytest.fixture(scope="session")
def synthetic_macro_table(tmp_path_factory) -> Path:
    """Path of a NAS-Bench-Macro-format table with made-up accuracies (tests/data/synthetic_macro.py): any clone has it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic_macro", Path(__file__).parent / "data" / "synthetic_macro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_table(tmp_path_factory.mktemp("synthetic_macro") / "synthetic_macro.json")
