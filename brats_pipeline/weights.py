"""The one home of saved models: Lightning checkpoints, plain state dicts and bundle ``models/model.pt``.

* :func:`read_checkpoint` reads a Lightning checkpoint (errors name the file);
  :func:`network_from_checkpoint` rebuilds the network it holds (every checkpoint the project
  writes records its network: ``checkpoint["network"]``) and :func:`checkpoint_settings` the
  inference settings its hyper-parameters carry;
* :func:`network_state_dict` takes the plain network weights out of a checkpoint,
  :func:`save_state_dict` writes them atomically (a bundle's ``models/model.pt``) and
  :func:`load_state_dict_strict` loads a weights file into a network, strictly;
* :func:`read_bundle` reads a MONAI bundle's network, weights file, task, inference settings and its
  ``inferer`` object from ``configs/inference.json`` (MONAI's ``ConfigParser``).

Used by :class:`~brats_pipeline.inference.Predictor`, the bundle tools and callbacks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brats_pipeline.constants import get_task

#: ``(config id in inference.json, Predictor argument)`` read by :func:`read_bundle` (the inferer is built whole).
BUNDLE_SETTINGS = (
    ("modalities", "modalities"),
    ("preprocessing#spacing", "spacing"), ("preprocessing#orientation", "orientation"),
    ("preprocessing#crop_foreground", "crop_foreground"),
    ("output_mode", "output_mode"),
    ("postprocess", "postprocess"),  # the post-processing steps the bundle's RegionsToLabelsd runs
)
#: Predictor arguments that :func:`read_bundle` sets on the bundle's ``inferer`` (its key there) before building it.
INFERER_KEYS = {"roi_size": "roi_size", "sw_batch_size": "sw_batch_size", "overlap": "overlap", "blend_mode": "mode",
                "slice_axis": "slice_axis", "context": "context"}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint (a trusted file: ``weights_only=False``), checked to hold a ``state_dict``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable, or not a Lightning checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a bad file
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return dict(ckpt)


def checkpoint_settings(checkpoint: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Inference settings from a checkpoint's module and data-module hyper-parameters (defaults where absent).

    ``task``, the ``modalities`` the network reads (``None``: all the task's, also for checkpoints
    written before modality subsets), the inferer's ``roi_size``, ``sw_batch_size``, ``overlap``, ``blend_mode``,
    ``slice_axis`` and ``context``, and the preprocessing's ``spacing``, ``orientation`` and
    ``crop_foreground``: the :class:`~brats_pipeline.inference.Predictor` arguments; and the
    ``output_mode`` (``sigmoid`` for checkpoints without one), checked against the channels of
    the network the checkpoint records (``ValueError`` naming ``source`` if they do not fit).
    """
    hp = dict(checkpoint.get("hyper_parameters") or {})
    dm = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    try:
        task = get_task(hp.get("task", "brats2021"))
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc
    return {
        "task": task.name,
        "modalities": None if tuple(hp.get("modalities") or task.modality_names) == task.modality_names  # all: None
        else tuple(hp["modalities"]),
        "roi_size": tuple(hp.get("roi_size", (128, 128, 128))),
        "sw_batch_size": int(hp.get("sw_batch_size", 4)),
        "overlap": float(hp.get("overlap", 0.5)),
        "blend_mode": hp.get("blend_mode", "gaussian"),
        "slice_axis": int(hp.get("slice_axis", 2)),
        "context": None if hp.get("context") is None else int(hp["context"]),
        "spacing": None if dm.get("spacing") is None else tuple(dm["spacing"]),
        "orientation": dm.get("orientation", "RAS"),
        "crop_foreground": bool(dm.get("crop_foreground", True)),
        "output_mode": _output_mode(checkpoint, task, source),
    }


def _output_mode(checkpoint: Mapping[str, Any], task: Any, source: str) -> str:
    """A checkpoint's ``output_mode`` (``sigmoid`` when absent), checked against its network's output channels."""
    from brats_pipeline.constants import check_output_mode

    mode = (checkpoint.get("hyper_parameters") or {}).get("output_mode") or "sigmoid"
    try:
        check_output_mode(mode)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc
    out = (checkpoint.get("network") or {}).get("out_channels")
    if out is not None and int(out) != task.output_channels(mode):
        what = f"regions {task.region_names}" if mode == "sigmoid" else f"classes {task.class_names}"
        raise ValueError(f"{source}: its network outputs {out} channels, but output_mode {mode!r} of task {task.name} "
                         f"needs {task.output_channels(mode)} ({what})")
    return mode


