"""Tasks, modalities and label schemes as data.

A :class:`Task` names everything that differs between data sources:

* the **modalities** in channel order (the ``image`` channel order everywhere in the pipeline),
  each with the contrast it carries and the file suffixes it is shipped under;
* the **label scheme**: the integer label values of the ground truth and their names;
* the **regions** the network predicts (one sigmoid channel each, e.g. TC, WT, ET), each a set
  of label values;
* the on-disk **layout** (``case_folder`` or ``msd``) used by dataset discovery and by the
  synthetic phantom writer.

Regions must be *nested or disjoint* and each region must own exactly one label that no
smaller region contains. That makes ``labels -> regions -> labels`` exact: a region map is
turned back into labels by painting regions from the largest to the smallest with the label
each region owns (BraTS 2021: WT -> 2 (ED), TC -> 1 (NCR), ET -> 4 (ET)).

Array conventions: label maps are integer arrays of spatial shape ``(X, Y, Z)`` (or with a
leading channel of size 1); region maps are ``(R, X, Y, Z)`` with R = ``len(task.regions)``
in ``task.regions`` order.

**Output modes** (:data:`OUTPUT_MODES`): a network outputs either one sigmoid channel per
region (``sigmoid``, the default) or one softmax channel per *class* (``softmax``): class ``i``
is the label value ``task.label_values[i]`` (background is class 0; BraTS 2021 labels
{0, 1, 2, 4} are classes 0..3). ``labels_to_classes``/``classes_to_labels`` convert exactly,
and ``label_keys`` gives each label a short name for metric and log names (``NCR``, ``ED``, ``ET``).

Modules: :mod:`.task` (the :class:`Task` type, its :class:`Modality` and :class:`Region` parts and
the output modes) and :mod:`.registry` (the registered tasks, :data:`TASKS`, :data:`TASK_ALIASES`
and :func:`get_task`). Import from ``brats_pipeline.constants``, the public home of both.
"""

from brats_pipeline.constants.registry import (
    BRATS2015,
    BRATS2021,
    BRATS2023,
    LGG,
    MSD_TASK01,
    TASK_ALIASES,
    TASKS,
    get_task,
)
from brats_pipeline.constants.task import (
    COMPARTMENTS,
    CONTRASTS,
    OUTPUT_MODES,
    Modality,
    Region,
    Task,
    check_output_mode,
)

__all__ = [
    "BRATS2015",
    "BRATS2021",
    "BRATS2023",
    "COMPARTMENTS",
    "CONTRASTS",
    "LGG",
    "MSD_TASK01",
    "OUTPUT_MODES",
    "TASKS",
    "TASK_ALIASES",
    "Modality",
    "Region",
    "Task",
    "check_output_mode",
    "get_task",
]
