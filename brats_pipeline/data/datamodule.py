"""``BratsDataModule``: datalist + fold -> cached datasets and loaders, augmentation on the GPU.

The deterministic transforms (load, orient, crop, normalise, regions) run once per case and
are cached (in memory, or on disk with ``cache="disk"``). Per epoch, each training volume
gives ``samples_per_volume`` random patches (label-balanced), cropped on the CPU; then

* ``augmentation_device="batch"`` (the default on GPUs: ``"auto"``): the whole batch is
  augmented by :class:`~brats_pipeline.data.augment.BatchAugment` after transfer to the
  device (``on_after_batch_transfer``) — one ``grid_sample`` for all spatial transforms,
  random numbers drawn with torch on the device. The CPU crops a margin around each patch
  so rotations do not pull in empty corners.
* ``augmentation_device="cpu"`` (the default without a GPU): stock MONAI per-sample random
  transforms in the loader workers.

**2D and 2.5D** (the model's network is 2D): the training volumes are decoded once and held in
memory, and each epoch draws slices from them (:class:`~brats_pipeline.data.slices.SliceDataset`:
every tumour slice plus ``empty_slice_ratio`` times as many random empty ones; 2.5D stacks
``context`` neighbours each side as channels), cropped or padded in-plane to ``patch_size``;
the batch ``(B, C·(2k+1), H, W)`` is augmented by ``BatchAugment`` after transfer (on the
CPU: in a background thread, or the loader's workers, beside the step; :meth:`augments_in_loader`). Validation and prediction use whole volumes, which the module's inferer runs slice by
slice. The dimensionality, slice axis and context follow the model attached to the Trainer
(``spatial_dims``, ``slice_axis``, ``context`` here are for use without one, and must agree).

Validation/test loaders yield whole volumes (batch size 1) with an ``eval_weight`` of 1.
Under DDP each rank gets a disjoint share of the cases
(:class:`~brats_pipeline.data.loaders.EvalShardSampler`), so none
is counted twice; a rank left without a case (fewer cases than ranks) gets a copy of one
with ``eval_weight`` 0, so that every rank runs the validation loop and meets the others in
its ``all_reduce``, and the copy is not counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from brats_pipeline.constants import check_output_mode
from brats_pipeline.data.augmentation_config import AugmentationConfig
from brats_pipeline.data.fold_cases import fold_cases, read_datalist
from brats_pipeline.data.loaders import AugmentingCollate, ThreadedAugmentLoader, augment_batch, make_loader
from brats_pipeline.data.modalities import check_model_modalities
from brats_pipeline.data.slices import SliceDataset, check_context, check_slice_axis, plain_tensor
from brats_pipeline.data.transforms import cpu_augmentation, deterministic_transforms, patch_sampling

CACHE_MODES = ("none", "memory", "disk")
AUGMENTATION_DEVICES = ("auto", "batch", "cpu")


class BratsDataModule(pl.LightningDataModule):
    """Datasets and loaders for one cross-validation fold of a datalist.

    The label is the model's target: region channels, or class indices when the attached model's
    ``output_mode`` is ``softmax`` (without a model: the :attr:`output_mode` attribute).

    Args:
        datalist: datalist JSON written by ``brats-datalist`` / ``brats-preprocess``.
        fold: validation fold; the other folds train. ``-1``: train on every fold and
            validate on fold 0 (use for a final model).
        patch_size: training patch (x, y, z) voxels. 2D: the in-plane size (two values, or x, y,
            z of which the slice axis' entry is ignored); ``null``: whole slices, padded to the
            largest in-plane size rounded up to a multiple of 32.
        batch_size: patches per batch.
        samples_per_volume: patches drawn from each volume per epoch.
        pos_fraction: share of patches centred on tumour.
        num_workers: loader worker processes.
        cache: ``memory`` (CacheDataset), ``disk`` (PersistentDataset in ``cache_dir``) or ``none``.
        cache_dir: folder for ``cache="disk"``.
        augmentation: :class:`AugmentationConfig` fields (``null`` for the defaults).
        augmentation_device: ``auto`` (batched on the device when training on a GPU, MONAI per
            sample on the CPU otherwise), ``batch`` or ``cpu``.
        spacing: resample to this spacing (mm) when the data is not preprocessed.
        orientation: reorient to these axis codes (``null`` keeps the files' orientation).
        crop_foreground: crop volumes to the non-zero bounding box.
        max_cases: use at most this many training (and validation) cases (smoke runs).
        spatial_dims: 2 (slices) or 3 (patches); ``None``: the attached model's network's (3
            without a model).
        slice_axis: 2D: the axis slices are taken across (0 = x, 1 = y, 2 = z); ``None``: the
            model's (2 without one).
        context: 2.5D: neighbouring slices each side stacked as channels; ``None``: the model's
            (0 without one).
        empty_slice_ratio: 2D: tumour-free slices drawn per tumour slice per epoch (``null``:
            every slice every epoch). ``samples_per_volume`` and ``pos_fraction`` are 3D only.
        modalities: read only these of the task's modalities (names or aliases, e.g. ``[t2, t1c,
            flair]``; channels in the task's order whatever the order given); ``None``: the ones the
            datalist was built for (all the task's). See :mod:`brats_pipeline.data.modalities`.
        augment_thread: training on the CPU with ``num_workers: 0``, run the batched augmentation
            (and the slice sampling) in a background thread, beside the step (:meth:`augments_in_loader`).
        train_dataset: a dataset built elsewhere (a bundle's ``train#dataset``: a MONAI ``CacheDataset``
            of preprocessing + random transforms, or for 2D a :class:`SliceDataset`) used instead of
            the one built from the datalist, whose fold must hold the same cases (the datalist is the
            record). 2D: its patch size is the training size, widened here by the augmentation margin.
        val_dataset: likewise for validation (whole volumes, deterministic transforms).
    """

    #: ``sigmoid`` or ``softmax``: the target's form; :meth:`setup` takes the attached model's
    output_mode: str = "sigmoid"

    def __init__(
        self,
        datalist: str,
        fold: int = 0,
        patch_size: Sequence[int] = (128, 128, 128),
        batch_size: int = 2,
        samples_per_volume: int = 2,
        pos_fraction: float = 0.67,
        num_workers: int = 4,
        cache: str = "memory",
        cache_dir: str | None = None,
        augmentation: dict[str, Any] | None = None,
        augmentation_device: str = "auto",
        spacing: Sequence[float] | None = None,
        orientation: str | None = "RAS",
        crop_foreground: bool = True,
        max_cases: int | None = None,
        spatial_dims: int | None = None,
        slice_axis: int | None = None,
        context: int | None = None,
        empty_slice_ratio: float | None = 1.0,
        modalities: Sequence[str] | None = None,
        augment_thread: bool = True,
        train_dataset: Any = None,
        val_dataset: Any = None,
    ) -> None:
        super().__init__()
        if cache not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {cache!r}; choose one of {CACHE_MODES}")
        if cache == "disk" and not cache_dir:
            raise ValueError("cache='disk' needs cache_dir")
        if augmentation_device not in AUGMENTATION_DEVICES:
            raise ValueError(f"unknown augmentation_device {augmentation_device!r}; choose one of {AUGMENTATION_DEVICES}")
        if spatial_dims not in (None, 2, 3):
            raise ValueError(f"spatial_dims must be 2, 3 or None (the model's), got {spatial_dims!r}")
        if slice_axis is not None:
            check_slice_axis(slice_axis)
        if context is not None:
            check_context(context)
        if empty_slice_ratio is not None and (isinstance(empty_slice_ratio, bool) or not float(empty_slice_ratio) >= 0):
            raise ValueError(f"empty_slice_ratio must be a non-negative number or null, got {empty_slice_ratio!r}")
        if patch_size is None and spatial_dims == 3:
            raise ValueError("patch_size null (whole slices) is for 2D; 3D needs three sizes (x, y, z)")
        if patch_size is not None and (len(patch_size) not in (2, 3) or min(patch_size) < 1):
            raise ValueError(f"patch_size must be three positive sizes (2D: two in-plane sizes or null), got {tuple(patch_size)}")
        if patch_size is not None and len(patch_size) == 2 and spatial_dims == 3:
            raise ValueError(f"patch_size must be three positive sizes for 3D, got {tuple(patch_size)}")
        # the model's hyper-parameters hold these (Lightning refuses a key logged by both with two values)
        self.save_hyperparameters(ignore=["spatial_dims", "slice_axis", "context", "modalities", "train_dataset", "val_dataset"])
        self.given = {"train": train_dataset, "val": val_dataset}
        self._asked = {"spatial_dims": spatial_dims, "slice_axis": slice_axis, "context": context}
        self.datalist_path = str(datalist)
        self.datalist, self.task = read_datalist(datalist, modalities)  # the model records the task's modalities
        self.augmentation = AugmentationConfig.from_any(augmentation)
        self.patch_size = None if patch_size is None else tuple(int(s) for s in patch_size)
        #: resolved in :meth:`setup` (from the model when attached): 2 or 3, slice axis, context
        self.spatial_dims: int = spatial_dims or 3
        self.slice_axis: int = 2 if slice_axis is None else slice_axis
        self.context: int = 0 if context is None else context
        self._batch_augment: Any = None
        self.train_ds: Any = None
        self.val_ds: Any = None
        self.predict_ds: Any = None

    # ------------------------------------------------------------ properties
    @property
    def in_channels(self) -> int:
        return len(self.task.modalities)

    @property
    def modality_names(self) -> tuple[str, ...]:
        """The modalities read, in channel order (``brats-train`` links ``model.modalities`` to them)."""
        return self.task.modality_names

    @property
    def out_channels(self) -> int:
        return self.task.output_channels(self.output_mode)

    @property
    def task_name(self) -> str:
        return self.task.name

    def uses_batch_augmentation(self) -> bool:
        """Whether random augmentation runs batched after transfer (``True``) or per sample on the CPU."""
        if self.spatial_dims == 2:
            return True  # slices are always augmented as a batch (BatchAugment), on any device
        mode = self.hparams.augmentation_device
        if mode != "auto":
            return mode == "batch"
        trainer = self.trainer
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def augments_in_loader(self) -> bool:
        """Whether the batched augmentation runs with the loader, beside the training step.

        Training on the CPU (on a GPU it stays after transfer, on the device), :class:`BatchAugment`
        runs on each collated batch either in the loader's worker processes (``num_workers > 0``,
        :class:`AugmentingCollate`; random numbers from the workers' generators, which the loader
        seeds from the run's seed) or, with ``num_workers: 0``, in a background thread of the
        training process (:class:`ThreadedAugmentLoader`, one batch ahead; the same batches and
        random numbers as in the step; one process only, ``augment_thread: false`` turns it off),
        instead of in the main process after transfer.
        """
        if not self.uses_batch_augmentation():
            return False
        trainer = self.trainer
        device = trainer.strategy.root_device.type if trainer is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        if device != "cpu":
            return False
        if self.hparams.num_workers > 0:
            return True
        return bool(self.hparams.augment_thread) and (trainer is None or trainer.world_size == 1)

    # ----------------------------------------------------------------- setup
    def split(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(train, validation) entries of the configured fold."""
        return fold_cases(self.datalist["training"], self.hparams.fold, self.hparams.max_cases, self.datalist_path)

    def _deterministic(self, with_label: bool = True) -> Any:
        hp = self.hparams
        return deterministic_transforms(
            self.task, with_label=with_label, spacing=hp.spacing, orientation=hp.orientation, crop_foreground=hp.crop_foreground,
            output_mode=self.output_mode,
        )

    def _dataset(self, data: list[dict[str, Any]], transform: Any) -> Any:
        from monai.data import CacheDataset, Dataset, PersistentDataset

        hp = self.hparams
        if hp.cache == "memory":
            # one caching thread: threaded caching of multi-file cases raced in MONAI 1.6 (see notes)
            return CacheDataset(data, transform, num_workers=1, progress=False)
        if hp.cache == "disk":
            return PersistentDataset(data, transform, cache_dir=hp.cache_dir)
        return Dataset(data, transform)

    def _sample_size(self) -> tuple[int, ...]:
        if not self.uses_batch_augmentation():
            return self.patch_size
        # a margin so that rotated/scaled patches are filled with data, not padding
        return tuple(int(math.ceil(s * 1.2 / 2) * 2) for s in self.patch_size)

    def resolve_output_mode(self) -> str:
        """The attached model's ``output_mode`` (the data follows the model), else :attr:`output_mode`.

        ``sigmoid``: the label becomes region channels; ``softmax``: class indices (see
        :func:`~brats_pipeline.data.transforms.deterministic_transforms`).
        """
        trainer = self.trainer
        model = trainer.lightning_module if trainer is not None else None
        mode = (getattr(model, "hparams", None) or {}).get("output_mode") if model is not None else None
        return check_output_mode(mode or self.output_mode)

    def resolve_dimensionality(self) -> tuple[int, int, int]:
        """``(spatial_dims, slice_axis, context)``: this module's settings, else the attached model's, else 3, 2, 0.

        Raises:
            ValueError: a setting given here differs from the model's, or 2.5D context with 3D,
                or a patch size that does not fit the dimensionality.
        """
        trainer = self.trainer
        model = trainer.lightning_module if trainer is not None else None
        model_hp = getattr(model, "hparams", {}) or {}
        theirs = {
            "spatial_dims": getattr(model, "spatial_dims", None),
            "slice_axis": model_hp.get("slice_axis") if model is not None else None,
            "context": model_hp.get("context") if model is not None else None,
        }
        resolved = []
        for name, default in (("spatial_dims", 3), ("slice_axis", 2), ("context", 0)):
            mine = self._asked[name]
            if mine is not None and theirs[name] is not None and mine != theirs[name]:
                raise ValueError(f"data {name}={mine!r}, but the model's is {theirs[name]!r}; set one of them (the data follows the model)")
            resolved.append(mine if mine is not None else theirs[name] if theirs[name] is not None else default)
        dims, axis, context = resolved
        if context and dims != 2:
            raise ValueError(f"context={context} (2.5D) needs a 2D network; the model is {dims}D")
        if dims == 3 and (self.patch_size is None or len(self.patch_size) != 3):
            raise ValueError(f"a 3D network trains on patches of three sizes (x, y, z); patch_size is {self.patch_size}")
        return dims, axis, context

    def _slice_patch_size(self) -> tuple[int, ...] | None:
        """2D in-plane training size (``None``: whole slices)."""
        from brats_pipeline.data.slices import in_plane

        return None if self.hparams.patch_size is None else in_plane(self.hparams.patch_size, self.slice_axis, "patch_size")

    def _setup_slices(self, train: list[dict[str, Any]]) -> None:
        """2D/2.5D training set: decode each training volume once, keep it in memory, draw slices per epoch."""
        from monai.data import Dataset, PersistentDataset

        hp = self.hparams
        det = self._deterministic()
        volumes = PersistentDataset(train, det, cache_dir=hp.cache_dir) if hp.cache == "disk" else Dataset(train, det)
        patch = self._slice_patch_size()
        self.train_ds = SliceDataset(volumes, self.slice_axis, self.context, hp.empty_slice_ratio, patch_size=patch)
        self.patch_size = self.train_ds.patch_size
        if patch is not None:
            self._widen(self.train_ds)

    def _widen(self, ds: SliceDataset) -> None:
        """A margin around the training slices so that rotated/scaled ones are filled with data, not padding
        (BatchAugment crops the centre, :attr:`patch_size`); none beyond the largest slice: there it would only add zeros."""
        margin = (int(math.ceil(s * 1.2 / 2) * 2) for s in self.patch_size)
        ds.patch_size = tuple(max(p, min(m, n)) for p, m, n in zip(self.patch_size, margin, ds.largest_slice))

    def _use_given_train(self) -> None:
        """The received training dataset; 2D: a :class:`SliceDataset` of the model's slicing, widened by the margin."""
        ds = self.given["train"]
        if self.spatial_dims == 2:
            if not isinstance(ds, SliceDataset):
                raise ValueError(f"a 2D network trains on a SliceDataset; train_dataset is a {type(ds).__name__}")
            if (ds.slice_axis, ds.context) != (self.slice_axis, self.context):
                raise ValueError(f"train_dataset slices with slice_axis={ds.slice_axis}, context={ds.context}; the model "
                                 f"with slice_axis={self.slice_axis}, context={self.context}")
            if self.train_ds is not ds:  # once
                self.patch_size = tuple(ds.patch_size)
                self._widen(ds)
        self.train_ds = ds

    def setup(self, stage: str | None = None) -> None:
        from monai.transforms import Compose

        self.spatial_dims, self.slice_axis, self.context = self.resolve_dimensionality()
        self.output_mode = self.resolve_output_mode()
        check_model_modalities(self.modality_names, self.trainer and self.trainer.lightning_module, self.datalist_path)
        train, val = self.split()
        if stage in (None, "fit") and self.given["train"] is not None:
            self._use_given_train()
        elif stage in (None, "fit") and self.spatial_dims == 2:
            self._setup_slices(train)
        elif stage in (None, "fit"):
            random_steps = patch_sampling(self._sample_size(), self.hparams.samples_per_volume, self.hparams.pos_fraction)
            if not self.uses_batch_augmentation():
                random_steps += cpu_augmentation(self.augmentation)
            det = self._deterministic()
            self.train_ds = self._dataset(train, Compose([*det.transforms, *random_steps]))
        if stage in (None, "fit", "validate", "test"):
            self.val_ds = self.given["val"] if self.given["val"] is not None else self._dataset(val, self._deterministic())
        if stage == "predict":
            data = self.datalist.get("testing") or val
            self.predict_ds = self._dataset([{k: v for k, v in e.items() if k != "label"} for e in data], self._deterministic(False))

    # --------------------------------------------------------------- loaders
    def train_dataloader(self) -> Any:
        loader = make_loader(self.train_ds, self.hparams.batch_size, self.hparams.num_workers, shuffle=True)
        if self.augments_in_loader():  # batched augmentation beside the training step: in the worker, or a thread
            if self.hparams.num_workers == 0:
                return ThreadedAugmentLoader(loader, self._make_batch_augment())
            loader.collate_fn = AugmentingCollate(loader.collate_fn, self._make_batch_augment())
        return loader

    def val_dataloader(self) -> Any:
        return make_loader(self.val_ds, 1, self.hparams.num_workers, shuffle=False, evaluation=True)

    def test_dataloader(self) -> Any:
        return make_loader(self.val_ds, 1, self.hparams.num_workers, shuffle=False, evaluation=True)

    def predict_dataloader(self) -> Any:
        return make_loader(self.predict_ds, 1, self.hparams.num_workers, shuffle=False)

    # ---------------------------------------------------------- augmentation
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return batch
        if self.augments_in_loader():
            return batch  # already augmented by the loader's worker or thread
        if not self.uses_batch_augmentation():  # plain tensors: no MetaTensor bookkeeping in the hot loop
            return {**batch, "image": plain_tensor(batch["image"]), "label": plain_tensor(batch["label"])}
        if self._batch_augment is None:
            self._batch_augment = self._make_batch_augment()
        return augment_batch(batch, self._batch_augment)  # the worker's and thread's step, here on the device

    def _make_batch_augment(self) -> Any:
        from brats_pipeline.data.augment import BatchAugment

        spacing = tuple(self.hparams.spacing or (1.0, 1.0, 1.0))
        if self.spatial_dims == 2:
            spacing = tuple(s for a, s in enumerate(spacing) if a != self.slice_axis)
        classes = self.task.n_classes if self.output_mode == "softmax" else None  # class-index labels stay exact
        return BatchAugment(self.augmentation, out_size=self.patch_size, spacing=spacing, classes=classes)
