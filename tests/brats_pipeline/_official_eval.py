"""Run by test_metrics.py with .venv-eval's Python: the official BraTS evaluation on NIfTI pairs.

    .venv-eval/bin/python _official_eval.py CONFIG OUT.json PRED.nii.gz REF.nii.gz [PRED REF ...]

Writes ``{"<pred file name>": {region: {metric: value}}}``, using the package's own entry point
``brats_evaluation.evaluate_single_exam`` and its bundled Panoptica config ``config_<CONFIG>.yaml``.
"""

import json
import math
import sys

from brats_evaluation import config_path, evaluate_single_exam
from panoptica import Panoptica_Evaluator

config, out, *files = sys.argv[1:]
evaluator = Panoptica_Evaluator.load_from_config(str(config_path(config)))
results = {}
for pred, ref in zip(files[::2], files[1::2]):
    res = evaluate_single_exam(pred, ref, pred, evaluator)
    if "error" in res:
        sys.exit(f"official evaluation of {pred} failed: {res['error']}")
    results[pred] = {
        region: {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in metrics.items() if k.startswith("global_bin_")}
        for region, metrics in res.items()
        if isinstance(metrics, dict)
    }
with open(out, "w") as f:
    json.dump(results, f)
