"""What differs between the bundles of ``bundles/``: one :class:`BundleSpec` each, in :data:`BUNDLES`.

:mod:`~brats_pipeline.bundle.templates` writes every file of a bundle from its spec. The LGG
bundle's spec is built from the LGG CPU recipe (``brats_pipeline/configs/lgg_cpu.yaml``,
:func:`spec_from_recipe`), so its ``train.json`` trains that recipe; after a change to the
recipe, ``brats-bundle generate`` rewrites the bundle (``--check`` and a test notice it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brats_pipeline.constants import Task, check_output_mode, get_task

_BRATS_SOURCE = ("BraTS 2020/2021 training data (https://www.synapse.org/brats), or any data prepared with "
                 "brats-preprocess: co-registered, skull-stripped, 1 mm isotropic; brats-synth writes synthetic cases")


#: The metadata schema the MONAI model zoo names today: it requires ``required_packages_version``, the key MONAI
#: >= 1.4 reads (the 20220324 schema requires ``optional_packages_version``, which MONAI renames with a warning).
SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_URL = f"https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/{SCHEMA_NAME}"
#: Where each bundle ships an unchanged copy of that schema (Project MONAI's, Apache-2.0), so that
#: ``verify_metadata --filepath docs/meta_schema_20240725.json`` reads it instead of downloading (offline).
SCHEMA_FILE = f"docs/{SCHEMA_NAME}"

#: The changelog entry of the metadata and input-error release (0.1.1 of the BraTS bundles, 0.2.1 of the LGG one).
_METADATA_CHANGE = ("metadata: schema meta_schema_20240725 (a copy in docs/ for offline verify_metadata) and "
                    "required_packages_version only (no deprecation warning); metric_definitions, one HD95 (BraTS) "
                    "in validation and brats-evaluate; input errors reach MONAI Label clients as HTTP 422")


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
        roi_size: training patch and inference window: (x, y, z) voxels for 3D, the two
            in-plane sizes for a 2D network.
        sw_batch_size: windows (2D: slices) per forward pass at inference.
        overlap: sliding-window overlap fraction.
        batch_size: training patches (2D: slices) per batch.
        samples_per_volume: patches drawn per volume per epoch.
        orientation: axis codes the data is turned to (``None``: keep the files' orientation).
        augmentation: :class:`~brats_pipeline.data.transforms.AugmentationConfig` overrides.
        spatial_dims: the network's: 3 (volumes) or 2 (slices; 2.5D with ``context``).
        slice_axis: 2D only: the axis slices are taken across (0 = x, 1 = y, 2 = z).
        context: 2D only: neighbouring slices each side stacked as channels (2.5D).
        loss: loss name (:func:`brats_pipeline.losses.build_loss`).
        optimizer: optimiser class path; optimizer_options: its arguments (``lr`` ...).
        lr_scheduler: schedule class path; schedule: its arguments.
        blend_mode: sliding-window blending, ``gaussian`` or ``constant``.
        module_options: further :class:`~brats_pipeline.module.BratsSegmentationModule` arguments.
        amp: bf16 mixed precision where the device runs it natively.
        seed: ``seed_everything`` before training.
        epochs: ``max_epochs`` (-1: no epoch limit, ``max_steps`` decides).
        max_steps: fixed number of optimiser steps (``None``: the epochs decide).
        val_interval: validate every n epochs.
        patience: early stopping after this many validations without improvement.
        num_workers: data-loader workers.
        datamodule_options: further :class:`~brats_pipeline.data.datamodule.BratsDataModule` arguments.
        trainer_options: further Lightning ``Trainer`` arguments.
        log_every_n_steps: Lightning's.
        save_weights: what ``models/model.pt`` gets at the end of training: ``best`` (best
            validation Dice) or ``final`` (the last step of a fixed, annealed run).
        recipe: the ``brats-train`` config the bundle's ``train.json`` reproduces, if any.
        shipped: the bundle ships trained weights: ``(what, value)`` rows about their training
            for ``docs/README.md`` (empty: no weights are shipped).
        dataset_dir: placeholder dataset folder written into the configs.
        data_source: where the training data comes from.
        scriptable: ``torch.jit.script`` works (else TorchScript export traces).
        version: bundle version; changelog: version -> what changed (newest first).
        output_mode: ``sigmoid`` (one output channel per region) or ``softmax`` (one per class of
            the task's label scheme; ``inference.json`` then takes the softmax, its argmax and the
            label values, and ``metadata.json`` describes class channels).
        modalities: the modalities the network reads, a subset of the task's (names or aliases,
            channels in the task's order: :mod:`brats_pipeline.data.modalities`); ``None``: all.
            ``inference.json`` then loads only those (files, or channels of a 4D image of all) and
            ``metadata.json`` describes that many input channels.
    """

    name: str
    title: str
    task: str
    network: str
    network_kwargs: tuple[tuple[str, Any], ...]
    paper: str
    roi_size: tuple[int, ...] = (128, 128, 128)
    sw_batch_size: int = 4
    overlap: float = 0.5
    batch_size: int = 2
    samples_per_volume: int = 2
    orientation: str | None = "RAS"
    augmentation: tuple[tuple[str, Any], ...] = ()
    spatial_dims: int = 3
    slice_axis: int = 2
    context: int = 0
    loss: str = "dice_ce"
    optimizer: str = "torch.optim.AdamW"
    optimizer_options: tuple[tuple[str, Any], ...] = (("lr", 0.001), ("weight_decay", 1e-05))
    lr_scheduler: str = "brats_pipeline.schedules.ProgressLR"
    schedule: tuple[tuple[str, Any], ...] = (("shape", "cosine"), ("warmup_epochs", 5))
    blend_mode: str = "gaussian"
    module_options: tuple[tuple[str, Any], ...] = ()
    amp: bool = True
    seed: int = 0
    epochs: int = 300
    max_steps: int | None = None
    val_interval: int = 5
    patience: int = 20
    num_workers: int = 4
    datamodule_options: tuple[tuple[str, Any], ...] = ()
    trainer_options: tuple[tuple[str, Any], ...] = ()
    log_every_n_steps: int = 10
    save_weights: str = "best"
    recipe: str | None = None
    shipped: tuple[tuple[str, str], ...] = ()
    dataset_dir: str = "/workspace/data/BraTS2021_TrainingData"
    data_source: str = _BRATS_SOURCE
    scriptable: bool = True
    version: str = "0.1.1"
    changelog: tuple[tuple[str, str], ...] = (
        ("0.1.1", _METADATA_CHANGE),
        ("0.1.0", "first version: Lightning training through monai.bundle run, inference/evaluation, MONAI Label"),
    )
    modalities: tuple[str, ...] | None = None
    output_mode: str = "sigmoid"
    mirror_axes: tuple[int, ...] = ()
    postprocess: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        check_output_mode(self.output_mode)
        if self.modalities is not None:  # canonical: the task's names in its channel order (errors name the bundle)
            from brats_pipeline.data.modalities import resolve_modalities

            names = resolve_modalities(self.task, self.modalities, f"bundle {self.name}: modalities")
            object.__setattr__(self, "modalities", None if names == get_task(self.task).modality_names else names)

    @property
    def task_obj(self) -> Task:
        return get_task(self.task)

    @property
    def input_task(self) -> Task:
        """The task as the network reads it: :attr:`task_obj`, or its modality subset (:attr:`modalities`)."""
        from brats_pipeline.data.modalities import select_modalities

        return select_modalities(self.task_obj, self.modalities)

    def network_def(self) -> dict[str, Any]:
        """``network_def``: the one definition of the network, the same in ``train.json`` and ``inference.json``."""
        return {"_target_": "brats_pipeline.networks.build_network", "name": self.network,
                "in_channels": self.in_channels, "out_channels": self.task_obj.output_channels(self.output_mode),
                "spatial_dims": self.spatial_dims, **dict(self.network_kwargs)}

    @property
    def in_channels(self) -> int:
        """The network's input channels: the modalities read, times ``2 * context + 1`` slices for 2.5D."""
        return len(self.input_task.modalities) * (2 * self.context + 1)


