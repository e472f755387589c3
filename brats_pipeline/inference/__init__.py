"""Inference: the sliding-window :class:`Predictor`, batch runs, and post-processing.

``from brats_pipeline.inference import Predictor, run_batch``: ``run_batch(predictor, entries, out_dir)``
predicts many cases (reading, compute and writing overlapped; manifest; resume); heavy modules (MONAI,
scipy) are imported when first used.
"""

from __future__ import annotations

from brats_pipeline.inference.batch import run_batch
from brats_pipeline.inference.outputs import CasePrediction
from brats_pipeline.inference.postprocess import PostprocessConfig, postprocess
from brats_pipeline.inference.predictor import Predictor
from brats_pipeline.weights import load_state_dict_strict

__all__ = ["CasePrediction", "PostprocessConfig", "Predictor", "load_state_dict_strict", "postprocess", "run_batch"]
