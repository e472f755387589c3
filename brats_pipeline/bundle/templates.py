"""The bundles' files from one template: a :class:`~brats_pipeline.bundle.specs.BundleSpec` holds what differs.

:data:`~brats_pipeline.bundle.specs.BUNDLES` lists the four bundles of ``bundles/``;
:func:`render_bundle` returns every file of one (configs, metadata, logging, docs, licence); ``bundles/`` is the committed output
of :func:`write_bundle` (``brats-bundle generate``) and a test checks that it is in sync
(:func:`check_bundle`). Measured ``eval_metrics`` are data, not template: they are kept from
the bundle's current ``metadata.json``. ``docs/meta_schema_20240725.json`` (:data:`SCHEMA_FILE`) is
not rendered: each bundle ships Project MONAI's schema file unchanged, for offline ``verify_metadata``.
The config files come from :mod:`~brats_pipeline.bundle.configs`, ``metadata.json`` from
:mod:`~brats_pipeline.bundle.metadata` and ``docs/README.md`` from :mod:`~brats_pipeline.bundle.docs`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brats_pipeline.bundle.configs import evaluate_config, inference_config, multi_gpu_config, train_config
from brats_pipeline.bundle.metadata import metadata
from brats_pipeline.bundle.specs import SCHEMA_FILE, BundleSpec

__all__ = ["LOGGING_CONF", "check_bundle", "license_text", "render_bundle", "write_bundle"]


LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def license_text(spec: BundleSpec) -> str:
    """``LICENSE``: Apache 2.0 for the bundle; a note on the training data's terms."""
    data = ("the TCGA LGG data of Buda et al. (CC BY-NC-SA 4.0)" if spec.task == "lgg"
            else "BraTS data (see the challenge's data terms)")
    return (
        "Copyright (c) brats-pipeline contributors\n\n"
        'Licensed under the Apache License, Version 2.0 (the "License"); you may not use the files of this\n'
        "bundle except in compliance with the License. You may obtain a copy of the License at\n\n"
        "    http://www.apache.org/licenses/LICENSE-2.0\n\n"
        "Unless required by applicable law or agreed to in writing, software distributed under the License\n"
        'is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or\n'
        "implied. See the License for the specific language governing permissions and limitations under the\n"
        "License.\n\n"
        f"{SCHEMA_FILE}: Project MONAI's bundle metadata schema, unchanged\n"
        "(Copyright (c) MONAI Consortium; Apache License 2.0).\n\n"
        f"Weights trained with this bundle on {data} are subject to the terms of that data as well.\n"
        "Research use only; not a medical device.\n"
    )


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


def render_bundle(spec: BundleSpec, eval_metrics: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Every file of a bundle: ``{relative path: text}`` (no weights; ``models/.gitkeep`` is empty).

    ``eval_metrics`` are measurements, not template: pass those of the bundle's current
    ``metadata.json`` (:func:`write_bundle` and :func:`check_bundle` do).
    """
    from brats_pipeline.bundle.docs import readme  # docs builds on this module

    return {
        "configs/metadata.json": _json_text(metadata(spec, eval_metrics)),
        "configs/train.json": _json_text(train_config(spec)),
        "configs/multi_gpu_train.json": _json_text(multi_gpu_config(spec)),
        "configs/inference.json": _json_text(inference_config(spec)),
        "configs/evaluate.json": _json_text(evaluate_config(spec)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": readme(spec, eval_metrics),
        "LICENSE": license_text(spec),
        "models/.gitkeep": "",
    }


def _current_eval_metrics(bundle_dir: Path) -> dict[str, Any]:
    meta = bundle_dir / "configs" / "metadata.json"
    if not meta.is_file():
        return {}
    try:
        return dict(json.loads(meta.read_text(encoding="utf-8")).get("eval_metrics") or {})
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta}: not valid JSON ({exc})") from exc


def write_bundle(spec: BundleSpec, root: str | os.PathLike) -> Path:
    """Write (or refresh) ``root/<spec.name>`` from the template, keeping its measured ``eval_metrics``."""
    from preprocessing.io import atomic_path

    bundle_dir = Path(root) / spec.name
    for rel, text in render_bundle(spec, _current_eval_metrics(bundle_dir)).items():
        path = bundle_dir / rel
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return bundle_dir


def check_bundle(spec: BundleSpec, root: str | os.PathLike) -> list[str]:
    """Files of ``root/<spec.name>`` that differ from the template (missing ones included); empty when in sync."""
    bundle_dir = Path(root) / spec.name
    stale = []
    for rel, text in render_bundle(spec, _current_eval_metrics(bundle_dir)).items():
        path = bundle_dir / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(str(path))
    return stale

