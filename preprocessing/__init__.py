"""preprocessing: the ITK stage (N4, resampling, alignment, normalisation). CPU only, and usable alone.

It imports nothing of ``brats_pipeline`` and knows no task: the modality names, label values and
output names of a case are fields of :class:`preprocessing.config.PreprocessConfig`;
:func:`preprocessing.pipeline.preprocess_case` runs one case, :func:`preprocessing.batch.run_batch`
a cohort (shards: :mod:`preprocessing.sharding`).
"""
