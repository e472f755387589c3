"""``docs/README.md`` of a bundle: model, data, channels, labels, recipe, metrics, shipped weights, commands."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from brats_pipeline.bundle.specs import SCHEMA_FILE, BundleSpec


def _ts_export_args(spec: BundleSpec) -> str:
    if spec.scriptable:
        return ""
    shape = [1, spec.in_channels, *spec.roi_size]
    return f' --use_trace True --input_shape "{shape}"'


def _sci(x: float) -> str:
    """``1e-3`` style (one significant digit, no zero-padded exponent)."""
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _recipe(spec: BundleSpec) -> str:
    """The training recipe in words, from the spec (what ``train.json`` does)."""
    orient = f"reoriented to {spec.orientation}" if spec.orientation else "kept in the files' orientation (no reorientation)"
    aug = ", ".join(f"{k}={v}" for k, v in spec.augmentation) or "the defaults of `AugmentationConfig`"
    roi = "x".join(str(s) for s in spec.roi_size)
    schedule, opt = dict(spec.schedule), dict(spec.optimizer_options)
    optimizer = f"{spec.optimizer.rsplit('.', 1)[-1]} ({', '.join(f'{k} {v:g}' for k, v in opt.items())})"
    warmup = (f"{schedule['warmup_steps']} warm-up steps" if schedule.get("warmup_steps")
              else f"{schedule.get('warmup_epochs', 0)} warm-up epochs")
    if spec.spatial_dims == 3:  # the BraTS bundles' text, unchanged
        return f"""Deterministic transforms (cached): load, {orient}, crop to the head, channel-wise z-score over
