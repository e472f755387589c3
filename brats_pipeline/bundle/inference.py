"""The network side of ``configs/inference.json`` (``evaluate.json`` adds a scorer).

* :func:`inference_preprocessing` is the training's deterministic transforms without the
  label, plus input checks naming the file (:mod:`~brats_pipeline.bundle.input_checks`:
  channel count, NaN/Inf, an empty modality): ``image`` is one 4D NIfTI with the modalities stacked on
  the last axis (MSD style, what MONAI Label sends) or a list of per-modality files;
* the label-map transforms (:class:`~brats_pipeline.inference.postprocess.RegionsToLabelsd`, ``ClassesToLabelsd``) live with the post-processing;
* :func:`train_network` is ``network_def``: the network ``train.json`` defines (one definition to
  edit or override), built with ``--network_def#<arg>`` overrides set on it;
* :func:`load_network` loads ``models/model.pt`` **strictly** (MONAI Label's own loader is
  not strict: a prefixed or Lightning state dict loads there as random weights);
* :func:`as_device` reads a bundle's ``device``.

The cases a bundle predicts are found by :mod:`~brats_pipeline.bundle.cases`; the ``evaluator``
that predicts, writes and scores them is :mod:`~brats_pipeline.bundle.runner`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brats_pipeline.bundle.input_checks import CheckChannelsd, ReportInputErrors
from brats_pipeline.constants import Task, get_task


def as_device(device: Any) -> Any:
    """A ``torch.device`` from a bundle's ``device`` (a ``torch.device``, or MONAI Label's plain string).

    Raises:
        ValueError: not a device name torch knows.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    try:
        return torch.device(str(device))
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc


def inference_preprocessing(
    task: str | Task,
    spacing: Sequence[float] | None = None,
    orientation: str | None = "RAS",
    crop_foreground: bool = True,
    modalities: Sequence[str] | None = None,
) -> Any:
    """The training's deterministic transforms for ``image`` only, with input checks around the loader.

    ``modalities``: a modality subset the network reads (:mod:`brats_pipeline.data.modalities`): only
    those files are loaded, or those channels of a 4D image of every modality of the task.

    Their header checks name the file for a missing, 2D/4D or corrupt file and modalities on different
    grids (:mod:`brats_pipeline.data.input_files`); :class:`CheckChannelsd` after loading fails a case,
    naming the file, for a wrong number of modalities, NaN/Inf or a constant (empty) modality.

    Loads with a MONAI ``LoadImaged`` (MONAI Label wraps it in its own loader) and keeps every
    spatial step invertible, so ``Invertd`` in the postprocessing returns predictions to the
    input's grid. Args as in :func:`brats_pipeline.data.transforms.deterministic_transforms`;
    leave ``spacing`` unset for data already on a 1 mm grid (MONAI >= 1.6 ``Spacingd`` fails
    inside MONAI Label). The checks are wrapped in :class:`~brats_pipeline.bundle.input_checks.ReportInputErrors`,
    so that served by MONAI Label their errors reach the client as HTTP 422 with the message.
    """
    from monai.transforms import Compose, LoadImaged

    from brats_pipeline.data.input_files import CheckFinited, CheckHeadersd
    from brats_pipeline.data.modalities import SelectModalitiesd, select_modalities
    from brats_pipeline.data.transforms import deterministic_transforms

    task = select_modalities(get_task(task), modalities)
    steps = list(deterministic_transforms(task, with_label=False, spacing=spacing, orientation=orientation,
                                          crop_foreground=crop_foreground).transforms)
    # the channel checks see the channels the network reads (after a subset's selection)
    after_load = max(i for i, t in enumerate(steps) if isinstance(t, (LoadImaged, SelectModalitiesd))) + 1
    steps = [*steps[:after_load], CheckChannelsd("image", task), *steps[after_load:]]
    checks = (CheckHeadersd, CheckFinited, CheckChannelsd)
    return Compose([ReportInputErrors(t) if isinstance(t, checks) else t for t in steps])


def train_network(config_file: str | os.PathLike, **overrides: Any) -> Any:
    """The ``network_def`` of the bundle's ``train.json`` (``config_file``), built, with ``overrides`` set on it first.

    ``inference.json``'s ``network_def`` is ``{"_target_": "brats_pipeline.bundle.train_network",
    "config_file": "$@bundle_root + '/configs/train.json'"}``: the network is defined once, and
    ``--network_def#features [...]`` on ``monai.bundle run`` (or MONAI Label's
    ``network_def#dropout``) reaches it as an override.

    Raises:
        FileNotFoundError: no ``config_file`` (``bundle_root`` not the bundle's folder).
        ValueError: it has no ``network_def``, or an override does not fit it.
    """
    from monai.bundle import ConfigParser

    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path.absolute()}: not found; inference.json builds the network train.json defines "
                                "(set --bundle_root to the bundle's folder)")
    parser = ConfigParser()
    parser.read_config(str(path))
    if not isinstance(parser.config.get("network_def"), dict):
        raise ValueError(f"{path}: no 'network_def' component")
    for key, value in overrides.items():
        parser[f"network_def#{key}"] = value
    try:
        return parser.get_parsed_content("network_def")
    except Exception as exc:  # MONAI names the target; say which file and overrides
        raise ValueError(f"{path}: its network_def could not be built with {overrides}: {exc}") from exc


def load_network(network: Any, path: str | os.PathLike, device: Any = "cpu") -> Any:
    """Load a plain ``state_dict`` from ``path`` into ``network`` **strictly**; return it on ``device`` in eval mode.

    Raises:
        FileNotFoundError: no weights file (train the bundle, or ``brats-bundle export``).
        ValueError: the file is a Lightning checkpoint, or its keys/shapes do not match the network.
    """
    from brats_pipeline.weights import load_state_dict_strict

    path = Path(path).absolute()  # errors name the file wherever the bundle was run from (bundle_root ".")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights; train the bundle (monai.bundle run) or run "
                                f"'brats-bundle export --checkpoint CKPT --bundle DIR'")
    load_state_dict_strict(network, path, plain=True)
    return network.to(as_device(device)).eval()