#: The LGG CPU recipe (``brats-train`` config); the LGG bundle is built from it.
LGG_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "lgg_cpu.yaml"
#: Settings of a ``brats-train`` config that the bundle sets itself (its device, logs, data ids).
_BUNDLE_OWNED = {"trainer": {"accelerator", "devices", "precision", "default_root_dir", "logger", "enable_progress_bar"},
                 "data": {"datalist", "fold", "patch_size"}}


def spec_from_recipe(recipe: str | os.PathLike, name: str, title: str, task: str, paper: str, **fields: Any) -> BundleSpec:
    """A :class:`BundleSpec` whose ``train.json`` is the ``brats-train`` config ``recipe``.

    Network, loss, optimiser and schedule, windows (and slice axis / context), data-module
    settings, augmentation, trainer length and validation interval, early-stopping patience,
    seed and precision (``bf16-mixed`` -> ``amp``, applied by the device rule) come from the
    config; what the bundle sets itself (device, logger, root folder, datalist, fold) does not.
    ``fields`` are the other :class:`BundleSpec` fields (title, data source, weights, docs).

    Raises:
        ValueError: a setting the bundle cannot express (named), e.g. ``patch_size`` unlike
            ``roi_size``, or an early-stopping monitor other than ``val/dice_mean``.
    """
    import yaml

    from brats_pipeline.networks import get_network_spec

    path = Path(recipe)
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    model, data, trainer = dict(cfg.get("model") or {}), dict(cfg.get("data") or {}), dict(cfg.get("trainer") or {})
    stop = dict(cfg.get("early_stopping") or {})
    unknown = set(cfg) - {"seed_everything", "trainer", "model", "data", "early_stopping"}
    fixed_stop = {"monitor": "val/dice_mean", "mode": "max"}  # what the bundle's EarlyStopping watches
    unknown |= {f"early_stopping.{k}" for k, v in stop.items() if k != "patience" and v != fixed_stop.get(k)}
    if data.get("patch_size") is not None and list(data["patch_size"]) != list(model.get("roi_size", [])):
        unknown.add("data.patch_size (differs from model.roi_size)")
    if unknown:
        raise ValueError(f"{path}: the bundle cannot express {sorted(unknown)}")
    network = model.pop("network")
    optimizer, scheduler = model.pop("optimizer"), model.pop("lr_scheduler")
    spatial_dims = 2 if get_network_spec(network).spatial_dims == (2,) or model.get("context") else 3
    named = {k: model.pop(k) for k in ("roi_size", "sw_batch_size", "overlap", "blend_mode", "slice_axis", "context",
                                       "loss") if k in model}
    kwargs = model.pop("network_kwargs", None) or {}
    data_named = {k: data.pop(k) for k in ("batch_size", "samples_per_volume", "num_workers", "orientation") if k in data}
    for key in _BUNDLE_OWNED["data"]:
        data.pop(key, None)
    if data.pop("cache", "memory") != "memory":
        raise ValueError(f"{path}: the bundle caches in memory; data.cache must be 'memory'")
    augmentation = data.pop("augmentation", None) or {}
    max_steps = trainer.pop("max_steps", None)  # Lightning's defaults where the config is silent
    steps = {"epochs": trainer.pop("max_epochs", -1 if max_steps else 1000), "max_steps": max_steps,
             "val_interval": trainer.pop("check_val_every_n_epoch", 1),
             "log_every_n_steps": trainer.pop("log_every_n_steps", 50)}
    precision = str(trainer.get("precision", "32-true"))
    for key in _BUNDLE_OWNED["trainer"]:
        trainer.pop(key, None)
    return BundleSpec(
        name, title, task, network, tuple(kwargs.items()), paper,
        roi_size=tuple(named.pop("roi_size", (128, 128, 128))), spatial_dims=spatial_dims, **named, **data_named,
        augmentation=tuple(augmentation.items()),
        optimizer=optimizer["class_path"], optimizer_options=tuple((optimizer.get("init_args") or {}).items()),
        lr_scheduler=scheduler["class_path"], schedule=tuple((scheduler.get("init_args") or {}).items()),
        module_options=tuple(model.items()), datamodule_options=tuple(data.items()), trainer_options=tuple(trainer.items()),
        **steps, patience=stop.get("patience", 50), amp=precision.startswith("bf16"),  # brats-train's patience
        seed=int(cfg.get("seed_everything", 0)), recipe=_repo_relative(path), **fields,
    )


