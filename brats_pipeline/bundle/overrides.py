"""Overrides of ``monai.bundle run`` checked against the bundle's config: a misspelt id is an error, not a new key.

``python -m monai.bundle run --config_file configs/inference.json --ouput_dir preds`` adds a
key ``ouput_dir`` that nothing reads and writes into the default ``output_dir`` (MONAI lets an
override add content). :func:`check_overrides` refuses an override whose id is not in the
merged config, naming the id, the config files and the closest existing id (``difflib``):

* a top-level id must exist (a new top-level key is referenced by nothing);
* in a nested id (``train#trainer#max_epochs``, ``#`` or ``::``) every part but the last must
  exist; the last may be new when its parent is a mapping (a new argument of a component, which
  MONAI adds and the component's constructor then checks); list items must exist.

:func:`run` is ``monai.bundle run`` with that check first (``brats-bundle run``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from inspect import Parameter, signature
from typing import Any

#: Keys ``monai.bundle run`` takes for MLflow tracking (``tracking=...``) through its overrides.
TRACKING_KEYS = frozenset({"output_dir", "tracking_uri", "experiment_name", "run_name", "save_execute_config"})


class OverrideError(ValueError):
    """An override that names no key of the bundle's config, or no config (``str(err)`` is one line)."""


def run_arguments() -> frozenset[str]:
    """The keyword arguments of ``monai.bundle run`` that are not config overrides (``config_file``, ``meta_file`` ...)."""
    from monai.bundle import scripts, workflows

    names: set[str] = set()
    for function in (scripts.run, scripts.create_workflow, workflows.ConfigWorkflow.__init__):
        names |= {p.name for p in signature(function).parameters.values()
                  if p.kind not in (Parameter.VAR_KEYWORD, Parameter.VAR_POSITIONAL) and p.name != "self"}
    return frozenset(names)


def _files(config_file: str | Sequence[str]) -> list[str]:
    """The config files, as MONAI's ``ConfigParser.load_config_files`` reads them (a string may be comma-separated)."""
    from pathlib import Path

    if isinstance(config_file, str):
        return config_file.split(",") if "," in config_file and not Path(config_file).is_file() else [config_file]
    return [str(f) for f in config_file]


def check_overrides(config_file: str | Sequence[str], overrides: Mapping[str, Any], tracking: bool = False) -> None:
    """Raise :class:`OverrideError` for the first override whose id is not in the merged ``config_file``.

    Args:
        config_file: one config file or several (merged in order, as ``monai.bundle run`` does).
        overrides: ``{id: value}`` as given to ``monai.bundle run`` (no ``config_file`` etc.).
        tracking: MLflow tracking is on (its keys, :data:`TRACKING_KEYS`, are then accepted).

    Raises:
        OverrideError: an id that names no key, with the closest existing one; a config file that
            does not exist.
    """
    from pathlib import Path

    from monai.bundle import ConfigParser

    files = _files(config_file)
    for path in files:
        if not Path(path).is_file():
            raise OverrideError(f"--config_file {path}: no such file")
    config = ConfigParser.load_config_files(files)
    where = ", ".join(files)
    for key in overrides:
        if key.startswith("_meta_") or (tracking and key in TRACKING_KEYS):
            continue
        _check_id(config, str(key), where)


def _check_id(config: Mapping[str, Any], key: str, where: str) -> None:
    parts = re.split(r"::|#", key)
    node: Any = config
    for depth, part in enumerate(parts):
        parent = "#".join(parts[:depth])
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
                continue
            if depth and depth == len(parts) - 1:  # a new argument of an existing component: MONAI adds it
                return
            close = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.6)
            hint = f"; did you mean --{'#'.join([*parts[:depth], close[0]])}?" if close else \
                f"; {'its' if depth else 'the top-level'} keys are {_some(sorted(map(str, node)))}"
            raise OverrideError(f"--{key}: no key {part!r} {f'under {parent!r} ' if depth else ''}in {where}{hint}")
        if isinstance(node, list):
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            raise OverrideError(f"--{key}: {parent!r} in {where} is a list of {len(node)} items; no item {part!r}")
        raise OverrideError(f"--{key}: {parent!r} in {where} is a value ({type(node).__name__}), not a mapping "
                            f"with a key {part!r}")


def _some(names: Sequence[str], n: int = 12) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def run(**kwargs: Any) -> None:
    """``monai.bundle run`` with its overrides checked first (:func:`check_overrides`).

    Takes what ``python -m monai.bundle run`` takes: ``config_file`` (and the other arguments of
    ``monai.bundle.run``, also from ``args_file``) and ``id=value`` overrides.

    Raises:
        OverrideError: no ``config_file`` or a missing one, or an override that names no key of the config.
    """
    from monai.bundle import run as monai_run
    from monai.bundle.scripts import update_kwargs

    arguments = run_arguments()
    merged = update_kwargs(args=kwargs.get("args_file"), **{k: v for k, v in kwargs.items() if k != "args_file"})
    if not merged.get("config_file"):
        raise OverrideError("--config_file is required (e.g. --config_file configs/inference.json)")
    overrides = {k: v for k, v in merged.items() if k not in arguments}
    check_overrides(merged["config_file"], overrides, tracking=merged.get("tracking") is not None)
    monai_run(**kwargs)
