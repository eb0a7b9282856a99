#!/usr/bin/env bash
# Build .venv-nni: a virtual environment of its own for the NNI interop (xsearch/nni.py, tests/test_nni.py),
# with torch, xsearch (editable, this checkout) and the `nni` extra (NNI 3.0 and the pytorch-lightning and
# torchmetrics its one-shot strategies import). NNI pins old versions of common packages (filelock<3.12,
# typeguard<4.1.3), so it stays out of the main .venv. Safe to run again.
#   bash scripts/setup-nni.sh
#   .venv-nni/bin/python -m pytest tests/test_nni.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${NNI_VENV:-.venv-nni}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: pip takes these from the local disk where they are cached
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[nni,dev]"
"$VENV/bin/python" -m pip check
VENV="$VENV" "$VENV/bin/python" - <<'EOF'
import os
import nni, pytorch_lightning, torch
from nni.nas.nn.pytorch import LayerChoice, ModelSpace  # noqa: F401
from nni.nas.strategy import DARTS, RandomOneShot, RegularizedEvolution  # noqa: F401
import xsearch.nni  # noqa: F401
print(f"setup-nni: done ({os.environ['VENV']}: nni {nni.__version__}, "
      f"pytorch-lightning {pytorch_lightning.__version__}, torch {torch.__version__})")
EOF