def _repo_relative(path: Path) -> str:
    root = Path(__file__).resolve().parents[2]
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


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
    "lgg_flair_segmentation": spec_from_recipe(
        LGG_RECIPE, "lgg_flair_segmentation",
        "Lower-grade glioma FLAIR-abnormality segmentation with a 2.5D U-Net on axial slices", "lgg",
        "Kerfoot et al., Left-Ventricle Quantification Using Residual U-Net, STACOM 2018 (MONAI UNet); 2D LGG "
        "segmentation: Buda et al., Computers in Biology and Medicine 2019",
        save_weights="final",
        # inference settings chosen by cross-validation (benchmarks/bench_lgg_postprocess.py; README "LGG")
        mirror_axes=(0,),
        postprocess=(("keep_largest", True),),
        shipped=(
            ("training data", "all 50 patients of ../shared/data/lgg (ids: docs/training_cases.txt), nothing else"),
            ("steps / epochs", "5000 optimiser steps (66 epochs of every tumour slice plus as many empty ones), batch 16"),
            ("wall-clock time", "16.7 min (brats-train, 2 torch threads, a nearly idle machine; 1550 CPU-s); target <= 30 min"),
            ("machine", "AMD EPYC with AVX512-BF16 (lscpu Model name: AMD EPYC), 2 cores, 2 torch threads, bf16-mixed autocast"),
            ("final training loss", "0.566 (DiceCE, mean of the last epoch)"),
        ),
        dataset_dir="/workspace/data/lgg",
        data_source=("TCGA lower-grade glioma FLAIR-abnormality data of Buda et al. 2019 (110 patients; "
                     "kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation), as NIfTI per patient: "
                     "<ID>_t1, <ID>_flair, <ID>_t1c, <ID>_seg; 256 x 256 axial slices, thick and of unknown spacing"),
        version="0.3.0",
        changelog=(
            ("0.3.0", "the recipe's 5000 steps (was 3000); inference averages the left-right mirror and keeps the "
                      "largest connected component (both chosen by 5-fold cross-validation); weights retrained"),
            ("0.2.1", _METADATA_CHANGE),
            ("0.2.0", "2.5D U-Net on axial slices (unet2d 16-256, each slice with one neighbour each side: 9 "
                      "channels) trained with the LGG CPU recipe (brats_pipeline/configs/lgg_cpu.yaml); weights "
                      "trained on the 50 patients of ../shared/data/lgg shipped"),
            ("0.1.0", "first version: Lightning training through monai.bundle run, inference/evaluation, MONAI Label"),
        ),
    ),
}


def get_bundle_spec(name: str) -> BundleSpec:
    """The spec of bundle ``name`` (error lists the bundles)."""
    if name not in BUNDLES:
        raise ValueError(f"unknown bundle {name!r}; choose one of {', '.join(BUNDLES)}")
    return BUNDLES[name]
