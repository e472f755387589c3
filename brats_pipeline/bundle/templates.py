"""The bundles' files from one template: :class:`BundleSpec` holds what differs, the rest is here.

:data:`BUNDLES` lists the four bundles of ``bundles/``; :func:`render_bundle` returns every
file of one (configs, metadata, logging, docs, licence); ``bundles/`` is the committed output
of :func:`write_bundle` (``brats-bundle generate``) and a test checks that it is in sync
(:func:`check_bundle`). Measured ``eval_metrics`` are data, not template: they are kept from
the bundle's current ``metadata.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brats_pipeline.constants import Task, get_task

#: The metadata schema the MONAI model zoo names (a copy for offline checks: ../shared/data/monai_bundle_schema).
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
#: Versions the committed bundles were generated and tested with (fixed, so that rendering is reproducible).
GENERATED_WITH = {"monai": "1.6.1", "pytorch": "2.13.0", "numpy": "2.4.6"}
REQUIRED_PACKAGES = {"brats-pipeline": "0.1.0", "pytorch-lightning": "2.6.6", "nibabel": "5.4.2"}
DEVICE_EXPR = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"
_BRATS_SOURCE = ("BraTS 2020/2021 training data (https://www.synapse.org/brats), or any data prepared with "
                 "brats-preprocess: co-registered, skull-stripped, 1 mm isotropic; brats-synth writes synthetic cases")


@dataclass(frozen=True)
class BundleSpec:
    """What differs between the bundles; :func:`render_bundle` writes the rest from one template.

    Args:
        name: folder name under ``bundles/`` (and MONAI Label model name).
        title: one line for people.
        task: task name (modalities, labels, regions).
        network: registry name for :func:`brats_pipeline.networks.build_network`.
        network_kwargs: architecture options (JSON-serialisable).
        paper: the paper the network implements.
        roi_size: training patch and sliding-window size (x, y, z) voxels.
        sw_batch_size: windows per forward pass at inference.
        batch_size: training patches per batch.
        samples_per_volume: patches drawn per volume per epoch.
        orientation: axis codes the data is turned to (``None``: keep the files' orientation).
        augmentation: :class:`~brats_pipeline.data.transforms.AugmentationConfig` overrides.
        dataset_dir: placeholder dataset folder written into the configs.
        data_source: where the training data comes from.
        scriptable: ``torch.jit.script`` works (else TorchScript export traces).
        version: bundle version; changelog: version -> what changed.
    """

    name: str
    title: str
    task: str
    network: str
    network_kwargs: tuple[tuple[str, Any], ...]
    paper: str
    roi_size: tuple[int, int, int] = (128, 128, 128)
    sw_batch_size: int = 4
    batch_size: int = 2
    samples_per_volume: int = 2
    orientation: str | None = "RAS"
    augmentation: tuple[tuple[str, Any], ...] = ()
    dataset_dir: str = "/workspace/data/BraTS2021_TrainingData"
    data_source: str = _BRATS_SOURCE
    scriptable: bool = True
    version: str = "0.1.0"
    changelog: tuple[tuple[str, str], ...] = (
        ("0.1.0", "first version: Lightning training through monai.bundle run, inference/evaluation, MONAI Label"),
    )

    @property
    def task_obj(self) -> Task:
        return get_task(self.task)


_BRATS_BUNDLES = (
    ("brats_unet3d_segmentation", "3D U-Net", "unet3d", (("features", [32, 32, 64, 128, 256, 32]),),
     "Çiçek et al., 3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation, MICCAI 2016", True),
    ("brats_attention_unet_segmentation", "Attention U-Net", "attention_unet",
     (("channels", [16, 32, 64, 128, 256]), ("strides", [2, 2, 2, 2])),
     "Oktay et al., Attention U-Net: Learning Where to Look for the Pancreas, MIDL 2018", True),
    ("brats_spatial_attention_unet_segmentation", "3D U-Net with spatial attention", "spatial_attention_unet",
     (("features", [16, 32, 64, 128, 256]),),
     "Çiçek et al., MICCAI 2016 (3D U-Net) with CBAM spatial attention, Woo et al., ECCV 2018", False),
)

#: Every bundle in ``bundles/``, by name.
BUNDLES: dict[str, BundleSpec] = {
    **{name: BundleSpec(name, f"BraTS glioma segmentation (TC/WT/ET) with a {label}", "brats2021", net, kw, paper,
                        scriptable=scriptable)
       for name, label, net, kw, paper, scriptable in _BRATS_BUNDLES},
    "lgg_flair_segmentation": BundleSpec(
        "lgg_flair_segmentation", "Lower-grade glioma FLAIR-abnormality segmentation with a 3D U-Net", "lgg", "unet3d",
        (("features", [32, 32, 64, 128, 256, 32]),),
        "Çiçek et al., 3D U-Net, MICCAI 2016; data: Buda et al., Computers in Biology and Medicine 2019",
        roi_size=(128, 128, 32), sw_batch_size=8, batch_size=4, samples_per_volume=4, orientation=None,
        augmentation=(("rotate_deg", 15.0), ("elastic_magnitude", 3.0)),
        dataset_dir="/workspace/data/lgg",
        data_source=("TCGA lower-grade glioma FLAIR-abnormality data of Buda et al. 2019 (110 patients; "
                     "kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation), as NIfTI per patient: "
                     "<ID>_t1, <ID>_flair, <ID>_t1c, <ID>_seg"),
    ),
}


def get_bundle_spec(name: str) -> BundleSpec:
    """The spec of bundle ``name`` (error lists the bundles)."""
    if name not in BUNDLES:
        raise ValueError(f"unknown bundle {name!r}; choose one of {', '.join(BUNDLES)}")
    return BUNDLES[name]


def _network_def(spec: BundleSpec) -> dict[str, Any]:
    task = spec.task_obj
    return {"_target_": "brats_pipeline.networks.build_network", "name": spec.network,
            "in_channels": len(task.modalities), "out_channels": len(task.regions), "spatial_dims": 3,
            **dict(spec.network_kwargs)}


def _inferer(spec: BundleSpec) -> dict[str, Any]:
    return {"_target_": "SlidingWindowInferer", "roi_size": "@roi_size", "sw_batch_size": spec.sw_batch_size,
            "overlap": 0.5, "mode": "gaussian"}


def _case_split(part: str) -> dict[str, Any]:
    return {"_target_": "brats_pipeline.bundle.CaseSplit", "dataset_dir": "@dataset_dir", "datalist": "@datalist",
            "task": "@task", "fold": "@fold", "part": part, "output_dir": "@output_dir", "data": None}


def train_config(spec: BundleSpec) -> dict[str, Any]:
    """``configs/train.json``: Lightning training with MONAI's ids (``train#trainer``, ``train#dataset``, ...)."""
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/runs'",
        "dataset_dir": spec.dataset_dir,
        "datalist": "$@dataset_dir + '/datalist.json'",
        "task": spec.task,
        "fold": 0,
        "epochs": 300,
        "val_interval": 5,
        "resume_from": None,
        "device": DEVICE_EXPR,
        "amp": True,
        "roi_size": list(spec.roi_size),
        "network_def": _network_def(spec),
        "train": {
            "dataset": _case_split("train"),
            "handlers": [],
            "inferer": _inferer(spec),
            "datamodule": {
                "_target_": "brats_pipeline.bundle.split_datamodule", "train": "@train#dataset",
                "validate": "@validate#dataset", "task": "@task", "datalist_path": "$@output_dir + '/datalist_split.json'",
                "patch_size": "@roi_size", "batch_size": spec.batch_size, "samples_per_volume": spec.samples_per_volume,
                "num_workers": 4, "cache": "memory", "orientation": spec.orientation,
                "augmentation": dict(spec.augmentation) or None, "augmentation_device": "auto",
            },
            "module": {
                "_target_": "brats_pipeline.module.BratsSegmentationModule", "network": "@network_def", "task": "@task",
                "loss": "dice_ce", "optimizer": "adamw", "lr": 0.001, "weight_decay": 1e-05, "scheduler": "cosine",
                "warmup_epochs": 5, "roi_size": "@roi_size", "sw_batch_size": "@train#inferer#sw_batch_size",
                "overlap": "@train#inferer#overlap", "blend_mode": "@train#inferer#mode",
            },
            "callbacks": [
                {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint", "monitor": "val/dice_mean", "mode": "max",
                 "filename": "best-epoch{epoch:03d}-dice{val/dice_mean:.4f}", "auto_insert_metric_name": False},
                {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint", "filename": "last", "monitor": None,
                 "save_top_k": 1, "enable_version_counter": False, "save_on_train_epoch_end": True},
                {"_target_": "pytorch_lightning.callbacks.EarlyStopping", "monitor": "val/dice_mean", "mode": "max",
                 "patience": 20},
                {"_target_": "brats_pipeline.bundle.TrainingCurves"},
                {"_target_": "brats_pipeline.bundle.SlurmRequeue"},
                {"_target_": "brats_pipeline.bundle.SaveBestNetwork", "path": "$@ckpt_dir + '/model.pt'"},
            ],
            "logger": [
                {"_target_": "pytorch_lightning.loggers.CSVLogger", "save_dir": "@output_dir", "name": "logs"},
                {"_target_": "pytorch_lightning.loggers.TensorBoardLogger", "save_dir": "@output_dir", "name": "tb"},
            ],
            "trainer": {
                "_target_": "pytorch_lightning.Trainer", "max_epochs": "@epochs",
                "accelerator": {"_target_": "brats_pipeline.bundle.accelerator_of", "device": "@device"},
                "devices": {"_target_": "brats_pipeline.bundle.devices_of", "device": "@device"},
                "precision": {"_target_": "brats_pipeline.bundle.precision_of", "device": "@device", "amp": "@amp"},
                "check_val_every_n_epoch": "@val_interval", "log_every_n_steps": 10, "callbacks": "@train#callbacks",
                "logger": "@train#logger", "default_root_dir": "@output_dir", "benchmark": True,
                "enable_progress_bar": True,
            },
        },
        "validate": {"dataset": _case_split("validate"), "inferer": "@train#inferer"},
        "initialize": [{"_target_": "pytorch_lightning.seed_everything", "seed": 0, "workers": True}],
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
        "device": DEVICE_EXPR,
        "amp": True,
        "overwrite": False,
        "roi_size": list(spec.roi_size),
        "network_def": _network_def(spec),
        "network": {"_target_": "brats_pipeline.bundle.load_network", "network": "@network_def",
                    "path": "$@bundle_root + '/models/model.pt'", "device": "@device"},
        "preprocessing": {"_target_": "brats_pipeline.bundle.inference_preprocessing", "task": "@task",
                          "orientation": spec.orientation},
        "dataset": {
            "_target_": "Dataset",
            "data": {"_target_": "brats_pipeline.bundle.inference_cases", "dataset_dir": "@dataset_dir",
                     "datalist": "@datalist", "task": "@task"},
            "transform": "@preprocessing",
        },
        "inferer": _inferer(spec),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                 "nearest_interp": False, "to_tensor": True},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                {"_target_": "brats_pipeline.bundle.RegionsToLabelsd", "keys": "pred", "task": "@task"},
            ],
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
                         "datalist": "@datalist", "task": "@task", "labelled": True, "fold": "@fold"},
        "scorer": {"_target_": "brats_pipeline.bundle.CaseScorer", "task": "@task", "output_dir": "@output_dir"},
    }


