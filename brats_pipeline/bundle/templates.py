"""The bundles' files from one template: a :class:`~brats_pipeline.bundle.specs.BundleSpec` holds what differs.

:data:`~brats_pipeline.bundle.specs.BUNDLES` lists the four bundles of ``bundles/``;
:func:`render_bundle` returns every file of one (configs, metadata, logging, docs, licence); ``bundles/`` is the committed output
of :func:`write_bundle` (``brats-bundle generate``) and a test checks that it is in sync
(:func:`check_bundle`). Measured ``eval_metrics`` are data, not template: they are kept from
the bundle's current ``metadata.json``. ``docs/meta_schema_20240725.json`` (:data:`SCHEMA_FILE`) is
not rendered: each bundle ships Project MONAI's schema file unchanged, for offline ``verify_metadata``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brats_pipeline.bundle.specs import (
    BUNDLES,
    SCHEMA_FILE,
    SCHEMA_NAME,
    SCHEMA_URL,
    BundleSpec,
    get_bundle_spec,
)
from brats_pipeline.metrics import METRIC_DEFINITIONS

#: Versions the committed bundles were generated and tested with (fixed, so that rendering is reproducible).
GENERATED_WITH = {"monai": "1.6.1", "pytorch": "2.13.0", "numpy": "2.4.6"}
REQUIRED_PACKAGES = {"brats-pipeline": "0.1.0", "pytorch-lightning": "2.6.6", "nibabel": "5.4.2"}
DEVICE_EXPR = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"

__all__ = [
    "BUNDLES", "DEVICE_EXPR", "GENERATED_WITH", "REQUIRED_PACKAGES", "SCHEMA_FILE", "SCHEMA_NAME", "SCHEMA_URL",
    "BundleSpec", "check_bundle",
    "evaluate_config", "get_bundle_spec", "inference_config", "license_text", "metadata", "multi_gpu_config",
    "render_bundle", "train_config", "write_bundle",
]


def _inferer(spec: BundleSpec) -> dict[str, Any]:
    if spec.spatial_dims == 3:
        return {"_target_": "SlidingWindowInferer", "roi_size": "@roi_size", "sw_batch_size": spec.sw_batch_size,
                "overlap": spec.overlap, "mode": spec.blend_mode}
    # MONAI SliceInferer (2D) or ContextSliceInferer (2.5D) over whole volumes
    return {"_target_": "brats_pipeline.inference.inferers.build_inferer", "spatial_dims": spec.spatial_dims,
            "roi_size": "@roi_size", "sw_batch_size": spec.sw_batch_size, "overlap": spec.overlap, "mode": spec.blend_mode,
            "slice_axis": "@slice_axis", "context": "@context"}


def _geometry_ids(spec: BundleSpec) -> dict[str, Any]:
    """Top-level ids of the network's input geometry: the window, and for 2D the slice axis and context."""
    ids: dict[str, Any] = {"roi_size": list(spec.roi_size)}
    if spec.spatial_dims == 2:
        ids.update(slice_axis=spec.slice_axis, context=spec.context)
    return ids


def _modality_ids(spec: BundleSpec) -> dict[str, Any]:
    """The top-level ``modalities`` id of a bundle reading a modality subset (none for all the task's)."""
    return {"modalities": list(spec.modalities)} if spec.modalities else {}


def _reads_modalities(spec: BundleSpec) -> dict[str, Any]:
    """``"modalities": "@modalities"`` for the parts that load or train on a modality subset."""
    return {"modalities": "@modalities"} if spec.modalities else {}


def _output_mode_ids(spec: BundleSpec) -> dict[str, Any]:
    """The top-level ``output_mode`` id of a softmax bundle (none for sigmoid, the default)."""
    return {"output_mode": spec.output_mode} if spec.output_mode != "sigmoid" else {}


def _uses_output_mode(spec: BundleSpec) -> dict[str, Any]:
    """``"output_mode": "@output_mode"`` for the module of a softmax bundle."""
    return {"output_mode": "@output_mode"} if spec.output_mode != "sigmoid" else {}


def _postprocessing(spec: BundleSpec) -> list[dict[str, Any]]:
    """Network output -> the task's labels on the input's grid: sigmoid, threshold, regions -> labels; or
    softmax, argmax, classes -> label values (probabilities are inverted to the input's grid first)."""
    invert = {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
              "nearest_interp": False, "to_tensor": True}
    if spec.output_mode == "softmax":
        return [{"_target_": "Activationsd", "keys": "pred", "softmax": True}, invert,
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "brats_pipeline.bundle.ClassesToLabelsd", "keys": "pred", "task": "@task"}]
    return [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}, invert,
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            {"_target_": "brats_pipeline.bundle.RegionsToLabelsd", "keys": "pred", "task": "@task"}]