non-zero voxels, labels to region channels. Patches {roi} voxels ({spec.batch_size} per batch,
{spec.samples_per_volume} per volume, 2/3 centred on tumour), random flips, rotation, scaling, shear,
elastic deformation, intensity, gamma, noise, smoothing ({aug}; batched on the GPU, MONAI
per-sample on a CPU). Dice + cross-entropy on the region channels, AdamW (lr {_sci(opt['lr'])}, weight decay
{_sci(opt['weight_decay'])}), cosine schedule with {warmup}, {spec.epochs} epochs, bf16 on GPUs, validation every {spec.val_interval}
epochs by sliding windows ({roi}, Gaussian blending, overlap {spec.overlap}) with per-region Dice; early
stopping after {spec.patience} validations without improvement. `models/model.pt` is the network state dict
of the best validation Dice; checkpoints and logs go to `runs/`. Fold 0 of the datalist validates
(`--fold`; `--fold -1` trains on every case); a dataset folder without `datalist.json` is split
into 5 patient-level folds, recorded in `runs/datalist.json`."""
    axis = "xyz"[spec.slice_axis]
    options = dict(spec.datamodule_options)
    recipe = f" It is the recipe of `{spec.recipe}` (`brats-train`), in bundle form." if spec.recipe else ""
    length = (f"a fixed {spec.max_steps} optimiser steps (no epoch limit, never a wall-clock cut)"
              if spec.max_steps else f"{spec.epochs} epochs")
    saved = ("the network state dict at the last step" if spec.save_weights == "final"
             else "the network state dict of the best validation Dice")
    text = (
        f"A 2D network on slices across axis {spec.slice_axis} ({axis}), each with {spec.context} neighbouring "
        f"slice(s) on each side stacked as channels ({spec.in_channels} channels; edge slices repeated).{recipe} "
        f"Deterministic transforms (cached): load, {orient}, crop to the head, channel-wise z-score over non-zero "
        f"voxels, labels to region channels. Training samples: whole slices padded or cropped to {roi}, every "
        f"tumour slice plus {options.get('empty_slice_ratio', 1.0)} times as many tumour-free ones per epoch, "
        f"{spec.batch_size} per batch, augmented in batches on tensors ({aug}). Loss `{spec.loss}` on the region "
        f"channels, {optimizer}, {schedule.get('shape', 'cosine')} "
        f"schedule per optimiser step with {warmup}, {length}; bf16 where the device runs it natively (CUDA, CPUs "
        f"with AMX / AVX512-BF16), fp32 elsewhere. Validation every {spec.val_interval} epochs on whole volumes, "
        f"slice by slice ({spec.sw_batch_size} slices per pass), with per-region Dice. `models/model.pt` is "
        f"{saved}; checkpoints and logs go to `runs/`. Fold 0 of the datalist validates (`--fold`; `--fold -1` "
        "trains on every case and validates on fold 0, which it has then seen); a dataset folder without "
        "`datalist.json` is split into 5 patient-level folds, recorded in `runs/datalist.json`."
    )
    return textwrap.fill(text, width=100, break_on_hyphens=False, break_long_words=False)


def _inference_settings(spec: BundleSpec) -> str:
    """The test-time mirroring and post-processing of ``inference.json`` (chosen by cross-validation), if any."""
    steps = []
    if spec.mirror_axes:
        axes = ", ".join("xyz"[a] for a in spec.mirror_axes)
        steps.append(f"the probabilities are the mean over the volume and its mirror image along {axes} "
                     f"(`inferer` is a `MirrorInferer` around the slice inferer)")
    if spec.postprocess:
        options = ", ".join(f"{k}={v}" for k, v in spec.postprocess)
        steps.append(f"the label map is post-processed by `RegionsToLabelsd` with `postprocess` ({options}: "
                     "only the largest 26-connected tumour component is kept)" if dict(spec.postprocess).get("keep_largest")
                     else f"the label map is post-processed by `RegionsToLabelsd` with `postprocess` ({options})")
    if not steps:
        return ""
    return ("\nInference: " + "; ".join(steps) + ". Both were chosen by 5-fold cross-validation on held-out patients "
            "(`benchmarks/bench_lgg_postprocess.py`); `brats-infer --bundle` (the `Predictor`) reads the same `inferer` "
            "and `postprocess` ids, so it writes the same labels as `monai.bundle run` and MONAI Label.\n")


def _shipped(spec: BundleSpec) -> str:
    """``## Shipped weights``: how ``models/model.pt`` was made (bundles that ship weights)."""
    if not spec.shipped:
        return ""
    steps = (f"{spec.max_steps} (fixed; {dict(spec.schedule).get('warmup_steps', 0)} warm-up steps, then "
             f"{dict(spec.schedule).get('shape', 'cosine')} to 0)" if spec.max_steps else f"{spec.epochs} epochs")
    rows = "\n".join(f"| {k} | {v} |" for k, v in (*spec.shipped[:1], ("optimiser steps", steps), *spec.shipped[1:]))
    recipe = spec.recipe or "the bundle's train.json"
    return f"""
## Shipped weights
`models/model.pt` holds the network state dict at the end of one run of the recipe (`{recipe}`),
exported from its Lightning checkpoint. From the repository root:

```bash
.venv/bin/brats-datalist ../shared/data/lgg --task {spec.task} -o lgg_datalist.json --folds 5
.venv/bin/brats-train fit --config {recipe} --data.datalist lgg_datalist.json --data.fold -1
.venv/bin/brats-bundle export --checkpoint runs/lgg_cpu/csv/version_0/checkpoints/last.ckpt --bundle bundles/{spec.name}
.venv/bin/brats-bundle verify bundles/{spec.name} --schema bundles/{spec.name}/{SCHEMA_FILE} --require-weights
```

The checkpoint is the run's `last.ckpt` (the config's CSV logger writes it under
`runs/lgg_cpu/csv/version_N/checkpoints/`). `--data.fold -1` trains on every patient of the
datalist (validation then runs on fold 0, which is in the training set: its Dice is not an
evaluation, and `export` does not record it). `brats-bundle export` loads the
checkpoint's network weights strictly into this bundle's `network_def` and writes the plain
state dict; the patients trained on are listed in `docs/training_cases.txt`, one id a line.
Accuracy on unseen patients is the recipe's cross-validation (`benchmarks/bench_lgg.py`) in the
table above. The bundle's own `train.json` runs the same recipe and writes `models/model.pt` at
the end (from this folder: `python -m monai.bundle run --config_file configs/train.json
--dataset_dir ../../../shared/data/lgg --fold -1`).

| what | value |
| --- | --- |
{rows}
"""


