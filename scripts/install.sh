#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything the
# pipeline and its tests need. Idempotent: a second run only checks what is there.
#   bash scripts/install.sh            # CPU build of torch (the local torch==2.13.0 file)
#   TORCH_SPEC="torch==2.14.1" bash scripts/install.sh   # another torch (e.g. a CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "installed: $(.venv/bin/python -c 'import torch, monai, pytorch_lightning as pl; print(f"torch {torch.__version__}, monai {monai.__version__}, lightning {pl.__version__}")')"
