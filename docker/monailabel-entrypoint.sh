#!/usr/bin/env bash
# Entrypoint of the MONAI Label image: serve every bundle mounted in the monaibundle app's model
# folder (a folder per bundle, with configs/inference.json and models/model.pt or model.ts).
#
#   monailabel-entrypoint [--dry-run] [extra start_server options...]
#
# Variables (defaults for the image):
#   MONAILABEL_APP      the app folder (/opt/monailabel/apps/monaibundle); bundles in its model/
#   MONAILABEL_MODELS   comma-separated bundle names to serve (default: every bundle in model/)
#   MONAILABEL_STUDIES  studies folder or DICOMweb URL (/studies)
#   MONAILABEL_HOST     listen address (0.0.0.0)
#   MONAILABEL_PORT     port (8000)
#   MONAILABEL_PYTHON   the python that has monailabel (python)
# --dry-run prints the server command instead of starting it. Works outside a container too:
#   MONAILABEL_APP=apps/monaibundle MONAILABEL_PYTHON=.venv-monailabel/bin/python bash docker/monailabel-entrypoint.sh
set -euo pipefail

app=${MONAILABEL_APP:-/opt/monailabel/apps/monaibundle}
studies=${MONAILABEL_STUDIES:-/studies}
python=${MONAILABEL_PYTHON:-python}
dry_run=0
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi

[ -d "$app" ] || { echo "monailabel-entrypoint: error: no app folder $app (MONAILABEL_APP)" >&2; exit 2; }
models=${MONAILABEL_MODELS:-}
if [ -z "$models" ]; then
  for bundle in "$app"/model/*/; do
    [ -f "$bundle/configs/inference.json" ] || continue
    name=$(basename "$bundle")
    models=${models:+$models,}$name
  done
fi
if [ -z "$models" ]; then
  echo "monailabel-entrypoint: error: no bundle (a folder with configs/inference.json) in $app/model;" \
    "mount your bundles there, e.g. docker run -v \"\$PWD/bundles:$app/model\" ..." >&2
  exit 2
fi
IFS=',' read -r -a names <<<"$models"
for name in "${names[@]}"; do
  [ -f "$app/model/$name/configs/inference.json" ] \
    || { echo "monailabel-entrypoint: error: bundle '$name' has no $app/model/$name/configs/inference.json" >&2; exit 2; }
  if [ ! -f "$app/model/$name/models/model.pt" ] && [ ! -f "$app/model/$name/models/model.ts" ]; then
    echo "monailabel-entrypoint: warning: bundle '$name' has no models/model.pt or model.ts (no trained weights)" >&2
  fi
done

cmd=("$python" -m monailabel.main start_server --app "$app" --studies "$studies" --conf models "$models"
  --conf zoo_source ngc --conf sam2 false --host "${MONAILABEL_HOST:-0.0.0.0}" --port "${MONAILABEL_PORT:-8000}" "$@")
if [ "$dry_run" -eq 1 ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
echo "monailabel-entrypoint: serving $models from $app/model on port ${MONAILABEL_PORT:-8000}"
exec "${cmd[@]}"
