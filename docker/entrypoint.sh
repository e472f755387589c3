#!/usr/bin/env bash
# Entrypoint of the brats-pipeline image: run the given command, or list the commands.
#   docker run --rm brats-pipeline                           # this help
#   docker run --rm --gpus all -v /data:/data brats-pipeline brats-infer -i /data/test.json -o /data/preds --checkpoint /data/model.ckpt
# Works the same outside a container (bash docker/entrypoint.sh brats-models).
set -euo pipefail

if [ "$#" -eq 0 ] || [ "$1" = "--help" ] || [ "$1" = "-h" ]; then
  echo "brats-pipeline: MONAI + PyTorch Lightning brain-tumour segmentation."
  echo "usage: docker run [--gpus all] [-v HOST:CONTAINER] IMAGE COMMAND [ARGS...]"
  echo "commands on PATH (each has --help):"
  found=0
  IFS=: read -r -a dirs <<<"$PATH"
  for dir in "${dirs[@]}"; do
    for cmd in "$dir"/brats-*; do
      [ -x "$cmd" ] || continue
      [ "$(basename "$cmd")" = brats-entrypoint ] && continue
      echo "  $(basename "$cmd")"
      found=1
    done
  done
  [ "$found" -eq 1 ] || echo "  (none found: is the project installed? pip install .)"
  echo "also: python -m monai.bundle run --config_file /opt/brats-pipeline/bundles/<name>/configs/train.json ..."
  exit 0
fi
exec "$@"
