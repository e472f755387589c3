"""Tools around a bundle: export a checkpoint's weights, verify everything, stack modalities.

* :func:`export_checkpoint`: Lightning checkpoint -> ``models/model.pt`` (strictly checked
  against the bundle's ``network_def``) + ``eval_metrics`` (and the metrics table of
  ``docs/README.md``, between :data:`METRICS_BEGIN` and :data:`METRICS_END`);
* :func:`verify_bundle`: layout, metadata schema, MONAI property ids, network in/out,
  strict weights, TorchScript equal to the eager network;
* :func:`stack_modalities`: per-modality files -> one 4D NIfTI (what MONAI Label sends).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brats_pipeline.bundle.inference import load_network
from brats_pipeline.bundle.training import accelerator_of, devices_of
from brats_pipeline.constants import Task, get_task
from brats_pipeline.weights import network_state_dict, read_checkpoint, save_state_dict

logger = logging.getLogger(__name__)

#: File the trained network weights live in, inside ``<bundle>/models/``.
MODEL_FILE = "model.pt"
CONFIG_FILES = ("metadata.json", "train.json", "multi_gpu_train.json", "inference.json", "evaluate.json", "logging.conf")
#: The metadata schema the MONAI model zoo names today: it requires ``required_packages_version``, the key MONAI
#: >= 1.4 reads (the 20220324 schema requires ``optional_packages_version``, which MONAI renames with a warning).
SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_URL = f"https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/{SCHEMA_NAME}"
#: Where each bundle ships an unchanged copy of that schema (Project MONAI's, Apache-2.0), so that
#: ``verify_metadata --filepath docs/meta_schema_20240725.json`` reads it instead of downloading (offline).
SCHEMA_FILE = f"docs/{SCHEMA_NAME}"
#: The lines around the metrics table of a bundle's ``docs/README.md`` that :func:`export_checkpoint` rewrites
#: (the rest of the README is hand-written and left alone; a README without them is not touched).
METRICS_BEGIN = "<!-- eval_metrics: written by brats-bundle export from configs/metadata.json -->"
METRICS_END = "<!-- /eval_metrics -->"


def _bundle_dir(bundle: str | os.PathLike) -> Path:
    path = Path(bundle)
    if not (path / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{path}: not a bundle (no configs/inference.json)")
    return path


def bundle_parser(bundle: str | os.PathLike, config: str = "inference.json") -> Any:
    """A MONAI ``ConfigParser`` of one of the bundle's configs, with its metadata and ``bundle_root`` set."""
    from monai.bundle import ConfigParser

    bundle_dir = _bundle_dir(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / config))
    parser.read_meta(str(bundle_dir / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle_dir)
    return parser


def export_checkpoint(
    checkpoint: str | os.PathLike,
    bundle: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    fold: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Copy a Lightning checkpoint's network weights into ``<bundle>/models/model.pt`` and record metrics.

    The weights are loaded **strictly** into the bundle's own ``network_def`` first, so a
    checkpoint of another architecture or task fails here, not later as silent random weights.
    ``eval_metrics`` in ``configs/metadata.json`` get the checkpoint's ``epoch``,
    ``global_step`` and best monitored score (``best_<monitor>``; left out for a run that
    trained on every fold, ``fold=-1``, whose validation cases were training cases) and, with
    ``datalist``, the per-region Dice (and HD95) of a validation run on ``fold`` (``val_*``).
    Other entries already there (e.g. cross-validation figures) are kept; those of an earlier
    export are replaced. In ``docs/README.md`` only the table between :data:`METRICS_BEGIN` and
    :data:`METRICS_END` is rewritten (with every ``eval_metrics`` entry), where the README has them.

    From the repository root, e.g. for the LGG bundle::

        brats-bundle export --checkpoint runs/lgg_cpu/csv/version_0/checkpoints/last.ckpt \
            --bundle bundles/lgg_flair_segmentation

    Returns:
        The ``eval_metrics`` written.

    Raises:
        FileNotFoundError: no checkpoint or no bundle.
        ValueError: not a Lightning checkpoint, other task or output mode, or weights that do not fit.
    """

    from preprocessing.io import write_json

    checkpoint, bundle_dir = Path(checkpoint), _bundle_dir(bundle)
    ckpt = read_checkpoint(checkpoint)
    parser = bundle_parser(bundle_dir)
    task = get_task(parser["task"])
    ckpt_task = (ckpt.get("hyper_parameters") or {}).get("task")
    if ckpt_task and get_task(ckpt_task).name != task.name:
        raise ValueError(f"{checkpoint}: trained for task {ckpt_task!r}, the bundle {bundle_dir.name} is for {task.name!r}")
    ckpt_mode = (ckpt.get("hyper_parameters") or {}).get("output_mode") or "sigmoid"
    if ckpt_mode != parser.get("output_mode", "sigmoid"):
        raise ValueError(f"{checkpoint}: trained with output_mode {ckpt_mode!r}, the bundle {bundle_dir.name} is "
                         f"{parser.get('output_mode', 'sigmoid')!r} (its output_mode id)")
    network = parser.get_parsed_content("network_def")
    state = network_state_dict(ckpt)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{checkpoint}: weights do not fit the network_def of {bundle_dir}: {exc}") from exc
    save_state_dict(state, bundle_dir / "models" / MODEL_FILE)

    metrics: dict[str, Any] = {}
    trained_on_every_fold = (ckpt.get("datamodule_hyper_parameters") or {}).get("fold") == -1
    for name, cb_state in (ckpt.get("callbacks") or {}).items():
        score = cb_state.get("best_model_score") if isinstance(cb_state, Mapping) else None
        if name.startswith("ModelCheckpoint") and score is not None and cb_state.get("monitor"):
            if trained_on_every_fold:
                logger.info("%s: trained on every fold; its validation score (on training cases) is not recorded", checkpoint)
            else:
                metrics[f"best_{cb_state['monitor'].replace('/', '_')}"] = float(score)
            break
    metrics["epoch"] = int(ckpt.get("epoch", -1))
    metrics["global_step"] = int(ckpt.get("global_step", -1))
    if datalist is not None:
        metrics.update(_validate(checkpoint, network, parser, datalist, fold, device))
    meta_path = bundle_dir / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    kept = {k: v for k, v in (meta.get("eval_metrics") or {}).items() if not _export_metric(k)}
    metrics = {**kept, **metrics}
    meta["eval_metrics"] = metrics
    write_json(meta, meta_path, indent=4)
    _write_metrics_table(bundle_dir / "docs" / "README.md", metrics)
    logger.info("exported %s -> %s; eval_metrics %s", checkpoint, bundle_dir / "models" / MODEL_FILE, metrics)
    return metrics


def metrics_table(eval_metrics: Mapping[str, Any]) -> str:
    """``eval_metrics`` as a Markdown table (floats to 4 decimals), as a bundle's ``docs/README.md`` shows them."""
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in eval_metrics.items()]
    return "\n".join(["| metric | value |", "| --- | --- |", *rows])


def _write_metrics_table(readme: Path, eval_metrics: Mapping[str, Any]) -> bool:
    """Rewrite the metrics block of a bundle's README (between the markers); ``False`` (nothing written) without one."""
    from preprocessing.io import atomic_path

    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    begin = text.find(METRICS_BEGIN)
    end = text.find(METRICS_END, begin + len(METRICS_BEGIN)) if begin >= 0 else -1
    if end < 0:
        logger.info("%s: no metrics block (%s ... %s); left unchanged", readme, METRICS_BEGIN, METRICS_END)
        return False
    new = f"{text[:begin]}{METRICS_BEGIN}\n\n{metrics_table(eval_metrics)}\n\n{text[end:]}"
    if new != text:
        with atomic_path(readme) as tmp:
            tmp.write_text(new, encoding="utf-8")
    return True


def _export_metric(key: str) -> bool:
    """An ``eval_metrics`` entry that :func:`export_checkpoint` writes (replaced by the next export)."""
    return key in ("epoch", "global_step") or key.startswith(("best_", "val_"))


def _validate(checkpoint: Path, network: Any, parser: Any, datalist: Any, fold: int, device: str) -> dict[str, float]:
    """Validation run of a checkpoint on ``fold`` of ``datalist``: ``{"val_dice_TC": ..., "val_mean_dice": ...}``."""
    import pytorch_lightning as pl

    from brats_pipeline.data.datamodule import BratsDataModule
    from brats_pipeline.module import BratsSegmentationModule

    module = BratsSegmentationModule.load_from_checkpoint(str(checkpoint), map_location="cpu", network=network)
    orientation = parser.get("preprocessing#orientation", "RAS")
    data = BratsDataModule(str(datalist), fold=fold, patch_size=tuple(parser["roi_size"]), num_workers=0,
                           cache="none", orientation=orientation)
    trainer = pl.Trainer(accelerator=accelerator_of(device), devices=devices_of(device), logger=False,
                         enable_progress_bar=False, enable_checkpointing=False)
    (result,) = trainer.test(module, data, verbose=False)  # test: HD95 too
    out = {}
    for key, value in result.items():
        name = key.replace("test/", "val_")
        out["val_mean_dice" if name == "val_dice_mean" else name] = float(value)
    return out


@dataclass
class Check:
    """One result of :func:`verify_bundle` (``status``: PASS, FAIL or SKIP)."""

    name: str
    status: str
    detail: str = ""


def verify_bundle(
    bundle: str | os.PathLike,
    schema: str | os.PathLike | None = None,
    device: str = "cpu",
    atol: float = 1e-4,
    require_weights: bool = False,
) -> list[Check]:
    """Run every check on a bundle; never raises for a failed check (see each :class:`Check`).

    Checks: the files of the layout; ``verify_metadata`` against ``schema`` (a local file
    works offline; ``None`` downloads the URL in ``metadata.json``); MONAI's train and infer
    property checks (``ConfigWorkflow.check_properties``); ``verify_net_in_out``; strict
    loading of ``models/model.pt``; TorchScript export (``ckpt_export``, scripted, or traced
    at the roi size when scripting fails) giving the eager output within ``atol``. The weight
    checks are SKIP without ``models/model.pt`` unless ``require_weights``.
    """
    import tempfile

    bundle_dir = Path(bundle)
    checks: list[Check] = []

    def run(name: str, fn: Any) -> Any:
        try:
            detail = fn()
            checks.append(Check(name, "PASS", detail or ""))
            return True
        except Exception as exc:  # a check's failure is its result
            checks.append(Check(name, "FAIL", f"{type(exc).__name__}: {exc}"))
            return False

    def layout() -> str:
        missing = [f"configs/{c}" for c in CONFIG_FILES if not (bundle_dir / "configs" / c).is_file()]
        missing += [p for p in ("docs/README.md", "LICENSE", "models") if not (bundle_dir / p).exists()]
        if missing:
            raise FileNotFoundError(f"{bundle_dir}: missing {', '.join(missing)}")
        for c in CONFIG_FILES[:-1]:
            json.loads((bundle_dir / "configs" / c).read_text(encoding="utf-8"))
        return "all files present, configs are valid JSON"

    if not run("layout", layout):
        return checks
    meta, inference = str(bundle_dir / "configs" / "metadata.json"), str(bundle_dir / "configs" / "inference.json")

    def metadata_schema() -> str:
        from monai.bundle import verify_metadata

        with tempfile.TemporaryDirectory() as tmp:
            target = str(schema) if schema else os.path.join(tmp, "schema.json")
            if schema and not Path(schema).is_file():
                raise FileNotFoundError(f"{schema}: schema file not found")
            verify_metadata(meta_file=meta, filepath=target)
        return f"valid against {schema or 'the schema URL in metadata.json'}"

    def properties(config: str, kind: str) -> Any:
        def check() -> str:
            missing, wrong = config_property_problems(bundle_dir / "configs" / config, kind)
            if missing or wrong:
                raise ValueError(f"{config}: missing required {kind} properties {missing}; optional ones with a wrong id {wrong}")
            return f"{config}: every required {kind} property present, optional ones referenced by their ids"
        return check

    def net_in_out() -> str:
        from monai.bundle import verify_net_in_out

        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=inference, device=device,
                          bundle_root=str(bundle_dir))
        return "network output channels and dtype match metadata"

    run("verify_metadata", metadata_schema)
    run("train properties", properties("train.json", "train"))
    run("inference properties", properties("inference.json", "infer"))
    run("verify_net_in_out", net_in_out)
    weights = bundle_dir / "models" / MODEL_FILE
    if not weights.is_file() and not require_weights:
        checks.append(Check("strict weights", "SKIP", f"{weights} absent (train or brats-bundle export first)"))
        checks.append(Check("torchscript", "SKIP", f"{weights} absent"))
        return checks
    state: dict[str, Any] = {}

    def strict() -> str:
        parser = bundle_parser(bundle_dir)
        state["net"] = load_network(parser.get_parsed_content("network_def"), weights, device)
        state["parser"] = parser
        return f"{weights} loads strictly into network_def"

    if run("strict weights", strict):
        run("torchscript", lambda: _torchscript_matches(bundle_dir, state["net"], state["parser"], device, atol))
    return checks