def network_from_checkpoint(checkpoint: Mapping[str, Any], source: str) -> nn.Module:
    """The network a :class:`~brats_pipeline.module.BratsSegmentationModule` checkpoint holds, with its weights.

    The architecture is ``checkpoint["network"]`` (:func:`brats_pipeline.networks.network_config`
    of the trained network: registry name, channels, dimensionality, options; written whatever
    built the network), or for checkpoints without it the hyper-parameters ``network``,
    ``network_kwargs``, ``task``, ``in_channels`` and ``context``. The ``network.*`` weights of
    ``state_dict`` are loaded strictly.

    Args:
        checkpoint: a loaded Lightning checkpoint.
        source: where it came from (named first in errors).

    Raises:
        ValueError: the checkpoint names a network by class only (a module not built by
            :func:`~brats_pipeline.networks.build_network`, whose options are unknown), an
            unknown registry name, or weights that do not fit.
    """
    from brats_pipeline.networks import build_network, check_state_dict_keys

    hp = dict(checkpoint.get("hyper_parameters") or {})
    config = checkpoint.get("network")
    if config is None:  # written before checkpoints recorded their network
        name = hp.get("network", "unet3d")
        if not isinstance(name, str):
            raise ValueError(f"{source}: the checkpoint does not say which network it holds; "
                             "rebuild it and use Predictor(network, ...) or Predictor.from_state_dict")
        task = get_task(hp.get("task", "brats2021"))
        in_channels = int(hp.get("in_channels") or len(task.modalities)) * (2 * int(hp.get("context") or 0) + 1)
        out_channels = task.output_channels(hp.get("output_mode") or "sigmoid")
        config = {"name": name, "in_channels": in_channels, "out_channels": out_channels, "spatial_dims": None,
                  "kwargs": dict(hp.get("network_kwargs") or {})}
    elif not config.get("name"):
        raise ValueError(
            f"{source}: the network is a {config.get('class_path', '?')} that was given to the module as a built "
            "module, not by brats_pipeline.networks.build_network, so its options are not recorded; build it and "
            f"use Predictor(network, ...) or Predictor.from_state_dict(network, '{source}', task)"
        )
    kwargs = dict(config.get("kwargs") or {})
    spatial_dims = kwargs.pop("spatial_dims", None)  # hyper-parameters carry it with the options
    if config.get("spatial_dims") is not None:
        spatial_dims = int(config["spatial_dims"])
    try:
        network = build_network(config["name"], int(config["in_channels"]), int(config["out_channels"]),
                                spatial_dims=spatial_dims, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: cannot rebuild network {config['name']!r} with {kwargs}: {exc}") from exc
    state = {k[len("network."):]: v for k, v in checkpoint["state_dict"].items() if str(k).startswith("network.")}
    check_state_dict_keys(network, state, source)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{source}: weights do not fit network {config['name']!r} ({str(exc).splitlines()[0]}...)") from exc
    return network


def load_state_dict_strict(network: nn.Module, path: str | os.PathLike, plain: bool = False) -> nn.Module:
    """Load a state-dict file into ``network`` strictly; errors name the file and the mismatched keys.

    Accepts a plain state dict, ``{"state_dict": ...}`` and Lightning checkpoints (whose
    ``network.`` prefix is removed); with ``plain=True`` only a plain state dict (a bundle's
    ``models/model.pt``, which MONAI's own tools load as such).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable, not a state dict (or not plain, with ``plain``), or weights that
            do not fit ``network``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if plain:
            raise ValueError(f"{path}: not a readable plain state dict ({type(exc).__name__}: {exc})") from exc
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception:
            raise ValueError(f"{path}: not a readable torch state dict ({type(exc).__name__}: {exc})") from exc
    if plain and (not isinstance(state, Mapping) or "state_dict" in state):
        raise ValueError(f"{path}: not a plain network state_dict (a Lightning checkpoint?); "
                         "convert it with 'brats-bundle export --checkpoint CKPT --bundle DIR'")
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict (mapping of parameter names), got {type(state).__name__}")
    if not plain and state and all(str(k).startswith("network.") for k in state if not str(k).startswith("loss_fn.")):
        state = {k[len("network."):]: v for k, v in state.items() if str(k).startswith("network.")}
    from brats_pipeline.networks import check_state_dict_keys

    check_state_dict_keys(network, state, str(path))
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the network ({str(exc).splitlines()[0]}...)") from exc
    return network



def network_state_dict(checkpoint: Mapping[str, Any], prefix: str = "network.") -> dict[str, Any]:
    """The plain network ``state_dict`` inside a Lightning checkpoint (``state_dict`` keys ``network.*``).

    Raises:
        ValueError: no key starts with ``prefix``.
    """
    state = checkpoint.get("state_dict", checkpoint)
    net = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not net:
        heads = sorted({k.split(".")[0] for k in state})[:8]
        raise ValueError(f"no '{prefix}*' weights in the checkpoint (its keys start with {heads})")
    return net


def save_state_dict(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` a state dict atomically (temporary name, then rename)."""
    from preprocessing.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    return Path(path)


def read_bundle(
    root: str | os.PathLike, task: str | None = None, inferer_overrides: Mapping[str, Any] | None = None
) -> tuple[nn.Module, Path, str, dict[str, Any]]:
    """A MONAI bundle's ``network_def`` (built, no weights), weights file, task and inference settings.

    ``network_def`` is instantiated with MONAI's ``ConfigParser``; the task comes from ``task``
    in ``inference.json`` (or ``metadata.json``) unless given; the settings are the plain
    values of :data:`BUNDLE_SETTINGS` present in ``inference.json`` (``@`` references resolved)
    and ``inferer``: the bundle's own ``inferer`` object, instantiated as ``monai.bundle run`` and
    MONAI Label do, with ``inferer_overrides`` (Predictor arguments of :data:`INFERER_KEYS`:
    ``roi_size``, ``overlap``, ``blend_mode`` -> ``mode`` ...) set on it first, as
    ``--inferer#overlap 0.25`` on MONAI's command line would (on a wrapper such as
    :class:`~brats_pipeline.inference.inferers.MirrorInferer`: on its inner ``inferer``). A bundle without ``inferer``: the
    overrides are returned as settings (the predictor builds its inferer from them).

    Raises:
        FileNotFoundError: ``configs/inference.json`` or ``models/model.pt`` is missing.
        ValueError: no task, a config that does not build a network, or an ``inferer`` that
            cannot be built (with the overrides).
    """
    import json

    from monai.bundle import ConfigParser

    root = Path(root)
    config_file, weights = root / "configs" / "inference.json", root / "models" / "model.pt"
    for path in (config_file, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (a bundle needs configs/inference.json and models/model.pt)")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(root)
    if "network_def" not in parser.config:
        raise ValueError(f"{config_file}: no 'network_def'")
    network = parser.get_parsed_content("network_def")
    if not isinstance(network, nn.Module):
        raise ValueError(f"{config_file}: 'network_def' built {type(network).__name__}, not an nn.Module")
    task = task or _bundle_value(parser, "task")
    meta_file = root / "configs" / "metadata.json"
    if task is None and meta_file.is_file():
        from brats_pipeline.constants import TASK_ALIASES, TASKS

        meta_task = json.loads(meta_file.read_text(encoding="utf-8")).get("task")
        task = meta_task if meta_task in TASKS or meta_task in TASK_ALIASES else None
    if task is None:
        raise ValueError(f"{config_file}: no task name ('task': 'brats2021' ...) in inference.json or metadata.json; pass task=...")
    settings: dict[str, Any] = {}
    for src, dst in BUNDLE_SETTINGS:
        if not _bundle_has(parser, src):
            continue
        value = _bundle_value(parser, src)
        if value is not None or dst in ("spacing", "orientation"):  # null is meaningful for these two
            settings[dst] = tuple(value) if isinstance(value, (list, tuple)) else value
    if "inferer" in parser.config:
        settings["inferer"] = _bundle_inferer(parser, config_file, dict(inferer_overrides or {}))
    else:
        settings.update(inferer_overrides or {})
    return network, weights, str(task), settings


def _bundle_inferer(parser: Any, config_file: Path, overrides: dict[str, Any]) -> Any:
    """The bundle's ``inferer``, instantiated (``@`` references resolved) after setting ``overrides`` on it."""
    unknown = sorted(set(overrides) - set(INFERER_KEYS))
    if unknown:
        raise ValueError(f"{unknown} are not inferer settings; choose among {sorted(INFERER_KEYS)}")
    node = parser.config["inferer"]
    if overrides and not (isinstance(node, Mapping) and "_target_" in node):
        raise ValueError(f"{config_file}: 'inferer' is not a '_target_' config, so {sorted(overrides)} cannot be set on it; "
                         "change the bundle's inferer instead")
    where = "inferer"
    while overrides and isinstance(node.get("inferer"), Mapping) and "_target_" in node["inferer"]:
        where, node = f"{where}#inferer", node["inferer"]  # a wrapper (MirrorInferer): the settings are its inner inferer's
    for name, value in overrides.items():
        key = "spatial_dim" if name == "slice_axis" and "spatial_dim" in node else INFERER_KEYS[name]  # MONAI SliceInferer
        parser[f"{where}#{key}"] = list(value) if isinstance(value, tuple) else value
    try:
        inferer = parser.get_parsed_content("inferer")
    except Exception as exc:  # a MONAI instantiation error names the target; say which file and settings
        given = f" with {overrides}" if overrides else ""
        raise ValueError(f"{config_file}: its 'inferer' could not be built{given}: {exc}") from exc
    if not callable(inferer):
        raise ValueError(f"{config_file}: 'inferer' built {type(inferer).__name__}, not a callable (inputs, network) -> logits")
    return inferer


def _bundle_has(parser: Any, id_: str) -> bool:
    node: Any = parser.config
    for part in id_.split("#"):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _bundle_value(parser: Any, id_: str) -> Any:
    """A plain value of a bundle config (``@`` references resolved), or ``None`` if absent or not plain."""
    if not _bundle_has(parser, id_):
        return None
    try:
        value = parser.get_parsed_content(id_)
    except Exception:  # an expression that needs the runtime (e.g. a device) — not a setting we read
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value if isinstance(value, (str, int, float, bool, list, tuple, dict)) else None
