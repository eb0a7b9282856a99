#!/usr/bin/env bash
# Set up xsearch on a fresh Debian machine with Python 3.11: a virtual environment in .venv with
# torch, xsearch and its test tools, and the Fashion-MNIST data package. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: pip takes these from the local disk where they are cached
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[dev]"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get here; put the Fashion-MNIST IDX files somewhere and pass data.root=DIR" >&2
  fi
fi
echo "setup: done (.venv ready; Fashion-MNIST: $(ls /usr/share/datasets/fashion-mnist 2>/dev/null | wc -l) files)"
