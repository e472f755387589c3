#!/usr/bin/env bash
# Submit the whole chain to Slurm, each job starting only if the one before succeeded
# (--dependency=afterok), and print the job ids:
#
#   preprocess (array of P) -> collect (one datalist) -> train (DDP) -> infer (array of I) -> evaluate
#
#   bash docker/slurm/submit_pipeline.sh --raw /data/BraTS2021 --task brats2021 --work /scratch/brats/run1
#   bash docker/slurm/submit_pipeline.sh --raw brats21.json --work /scratch/b --preprocess-shards 16 --infer-shards 8 \
#       --config brats_pipeline/configs/attention_unet_brats.yaml
#   bash docker/slurm/submit_pipeline.sh --raw brats21.json --work /scratch/b --mode bundle --bundle bundles/brats_unet3d_segmentation
#   bash docker/slurm/submit_pipeline.sh ... --dry-run      # print the sbatch commands, submit nothing
#
# Folders under --work: preprocessed/ (brats-preprocess output and its datalist.json), train/
# (checkpoints, logs, model.ckpt), predictions/, evaluation/ (metrics, summary, report.html) and
# slurm/ (the jobs' output files). Inference and evaluation use the preprocessed datalist
# (--infer-input and --truth choose others). Prints one "stage=JOBID" line per job submitted.
#
# Options:
#   --raw PATH              input: datalist JSON or dataset folder (required with the preprocess stage)
#   --work DIR              working folder for every stage (required)
#   --task NAME             task (needed for a dataset folder)
#   --preprocess-shards P   preprocessing array size (default 4)
#   --infer-shards I        inference array size (default 4)
#   --mode cli|bundle       brats-train (default) or python -m monai.bundle run
#   --config YAML           brats-train config (default brats_pipeline/configs/unet3d_brats.yaml of this checkout)
#   --bundle DIR            bundle folder for --mode bundle (its models/model.pt is then used for inference)
#   --datalist PATH         training datalist (default WORK/preprocessed/datalist.json)
#   --infer-input PATH      what to predict (default: the training datalist)
#   --truth PATH            datalist with the labels to evaluate against (default: the training datalist)
#   --stages LIST           comma-separated subset of preprocess,train,infer,evaluate (default all)
#   --after JOBID           make the first submitted job wait for this job (afterok)
#   --dry-run               print the sbatch commands instead of submitting
# Environment (whitespace-separated options, passed on to the jobs):
#   PREPROCESS_ARGS, TRAIN_ARGS, INFER_ARGS, EVALUATE_ARGS      extra options of the brats-* commands
#   SBATCH_ARGS                                                  extra sbatch options for every job
#   PREPROCESS_SBATCH_ARGS, TRAIN_SBATCH_ARGS, INFER_SBATCH_ARGS, EVALUATE_SBATCH_ARGS   ... per stage
#   TRAIN_ACCELERATOR, INFER_DEVICE, BRATS_VENV, BRATS_LAUNCH    see the job scripts
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)

die() { echo "submit_pipeline.sh: error: $*" >&2; exit 2; }
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
need_value() { if [ "$#" -lt 2 ] || [ -z "$2" ] || [[ "$2" == --* ]]; then die "$1 needs a value"; fi; }

raw="" work="" task="" pre_shards=4 infer_shards=4 mode=cli config="" bundle="" datalist="" infer_input="" truth=""
stages="preprocess,train,infer,evaluate" after="" dry_run=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --raw) need_value "$@"; raw=$(abspath "$2"); shift 2 ;;
    --work) need_value "$@"; work=$(abspath "$2"); shift 2 ;;
    --task) need_value "$@"; task=$2; shift 2 ;;
    --preprocess-shards) need_value "$@"; pre_shards=$2; shift 2 ;;
    --infer-shards) need_value "$@"; infer_shards=$2; shift 2 ;;
    --mode) need_value "$@"; mode=$2; shift 2 ;;
    --config) need_value "$@"; config=$(abspath "$2"); shift 2 ;;
    --bundle) need_value "$@"; bundle=$(abspath "$2"); shift 2 ;;
    --datalist) need_value "$@"; datalist=$(abspath "$2"); shift 2 ;;
    --infer-input) need_value "$@"; infer_input=$(abspath "$2"); shift 2 ;;
    --truth) need_value "$@"; truth=$(abspath "$2"); shift 2 ;;
    --stages) need_value "$@"; stages=$2; shift 2 ;;
    --after) need_value "$@"; after=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

