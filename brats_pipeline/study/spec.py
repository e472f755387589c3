"""The study file: a base ``brats-train`` config, arms of overrides, folds, seed, the epoch-selection rule.

A study file is YAML (every key but ``base_config`` and one of ``grid``/``arms`` is optional)::

    name: loss                         # default: the file's stem
    description: CE vs Dice vs ...     # shown in the report
    base_config: unet3d_brats.yaml     # a brats-train (LightningCLI) config: relative to this file,
                                       # else a file of brats_pipeline/configs/
    datalist: brats21.json             # relative to this file; brats-study --datalist replaces it
    folds: [0, 1, 2]                   # validation folds: every arm trains once per fold (default [0])
    seed: 0                            # seed_everything of every run (default 0)
    selection:                         # which validated epoch of a run is evaluated
      metric: val_loss                 # val_loss (minimum) or val_dice (val/dice_mean, maximum)
      smoothing: moving_average        # none, moving_average (trailing mean) or ema
      window: 3                        # epochs of the trailing mean; ema: alpha = 2 / (window + 1)
    common:                            # overrides of every arm (dotted brats-train keys)
      trainer.max_epochs: 100
    grid:                              # the cartesian product: one arm per combination
      model.loss: [dice_ce, dice]
      model.optimizer.init_args.lr: [0.001, 0.0003]
    # or, instead of grid, a list of arms:
    arms:
      - name: unet3d                   # default: key=value of its overrides
        overrides: {model.network: unet3d, model.network_kwargs: {features: [32, 32, 64, 128, 256, 32]}}
    reference: dice_ce                 # the arm every other is compared with (default: the first)

Overrides are LightningCLI keys of ``brats-train`` (``model.loss``, ``data.batch_size``,
``model.optimizer.init_args.lr``, ``data.augmentation.flip_prob`` ...), passed as
``--key value`` after ``--config BASE`` (a value that is a list or mapping as JSON). The
study's runner owns ``data.datalist``, ``data.fold``, ``seed_everything``, the output folders,
the logger and the epoch checkpoints: an override of those (:data:`RESERVED`) is an error.
Grid arms are named ``short=value`` joined by ``,`` in grid order (``loss=dice_ce,lr=0.001``;
``short`` is the key's last part, the whole key when two keys share it).

An arm's **key** (:meth:`Study.arm_key`) is the SHA-256 of its resolved overrides (common, then
the arm's own, in order), the base config's content, the datalist's content and the seed: an
edited study (another value, another base config, another datalist) gives another key, so
another folder, and never reuses a finished run of the old one.

Errors are :class:`StudyError` (a ``ValueError``) naming the file and the key at fault.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Package folder of the shipped ``brats-train`` configs (a base_config not found beside the study).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: Package folder of the shipped study files.
STUDY_DIR = Path(__file__).resolve().parents[1] / "studies"
#: Top-level keys of a study file.
STUDY_KEYS = ("name", "description", "base_config", "datalist", "folds", "seed", "selection", "common", "grid", "arms",
              "reference")
#: Keys the runner sets itself (an exact key, or a prefix ending in ``.``).
RESERVED = ("data.datalist", "data.fold", "seed_everything", "trainer.default_root_dir", "trainer.logger", "checkpoint.",
            "ckpt_path", "config")
SELECTION_METRICS = ("val_loss", "val_dice")
SMOOTHINGS = ("none", "moving_average", "ema")
#: Changes whenever what the runner adds to an arm's training changes (part of every arm's key).
RUNNER_FORMAT = 1
_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class StudyError(ValueError):
    """A study file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class SelectionRule:
    """How a run's epoch is chosen from its validated epochs.

    Attributes:
        metric: ``val_loss`` (``val/loss``, lowest wins) or ``val_dice`` (``val/dice_mean``, highest wins).
        smoothing: ``none``, ``moving_average`` (mean of the last ``window`` validations, fewer at
            the start) or ``ema`` (``s_0 = v_0``, ``s_i = a v_i + (1 - a) s_(i-1)``, ``a = 2 / (window + 1)``),
            over the validations in epoch order.
        window: validations the smoothing spans (1: no smoothing).
    """

    metric: str = "val_loss"
    smoothing: str = "moving_average"
    window: int = 3

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "smoothing": self.smoothing, "window": self.window}

    def describe(self) -> str:
        what = "validation loss (min)" if self.metric == "val_loss" else "validation Dice, mean over regions (max)"
        if self.smoothing == "none" or self.window == 1:
            return what
        how = "trailing mean" if self.smoothing == "moving_average" else "EMA"
        return f"{what}, {how} over {self.window} validation(s)"


@dataclass(frozen=True)
class Arm:
    """One setting of the study: a name and its overrides (``{dotted key: value}``, in order)."""

    name: str
    overrides: dict[str, Any]