def _case_split(spec: BundleSpec, part: str) -> dict[str, Any]:
    return {"_target_": "brats_pipeline.bundle.CaseSplit", "dataset_dir": "@dataset_dir", "datalist": "@datalist",
            "task": "@task", **_reads_modalities(spec), "fold": "@fold", "part": part, "output_dir": "@output_dir",
            "data": None}


def _trainer(spec: BundleSpec) -> dict[str, Any]:
    steps = {} if spec.max_steps is None else {"max_steps": "@max_steps"}
    return {
        "_target_": "pytorch_lightning.Trainer", "max_epochs": "@epochs", **steps,
        "accelerator": {"_target_": "brats_pipeline.bundle.accelerator_of", "device": "@device"},
        "devices": {"_target_": "brats_pipeline.bundle.devices_of", "device": "@device"},
        "precision": {"_target_": "brats_pipeline.bundle.precision_of", "device": "@device", "amp": "@amp"},
        "check_val_every_n_epoch": "@val_interval", "log_every_n_steps": spec.log_every_n_steps,
        **dict(spec.trainer_options), "callbacks": "@train#callbacks",
        "logger": "@train#logger", "default_root_dir": "@output_dir", "benchmark": True,
        "enable_progress_bar": True,
    }


def train_config(spec: BundleSpec) -> dict[str, Any]:
    """``configs/train.json``: Lightning training with MONAI's ids (``train#trainer``, ``train#dataset``, ...)."""
    two_d = spec.spatial_dims == 2
    save = {"weights": spec.save_weights} if spec.save_weights != "best" else {}
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/runs'",
        "dataset_dir": spec.dataset_dir,
        "datalist": "$@dataset_dir + '/datalist.json'",
        "task": spec.task,
        **_modality_ids(spec),
        **_output_mode_ids(spec),
        "fold": 0,
        "epochs": spec.epochs,
        **({} if spec.max_steps is None else {"max_steps": spec.max_steps}),
        "val_interval": spec.val_interval,
        "resume_from": None,
        "device": DEVICE_EXPR,
        "amp": spec.amp,
        **_geometry_ids(spec),
        "network_def": spec.network_def(),
        "train": {
            "dataset": _case_split(spec, "train"),
            "handlers": [],
            "inferer": _inferer(spec),
            "datamodule": {
                "_target_": "brats_pipeline.bundle.split_datamodule", "train": "@train#dataset",
                "validate": "@validate#dataset", "task": "@task", "datalist_path": "$@output_dir + '/datalist_split.json'",
                "patch_size": "@roi_size", "batch_size": spec.batch_size, "samples_per_volume": spec.samples_per_volume,
                "num_workers": spec.num_workers, "cache": "memory", "orientation": spec.orientation,
                "augmentation": dict(spec.augmentation) or None, "augmentation_device": "auto",
                **dict(spec.datamodule_options), **_reads_modalities(spec),
            },
            "module": {
                "_target_": "brats_pipeline.module.BratsSegmentationModule", "network": "@network_def", "task": "@task",
                **_reads_modalities(spec), **_uses_output_mode(spec), "loss": spec.loss,
                # callables (MONAI's "_mode_": "callable" -> functools.partial), as LightningCLI's --model.optimizer
                "optimizer": {"_target_": spec.optimizer, "_mode_": "callable", **dict(spec.optimizer_options)},
                "lr_scheduler": {"_target_": spec.lr_scheduler, "_mode_": "callable", **dict(spec.schedule)},
                "roi_size": "@roi_size", "sw_batch_size": "@train#inferer#sw_batch_size",
                "overlap": "@train#inferer#overlap", "blend_mode": "@train#inferer#mode",
                **({"slice_axis": "@slice_axis", "context": "@context"} if two_d else {}),
                **dict(spec.module_options),
            },
            "callbacks": [
                {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint", "monitor": "val/dice_mean", "mode": "max",
                 "filename": "best-epoch{epoch:03d}-dice{val/dice_mean:.4f}", "auto_insert_metric_name": False},
                {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint", "filename": "last", "monitor": None,
                 "save_top_k": 1, "enable_version_counter": False, "save_on_train_epoch_end": True},
                {"_target_": "pytorch_lightning.callbacks.EarlyStopping", "monitor": "val/dice_mean", "mode": "max",
                 "patience": spec.patience},
                {"_target_": "brats_pipeline.bundle.TrainingCurves"},
                {"_target_": "brats_pipeline.bundle.SlurmRequeue"},
                {"_target_": "brats_pipeline.bundle.SaveBestNetwork", "path": "$@ckpt_dir + '/model.pt'", **save},
            ],
            # a resumed run (--resume_from CKPT) logs into the version folder of the run it resumes
            "log_version": {"_target_": "brats_pipeline.callbacks.resume_log_version", "ckpt_path": "@resume_from"},
            "logger": [
                {"_target_": "brats_pipeline.callbacks.ResumableCSVLogger", "save_dir": "@output_dir", "name": "logs",
                 "version": "@train#log_version"},
                {"_target_": "pytorch_lightning.loggers.TensorBoardLogger", "save_dir": "@output_dir", "name": "tb",
                 "version": "@train#log_version"},
            ],
            "trainer": _trainer(spec),
        },
        "validate": {"dataset": _case_split(spec, "validate"), "inferer": "@train#inferer"},
        "initialize": [{"_target_": "pytorch_lightning.seed_everything", "seed": spec.seed, "workers": True}],
        "run": ["$@train#trainer.fit(@train#module, datamodule=@train#datamodule, ckpt_path=@resume_from)"],
    }


