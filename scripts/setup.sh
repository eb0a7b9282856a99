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

# Debian packages, each only when missing: the Fashion-MNIST data, and Chromium for the dashboard's browser
# test (tests/test_dashboard.py drives it headless; it skips without it)
APT_PACKAGES=""
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || APT_PACKAGES="dataset-fashion-mnist"
command -v chromium >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES chromium"
# PostgreSQL's server binaries: tests/test_postgres.py starts a private server on 127.0.0.1 from them
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES postgresql"
if [ -n "$APT_PACKAGES" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $APT_PACKAGES >/dev/null
  else
    echo "setup: no apt-get here; put the Fashion-MNIST IDX files somewhere and pass data.root=DIR" \
         "(and install Chromium for the dashboard test)" >&2
  fi
fi
echo "setup: done (.venv ready; Fashion-MNIST: $(ls /usr/share/datasets/fashion-mnist 2>/dev/null | wc -l) files;" \
     "chromium: $(command -v chromium || echo missing);" \
     "postgresql: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1 || true))"