[ -n "$work" ] || die "--work DIR is required"
for n in "$pre_shards" "$infer_shards"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "shard counts must be positive integers, got '$n'"
done
IFS=',' read -r -a stage_list <<<"$stages"
for s in "${stage_list[@]}"; do
  case "$s" in preprocess | train | infer | evaluate) ;; *) die "unknown stage '$s' in --stages (preprocess,train,infer,evaluate)" ;; esac
done
want() { [[ ",$stages," == *",$1,"* ]]; }
case "$mode" in
  cli) config=${config:-$repo/brats_pipeline/configs/unet3d_brats.yaml}
    if want train; then [ -f "$config" ] || die "--config $config: no such file"; fi ;;
  bundle) [ -n "$bundle" ] || die "--mode bundle needs --bundle DIR"
    [ -f "$bundle/configs/train.json" ] || die "--bundle $bundle: no configs/train.json" ;;
  *) die "--mode must be cli or bundle, got '$mode'" ;;
esac
if want preprocess; then
  [ -n "$raw" ] || die "--raw PATH is required for the preprocess stage"
  [ -e "$raw" ] || die "--raw $raw: no such datalist or folder"
  if [ -d "$raw" ] && [ -z "$task" ]; then die "--raw $raw is a folder: give --task"; fi
fi
command -v sbatch >/dev/null 2>&1 || [ "$dry_run" -eq 1 ] || die "sbatch not found: is this a Slurm login node?"

# What every job reads (exported: sbatch passes the environment on to the jobs).
export RAW=$raw TASK=$task
export PREPROCESSED=$work/preprocessed
export DATALIST=${datalist:-$PREPROCESSED/datalist.json}
export RUN_DIR=$work/train TRAIN_MODE=$mode TRAIN_CONFIG=$config
export INFER_INPUT=${infer_input:-$DATALIST} PREDICTIONS=$work/predictions INFER_SHARDS=$infer_shards
export TRUTH=${truth:-$DATALIST} EVALUATION=$work/evaluation
if [ "$mode" = bundle ]; then
  export BUNDLE=$bundle
  unset CHECKPOINT
else
  export CHECKPOINT=$RUN_DIR/model.ckpt MODEL_CKPT=$RUN_DIR/model.ckpt
  unset BUNDLE
fi
export PREPROCESS_SHARDS=$pre_shards
logs=$work/slurm
if [ "$dry_run" -eq 0 ]; then mkdir -p "$logs"; fi

read -r -a common <<<"${SBATCH_ARGS:-}"
previous=$after
counter=0
# submit STAGE SCRIPT [sbatch options...]: submit after the previous job, print and remember the id.
submit() {
  local stage=$1 script=$here/$2 var="${1^^}_SBATCH_ARGS"
  shift 2
  local extra=() dependency=() id
  read -r -a extra <<<"${!var:-}"
  if [ "$stage" = collect ]; then read -r -a extra <<<"${PREPROCESS_SBATCH_ARGS:-}"; fi
  if [ -n "$previous" ]; then dependency=(--dependency="afterok:$previous" --kill-on-invalid-dep=yes); fi
  local cmd=(sbatch --parsable "${dependency[@]}" "$@" "${common[@]}" "${extra[@]}" "$script")
  if [ "$dry_run" -eq 1 ]; then
    counter=$((counter + 1))
    id="DRYRUN$counter"
    printf '%q ' "${cmd[@]}" >&2
    echo >&2
  else
    id=$("${cmd[@]}")
    id=${id%%;*}  # "id;cluster" on multi-cluster set-ups
  fi
  echo "$stage=$id"
  previous=$id
}

if want preprocess; then
  submit preprocess preprocess_array.sbatch --array="0-$((pre_shards - 1))" --output="$logs/%x-%A_%a.out"
  # One pass over the whole cohort once every shard is done: one manifest.json and one datalist.json.
  submit collect preprocess_array.sbatch --job-name=brats-preprocess-collect --cpus-per-task=1 --output="$logs/%x-%j.out"
fi
if want train; then
  submit train train_ddp.sbatch --output="$logs/%x-%j.out"
fi
if want infer; then
  submit infer infer_array.sbatch --array="0-$((infer_shards - 1))" --output="$logs/%x-%A_%a.out"
fi
if want evaluate; then
  submit evaluate evaluate.sbatch --output="$logs/%x-%j.out"
fi
