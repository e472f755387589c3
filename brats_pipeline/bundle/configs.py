"""The four config files of a bundle from its :class:`~brats_pipeline.bundle.specs.BundleSpec`.

:func:`train_config` (``configs/train.json``: Lightning training with MONAI's ids), its overlay
:func:`multi_gpu_config` (``multi_gpu_train.json``), :func:`inference_config` (``inference.json``:
MONAI's keys, readable by MONAI Label on its own) and its overlay :func:`evaluate_config`
(``evaluate.json``), each as a JSON-ready dict; the top-level ids and parts they share
(:data:`DEVICE_EXPR`, the inferer, the geometry, modality and output-mode ids) are built here once.
:mod:`~brats_pipeline.bundle.templates` writes them with the bundle's other files.
"""

from __future__ import annotations

from typing import Any

from brats_pipeline.bundle.specs import BundleSpec

DEVICE_EXPR = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"

__all__ = ["DEVICE_EXPR", "evaluate_config", "inference_config", "multi_gpu_config", "train_config"]


def _inferer(spec: BundleSpec) -> dict[str, Any]:
    """The whole-volume inferer; with ``mirror_axes`` wrapped in a MirrorInferer (test-time mirroring)."""
    inferer = _window_inferer(spec)
    if not spec.mirror_axes:
        return inferer
    return {"_target_": "brats_pipeline.inference.inferers.MirrorInferer", "inferer": inferer,
            "mirror_axes": list(spec.mirror_axes), "activation": spec.output_mode}


def _window_inferer(spec: BundleSpec) -> dict[str, Any]:
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
    """``"output_mode": "@output_mode"`` for the module and the evaluator of a softmax bundle."""
    return {"output_mode": "@output_mode"} if spec.output_mode != "sigmoid" else {}


def _postprocessing(spec: BundleSpec) -> list[dict[str, Any]]:
    """Network output -> the task's labels on the input's grid: sigmoid, regions (p > threshold) -> labels; or
    softmax, argmax, classes -> label values (probabilities are inverted to the input's grid first)."""
    invert = {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
              "nearest_interp": False, "to_tensor": True}
    if spec.output_mode == "softmax":
        if spec.postprocess:
            raise ValueError(f"bundle {spec.name}: postprocess steps are for sigmoid (region) bundles")
        return [{"_target_": "Activationsd", "keys": "pred", "softmax": True}, invert,
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "brats_pipeline.bundle.ClassesToLabelsd", "keys": "pred", "task": "@task"}]
    # RegionsToLabelsd thresholds itself (p > 0.5, as the Predictor; MONAI's AsDiscreted takes p >= 0.5, which
    # differs where a probability is exactly 0.5), so monai.bundle run, MONAI Label and brats-infer agree voxel for voxel
    to_labels = {"_target_": "brats_pipeline.bundle.RegionsToLabelsd", "keys": "pred", "task": "@task", "threshold": 0.5}
    if spec.postprocess:  # the Predictor's own post-processing steps, with the same settings (read_bundle reads @postprocess)
        to_labels["postprocess"] = "@postprocess"
    return [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}, invert, to_labels]


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
            "inferer": _window_inferer(spec),  # validation: the window inferer (no test-time mirroring)
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
    """``configs/multi_gpu_train.json``: overlay on ``train.json``: devices and strategy, and (as the model zoo's)
    the process group destroyed at the end, so no rank aborts at exit with gloo/NCCL threads still running."""
    return {"train#trainer#devices": {"_target_": "brats_pipeline.bundle.ddp_devices"}, "train#trainer#strategy": "ddp",
            "finalize": ["$torch.distributed.is_initialized() and torch.distributed.destroy_process_group()"]}


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
        **({"postprocess": dict(spec.postprocess)} if spec.postprocess else {}),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": _postprocessing(spec),
        },
        "writer": {"_target_": "brats_pipeline.bundle.LabelWriter", "output_dir": "@output_dir", "postfix": "seg"},
        "scorer": None,
        "evaluator": {
            # one inference engine: the runner's Predictor (the one of brats-infer --bundle) gets the network and inferer
            "_target_": "brats_pipeline.bundle.BundleRunner", "dataset": "@dataset", "network": "@network",
            "inferer": "@inferer", "postprocessing": "@postprocessing", "writer": "@writer", "scorer": "@scorer",
            "device": "@device", "amp": "@amp", "overwrite": "@overwrite", "task": "@task", **_reads_modalities(spec),
            **_uses_output_mode(spec),
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
