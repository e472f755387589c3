"""How a :class:`~brats_pipeline.inference.predictor.Predictor` is built from saved weights.

:class:`FromSavedWeights` holds the predictor's classmethod constructors, which it inherits:
:meth:`~FromSavedWeights.from_checkpoint` (Lightning checkpoints of
:class:`~brats_pipeline.module.BratsSegmentationModule`; several = an ensemble),
:meth:`~FromSavedWeights.from_state_dict` (a plain network state dict, as a MONAI bundle's
``models/model.pt``) and :meth:`~FromSavedWeights.from_bundle`. Each rebuilds the network(s),
loads the weights strictly (:mod:`brats_pipeline.weights`, the one loader) and passes the settings
the weights were saved with to the predictor's constructor; ``sources`` records where they came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from brats_pipeline.constants import Task, get_task
from brats_pipeline.data.modalities import select_modalities

P = TypeVar("P", bound="FromSavedWeights")


class FromSavedWeights:
    """Constructors from checkpoints, state-dict files and bundles (a mixin of :class:`~brats_pipeline.inference.predictor.Predictor`).

    ``cls(networks, task, device=..., **settings)`` is the predictor's own constructor.
    """

    sources: list[str]  # where the weights came from (for manifests)

    @classmethod
    def from_checkpoint(
        cls: type[P], paths: str | os.PathLike | Sequence[str | os.PathLike], device: str | torch.device | None = None, **overrides: Any
    ) -> P:
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
        cls: type[P],
        network: str | nn.Module,
        weights_path: str | os.PathLike | Sequence[str | os.PathLike],
        task: str | Task,
        network_kwargs: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> P:
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
            device: as in :class:`~brats_pipeline.inference.predictor.Predictor`.
            **kwargs: other :class:`~brats_pipeline.inference.predictor.Predictor` arguments (``roi_size``, ``overlap`` ...).
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
    def from_bundle(cls: type[P], bundle_dir: str | os.PathLike, device: str | torch.device | None = None, **overrides: Any) -> P:
        """A MONAI bundle: ``configs/inference.json`` (``network_def``, ``task``, ``inferer``) + ``models/model.pt``.

        ``network_def`` is instantiated with MONAI's ``ConfigParser`` and the weights loaded
        strictly with :meth:`from_state_dict`. The bundle's own ``inferer`` object is instantiated
        too (``@`` references resolved) and injected (``inferer=``), so it predicts exactly what
        ``monai.bundle run`` and MONAI Label do; ``roi_size``, ``sw_batch_size``, ``overlap``,
        ``blend_mode`` (``mode`` there), ``slice_axis``, ``context`` in ``overrides`` are set on that
        config before it is built (:func:`~brats_pipeline.weights.read_bundle`). The task comes from
        ``task`` in ``inference.json`` (or ``metadata.json``) unless given in ``overrides``;
        ``modalities``, ``output_mode`` and ``spacing``, ``orientation`` and ``crop_foreground`` of
        ``preprocessing`` are used when present, so the bundle's own settings apply; so is its
        ``postprocess`` (the steps its ``RegionsToLabelsd`` runs), with the options of an
        ``overrides["postprocess"]`` set over it.

        Raises:
            FileNotFoundError: a required bundle file is missing.
            ValueError: no task, a config that does not build a network, or an inferer that cannot be built.
        """
        from brats_pipeline.weights import INFERER_KEYS, read_bundle

        root = Path(bundle_dir)
        window = {k: overrides.pop(k) for k in INFERER_KEYS if k in overrides}
        network, weights, task, settings = read_bundle(root, overrides.pop("task", None), window)
        if isinstance(settings.get("postprocess"), dict) and isinstance(overrides.get("postprocess"), dict):
            overrides["postprocess"] = {**settings["postprocess"], **overrides["postprocess"]}
        predictor = cls.from_state_dict(network, weights, task, device=device, **{**settings, **overrides})
        predictor.sources = [str(root)]
        return predictor


__all__ = ["FromSavedWeights"]
