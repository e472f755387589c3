"""Checks of a bundle's input at the top of ``inference.json``'s ``preprocessing``, naming the file at fault.

MONAI's ``LoadImaged`` stacks a case's modality files into one ``C×X×Y×Z`` image whose meta
data names only the first file, so a check after loading could blame T1c for an empty FLAIR.
:class:`~brats_pipeline.data.input_files.SourceFilesd` (the first of the deterministic transforms,
with the header checks) keeps the file names before loading; :class:`CheckChannelsd` then checks,
channel by channel, the number of modalities, NaN/Inf voxels and constant channels (an
all-zero modality is an empty scan: predicting from it gives a confident, silent wrong answer)
and names that channel's own file.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from brats_pipeline.constants import Task, get_task
from brats_pipeline.data.input_files import SOURCES_SUFFIX, SourceFilesd  # noqa: F401  (re-exported: they lived here)


class CheckChannelsd:
    """After loading: one channel per modality of the task, each finite and not constant; errors name the file.

    Args:
        keys: image keys (``C×X×Y×Z`` after loading).
        task: decides the number and names of the modalities.

    Raises (when called):
        ValueError: a wrong number of channels, a channel with NaN/Inf voxels or a constant channel,
            naming the channel's file (from :class:`SourceFilesd`, else the image's meta data).
    """

    def __init__(self, keys: str | Sequence[str], task: str | Task) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.task = get_task(task)

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        import torch

        n = len(self.task.modalities)
        names = self.task.modality_names
        for key in self.keys:
            image = data[key]
            files = list(data.get(f"{key}{SOURCES_SUFFIX}") or [])
            source = files[0] if files else (getattr(image, "meta", None) or {}).get("filename_or_obj", key)
            if image.ndim != 4 or image.shape[0] != n:
                raise ValueError(
                    f"{source}: expected {n} channels ({', '.join(names)}), as one 4D NIfTI with the "
                    f"modalities stacked on the last axis in that order (brats-bundle stack) or one file per modality; "
                    f"got an image of shape {tuple(image.shape)} after loading"
                )
            for i, channel in enumerate(torch.as_tensor(image)):
                where = f"{files[i]}: " if len(files) == n else f"{source}: channel {i} ({names[i]}) "
                finite = torch.isfinite(channel)
                if not bool(finite.all()):
                    raise ValueError(f"{where}{int((~finite).sum())} voxels are NaN or Inf")
                lo, hi = channel.min(), channel.max()
                if channel.numel() and bool(lo == hi):
                    raise ValueError(f"{where}constant image (every voxel is {lo.item()}): empty volume?")
        return data
