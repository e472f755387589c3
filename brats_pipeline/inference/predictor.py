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
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brats_pipeline.constants import Task, check_output_mode, get_task
from brats_pipeline.data.modalities import is_subset, select_case, select_modalities
from brats_pipeline.inference.inferers import BLEND_MODES, build_inferer
from brats_pipeline.inference.postprocess import (
    PostprocessConfig,
    check_softmax_config,
    postprocess,
    postprocess_classes,
)


@dataclass
class CasePrediction:
    """The result of one case.

    Attributes:
        case_id: the case.
        label: the task's label map (X, Y, Z) uint8 on the input's grid.
        affine: 4x4 voxel-to-RAS (mm) of the input (and of ``label``).
        probabilities: region probabilities (R, X, Y, Z) float32 on the input's grid, if asked for
            (softmax output mode: class probabilities (C, X, Y, Z)).
        seconds: time spent per stage (``read``, ``compute``, ``postprocess``).
    """

    case_id: str
    label: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class Predictor:
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
        blend_mode: ``gaussian`` (window centres weigh more) or ``constant``.
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
        inferer: a MONAI ``Inferer`` to use as is (it gets ``(B, C, X, Y, Z)`` volumes and must
            return ``(B, R, X, Y, Z)`` logits); ``roi_size``, ``sw_batch_size``, ``overlap``,
            ``blend_mode``, ``slice_axis`` and ``context`` then only describe it.
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
        self.spatial_dims = _spatial_dims(nets, spatial_dims)
        self.slice_axis = int(slice_axis)
        self.context = _context(nets[0], self.task, context) if self.spatial_dims == 2 else int(context or 0)
        if not 0 <= float(overlap) < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if blend_mode not in BLEND_MODES:
            raise ValueError(f"unknown blend_mode {blend_mode!r}; choose one of {BLEND_MODES}")
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be at least 1, got {sw_batch_size}")
        axes = tuple(int(a) for a in tta_axes)
        if len(set(axes)) != len(axes) or not set(axes) <= {0, 1, 2}:
            raise ValueError(f"tta_axes must be distinct spatial axes among 0 (x), 1 (y), 2 (z), got {tuple(tta_axes)}")
        if self.spatial_dims == 2:
            axes = tuple(a for a in axes if a != self.slice_axis)  # in-plane mirrors only
        # validates roi_size, slice_axis and context for this dimensionality
        built = build_inferer(
            self.spatial_dims, roi_size, sw_batch_size, overlap, blend_mode, self.slice_axis, self.context,
            cache_roi_weight_map=self.spatial_dims == 3,
        )
        roi = tuple(int(s) for s in roi_size)
        if spacing is not None and (len(spacing) != 3 or min(float(s) for s in spacing) <= 0):
            raise ValueError(f"spacing must be three positive sizes in mm, got {tuple(spacing)}")
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but no CUDA device is available")
        self.roi_size = roi
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.blend_mode = blend_mode
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
        self._inferer: Any = inferer if inferer is not None else built
        self._lock = threading.Lock()  # lazy set-up is shared by loader threads
        self.sources: list[str] = []  # where the weights came from (for manifests)

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_checkpoint(
        cls, paths: str | os.PathLike | Sequence[str | os.PathLike], device: str | torch.device | None = None, **overrides: Any
    ) -> Predictor:
        """Load one Lightning checkpoint, or several as an ensemble (e.g. the 5 folds).

        The network is rebuilt from what the checkpoint says it holds
        (:func:`network_from_checkpoint`: ``checkpoint["network"]``, else the hyper-parameters)
        and its weights are loaded strictly, whether it was trained by ``brats-train``, a MONAI
        bundle's ``train.json`` (a ``network_def`` of any registry network) or Python code.
        Sliding-window settings (``roi_size``, ``sw_batch_size``, ``overlap``, ``blend_mode``,
        and ``slice_axis``/``context`` of 2D networks) come from the (first) module's
        hyper-parameters, and the preprocessing (``spacing``, ``orientation``,
        ``crop_foreground``) from the data module's, so inference sees what training saw;
        keyword ``overrides`` replace any of them.

        Raises:
            FileNotFoundError: a checkpoint is missing.
            ValueError: unreadable checkpoint, a network it does not describe (see
                :func:`network_from_checkpoint`), weights that do not fit, or ensemble members of
                different tasks or preprocessing.
        """
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise ValueError("from_checkpoint needs at least one checkpoint")
        from brats_pipeline.weights import checkpoint_settings, network_from_checkpoint, read_checkpoint

        networks, settings = [], []
        for path in map(Path, paths):
            ckpt = read_checkpoint(path)
            networks.append(network_from_checkpoint(ckpt, str(path)))
            settings.append(checkpoint_settings(ckpt, str(path)))
        first = settings[0]
        for path, s in zip(paths[1:], settings[1:]):
            for key in ("task", "modalities", "spacing", "orientation", "crop_foreground", "output_mode"):
                if s[key] != first[key] and key not in overrides:
                    raise ValueError(f"{path}: ensemble member has {key}={s[key]!r}, but {paths[0]} has {first[key]!r}")
        kwargs = {**first, **overrides}
        predictor = cls(networks, device=device, **kwargs)
        predictor.sources = [str(p) for p in paths]
        return predictor

    @classmethod
    def from_state_dict(
        cls,
        network: str | nn.Module,
        weights_path: str | os.PathLike | Sequence[str | os.PathLike],
        task: str | Task,
        network_kwargs: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """A network from the registry (or a module) with weights from plain state-dict file(s).

        This is what a MONAI bundle holds (``models/model.pt``: ``torch.save(net.state_dict())``).
        Weights load **strictly** (a prefixed or foreign state dict is an error, never silently
        random weights); a Lightning checkpoint's ``state_dict`` with ``network.`` keys is accepted.

        Args:
            network: registry name (``unet3d`` ...) built for the task's channels (times
                ``2 * context + 1`` for a 2.5D ``context`` in ``kwargs``), or an ``nn.Module``.
            weights_path: one file, or several for an ensemble (one network per file).
            task: task name or :class:`Task`.
            network_kwargs: options for :func:`brats_pipeline.networks.build_network`.
            device: as in :class:`Predictor`.
            **kwargs: other :class:`Predictor` arguments (``roi_size``, ``overlap`` ...).
        """
        import copy

        from brats_pipeline.weights import load_state_dict_strict

        task = select_modalities(get_task(task), kwargs.get("modalities"))
        files = [weights_path] if isinstance(weights_path, (str, os.PathLike)) else list(weights_path)
        if not files:
            raise ValueError("from_state_dict needs at least one weights file")
        networks = []
        for path in files:
            if isinstance(network, nn.Module):
                net = copy.deepcopy(network)
            else:
                from brats_pipeline.networks import build_network

                in_channels = len(task.modalities) * (2 * int(kwargs.get("context") or 0) + 1)
                out_channels = task.output_channels(kwargs.get("output_mode") or "sigmoid")
                net = build_network(network, in_channels, out_channels, **dict(network_kwargs or {}))
            load_state_dict_strict(net, path)
            networks.append(net)
        predictor = cls(networks, task, device=device, **kwargs)
        predictor.sources = [str(p) for p in files]
        return predictor

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike, device: str | torch.device | None = None, **overrides: Any) -> Predictor:
        """A MONAI bundle: ``configs/inference.json`` (``network_def``, ``task``, ``inferer``) + ``models/model.pt``.

        ``network_def`` is instantiated with MONAI's ``ConfigParser`` and the weights loaded
        strictly with :meth:`from_state_dict`. The task comes from ``task`` in
        ``inference.json`` (or ``metadata.json``) unless given in ``overrides``; ``roi_size``,
        ``sw_batch_size``, ``overlap``, ``mode`` and, for 2D networks, ``slice_axis`` (or MONAI
        ``SliceInferer``'s ``spatial_dim``) and ``context`` of ``inferer`` and ``spacing``, ``orientation``
        and ``crop_foreground`` of ``preprocessing`` are used when present (``@`` references
        resolved), so the bundle's own settings apply.

        Raises:
            FileNotFoundError: a required bundle file is missing.
            ValueError: no task, or a config that does not build a network.
        """
        from brats_pipeline.weights import read_bundle

        root = Path(bundle_dir)
        network, weights, task, settings = read_bundle(root, overrides.pop("task", None))
        predictor = cls.from_state_dict(network, weights, task, device=device, **{**settings, **overrides})
        predictor.sources = [str(root)]
        return predictor

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
            "overlap": self.overlap,
            "blend_mode": self.blend_mode,
            "spatial_dims": self.spatial_dims,
            "slice_axis": self.slice_axis if self.spatial_dims == 2 else None,
            "context": self.context,
            "inferer": type(self._inferer).__name__,
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

    def _flip_dims(self) -> list[tuple[int, ...]]:
        """Mirror combinations as tensor dims of a (B, C, X, Y, Z) batch; ``()`` is the identity."""
        dims = [a + 2 for a in self.tta_axes]
        return [c for k in range(len(dims) + 1) for c in itertools.combinations(dims, k)]

    @property
    def inferer(self) -> Any:
        """The MONAI inferer that runs a network over whole volumes (built, or injected)."""
        return self._inferer

    def _get_inferer(self) -> Any:
        return self._inferer

    def predict_logits(self, image: torch.Tensor, network_index: int = 0, flip: tuple[int, ...] = ()) -> torch.Tensor:
        """Region logits ``(B, R, X, Y, Z)`` (float32) of one network for one mirror, over whole volumes."""
        forward = self._forwards[network_index]
        use_amp = self._autocast_enabled()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                return forward(x).float()

        x = image.flip(flip) if flip else image
        logits = self._get_inferer()(x, run)
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
        x = x.to(self.device, torch.float32, non_blocking=True)
        total: torch.Tensor | None = None
        count = 0
        with torch.inference_mode():
            for i in range(len(self.networks)):
                for flip in self._flip_dims():
                    logits = self.predict_logits(x, i, flip)
                    p = torch.softmax(logits, 1) if self.output_mode == "softmax" else torch.sigmoid(logits)
                    total = p if total is None else total.add_(p)
                    count += 1
            probs = total / count
        if probs.shape[1] != self.task.output_channels(self.output_mode):
            raise ValueError(f"the network outputs {probs.shape[1]} channels, but output_mode {self.output_mode!r} of "
                             f"task {self.task.name} needs {self.task.output_channels(self.output_mode)}")
        return probs[0] if single else probs

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
        transform = self._get_transform()
        try:
            return transform(select_case(case, self.task))  # a modality subset: only its files
        except RuntimeError as exc:  # MONAI wraps errors as "applying transform ..."; surface the cause
            cause: BaseException = exc
            while str(cause).startswith("applying transform") and cause.__cause__ is not None:
                cause = cause.__cause__
            if cause is exc:
                raise
            raise cause from None

    def invert(self, data: Mapping[Hashable, Any], probabilities: torch.Tensor) -> torch.Tensor:
        """Map ``(R, X', Y', Z')`` probabilities from the network's grid back onto the input's grid.

        Uses MONAI ``Invertd`` with the ``Compose`` that prepared ``data["image"]`` (undoing
        crop, resampling — linear interpolation of the probabilities — and orientation).

        Returns:
            ``(R, X, Y, Z)`` float32 on the same device as ``probabilities``.
        """
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        image = data["image"]
        inverter = Invertd(keys="pred", transform=self._get_transform(), orig_keys="image", nearest_interp=False, to_tensor=True)
        out = inverter({"image": image, "pred": MetaTensor(probabilities)})["pred"]
        out = out.as_tensor() if hasattr(out, "as_tensor") else out
        expected = tuple(int(s) for s in image.meta["spatial_shape"])
        if tuple(out.shape[1:]) != expected:
            raise RuntimeError(f"{image.meta.get('filename_or_obj')}: inverted prediction has shape {tuple(out.shape[1:])}, input {expected}")
        return out.float()

    def labels_from_probabilities(self, probabilities: torch.Tensor) -> np.ndarray:
        """Post-process ``(R, X, Y, Z)`` probabilities into the task's label map (X, Y, Z) uint8.

        Thresholding alone runs on the probabilities' device; any other enabled step runs
        on the CPU (scipy).
        """
        cfg = self.postprocess_config
        if self.output_mode == "softmax":  # class probabilities: argmax (on their device), label values
            return postprocess_classes(probabilities, self.task, cfg)
        only_threshold = not (cfg.opening_radius or cfg.closing_radius or cfg.min_component_voxels or cfg.keep_largest or cfg.et_min_voxels)
        if only_threshold and torch.is_tensor(probabilities):
            t = torch.as_tensor(np.broadcast_to(np.asarray(cfg.threshold, dtype=np.float32), (probabilities.shape[0],)).copy())
            regions = probabilities > t.to(probabilities.device).view(-1, 1, 1, 1)
            return self.task.regions_to_labels(regions).cpu().numpy().astype(np.uint8)
        return postprocess(probabilities, self.task, cfg)

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


