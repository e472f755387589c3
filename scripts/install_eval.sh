#!/usr/bin/env bash
# Create (or update) .venv-eval: the official BraTS evaluation package (brats-evaluation on PyPI,
# built on panoptica) in its own virtual environment, for the cross-check of our metrics
# (tests/brats_pipeline/test_metrics.py runs it in a subprocess on NIfTI files).
#   bash scripts/install_eval.sh                    # ~1 min, ~300 MB; idempotent
#   EVAL_VENV=/opt/brats-eval bash scripts/install_eval.sh
#
# Why a separate environment: brats-evaluation's dependencies pull numpy 2.2 (panoptica),
# which would downgrade the project's numpy. In an environment of your own, `pip install
# brats-pipeline[eval]` installs it next to the project instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${EVAL_VENV:-.venv-eval}
VERSION=0.0.10

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import brats_evaluation, panoptica" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "brats-evaluation==$VERSION"
fi
echo "installed: $("$VENV/bin/python" -c 'import importlib.metadata as m; print("brats-evaluation", m.version("brats-evaluation"), "panoptica", m.version("panoptica"))') in $VENV"
