"""Cases of a test cohort that are also in a training cohort: find them, take them out.

BraTS 2021 contains the BraTS 2020 cases again under new names (``BraTS20_Training_001`` is
some ``BraTS2021_xxxxx``), so a BraTS 2020 model tested on all of BraTS 2021 is tested partly on
its own training cases. :func:`~brats_pipeline.data.overlap.removal.remove_overlap` drops such
cases from a test datalist, by one rule:

* **Name mapping** (a CSV given; :mod:`.by_name`): a test case is removed when its row of the
  official mapping table names a case of the training cohort.
* **Image content** (no CSV; :mod:`.by_content`): a test case is removed when ``any`` (default)
  or ``all`` of its images have the voxels of images of one training case (as stored, or turned
  to RAS orientation).

Case ids alone are never compared: two releases may use one id for different patients.

Modules, in the order they are used: :mod:`.cohorts` (the cohorts compared,
:func:`.cohorts.load_cohort`, and the :class:`.cohorts.OverlapReport` of what was found),
:mod:`.by_name` and :mod:`.by_content` (the two rules), :mod:`.removal`
(:func:`.removal.find_overlap` picks the rule; :func:`.removal.remove_overlap` returns the test
datalist without the overlapping cases).
"""