def readme(spec: BundleSpec, eval_metrics: Mapping[str, Any] | None = None) -> str:
    """``docs/README.md``: model, data, channels, labels, recipe, measured metrics, copy-paste commands."""
    from brats_pipeline.networks import build_network, count_parameters, get_network_spec

    task = spec.input_task  # the modalities the network reads (a subset of the task's, or all); labels, regions: the task's
    net = spec.network_def()
    params = count_parameters(build_network(spec.network, net["in_channels"], net["out_channels"], spec.spatial_dims,
                                            **dict(spec.network_kwargs)))
    kwargs = ", ".join(f"{k}={v}" for k, v in spec.network_kwargs)
    channels = "\n".join(f"| {i} | {m.name} | {m.contrast} | {', '.join(m.suffixes)} |" for i, m in enumerate(task.modalities))
    labels = "\n".join(f"| {k} | {v} |" for k, v in sorted(task.labels.items()))
    regions = "\n".join(f"| {i} | {r.name} | {sorted(r.labels)} | {r.description} |" for i, r in enumerate(task.regions))
    kind, outputs = "logits, one sigmoid per region", f"""Output: one channel per region; postprocessing turns regions back into the labels above
(largest region first, each painted with the label it owns):

| channel | region | labels | meaning |
| --- | --- | --- | --- |
{regions}"""
    if spec.output_mode == "softmax":
        classes = "\n".join(f"| {i} | {name} | {value} |" for i, (name, value) in enumerate(zip(task.class_names, task.label_values)))
        kind, outputs = "logits, softmax over the classes", f"""Output: one channel per class of the label scheme (softmax); postprocessing takes each voxel's
most likely class and writes its label value (the regions below are scored from that label map):

| channel | class | label |
| --- | --- | --- |
{classes}

| region | labels | meaning |
| --- | --- | --- |
""" + "\n".join(f"| {r.name} | {sorted(r.labels)} | {r.description} |" for r in task.regions)
    if eval_metrics:
        metrics = "\n".join(["| metric | value |", "| --- | --- |",
                              *(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                                for k, v in eval_metrics.items())])
    else:
        metrics = ("TBD-by-lead: the recipe's 5-fold patient-level cross-validation on the 50 patients "
                   "(`benchmarks/bench_lgg.py`), to be written into `eval_metrics` of `configs/metadata.json`; "
                   "`brats-bundle generate` then renders this table." if spec.shipped else
                   "Not measured yet: no weights are shipped. After training, `brats-bundle export` fills "
                   "`eval_metrics` in `configs/metadata.json` and this table.")
    d = spec.dataset_dir
    if spec.max_steps:  # a fixed step budget: shorten it, not the epochs
        other_run, export_ckpt = f"--fold -1 --max_steps {spec.max_steps // 4} --val_interval 2", "last.ckpt"
    else:
        other_run, export_ckpt = "--fold 1 --epochs 100 --val_interval 2", "best-epoch099-dice0.8800.ckpt"
    n = spec.name
    stack_files = " ".join(f"CASE/CASE_{m.suffixes[0]}.nii.gz" for m in task.modalities)
    return f"""# {n}

{spec.title}. A MONAI bundle of [brats-pipeline](../../README.md): the configs build the
network, a PyTorch Lightning module, data module and `Trainer` from the package
(`"_target_": "brats_pipeline..."`), so `python -m monai.bundle run` trains, predicts and
evaluates, and MONAI Label serves it.

## Model
- `{spec.network}` ({kwargs}) from `brats_pipeline.networks`: {get_network_spec(spec.network).description}.
- Paper: {spec.paper}.
- {params:,} parameters; {net["in_channels"]} input channels, {net["out_channels"]} output channel(s) ({kind}).

## Data
{spec.data_source}.

Input `image`: {len(task.modalities)} channels in this order, either one 4D NIfTI with the modalities
stacked on the last axis (MSD style; `brats-bundle stack` writes it, MONAI Label sends it) or
one file per modality (datalists, case folders):

| channel | modality | contrast | file suffixes |
| --- | --- | --- | --- |
{channels}

Labels ({task.name}; 0 is background):

| value | name |
| --- | --- |
{labels}

{outputs}
{_inference_settings(spec)}
## Training recipe
{_recipe(spec)}

## Measured metrics
{metrics}

Dice and HD95 are defined in `metric_definitions` of `configs/metadata.json`: HD95 is the BraTS one
(surface distances of both directions pooled, mm; both empty 0, one empty 373.13 mm), in training's
validation (`val_hd95_*`) as in `brats-evaluate`.
{_shipped(spec)}
## Commands
Run from this folder with the project's environment (`bash scripts/install.sh`, then
`source ../../.venv/bin/activate`). `--dataset_dir` is a folder in the task's layout (or one
holding a `datalist.json` from `brats-datalist`); any config id can be overridden the same way.

Train (writes `runs/` and `models/model.pt`):

```bash
python -m monai.bundle run --config_file configs/train.json --dataset_dir {d}
python -m monai.bundle run --config_file configs/train.json --dataset_dir {d} {other_run}
python -m monai.bundle run --config_file configs/train.json --dataset_dir {d} --resume_from runs/logs/version_0/checkpoints/last.ckpt
```

Multi-GPU (DDP, one process per GPU):

```bash
torchrun --nproc_per_node=4 -m monai.bundle run --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir {d}
```

Predict (label NIfTIs `<case>_seg.nii.gz` in each input's geometry, `manifest.json`; cases already
done are skipped, `--overwrite True` redoes them):

```bash
python -m monai.bundle run --config_file configs/inference.json --dataset_dir {d} --output_dir preds
python -m monai.bundle run --config_file configs/inference.json --datalist {d}/datalist.json --output_dir preds
python -m monai.bundle run --config_file configs/inference.json --dataset_dir stacked_niftis/ --output_dir preds --device cpu
```

Evaluate (predicts the labelled cases of a fold, or all with no `--fold`; writes `metrics.csv`
and `metrics_summary.json`):

```bash
python -m monai.bundle run --config_file "['configs/inference.json','configs/evaluate.json']" --datalist runs/datalist.json --fold 0 --output_dir eval
python -m monai.bundle run --config_file "['configs/inference.json','configs/evaluate.json']" --dataset_dir {d} --output_dir eval
```

Weights, checks and TorchScript:

```bash
brats-bundle export --checkpoint runs/logs/version_0/checkpoints/{export_ckpt} --bundle . --datalist {d}/datalist.json --fold 0
brats-bundle verify . --schema {SCHEMA_FILE}
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath {SCHEMA_FILE}
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file configs/inference.json --device cpu
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json{_ts_export_args(spec)}
```

`{SCHEMA_FILE}` is an unchanged copy of the MONAI model zoo's metadata schema (the
`schema` URL of `configs/metadata.json`; Project MONAI, Apache License 2.0): with `--filepath`
naming an existing file, `verify_metadata` reads it and downloads nothing, so it works offline.

## MONAI Label
MONAI Label 0.8.5 runs in its own environment (`scripts/install_monailabel.sh` makes
`.venv-monailabel/`); it reads `configs/inference.json` and `models/model.pt`. It sends one file
per request, so stack each case's modalities into one 4D NIfTI first. From the repository root:

```bash
bash scripts/install_monailabel.sh
.venv-monailabel/bin/python -m monailabel.main apps --download --name monaibundle --output apps
mkdir -p apps/monaibundle/model studies && cp -r bundles/{n} apps/monaibundle/model/
.venv/bin/brats-bundle stack {stack_files} -o studies/CASE.nii.gz
.venv-monailabel/bin/python -m monailabel.main start_server --app apps/monaibundle --studies studies --conf models {n} --conf zoo_source ngc --conf sam2 false --host 127.0.0.1 --port 8000
curl -X POST "http://127.0.0.1:8000/infer/{n}?image=CASE&output=image" -o CASE_seg.nii.gz
```

`--conf zoo_source ngc` and `--conf sam2 false` keep start-up offline. An input the bundle cannot
take (e.g. one 3D modality instead of the stacked 4D NIfTI) is answered with HTTP 422 and the
reason, `{{"detail": "<file>: expected {len(task.modalities)} channels ({', '.join(task.modality_names)}), ..."}}`, not a bare 500.
MONAI Label loads `models/model.pt` non-strictly: only put weights there with `brats-bundle export` or this
bundle's training, and check them with `brats-bundle verify`.
"""

