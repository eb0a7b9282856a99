from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("XSEARCH_PROGRESS", "0")
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
def digits():
    from xsearch.data import load_dataset

    return load_dataset("digits")
