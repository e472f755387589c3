"""Bundle metadata: MONAI's current keys (no deprecation warning), the schema each bundle ships, offline verification."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import brats_pipeline.bundle as bb
from brats_pipeline.bundle.tools import SCHEMA_FILE, SCHEMA_NAME, SCHEMA_URL

REPO = Path(__file__).resolve().parents[2]
BUNDLE_DIRS = sorted(p.parents[1] for p in (REPO / "bundles").glob("*/configs/metadata.json"))
#: Any download would go through this closed port and fail: a command that passes did not use the network.
OFFLINE_ENV = {**os.environ, **{k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
               "NO_PROXY": "", "no_proxy": ""}


def _verify_metadata_commands(markdown: str) -> list[str]:
    return re.findall(r"^python -m monai\.bundle verify_metadata .*$", markdown, flags=re.M)


def _readme_bundle_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## MONAI bundles and MONAI Label")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_metadata_loads_in_monai_without_a_deprecation_warning(bundle: Path, caplog: pytest.LogCaptureFixture,
                                                               capsys: pytest.CaptureFixture) -> None:
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEPRECATED_ID_MAPPING

    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    assert not set(DEPRECATED_ID_MAPPING) & set(meta)  # optional_packages_version -> required_packages_version
    assert meta["required_packages_version"] and meta["schema"] == SCHEMA_URL and SCHEMA_URL.endswith(SCHEMA_NAME)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = ConfigParser()
        parser.read_meta(str(meta_file))  # what monai.bundle run/verify_net_in_out/ckpt_export do with --meta_file
        assert parser.get_parsed_content("_meta_#required_packages_version") == meta["required_packages_version"]
        bb.bundle_parser(bundle)
    said = [str(w.message) for w in caught] + [caplog.text, *capsys.readouterr()]
    assert not [s for s in said if "deprecated" in s.lower()], said


def test_a_monai_bundle_command_prints_no_deprecation_warning() -> None:
    bundle = REPO / "bundles" / "lgg_flair_segmentation"
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
                           "configs/metadata.json", "--config_file", "configs/inference.json", "--device", "cpu"],
                          cwd=bundle, capture_output=True, text=True, timeout=600, env=OFFLINE_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deprecated" not in (done.stdout + done.stderr).lower(), done.stderr[-3000:]


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_documented_verify_metadata_command_works_offline(bundle: Path) -> None:
    """The command of the bundle's docs/README.md (and of README.md), run as written from the bundle's folder."""
    (command,) = _verify_metadata_commands((bundle / "docs" / "README.md").read_text(encoding="utf-8"))
    assert f"--filepath {SCHEMA_FILE}" in command
    assert _verify_metadata_commands(_readme_bundle_section()) == [command]
    argv = shlex.split(command)
    done = subprocess.run([sys.executable, *argv[1:]], cwd=bundle, capture_output=True, text=True, timeout=600,
                          env=OFFLINE_ENV)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "skipped downloading" in out and "metadata is verified with no error" in out, out[-3000:]


def test_every_bundle_ships_the_same_schema_copy_under_its_licence() -> None:
    copies = {bundle.name: (bundle / SCHEMA_FILE).read_bytes() for bundle in BUNDLE_DIRS}
    assert len(set(copies.values())) == 1, "the bundles' schema copies differ"
    schema = json.loads(next(iter(copies.values())))
    assert "required_packages_version" in schema["required"] and "optional_packages_version" not in schema["properties"]
    for bundle in BUNDLE_DIRS:
        assert f"{SCHEMA_FILE}: Project MONAI's bundle metadata schema" in (bundle / "LICENSE").read_text(encoding="utf-8")


def test_the_schema_copy_is_project_monais(bundle_schema_dir: Path) -> None:
    """Unchanged from the copy of Project MONAI's published schema in ../shared/data (skipped without it)."""
    published = (bundle_schema_dir / SCHEMA_NAME).read_bytes()
    assert all((bundle / SCHEMA_FILE).read_bytes() == published for bundle in BUNDLE_DIRS)
