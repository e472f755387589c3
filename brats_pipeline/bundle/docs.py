"""``docs/README.md`` of a bundle: model, data, channels, labels, recipe, metrics, commands."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from brats_pipeline.bundle.templates import BundleSpec, _network_def


def _ts_export_args(spec: BundleSpec) -> str:
    if spec.scriptable:
        return ""
    shape = [1, len(spec.task_obj.modalities), *spec.roi_size]
    return f' --use_trace True --input_shape "{shape}"'


def readme(spec: BundleSpec, eval_metrics: Mapping[str, Any] | None = None) -> str:
    """``docs/README.md``: model, data, channels, labels, recipe, measured metrics, copy-paste commands."""
    from brats_pipeline.networks import build_network, count_parameters, get_network_spec

    task = spec.task_obj
    net = _network_def(spec)
    params = count_parameters(build_network(spec.network, net["in_channels"], net["out_channels"], 3,
                                            **dict(spec.network_kwargs)))
    kwargs = ", ".join(f"{k}={v}" for k, v in spec.network_kwargs)
    roi = "x".join(str(s) for s in spec.roi_size)
    channels = "\n".join(f"| {i} | {m.name} | {m.contrast} | {', '.join(m.suffixes)} |" for i, m in enumerate(task.modalities))
    labels = "\n".join(f"| {k} | {v} |" for k, v in sorted(task.labels.items()))
    regions = "\n".join(f"| {i} | {r.name} | {sorted(r.labels)} | {r.description} |" for i, r in enumerate(task.regions))
    if eval_metrics:
        metrics = "\n".join(["| metric | value |", "| --- | --- |",
                              *(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                                for k, v in eval_metrics.items())])
    else:
        metrics = ("Not measured yet: no weights are shipped. After training, `brats-bundle export` fills "
                   "`eval_metrics` in `configs/metadata.json` and this table.")
    orient = f"reoriented to {spec.orientation}" if spec.orientation else "kept in the files' orientation (no reorientation)"
    aug = ", ".join(f"{k}={v}" for k, v in spec.augmentation) or "the defaults of `AugmentationConfig`"
    d = spec.dataset_dir
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
- {params:,} parameters; {net["in_channels"]} input channels, {net["out_channels"]} output channel(s) (logits, one sigmoid per region).

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

Output: one channel per region; postprocessing turns regions back into the labels above
(largest region first, each painted with the label it owns):

| channel | region | labels | meaning |
| --- | --- | --- | --- |
{regions}

## Training recipe
Deterministic transforms (cached): load, {orient}, crop to the head, channel-wise z-score over
non-zero voxels, labels to region channels. Patches {roi} voxels ({spec.batch_size} per batch,
{spec.samples_per_volume} per volume, 2/3 centred on tumour), random flips, rotation, scaling, shear,
elastic deformation, intensity, gamma, noise, smoothing ({aug}; batched on the GPU, MONAI
per-sample on a CPU). Dice + cross-entropy on the region channels, AdamW (lr 1e-3, weight decay
1e-5), cosine schedule with 5 warm-up epochs, 300 epochs, bf16 on GPUs, validation every 5
epochs by sliding windows ({roi}, Gaussian blending, overlap 0.5) with per-region Dice; early
stopping after 20 validations without improvement. `models/model.pt` is the network state dict
of the best validation Dice; checkpoints and logs go to `runs/`. Fold 0 of the datalist validates
(`--fold`; `--fold -1` trains on every case); a dataset folder without `datalist.json` is split
into 5 patient-level folds, recorded in `runs/datalist.json`.

## Measured metrics
{metrics}

## Commands
Run from this folder with the project's environment (`bash scripts/install.sh`, then
`source ../../.venv/bin/activate`). `--dataset_dir` is a folder in the task's layout (or one
holding a `datalist.json` from `brats-datalist`); any config id can be overridden the same way.

Train (writes `runs/` and `models/model.pt`):

```bash
python -m monai.bundle run --config_file configs/train.json --dataset_dir {d}
python -m monai.bundle run --config_file configs/train.json --dataset_dir {d} --fold 1 --epochs 100 --val_interval 2
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
brats-bundle export --checkpoint runs/logs/version_0/checkpoints/best-epoch099-dice0.8800.ckpt --bundle . --datalist {d}/datalist.json --fold 0
brats-bundle verify . --schema ../../../shared/data/monai_bundle_schema/meta_schema_20220324.json
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath meta_schema_20220324.json
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file configs/inference.json --device cpu
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json{_ts_export_args(spec)}
```

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

`--conf zoo_source ngc` and `--conf sam2 false` keep start-up offline. MONAI Label loads
`models/model.pt` non-strictly: only put weights there with `brats-bundle export` or this
bundle's training, and check them with `brats-bundle verify`.
"""

