"""brats_pipeline: MONAI + Lightning brain-tumour segmentation, after the ITK preprocessing stage."""

from brats_pipeline.constants import TASKS, Task, get_task

__all__ = ["TASKS", "Task", "get_task"]
__version__ = "0.1.0"
