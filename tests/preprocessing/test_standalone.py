"""``preprocessing`` stands alone: it imports nothing of ``brats_pipeline`` and runs without a task.

The package takes modality names and label values as plain settings; the task-aware glue
(``--task``, dataset layouts, datalists) is ``brats_pipeline``'s. Checked twice: every import
statement of the package's source, and, in a fresh interpreter where ``brats_pipeline`` cannot
be imported at all, every module imported and one synthetic case preprocessed end to end.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import preprocessing

PACKAGE = Path(preprocessing.__file__).parent


def test_no_import_statement_names_brats_pipeline() -> None:
    offending = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] \
                if isinstance(node, ast.ImportFrom) else []
            offending += [f"{path.name}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "brats_pipeline"]
    assert not offending, offending


SCRIPT = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    sys.modules["brats_pipeline"] = None  # from here on, any import of brats_pipeline raises ImportError

    import preprocessing
    modules = sorted(m.name for m in pkgutil.walk_packages(preprocessing.__path__, "preprocessing."))
    for name in modules:
        importlib.import_module(name)

    import numpy as np
    from preprocessing.batch import run_batch
    from preprocessing.config import PreprocessConfig
    from preprocessing.io import write_nifti
    from preprocessing.n4 import N4Config
    from preprocessing.case import Case
    from preprocessing.register import RegistrationConfig

    out = sys.argv[1]
    shape, spacing = (40, 40, 32), 3.0
    grid = np.indices(shape).astype(np.float32) - (np.array(shape)[:, None, None, None] - 1) / 2
    head = ((grid / np.array([16, 17, 13])[:, None, None, None]) ** 2).sum(0) <= 1
    lesion = (((grid - np.array([4, 3, 2])[:, None, None, None]) / 4) ** 2).sum(0)
    label = np.where(lesion <= 0.4, 2, np.where(lesion <= 1, 1, 0)).astype(np.uint8)
    rng = np.random.default_rng(0)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
    images = {}
    for name, contrast in (("gad", 1.0), ("pd", -0.5)):  # names of no challenge
        volume = head * (100 + 10 * grid[0] / 20) * (1 + contrast * (label > 0)) + rng.normal(0, 2, shape)
        images[name] = str(write_nifti(volume.astype(np.float32), affine, f"{out}/raw/s1_{name}.nii.gz"))
    label_file = str(write_nifti(label * head, affine, f"{out}/raw/s1_lesion.nii.gz", dtype=np.uint8))

    config = PreprocessConfig(
        modalities=("gad", "pd"), label_values=(0, 1, 2), separator="-", label_suffix="lesion", reference="gad",
        spacing=(4.0, 4.0, 4.0), n4_config=N4Config(shrink_factor=2, iterations=(5, 5), fit_margin_mm=None),
        registration=RegistrationConfig(shrink_factors=(2, 1), smoothing_sigmas_mm=(6.0, 0.0), iterations=10),
    )
    result = run_batch([Case("s1", images, label_file)], config, f"{out}/pre", shard=(0, 1), progress=False,
                       datalist_header={"name": "standalone", "modality": {"0": "gad", "1": "pd"}})
    print(json.dumps({
        "modules": modules,
        "statuses": [[s.case_id, s.status, s.error] for s in result.statuses],
        "outputs": sorted(p.name for p in (result.manifest_json.parent / "s1").iterdir()),
        "datalist": json.loads(result.datalist.read_text()),
        "brats_pipeline_modules": sorted(m for m in sys.modules if m.startswith("brats_pipeline.")),
    }))
    """
)


def test_imports_and_preprocesses_a_case_without_brats_pipeline(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=PACKAGE.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    expected = {f"preprocessing.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert set(report["modules"]) == expected  # pkgutil found (and imported) every module
    assert report["brats_pipeline_modules"] == []
    assert report["statuses"] == [["s1", "ok", ""]]
    assert report["outputs"] == ["s1-gad.nii.gz", "s1-lesion.nii.gz", "s1-pd.nii.gz", "s1_preprocess.json"]
    entry = report["datalist"]["training"][0]
    assert [Path(p).name for p in entry["image"]] == ["s1-gad.nii.gz", "s1-pd.nii.gz"]  # the configured order
    assert report["datalist"]["preprocessing"]["config"]["label_values"] == [0, 1, 2]