def multi_gpu_config(spec: BundleSpec) -> dict[str, Any]:
    """``configs/multi_gpu_train.json``: overlay on ``train.json`` changing only devices and strategy."""
    return {"train#trainer#devices": {"_target_": "brats_pipeline.bundle.ddp_devices"}, "train#trainer#strategy": "ddp"}


def inference_config(spec: BundleSpec) -> dict[str, Any]:
    """``configs/inference.json``: MONAI's keys, readable by MONAI Label on its own (no merging)."""
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": spec.dataset_dir,
        "datalist": None,
        "task": spec.task,
        **_modality_ids(spec),
        **_output_mode_ids(spec),
        "device": DEVICE_EXPR,
        "amp": True,
        "overwrite": False,
        **_geometry_ids(spec),
        "network_def": spec.network_def(),
        "network": {"_target_": "brats_pipeline.bundle.load_network", "network": "@network_def",
                    "path": "$@bundle_root + '/models/model.pt'", "device": "@device"},
        "preprocessing": {"_target_": "brats_pipeline.bundle.inference_preprocessing", "task": "@task",
                          **_reads_modalities(spec), "orientation": spec.orientation},
        "dataset": {
            "_target_": "Dataset",
            "data": {"_target_": "brats_pipeline.bundle.inference_cases", "dataset_dir": "@dataset_dir",
                     "datalist": "@datalist", "task": "@task", **_reads_modalities(spec)},
            "transform": "@preprocessing",
        },
        "inferer": _inferer(spec),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": _postprocessing(spec),
        },
        "writer": {"_target_": "brats_pipeline.bundle.LabelWriter", "output_dir": "@output_dir", "postfix": "seg"},
        "scorer": None,
        "evaluator": {
            "_target_": "brats_pipeline.bundle.BundleRunner", "dataset": "@dataset", "network": "@network",
            "inferer": "@inferer", "postprocessing": "@postprocessing", "writer": "@writer", "scorer": "@scorer",
            "device": "@device", "amp": "@amp", "overwrite": "@overwrite",
        },
        "run": ["$@evaluator.run()"],
    }


def evaluate_config(spec: BundleSpec) -> dict[str, Any]:
    """``configs/evaluate.json``: overlay on ``inference.json`` that predicts labelled cases and scores them."""
    return {
        "fold": None,
        "dataset#data": {"_target_": "brats_pipeline.bundle.inference_cases", "dataset_dir": "@dataset_dir",
                         "datalist": "@datalist", "task": "@task", **_reads_modalities(spec), "labelled": True,
                         "fold": "@fold"},
        "scorer": {"_target_": "brats_pipeline.bundle.CaseScorer", "task": "@task", "output_dir": "@output_dir"},
    }