def metadata(spec: BundleSpec, eval_metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``configs/metadata.json`` following the MONAI bundle schema.

    ``outputs.pred`` describes the network output (one sigmoid channel per region, listed in
    ``regions``); its ``channel_def`` maps the **label values** of the post-processed label map
    to names, because that is the list MONAI Label shows and returns as ``label_names``.
    """
    task = spec.task_obj
    modality_names = {"t1c": "T1c (T1 post-contrast)", "t1": "T1 (native)", "t2": "T2", "flair": "FLAIR"}
    labels = {"0": "background", **{str(k): v for k, v in sorted(task.labels.items())}}
    shape = ["32*n", "32*n", "32*n"]
    return {
        "schema": SCHEMA_URL,
        "version": spec.version,
        "changelog": dict(spec.changelog),
        "monai_version": GENERATED_WITH["monai"],
        "pytorch_version": GENERATED_WITH["pytorch"],
        "numpy_version": GENERATED_WITH["numpy"],
        "optional_packages_version": dict(REQUIRED_PACKAGES),
        "required_packages_version": dict(REQUIRED_PACKAGES),
        "name": spec.title,
        "task": spec.title,
        "description": (f"{spec.title}. Input: {len(task.modalities)} co-registered MRI sequences "
                        f"({', '.join(task.modality_names)}); output: {len(task.regions)} region channel(s) "
                        f"({', '.join(task.region_names)}), turned into the {task.name} labels {list(task.label_values)}."),
        "authors": "brats-pipeline contributors",
        "copyright": "Copyright (c) brats-pipeline contributors",
        "data_source": spec.data_source,
        "data_type": "nibabel",
        "image_classes": ", ".join(f"channel {i}: {modality_names.get(m.contrast, m.name)}"
                                   for i, m in enumerate(task.modalities)),
        "label_classes": ", ".join(f"{k}: {v}" for k, v in labels.items()),
        "pred_classes": ", ".join(f"channel {i}: {r.name} = labels {sorted(r.labels)}" for i, r in enumerate(task.regions)),
        "eval_metrics": dict(eval_metrics or {}),
        "intended_use": "Research only; not for clinical use.",
        "references": [spec.paper, task.description],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "MR", "num_channels": len(task.modalities),
                "spatial_shape": shape, "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {str(i): m.name for i, m in enumerate(task.modalities)},
            }},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": len(task.regions), "spatial_shape": shape,
                "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": labels,
                "regions": {str(i): {"name": r.name, "labels": sorted(r.labels)} for i, r in enumerate(task.regions)},
            }},
        },
    }


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
        return dict(json.loads(meta.read_text()).get("eval_metrics") or {})
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta}: not valid JSON ({exc})") from exc


def write_bundle(spec: BundleSpec, root: str | os.PathLike) -> Path:
    """Write (or refresh) ``root/<spec.name>`` from the template, keeping its measured ``eval_metrics``."""
    from preprocessing.io import atomic_path

    bundle_dir = Path(root) / spec.name
    for rel, text in render_bundle(spec, _current_eval_metrics(bundle_dir)).items():
        path = bundle_dir / rel
        if path.is_file() and path.read_text() == text:
            continue
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return bundle_dir


def check_bundle(spec: BundleSpec, root: str | os.PathLike) -> list[str]:
    """Files of ``root/<spec.name>`` that differ from the template (missing ones included); empty when in sync."""
    bundle_dir = Path(root) / spec.name
    stale = []
    for rel, text in render_bundle(spec, _current_eval_metrics(bundle_dir)).items():
        path = bundle_dir / rel
        if not path.is_file() or path.read_text() != text:
            stale.append(str(path))
    return stale