def _spatial_dims(networks: Sequence[nn.Module], spatial_dims: int | None) -> int:
    """The dimensionality shared by ``networks`` (read off their convolutions unless given)."""
    from brats_pipeline.networks import spatial_dims_of

    if spatial_dims is not None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        return int(spatial_dims)
    dims = {spatial_dims_of(n, default=0) for n in networks} - {0}
    if len(dims) > 1:
        raise ValueError(f"ensemble members must share one dimensionality, got {sorted(dims)}D networks")
    return dims.pop() if dims else 3


def _context(network: nn.Module, task: Task, context: int | None) -> int:
    """2.5D neighbours per side of a 2D network: given, or from its input channels (``modalities * (2k + 1)``)."""
    from brats_pipeline.networks import input_channels_of

    n = len(task.modalities)
    channels = input_channels_of(network)
    if context is None:
        if channels is None or channels == n:
            return 0
        if channels % n or (channels // n) % 2 == 0:
            raise ValueError(
                f"{type(network).__name__} takes {channels} input channels; task {task.name} has {n} modalities, "
                f"so a 2D network needs {n} (2D) or {n} x (2k + 1) (2.5D with k neighbours each side)"
            )
        return (channels // n - 1) // 2
    if channels is not None and channels != n * (2 * int(context) + 1):
        raise ValueError(
            f"context={context} feeds {n * (2 * int(context) + 1)} channels ({n} modalities x {2 * int(context) + 1} slices), "
            f"but {type(network).__name__} takes {channels}"
        )
    return int(context)


__all__ = ["BLEND_MODES", "CasePrediction", "Predictor"]