def config_property_problems(config_file: str | os.PathLike, kind: str) -> tuple[list[str], list[str]]:
    """MONAI's property check of a config, by ids only: ``(missing required, optional with a wrong id)``.

    Like ``ConfigWorkflow.check_properties`` (``kind``: ``train`` or ``infer``) but without
    instantiating anything, so placeholder paths and absent weights do not matter.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.properties import InferProperties, TrainProperties

    parser = ConfigParser()
    parser.read_config(str(config_file))
    props = {"train": TrainProperties, "infer": InferProperties}[kind]
    missing = [n for n, p in props.items() if p["required"] and p["id"] not in parser]
    wrong = []
    for name, prop in props.items():
        ref_id = prop.get("refer_id")
        ref = parser.get(ref_id) if ref_id and not prop["required"] and ref_id in parser else None
        if isinstance(ref, str) and not ref.startswith("$") and ref != "@" + prop["id"]:
            wrong.append(name)
    return missing, wrong


def _torchscript_matches(bundle_dir: Path, network: Any, parser: Any, device: str, atol: float) -> str:
    """Export with MONAI's ``ckpt_export`` to a temporary file and compare with the eager network."""
    import tempfile

    import torch
    from monai.bundle import ckpt_export

    channels = parser["_meta_#network_data_format#inputs#image#num_channels"]
    shape = [1, channels, *parser["roi_size"]]
    args = {"net_id": "network_def", "ckpt_file": str(bundle_dir / "models" / MODEL_FILE),
            "meta_file": str(bundle_dir / "configs" / "metadata.json"),
            "config_file": str(bundle_dir / "configs" / "inference.json"), "bundle_root": str(bundle_dir)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.ts")
        try:
            ckpt_export(filepath=path, **args)
            how = "scripted"
        except Exception:  # networks with Python control flow cannot be scripted: trace at the roi size
            ckpt_export(filepath=path, use_trace=True, input_shape=shape, **args)
            how = f"traced at {shape}"
        ts = torch.jit.load(path, map_location=device).eval()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        diff = float((ts(x) - network(x)).abs().max())
    if not diff <= atol:
        raise ValueError(f"TorchScript ({how}) differs from the eager network by {diff:.3g} > {atol}")
    return f"{how}; max |TorchScript - eager| = {diff:.3g} on a {shape} input"


def stack_modalities(
    files: Sequence[str | os.PathLike], output: str | os.PathLike, task: str | Task | None = None
) -> Path:
    """Write one 4D NIfTI (x, y, z, modality; float32) from per-modality 3D files, in the given order.

    The first file's affine is kept; every file must be on the same grid (shape and affine).
    With ``task``, the number of files must equal its number of modalities.

    Raises:
        ValueError: wrong number of files, files on different grids, or not 3D (``ImageFileError``).
    """
    from preprocessing.io import ImageFileError, read_array, write_nifti

    if task is not None and len(files) != len(get_task(task).modalities):
        t = get_task(task)
        raise ValueError(f"task {t.name} needs {len(t.modalities)} files ({', '.join(t.modality_names)}), got {len(files)}")
    if not files:
        raise ValueError("no modality files to stack")
    arrays, geometries = zip(*(read_array(f) for f in files))
    ref = geometries[0]
    for geo in geometries[1:]:
        if geo.shape != ref.shape or not np.allclose(geo.affine, ref.affine, atol=1e-3):
            raise ImageFileError(geo.path, f"grid (shape {geo.shape}) differs from {ref.path} (shape {ref.shape})")
    return write_nifti(np.stack(arrays, axis=-1).astype(np.float32), ref.affine, output)


def case_modality_files(case_dir: str | os.PathLike, task: str | Task) -> list[str]:
    """The modality files of one case folder in the task's channel order (found by the task's suffixes)."""
    from brats_pipeline.data.discovery import discover_cases

    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise FileNotFoundError(f"{case_dir}: case folder not found")
    for case in discover_cases(case_dir.parent, task):
        if case.case_id == case_dir.name:
            if case.problem:
                raise ValueError(f"{case_dir}: {case.problem}")
            return list(case.image) if isinstance(case.image, list) else [case.image]
    raise ValueError(f"{case_dir}: not a {get_task(task).name} case folder")