@dataclass
class Study:
    """A parsed study file (see the module docstring).

    Attributes:
        path: the study file.
        name / description: as given (name defaults to the file's stem).
        base_config: the resolved ``brats-train`` config.
        datalist: the resolved datalist, or ``None`` until :meth:`with_datalist` gives one.
        folds: validation folds.
        seed: the runs' seed.
        selection: the epoch-selection rule.
        common: overrides of every arm.
        arms: the arms, in order.
        reference: the name of the arm the others are compared with.
    """

    path: Path
    name: str
    base_config: Path
    arms: list[Arm]
    datalist: Path | None = None
    folds: list[int] = field(default_factory=lambda: [0])
    seed: int = 0
    selection: SelectionRule = field(default_factory=SelectionRule)
    common: dict[str, Any] = field(default_factory=dict)
    reference: str = ""
    description: str = ""

    def with_datalist(self, datalist: str | os.PathLike | None) -> Study:
        """This study with ``datalist`` (a path relative to the working folder) instead of the file's."""
        if datalist is not None:
            self.datalist = Path(datalist).resolve()
        return self

    def require_datalist(self) -> Path:
        """The datalist, checked to exist.

        Raises:
            StudyError: none given, or not a file.
        """
        if self.datalist is None:
            raise StudyError(f"{self.path}: no datalist: give --datalist or a 'datalist' key in the study file")
        if not self.datalist.is_file():
            raise StudyError(f"{self.path}: datalist {self.datalist}: no such file")
        return self.datalist

    def resolved_overrides(self, arm: Arm) -> dict[str, Any]:
        """The arm's overrides on top of the common ones (the arm's value wins for a key in both)."""
        return {**self.common, **arm.overrides}

    def arm_key(self, arm: Arm) -> str:
        """SHA-256 (hex) of the arm's resolved overrides, the base config's and datalist's contents and the seed."""
        blob = json.dumps({
            "runner": RUNNER_FORMAT,
            "overrides": [[k, v] for k, v in self.resolved_overrides(arm).items()],
            "base_config": _file_digest(self.base_config),
            "datalist": _file_digest(self.require_datalist()),
            "seed": self.seed,
        }, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def arm(self, name_or_index: str | int) -> Arm:
        """The arm called ``name_or_index``, or at that 0-based index (``IndexError``/``KeyError`` naming the choices)."""
        if isinstance(name_or_index, int):
            if not 0 <= name_or_index < len(self.arms):
                raise IndexError(f"{self.path}: arm index {name_or_index} out of range: the study has {len(self.arms)} "
                                 f"arm(s), 0..{len(self.arms) - 1}")
            return self.arms[name_or_index]
        for arm in self.arms:
            if arm.name == name_or_index:
                return arm
        raise KeyError(f"{self.path}: no arm {name_or_index!r}; arms: {[a.name for a in self.arms]}")

    def train_overrides_argv(self, arm: Arm) -> list[str]:
        """``--key value`` pairs of the arm's resolved overrides, after ``--config BASE``."""
        argv: list[str] = []
        for key, value in self.resolved_overrides(arm).items():
            argv += [f"--{key}", override_text(value)]
        return argv


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def override_text(value: Any) -> str:
    """A value as LightningCLI reads it on the command line: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def value_label(value: Any) -> str:
    """A value as it appears in an arm's name (``0.001``, ``dice_ce``, ``[1,2]``, ``true``)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def arm_name(overrides: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """``short=value`` of each override joined by ``,``; ``short`` is the key's last part unless two keys share it."""
    keys = list(keys if keys is not None else overrides)
    lasts = [k.rsplit(".", 1)[-1] for k in keys]
    return ",".join(f"{last if lasts.count(last) == 1 else k}={value_label(overrides[k])}" for k, last in zip(keys, lasts))


def _fail(path: Path, key: str, problem: str) -> StudyError:
    return StudyError(f"{path}: {key}: {problem}")


def _check_overrides(path: Path, where: str, overrides: Any) -> dict[str, Any]:
    if not isinstance(overrides, Mapping):
        raise _fail(path, where, f"must be a mapping of dotted brats-train keys to values, got {type(overrides).__name__}")
    for key in overrides:
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise _fail(path, f"{where}.{key}", "not a dotted brats-train key (e.g. model.loss, data.batch_size)")
        if key in RESERVED or any(key.startswith(r) for r in RESERVED if r.endswith(".")):
            raise _fail(path, f"{where}.{key}", "set by the study itself (datalist, folds, seed, outputs, logger, "
                                                "checkpoints); use the study's own keys")
    return dict(overrides)


def _int_list(path: Path, key: str, value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise _fail(path, key, f"must be an integer or a non-empty list of integers, got {value!r}")
    return values


def _selection(path: Path, raw: Any) -> SelectionRule:
    if raw is None:
        return SelectionRule()
    if not isinstance(raw, Mapping):
        raise _fail(path, "selection", f"must be a mapping (metric, smoothing, window), got {raw!r}")
    unknown = set(raw) - {"metric", "smoothing", "window"}
    if unknown:
        raise _fail(path, f"selection.{sorted(unknown)[0]}", "unknown key; selection has metric, smoothing, window")
    metric = raw.get("metric", "val_loss")
    if metric not in SELECTION_METRICS:
        raise _fail(path, "selection.metric", f"unknown metric {metric!r}; choose one of {SELECTION_METRICS}")
    smoothing = raw.get("smoothing", "moving_average" if metric == "val_loss" else "none")
    if smoothing not in SMOOTHINGS:
        raise _fail(path, "selection.smoothing", f"unknown smoothing {smoothing!r}; choose one of {SMOOTHINGS}")
    window = raw.get("window", 3 if smoothing != "none" else 1)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise _fail(path, "selection.window", f"must be a positive integer, got {window!r}")
    return SelectionRule(metric, smoothing, window)


def _arms(path: Path, raw: Mapping[str, Any]) -> list[Arm]:
    if ("grid" in raw) == ("arms" in raw):
        raise _fail(path, "grid/arms", "give exactly one of 'grid' (a cartesian product) or 'arms' (a list)")
    if "grid" in raw:
        grid = _check_overrides(path, "grid", raw["grid"])
        if not grid:
            raise _fail(path, "grid", "is empty")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise _fail(path, f"grid.{key}", f"must be a non-empty list of values, got {values!r}")
        keys = list(grid)
        return [Arm(arm_name(dict(zip(keys, combo)), keys), dict(zip(keys, combo)))
                for combo in itertools.product(*(grid[k] for k in keys))]
    entries = raw["arms"]
    if not isinstance(entries, list) or not entries:
        raise _fail(path, "arms", "must be a non-empty list of {name, overrides}")
    arms = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "overrides" not in entry or set(entry) - {"name", "overrides"}:
            raise _fail(path, f"arms[{i}]", f"must be a mapping with 'overrides' (and an optional 'name'), got {entry!r}")
        overrides = _check_overrides(path, f"arms[{i}].overrides", entry["overrides"])
        name = entry.get("name") or arm_name(overrides)
        if not isinstance(name, str) or not name.strip():
            raise _fail(path, f"arms[{i}].name", f"must be a non-empty string, got {name!r}")
        arms.append(Arm(name, overrides))
    return arms


def _resolve_base(path: Path, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail(path, "base_config", f"must name a brats-train config file, got {value!r}")
    for candidate in (path.parent / value, CONFIG_DIR / value):
        if candidate.is_file():
            return candidate.resolve()
    raise _fail(path, "base_config", f"{value}: no such file beside the study file or in {CONFIG_DIR}")


def load_study(path: str | os.PathLike, datalist: str | os.PathLike | None = None,
               set_overrides: Mapping[str, Any] | None = None) -> Study:
    """Read and check a study file.

    Args:
        path: the YAML file (or a shipped study's name, e.g. ``loss`` for ``brats_pipeline/studies/loss.yaml``).
        datalist: replaces the file's ``datalist`` (relative to the working folder).
        set_overrides: more common overrides (``brats-study --set key=value``), applied after the file's.

    Raises:
        StudyError: unreadable YAML, an unknown key, a bad value, a missing base config; the
            message names the file and the key.
    """
    import yaml

    path = Path(path)
    if not path.is_file() and (STUDY_DIR / f"{path}.yaml").is_file():
        path = STUDY_DIR / f"{path}.yaml"
    if not path.is_file():
        raise StudyError(f"{path}: no such study file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise StudyError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise StudyError(f"{path}: a study file is a YAML mapping (base_config, grid or arms, ...), got {type(raw).__name__}")
    unknown = [k for k in raw if k not in STUDY_KEYS]
    if unknown:
        raise _fail(path, str(unknown[0]), f"unknown key; a study file has {', '.join(STUDY_KEYS)}")
    if "base_config" not in raw:
        raise _fail(path, "base_config", "missing: name the brats-train config the arms override")
    base = _resolve_base(path, raw["base_config"])
    common = _check_overrides(path, "common", raw.get("common") or {})
    if set_overrides:
        common.update(_check_overrides(path, "--set", set_overrides))
    arms = _arms(path, raw)
    names = [a.name for a in arms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(path, "arms", f"arm names must differ; {duplicates[0]!r} is used twice")
    folds = _int_list(path, "folds", raw.get("folds", [0]))
    if any(f < 0 for f in folds) or len(set(folds)) != len(folds):
        raise _fail(path, "folds", f"must be distinct validation folds >= 0, got {folds}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _fail(path, "seed", f"must be an integer, got {seed!r}")
    reference = raw.get("reference", arms[0].name)
    if reference not in names:
        raise _fail(path, "reference", f"no arm {reference!r}; arms: {names}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise _fail(path, "name", f"must be a non-empty string, got {name!r}")
    dl = raw.get("datalist")
    if dl is not None and not isinstance(dl, str):
        raise _fail(path, "datalist", f"must be a path, got {dl!r}")
    study = Study(path=path.resolve(), name=name, base_config=base, arms=arms,
                  datalist=(path.parent / dl).resolve() if dl else None, folds=folds, seed=seed,
                  selection=_selection(path, raw.get("selection")), common=common, reference=reference,
                  description=str(raw.get("description") or ""))
    return study.with_datalist(datalist)


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (``brats-study --set``) to ``{key: value}``, values read as YAML (``0.1``, ``[1,2]``, ``dice``).

    Raises:
        ValueError: an item without ``=``.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. trainer.max_epochs=2")
        out[key.strip()] = yaml.safe_load(text)
    return out
