"""Studies: one base ``brats-train`` config, several arms of overrides, the same folds and seed, one comparison report.

* :mod:`~brats_pipeline.study.spec` — the study file (YAML): base config, grid or list of arms,
  datalist, folds, seed, epoch-selection rule; each arm's key (a hash of what it trains on).
* :mod:`~brats_pipeline.study.runner` — train every arm x fold through ``brats-train``'s CLI,
  keep a checkpoint per validation and the CSV log, choose an epoch, evaluate it; resumable
  (done markers keyed on the arm's key), one arm per Slurm array task if wanted.
* :mod:`~brats_pipeline.study.selection` — read ``metrics.csv``; smoothed validation loss (min)
  or validation Dice (max).
* :mod:`~brats_pipeline.study.summary` — per-case metrics pooled over folds, statistics, paired
  differences from the reference arm with the Wilcoxon signed-rank test; JSON and CSV.
* :mod:`brats_pipeline.reports.study` — the HTML report (``study.html.j2``).

``brats-study`` (:mod:`brats_pipeline.cli.study`) is the command line over these. Shipped study
files are in ``brats_pipeline/studies/``.
"""

from brats_pipeline.study.runner import StudyInterrupted, run_status, run_study
from brats_pipeline.study.spec import Arm, SelectionRule, Study, StudyError, load_study
from brats_pipeline.study.summary import summarise, write_summary

__all__ = ["Arm", "SelectionRule", "Study", "StudyError", "StudyInterrupted", "load_study", "run_status", "run_study",
           "summarise", "write_summary"]
