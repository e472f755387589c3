"""``Predictor``: sliding-window or slice-by-slice inference of one network or an ensemble, written in the input's geometry.

The path of one case::

    files ──read (threads)──► C×X×Y×Z ──orient/resample/crop/normalise (the training transforms)──►
      inferer (3D sliding window with gaussian blending, or 2D/2.5D slice by slice; bf16 autocast
      on CUDA) × TTA mirrors × ensemble members
      ──sigmoid, averaged──► region probabilities R×X'×Y'×Z' ──Invertd──► R×X×Y×Z on the input's grid
      (softmax output mode: softmax, averaged ──► class probabilities C×X'×Y'×Z' ──Invertd──► argmax, label values)
      ──postprocess──► label map X×Y×Z uint8 in the task's labels ──atomic write──► OUT/<case_id>.nii.gz

Arrays are x, y, z (nibabel/MONAI order); ``R`` channels follow ``task.regions`` (TC, WT, ET
for BraTS). The written label has the first input file's shape and affine (the undoing of
orientation, spacing and crop is MONAI ``Invertd`` over the very ``Compose`` that prepared the
input), so it overlays the input in any viewer, whatever its orientation or voxel size.

Build one with :meth:`Predictor.from_checkpoint` (Lightning checkpoints of
:class:`~brats_pipeline.module.BratsSegmentationModule`; several = an ensemble),
:meth:`Predictor.from_state_dict` (a plain network state dict, as a MONAI bundle's
``models/model.pt``), :meth:`Predictor.from_bundle`, or the constructor with ``nn.Module``\\ s.

The network's dimensionality decides the inferer (:func:`~brats_pipeline.inference.inferers.build_inferer`):
a 3D network sees sliding windows of the volume; a 2D network sees its slices along
``slice_axis`` (with ``context`` neighbours each side as channels for 2.5D), and the slices
are stacked back into the volume before the same inversion into the input's geometry. Any
MONAI ``Inferer`` may be injected instead (``inferer=``).

This module holds the predictor itself; its parts live beside it: :mod:`~brats_pipeline.inference.sources`
(its constructors from checkpoints, state dicts and bundles), :mod:`~brats_pipeline.inference.loading` (reading,
preparing and inverting a case), :mod:`~brats_pipeline.inference.outputs` (TTA and ensemble averaging,
probabilities to labels) and :mod:`~brats_pipeline.inference.inferers` (the inferer, and what it reads
off the networks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from brats_pipeline.constants import Task, check_output_mode, get_task
from brats_pipeline.data.modalities import is_subset, select_modalities
from brats_pipeline.inference.inferers import (
    BLEND_MODES,
    build_inferer,
    inferer_settings,
    shared_spatial_dims,
    slice_context,
)
from brats_pipeline.inference.loading import invert_probabilities, prepare_case
from brats_pipeline.inference.outputs import (
    CasePrediction,
    average_probabilities,
    labels_from_probabilities,
    tta_flips,
)
from brats_pipeline.inference.postprocess import PostprocessConfig, check_softmax_config
from brats_pipeline.inference.sources import FromSavedWeights


class Predictor(FromSavedWeights):
    """Sliding-window (3D) or slice-by-slice (2D, 2.5D) inference with TTA and ensembles, output in the input's geometry.

    Args:
        networks: one network or several (an ensemble; their probabilities are averaged), all
            of one dimensionality. A 3D network maps ``(B, C, X, Y, Z)`` to region logits
            ``(B, R, X, Y, Z)``; a 2D one maps slices ``(B, C·(2k+1), H, W)`` to ``(B, R, H, W)``
            (``output_mode="softmax"``: class logits, ``task.n_classes`` channels, instead of R).
        task: task name or :class:`Task` (channel order, regions, labels written).
        roi_size: window size in voxels: (x, y, z) for 3D; for 2D the two in-plane sizes (or
            x, y, z, the slice axis' entry ignored).
        sw_batch_size: windows (2D: slices) per forward pass.
        overlap: overlap fraction of neighbouring windows, in ``[0, 1)``.
        blend_mode: ``gaussian`` (window centres weigh more) or ``constant``. These four build the
            inferer (checked by :func:`~brats_pipeline.inference.inferers.build_inferer`) unless one is injected.
        tta_axes: spatial axes (0 = x, 1 = y, 2 = z) to mirror for test-time augmentation;
            every combination is predicted (2^k passes per network) and averaged. ``()``: off.
            For a 2D network the slice axis is left out (mirroring across slices does not
            change a slice network's input; it would reverse a 2.5D stack).
        device: ``"cuda"``, ``"cpu"``, a ``torch.device`` or ``None`` (CUDA when available).
        amp: bf16 autocast on CUDA (ignored on the CPU).
        spacing: resample to this voxel size (mm) before the network (as in training);
            ``None`` keeps the input grid.
        orientation: reorient to these axis codes before the network (``None``: keep).
        crop_foreground: crop to the non-zero bounding box before the network.
        crop_margin: voxels kept around the foreground box.
        normalize: channel-wise z-score over non-zero voxels.
        postprocess: :class:`PostprocessConfig` (or a dict of its fields).
        read_threads: threads decoding one case's modality files concurrently.
        compile: wrap each network in ``torch.compile`` (worth it on GPUs for long batches).
        inferer: a MONAI ``Inferer`` (or any callable ``(inputs, network) -> logits``) to use as is, e.g.
            a MONAI bundle's ``inferer`` (:meth:`from_bundle`): it gets ``(B, C, X, Y, Z)`` volumes and
            must return ``(B, R, X, Y, Z)`` logits. ``roi_size``, ``sw_batch_size``, ``overlap`` and
            ``blend_mode`` are then not used; :attr:`roi_size` and the others, and :meth:`describe`,
            are read off the inferer (``roi_size``, ``overlap``, ``mode``, ...) where it has them. A
            ``SliceInferer`` gives ``slice_axis`` (its ``spatial_dim``) and ``context`` (0, or a
            :class:`~brats_pipeline.inference.inferers.ContextSliceInferer`'s).
        spatial_dims: the networks' dimensionality; ``None``: read off their first convolution
            (3 for a network without one).
        slice_axis: 2D networks: the axis slices are taken across (0 = x, 1 = y, 2 = z).
        context: 2D networks: neighbouring slices each side stacked as channels (2.5D);
            ``None``: from the network's input channels (``modalities * (2k + 1)``).
        modalities: the modalities the networks read, a subset of the task's
            (:mod:`brats_pipeline.data.modalities`); a case's other modality files are not read,
            and need not exist. ``None``: all the task's (or those of a subset ``task``).
        output_mode: ``sigmoid`` (networks output one channel per region) or ``softmax`` (one per
            class of the label scheme: probabilities are softmaxed and averaged, each voxel gets its
            most likely class's label value; region post-processing steps run on its regions, a
            threshold other than 0.5 is an error).
    """

    def __init__(
        self,
        networks: nn.Module | Sequence[nn.Module],
        task: str | Task,
        roi_size: Sequence[int] = (128, 128, 128),
        sw_batch_size: int = 4,
        overlap: float = 0.5,
        blend_mode: str = "gaussian",
        tta_axes: Sequence[int] = (),
        device: str | torch.device | None = None,
        amp: bool = True,
        spacing: Sequence[float] | None = None,
        orientation: str | None = "RAS",
        crop_foreground: bool = True,
        crop_margin: int = 4,
        normalize: bool = True,
        postprocess: PostprocessConfig | Mapping[str, Any] | None = None,
        read_threads: int = 4,
        compile: bool = False,
        inferer: Any = None,
        spatial_dims: int | None = None,
        slice_axis: int = 2,
        context: int | None = None,
        modalities: Sequence[str] | None = None,
        output_mode: str = "sigmoid",
    ) -> None:
        self.task = select_modalities(get_task(task), modalities)
        nets = [networks] if isinstance(networks, nn.Module) else list(networks)
        if not nets or not all(isinstance(n, nn.Module) for n in nets):
            raise ValueError(f"networks must be one nn.Module or a non-empty list of them, got {networks!r}")
        self.spatial_dims = shared_spatial_dims(nets, spatial_dims)
        if inferer is not None:  # used as is; a slice inferer says its slice axis and 2.5D neighbours
            if not callable(inferer):
                raise ValueError(f"inferer must be a MONAI Inferer or a callable (inputs, network) -> logits, got {inferer!r}")
            slice_axis = getattr(inferer, "spatial_dim", slice_axis)
            context = getattr(inferer, "context", 0 if hasattr(inferer, "spatial_dim") else context)  # SliceInferer: 0
        self.slice_axis = int(slice_axis)
        self.context = slice_context(nets[0], self.task, context) if self.spatial_dims == 2 else int(context or 0)
        axes = tuple(int(a) for a in tta_axes)
        if len(set(axes)) != len(axes) or not set(axes) <= {0, 1, 2}:
            raise ValueError(f"tta_axes must be distinct spatial axes among 0 (x), 1 (y), 2 (z), got {tuple(tta_axes)}")
        if self.spatial_dims == 2:
            axes = tuple(a for a in axes if a != self.slice_axis)  # in-plane mirrors only
        if inferer is None:  # build_inferer checks the window settings, slice_axis and context for this dimensionality
            inferer = build_inferer(self.spatial_dims, roi_size, sw_batch_size, overlap, blend_mode, self.slice_axis,
                                    self.context, cache_roi_weight_map=self.spatial_dims == 3)
        self._inferer: Any = inferer
        # the window settings in use: the inferer's own where it has them (an injected one's may differ from the arguments)
        window = inferer_settings(inferer)
        self.roi_size = tuple(int(s) for s in window.get("roi_size", roi_size))
        self.sw_batch_size = int(window.get("sw_batch_size", sw_batch_size))
        over = window.get("overlap", overlap)
        self.overlap: float | tuple[float, ...] = tuple(map(float, over)) if isinstance(over, (list, tuple)) else float(over)
        self.blend_mode = str(window.get("mode", blend_mode))
        if spacing is not None and (len(spacing) != 3 or min(float(s) for s in spacing) <= 0):
            raise ValueError(f"spacing must be three positive sizes in mm, got {tuple(spacing)}")
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but no CUDA device is available")
        self.tta_axes = axes
        self.amp = bool(amp)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.orientation = orientation
        self.crop_foreground = bool(crop_foreground)
        self.crop_margin = int(crop_margin)
        self.normalize = bool(normalize)
        self.postprocess_config = PostprocessConfig.from_any(postprocess)
        self.output_mode = check_output_mode(output_mode)
        if self.output_mode == "softmax":
            check_softmax_config(self.postprocess_config)
        self.read_threads = max(1, int(read_threads))
        self.networks = [n.to(self.device).eval() for n in nets]
        self._forwards = [torch.compile(n) if compile else n for n in self.networks]
        self._executor: Any = None
        self._transform: Any = None
        self._lock = threading.Lock()  # lazy set-up is shared by loader threads
        self.sources: list[str] = []  # where the weights came from (for manifests)

    # ------------------------------------------------------------- description
    def describe(self) -> dict[str, Any]:
        """The settings, JSON-friendly (written into manifests)."""
        return {
            "task": self.task.name,
            **({"modalities": list(self.task.modality_names)} if is_subset(self.task) else {}),
            "models": list(self.sources),
            "ensemble_size": len(self.networks),
            "roi_size": list(self.roi_size),
            "sw_batch_size": self.sw_batch_size,
            "overlap": list(self.overlap) if isinstance(self.overlap, tuple) else self.overlap,
            "blend_mode": self.blend_mode,
            "spatial_dims": self.spatial_dims,
            "slice_axis": self.slice_axis if self.spatial_dims == 2 else None,
            "context": self.context,
            "inferer": type(self._inferer).__name__,
            "inferer_settings": inferer_settings(self._inferer),
            "tta_axes": list(self.tta_axes),
            "device": str(self.device),
            "amp_bf16": self._autocast_enabled(),
            "spacing": None if self.spacing is None else list(self.spacing),
            "orientation": self.orientation,
            "crop_foreground": self.crop_foreground,
            "postprocess": self.postprocess_config.to_dict(),
            "output_mode": self.output_mode,
        }

    # --------------------------------------------------------------- volumes
    def _autocast_enabled(self) -> bool:
        return self.amp and self.device.type == "cuda"

    @property
    def inferer(self) -> Any:
        """The MONAI inferer that runs a network over whole volumes (built, or injected)."""
        return self._inferer

    def predict_logits(self, image: torch.Tensor, network_index: int = 0, flip: tuple[int, ...] = ()) -> torch.Tensor:
        """Region logits ``(B, R, X, Y, Z)`` (float32) of one network for one mirror, over whole volumes."""
        forward = self._forwards[network_index]
        use_amp = self._autocast_enabled()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                return forward(x).float()

        x = image.flip(flip) if flip else image
        logits = self._inferer(x, run)
        return logits.flip(flip) if flip else logits

    def predict_volume(self, image: Any) -> torch.Tensor:
        """Region probabilities of preprocessed volume(s), averaged over TTA mirrors and ensemble members.

        Args:
            image: ``(C, X, Y, Z)`` or ``(B, C, X, Y, Z)`` float, channels in the task's modality
                order, already normalised (see :meth:`preprocess`); numpy or torch.

        Returns:
            Sigmoid probabilities ``(R, X, Y, Z)`` or ``(B, R, X, Y, Z)`` float32 on
            :attr:`device`, channels in ``task.regions`` order (softmax output mode: class
            probabilities, ``task.n_classes`` channels in class order).
        """
        x, single = self._network_input(image)
        with torch.inference_mode():
            probs = average_probabilities(lambda i, flip: self.predict_logits(x, i, flip), len(self.networks),
                                          tta_flips(self.tta_axes), self.output_mode)
        self._check_output_channels(probs)
        return probs[0] if single else probs

    def logits(self, image: Any) -> torch.Tensor:
        """Logits of preprocessed volume(s) through the inferer: one network, no TTA (nothing to average).

        For a post-processing that applies its own activation, as a MONAI bundle's ``postprocessing``
        (:class:`~brats_pipeline.bundle.runner.BundleRunner`). ``image`` as in :meth:`predict_volume`;
        returns ``(R, X, Y, Z)`` or ``(B, R, X, Y, Z)`` float32 on :attr:`device`.

        Raises:
            ValueError: an ensemble or TTA (their probabilities are averaged: :meth:`predict_volume`),
                or the channels of :meth:`predict_volume`.
        """
        if len(self.networks) > 1 or self.tta_axes:
            raise ValueError(f"logits are of one network without TTA; this predictor has {len(self.networks)} network(s) "
                             f"and tta_axes {self.tta_axes}: use predict_volume (averaged probabilities)")
        x, single = self._network_input(image)
        with torch.inference_mode():
            logits = self.predict_logits(x)
        self._check_output_channels(logits)
        return logits[0] if single else logits

    def _network_input(self, image: Any) -> tuple[torch.Tensor, bool]:
        """``image`` as a ``(B, C, X, Y, Z)`` float32 batch on the device (checked), and whether it was one volume."""
        x = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image)
        single = x.ndim == 4
        if single:
            x = x[None]
        if x.ndim != 5:
            raise ValueError(f"expected an image (C, X, Y, Z) or a batch (B, C, X, Y, Z), got shape {tuple(x.shape)}")
        if x.shape[1] != len(self.task.modalities):
            raise ValueError(
                f"image has {x.shape[1]} channels; task {self.task.name} needs {len(self.task.modalities)} "
                f"({', '.join(self.task.modality_names)})"
            )
        return x.to(self.device, torch.float32, non_blocking=True), single

    def _check_output_channels(self, out: torch.Tensor) -> None:
        if out.shape[1] != self.task.output_channels(self.output_mode):
            raise ValueError(f"the network outputs {out.shape[1]} channels, but output_mode {self.output_mode!r} of "
                             f"task {self.task.name} needs {self.task.output_channels(self.output_mode)}")

    # ------------------------------------------------------------------ cases
    def _get_transform(self) -> Any:
        with self._lock:
            return self._make_transform()

    def _make_transform(self) -> Any:
        # Invertd needs the very transform instances that prepared a case: build them once
        if self._transform is None:
            from concurrent.futures import ThreadPoolExecutor

            from brats_pipeline.inference.loading import inference_transforms

            self._executor = ThreadPoolExecutor(self.read_threads, thread_name_prefix="read") if self.read_threads > 1 else None
            self._transform = inference_transforms(
                self.task, self._executor, spacing=self.spacing, orientation=self.orientation,
                crop_foreground=self.crop_foreground, crop_margin=self.crop_margin, normalize=self.normalize,
            )
        return self._transform

    def preprocess(self, case: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Read a case (``image``: files in the task's modality order, or one 4D file) and prepare it.

        With a modality subset only the subset's files are read (:func:`~brats_pipeline.data.modalities.select_case`).

        Returns:
            The case dict with ``image`` a ``C×X'×Y'×Z'`` ``MetaTensor`` that remembers the
            spatial steps applied (for :meth:`invert`).

        Raises:
            preprocessing.io.ImageFileError: a file is missing, truncated, not 3D/4D, has NaN/Inf,
                or the modalities are on different grids.
        """
        return prepare_case(self._get_transform(), case, self.task)

    def invert(self, data: Mapping[Hashable, Any], probabilities: torch.Tensor) -> torch.Tensor:
        """Map ``(R, X', Y', Z')`` probabilities from the network's grid back onto the input's grid.

        Uses MONAI ``Invertd`` with the ``Compose`` that prepared ``data["image"]`` (undoing
        crop, resampling — linear interpolation of the probabilities — and orientation).

        Returns:
            ``(R, X, Y, Z)`` float32 on the same device as ``probabilities``.
        """
        return invert_probabilities(self._get_transform(), data, probabilities)

    def labels_from_probabilities(self, probabilities: torch.Tensor) -> np.ndarray:
        """Post-process ``(R, X, Y, Z)`` probabilities into the task's label map (X, Y, Z) uint8.

        Thresholding alone runs on the probabilities' device; any other enabled step runs
        on the CPU (scipy).
        """
        return labels_from_probabilities(probabilities, self.task, self.postprocess_config, self.output_mode)

    def predict_case(self, case: Mapping[Hashable, Any], return_probabilities: bool = False) -> CasePrediction:
        """Read, predict, invert and post-process one case (nothing is written).

        Args:
            case: ``{"case_id": ..., "image": [files in modality order] or 4D file}``.
            return_probabilities: also return the region probabilities on the input's grid.
        """
        from brats_pipeline.inference.loading import case_id_of

        t0 = time.perf_counter()
        data = self.preprocess(case)
        t1 = time.perf_counter()
        probs, affine = self.compute(data)
        t2 = time.perf_counter()
        label = self.labels_from_probabilities(probs)
        probabilities = probs.cpu().numpy() if return_probabilities else None
        t3 = time.perf_counter()
        seconds = {"read": t1 - t0, "compute": t2 - t1, "postprocess": t3 - t2}
        return CasePrediction(case_id_of(case), label, affine, probabilities, seconds)

    def compute(self, data: Mapping[Hashable, Any]) -> tuple[torch.Tensor, np.ndarray]:
        """Network + inversion for a preprocessed case: ``(probabilities (R, X, Y, Z) on the device, affine)``."""
        image = data["image"]
        probs = self.predict_volume(image)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        inverted = self.invert(data, probs)
        affine = np.asarray(torch.as_tensor(image.meta["original_affine"]).cpu(), dtype=np.float64)
        return inverted, affine

    def close(self) -> None:
        """Stop the file-reading threads (they are restarted on the next use)."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            self._executor, self._transform = None, None

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["BLEND_MODES", "Predictor"]
