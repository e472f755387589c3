#!/usr/bin/env bash
# Create (or update) .venv-monailabel: MONAI Label 0.8.5 in its OWN virtual environment, with
# this project installed into it (editable, no dependencies pulled from pyproject), so that a
# MONAI Label server can run our bundles (their configs reference brats_pipeline code).
#   bash scripts/install_monailabel.sh            # ~4 min and ~8 GB the first time; idempotent
#   MONAILABEL_VENV=/opt/ml bash scripts/install_monailabel.sh
#
# Why a separate environment (see ../shared/notes/monailabel-and-bundles.md):
# - monailabel's dependencies pin numpy<2 and it imports torchvision at load time; PyPI's
#   torchvision does not import next to the project's CPU torch 2.13 wheel, so this venv
#   gets torch 2.14.1 + torchvision 0.29.1 (the CUDA build, which also runs on a CPU);
# - pydicom 3 breaks server start (pydicom._storage_sopclass_uids): pin pydicom<3;
# - sam2 is an sdist that would build CUDA code and pull a second torch into its build
#   environment: SAM2_BUILD_CUDA=0, --no-build-isolation, and a constraints file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MONAILABEL_VENV:-.venv-monailabel}
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import monailabel, torchvision" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
  constraints=$(mktemp)
  trap 'rm -f "$constraints"' EXIT
  printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" >"$constraints"
  SAM2_BUILD_CUDA=0 "$VENV/bin/python" -m pip install -q --no-build-isolation -c "$constraints" \
    monailabel==0.8.5 monai==1.6.1 "pydicom<3" "pynetdicom<3" "dicomweb-client<0.60" \
    pytorch-lightning nibabel scipy
fi
# The project itself, editable and without its dependencies (SimpleITK/itk are not needed to serve a bundle).
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -c 'import monailabel, monai, torch, brats_pipeline; print(f"installed in '"$VENV"': monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}")'
