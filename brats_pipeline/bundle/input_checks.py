"""Checks of a bundle's input at the top of ``inference.json``'s ``preprocessing``, naming the file at fault.

MONAI's ``LoadImaged`` stacks a case's modality files into one ``C×X×Y×Z`` image whose meta
data names only the first file, so a check after loading could blame T1c for an empty FLAIR.
:class:`~brats_pipeline.data.input_files.SourceFilesd` (the first of the deterministic transforms,
with the header checks) keeps the file names before loading; :class:`CheckChannelsd` then checks,
channel by channel, the number of modalities, NaN/Inf voxels and constant channels (an
all-zero modality is an empty scan: predicting from it gives a confident, silent wrong answer)
and names that channel's own file.

Served by MONAI Label, an error of these checks would reach the client as a bare HTTP 500
"Internal Server Error" (MONAI Label registers no exception handler; the message stays in the
server log). MONAI Label runs the ``preprocessing`` steps one by one, outside MONAI's
``Compose``, so an exception raised by a step reaches FastAPI as it is: :class:`ReportInputErrors`
wraps the checks and, inside a MONAI Label server only, re-raises their ``ValueError`` as an
:class:`InputError` that is also a Starlette ``HTTPException`` (422): the client gets
``{"detail": "<file>: expected 4 channels (t1c, t1, t2, flair), ..."}``. Elsewhere
(``monai.bundle run``, ``brats-infer``) the original exception passes unchanged.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Hashable, Mapping, Sequence
from functools import cache
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


logger = logging.getLogger(__name__)

#: The HTTP status of an input the bundle cannot take, under MONAI Label (FastAPI's code for an invalid request).
INPUT_ERROR_STATUS = 422


class InputError(ValueError):
    """An input the bundle cannot take (wrong channels, NaN, an empty scan, a bad header); the message names the file."""


@cache
def _http_input_error(http_exception: type) -> type:
    """:class:`InputError` that is also ``http_exception`` (Starlette's), answered as HTTP 422 with the message."""

    class HTTPInputError(InputError, http_exception):  # type: ignore[misc, valid-type]
        def __init__(self, message: str) -> None:
            InputError.__init__(self, message)
            http_exception.__init__(self, status_code=INPUT_ERROR_STATUS, detail=message)

        def __str__(self) -> str:
            return str(self.detail)

        def __reduce__(self) -> Any:  # picklable as the plain InputError (e.g. from a worker process)
            return InputError, (str(self.detail),)

    return HTTPInputError


def served_input_error(exc: ValueError) -> ValueError | None:
    """``exc`` as an error a MONAI Label client sees (HTTP 422, the message as ``detail``), or ``None`` outside one.

    "Inside MONAI Label" means its server has imported ``monailabel`` and Starlette; nothing is
    imported here, so the bundle does not depend on either.
    """
    http = getattr(sys.modules.get("starlette.exceptions"), "HTTPException", None)
    if "monailabel" not in sys.modules or http is None:
        return None
    return _http_input_error(http)(str(exc))


class ReportInputErrors:
    """Runs one check of ``preprocessing``; under MONAI Label its ``ValueError`` becomes an HTTP 422 (see the module).

    Args:
        check: a callable step (e.g. ``CheckHeadersd``, :class:`CheckChannelsd`); not an invertible
            one (``Invertd`` would not see through the wrapper) nor the loader (MONAI Label swaps
            ``LoadImaged`` for its own).
    """

    def __init__(self, check: Any) -> None:
        self.check = check

    def __call__(self, data: Any) -> Any:
        try:
            return self.check(data)
        except ValueError as exc:
            served = served_input_error(exc)
            if served is None:
                raise
            logger.error("input rejected (HTTP %d): %s", INPUT_ERROR_STATUS, exc)
            raise served from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.check!r})"