def metadata(spec: BundleSpec, eval_metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``configs/metadata.json`` following the MONAI bundle schema.

    ``outputs.pred`` describes the network output (one sigmoid channel per region, listed in
    ``regions``; softmax bundles: ``format`` ``labels``, one channel per class, listed in ``classes``
    with its label value); its ``channel_def`` maps the **label values** of the post-processed label map
    to names, because that is the list MONAI Label shows and returns as ``label_names``.
    """
    task, read = spec.task_obj, spec.input_task  # read: the modalities the network reads (a subset, or all)
    modality_names = {"t1c": "T1c (T1 post-contrast)", "t1": "T1 (native)", "t2": "T2", "flair": "FLAIR"}
    labels = {"0": "background", **{str(k): v for k, v in sorted(task.labels.items())}}
    inputs = _network_inputs(spec)
    if spec.spatial_dims == 3:
        shape = ["32*n", "32*n", "32*n"]
        description = (f"{spec.title}. Input: {len(read.modalities)} co-registered MRI sequences "
                       f"({', '.join(read.modality_names)}); ")
        image_classes = ", ".join(f"channel {i}: {modality_names.get(m.contrast, m.name)}"
                                  for i, m in enumerate(read.modalities))
    else:
        # sides: multiples of 2 ** (levels + 1) (x the downsampling): at least 2 x 2 at the bottleneck (instance norm)
        kwargs = dict(spec.network_kwargs)
        shape = [f"{2 ** (len(kwargs.get('strides', [2] * 4)) + 1) * int(kwargs.get('downsample', 1))}*n"] * 2
        axis = "xyz"[spec.slice_axis]
        description = (f"{spec.title}. Input: a volume of {len(read.modalities)} co-registered MRI sequences "
                       f"({', '.join(read.modality_names)}); the 2D network ({spec.network}) segments it slice by "
                       f"slice across axis {spec.slice_axis} ({axis}), each slice with {spec.context} neighbour(s) on "
                       f"each side stacked as channels: {spec.in_channels} input channels = "
                       f"{', '.join(read.modality_names)} at slices "
                       f"{', '.join(_slice_name(axis, j) for j in range(-spec.context, spec.context + 1))} "
                       f"(channel c * {2 * spec.context + 1} + j: modality c at slice {axis} - {spec.context} + j; "
                       "edge slices repeated); ")
        image_classes = ", ".join(f"channel {i}: {name}" for i, name in inputs.items())
    out = _outputs(spec, labels, shape)
    return {
        "schema": SCHEMA_URL,
        "version": spec.version,
        "changelog": dict(spec.changelog),
        "monai_version": GENERATED_WITH["monai"],
        "pytorch_version": GENERATED_WITH["pytorch"],
        "numpy_version": GENERATED_WITH["numpy"],
        "required_packages_version": dict(REQUIRED_PACKAGES),
        "name": spec.title,
        "task": spec.title,
        "description": description + out["description"],
        "authors": "brats-pipeline contributors",
        "copyright": "Copyright (c) brats-pipeline contributors",
        "data_source": spec.data_source,
        "data_type": "nibabel",
        "image_classes": image_classes,
        "label_classes": ", ".join(f"{k}: {v}" for k, v in labels.items()),
        "pred_classes": out["pred_classes"],
        "eval_metrics": dict(eval_metrics or {}),
        # what the *_dice_* / *_hd95_* entries of eval_metrics mean (validation and brats-evaluate share them)
        "metric_definitions": dict(METRIC_DEFINITIONS),
        "intended_use": "Research only; not for clinical use.",
        "references": [spec.paper, task.description],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "MR", "num_channels": spec.in_channels,
                "spatial_shape": shape, "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": inputs,
            }},
            "outputs": {"pred": out["pred"]},
        },
    }


def _outputs(spec: BundleSpec, labels: Mapping[str, str], shape: list[str]) -> dict[str, Any]:
    """The network output in ``metadata.json``: ``description`` (its end), ``pred_classes`` and ``pred``
    (``network_data_format.outputs``): region channels (sigmoid) or one channel per class (softmax)."""
    task = spec.task_obj
    if spec.output_mode == "softmax":
        return {
            "description": (f"output: {task.n_classes} class channels ({', '.join(task.class_names)}; softmax), whose "
                            f"argmax gives the {task.name} labels {list(task.label_values)}."),
            "pred_classes": ", ".join(f"channel {i}: {name} = label {value}"
                                      for i, (name, value) in enumerate(zip(task.class_names, task.label_values))),
            "pred": {"type": "image", "format": "labels", "num_channels": task.n_classes, "spatial_shape": shape,
                     "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": dict(labels),
                     "classes": {str(i): {"name": name, "label": value}
                                 for i, (name, value) in enumerate(zip(task.class_names, task.label_values))}},
        }
    return {
        "description": (f"output: {len(task.regions)} region channel(s) "
                        f"({', '.join(task.region_names)}), turned into the {task.name} labels {list(task.label_values)}."),
        "pred_classes": ", ".join(f"channel {i}: {r.name} = labels {sorted(r.labels)}" for i, r in enumerate(task.regions)),
        "pred": {
            "type": "image", "format": "segmentation", "num_channels": len(task.regions), "spatial_shape": shape,
            "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": dict(labels),
            "regions": {str(i): {"name": r.name, "labels": sorted(r.labels)} for i, r in enumerate(task.regions)},
        },
    }


def _slice_name(axis: str, offset: int) -> str:
    return f"{axis}{offset:+d}" if offset else axis


def _network_inputs(spec: BundleSpec) -> dict[str, str]:
    """The network's input channels by index: modality names (3D), ``"<modality> <slice>"`` for 2.5D."""
    names = spec.input_task.modality_names
    if spec.spatial_dims == 3 or not spec.context:
        return {str(i): m for i, m in enumerate(names)}
    axis, k = "xyz"[spec.slice_axis], spec.context
    slices = [_slice_name(axis, j) for j in range(-k, k + 1)]
    return {str(i): f"{m} {sl}" for i, (m, sl) in enumerate((m, sl) for m in names for sl in slices)}


LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def license_text(spec: BundleSpec) -> str:
    """``LICENSE``: Apache 2.0 for the bundle; a note on the training data's terms."""
    data = ("the TCGA LGG data of Buda et al. (CC BY-NC-SA 4.0)" if spec.task == "lgg"
            else "BraTS data (see the challenge's data terms)")
    return (
        "Copyright (c) brats-pipeline contributors\n\n"
        'Licensed under the Apache License, Version 2.0 (the "License"); you may not use the files of this\n'
        "bundle except in compliance with the License. You may obtain a copy of the License at\n\n"
        "    http://www.apache.org/licenses/LICENSE-2.0\n\n"
        "Unless required by applicable law or agreed to in writing, software distributed under the License\n"
        'is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or\n'
        "implied. See the License for the specific language governing permissions and limitations under the\n"
        "License.\n\n"
        f"{SCHEMA_FILE}: Project MONAI's bundle metadata schema, unchanged\n"
        "(Copyright (c) MONAI Consortium; Apache License 2.0).\n\n"
        f"Weights trained with this bundle on {data} are subject to the terms of that data as well.\n"
        "Research use only; not a medical device.\n"
    )


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


def render_bundle(spec: BundleSpec, eval_metrics: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Every file of a bundle: ``{relative path: text}`` (no weights; ``models/.gitkeep`` is empty).

    ``eval_metrics`` are measurements, not template: pass those of the bundle's current
    ``metadata.json`` (:func:`write_bundle` and :func:`check_bundle` do).
    """
    from brats_pipeline.bundle.docs import readme  # docs builds on this module

    return {
        "configs/metadata.json": _json_text(metadata(spec, eval_metrics)),
        "configs/train.json": _json_text(train_config(spec)),
        "configs/multi_gpu_train.json": _json_text(multi_gpu_config(spec)),
        "configs/inference.json": _json_text(inference_config(spec)),
        "configs/evaluate.json": _json_text(evaluate_config(spec)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": readme(spec, eval_metrics),
        "LICENSE": license_text(spec),
        "models/.gitkeep": "",
    }


def _current_eval_metrics(bundle_dir: Path) -> dict[str, Any]:
    meta = bundle_dir / "configs" / "metadata.json"
    if not meta.is_file():
        return {}
    try:
        return dict(json.loads(meta.read_text(encoding="utf-8")).get("eval_metrics") or {})
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta}: not valid JSON ({exc})") from exc


def write_bundle(spec: BundleSpec, root: str | os.PathLike) -> Path:
    """Write (or refresh) ``root/<spec.name>`` from the template, keeping its measured ``eval_metrics``."""
    from preprocessing.io import atomic_path

    bundle_dir = Path(root) / spec.name
    for rel, text in render_bundle(spec, _current_eval_metrics(bundle_dir)).items():
        path = bundle_dir / rel
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return bundle_dir


def check_bundle(spec: BundleSpec, root: str | os.PathLike) -> list[str]:
    """Files of ``root/<spec.name>`` that differ from the template (missing ones included); empty when in sync."""
    bundle_dir = Path(root) / spec.name
    stale = []
    for rel, text in render_bundle(spec, _current_eval_metrics(bundle_dir)).items():
        path = bundle_dir / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(str(path))
    return stale

