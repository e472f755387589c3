"""Validation scores of :class:`~brats_pipeline.module.BratsSegmentationModule`: per-case sums over an epoch, then metrics.

:class:`ValidationSums` accumulates, for every validation (or test) case, the Dice of each region
(BraTS convention: empty truth and empty prediction count as 1, empty truth with a prediction as 0),
the training loss on the case's whole-volume logits and, when asked, the BraTS HD95 in mm
(:func:`brats_pipeline.metrics.brats_hd95`; both empty 0, exactly one empty 373.13 mm). In softmax
output mode the regions are those of the argmax label map, and the Dice of each label of the scheme
and the voxel accuracy (:func:`brats_pipeline.metrics.voxel_accuracy`) are summed too. Cases are
weighted by the batch's ``eval_weight`` (0 for the copy a DDP rank without a case of its own
evaluates), and :meth:`ValidationSums.metrics` reduces the sums across DDP ranks, so each case
counts exactly once, and returns the epoch's means by their logged names.

Batches: ``image`` (B, C, X, Y, Z) float; ``label`` (B, R, X, Y, Z) region channels (0/1 float),
or class indices (B, 1, X, Y, Z) in softmax mode; logits of the same layout as the network's output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from brats_pipeline.constants import Task
from brats_pipeline.data.slices import plain_tensor


class ValidationSums:
    """Per-case sums of one validation or test epoch (on ``device``, float64).

    Args:
        task: the task (its regions; in softmax mode its label scheme).
        output_mode: ``sigmoid`` (region channels) or ``softmax`` (class channels).
        device: where the sums live (the module's device).
    """

    def __init__(self, task: Task, output_mode: str, device: torch.device | str) -> None:
        self.task, self.output_mode = task, output_mode
        self.region_names = task.region_names
        n = len(self.region_names)
        extra = task.n_classes if output_mode == "softmax" else 0  # softmax: dice per label, accuracy
        self.sums = torch.zeros(n + 2 + extra, device=device, dtype=torch.float64)  # dice per region, loss, count
        self.hd_sums = torch.zeros(2 * n, device=device, dtype=torch.float64)  # hd sum + finite count

    def add(
        self,
        logits: torch.Tensor,
        label: torch.Tensor,
        image: Any,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        eval_weight: Any = None,
        hd95: bool = False,
    ) -> None:
        """Add a batch of whole cases.

        Args:
            logits: the network's whole-volume logits (B, R or C, X, Y, Z).
            label: the batch's ``label``.
            image: the batch's ``image`` (its affine gives the voxel size for HD95).
            loss_fn: the training loss (``val/loss`` is its value on each case's logits).
            eval_weight: the batch's ``eval_weight`` (``None``: every case counts once).
            hd95: also sum the BraTS HD95 of each region.
        """
        from monai.metrics import compute_dice

        softmax = self.output_mode == "softmax"
        if softmax:  # the argmax label map: its regions, then one mask per label
            pred_classes, true_classes = plain_tensor(logits).argmax(1, keepdim=True), plain_tensor(label).round().long()
            pred, truth = class_masks(pred_classes, self.task), class_masks(true_classes, self.task)
        else:
            pred = (torch.sigmoid(logits) > 0.5).float()
            truth = (label > 0.5).float()
        dice = compute_dice(pred, truth, include_background=True, ignore_empty=False)  # (B, R [+ labels])
        # the training loss on each whole volume's logits: val/loss
        logits, target = plain_tensor(logits), plain_tensor(label).to(logits.dtype)
        loss = torch.stack([loss_fn(logits[b : b + 1], target[b : b + 1]) for b in range(logits.shape[0])])
        # 0 for the copy a DDP rank without a case of its own evaluates (BratsDataModule.EvalShardSampler)
        weight = torch.ones(dice.shape[0]) if eval_weight is None else torch.as_tensor(eval_weight).reshape(-1)
        weight = weight.to(dice.device, torch.float64)
        n = len(self.region_names)
        self.sums[:n] += (dice[:, :n].double() * weight[:, None]).sum(0)
        self.sums[n] += (loss.detach().double() * weight).sum()
        self.sums[n + 1] += weight.sum()
        if softmax:
            from brats_pipeline.metrics import voxel_accuracy

            accuracy = torch.tensor([voxel_accuracy(p, t) for p, t in zip(pred_classes, true_classes)],
                                    dtype=torch.float64, device=weight.device)
            self.sums[n + 2 : -1] += (dice[:, n:].double() * weight[:, None]).sum(0)
            self.sums[-1] += (accuracy * weight).sum()
        if hd95:
            from brats_pipeline.metrics import brats_hd95

            spacing = _spacing_of(image)
            masks_p, masks_t = plain_tensor(pred).bool().cpu().numpy(), plain_tensor(truth).bool().cpu().numpy()
            for b in range(pred.shape[0]):
                if weight[b] == 0:
                    continue
                hd = torch.tensor([brats_hd95(masks_p[b, i], masks_t[b, i], spacing) for i in range(n)],
                                  dtype=torch.float64, device=self.hd_sums.device)
                finite = torch.isfinite(hd)
                self.hd_sums[:n] += torch.where(finite, hd, torch.zeros_like(hd))
                self.hd_sums[n:] += finite.double()

    def metrics(self, prefix: str) -> dict[str, torch.Tensor]:
        """Reduce the sums across DDP ranks; the epoch's metrics ``{"<prefix>/dice_<region>": mean, ...}``.

        In logging order: ``dice_<region>``, ``dice_mean``, ``loss``, ``cases``; softmax mode
        ``dice_label_<key>`` and ``accuracy``; ``hd95_<region>`` when HD95 was summed.
        """
        sums, hd = self.sums, self.hd_sums
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(hd)
        out: dict[str, torch.Tensor] = {}
        n = len(self.region_names)
        count = sums[n + 1].clamp_min(1)
        dice = sums[:n] / count
        for name, value in zip(self.region_names, dice):
            out[f"{prefix}/dice_{name}"] = value.float()
        out[f"{prefix}/dice_mean"] = dice.mean().float()
        out[f"{prefix}/loss"] = (sums[n] / count).float()
        out[f"{prefix}/cases"] = sums[n + 1].float()
        if self.output_mode == "softmax":  # per label of the scheme (dice_label_NCR ...) and voxel accuracy
            for i, key in enumerate(self.task.class_names[1:]):
                out[f"{prefix}/dice_label_{key}"] = (sums[n + 2 + i] / count).float()
            out[f"{prefix}/accuracy"] = (sums[-1] / count).float()
        if hd[n:].sum() > 0:
            for i, name in enumerate(self.region_names):
                if hd[n + i] > 0:
                    out[f"{prefix}/hd95_{name}"] = (hd[i] / hd[n + i]).float()
        return out


def class_masks(classes: torch.Tensor, task: Task) -> torch.Tensor:
    """Class indices (B, 1, ...) -> float masks (B, R + L, ...): the task's regions, then each foreground label."""
    values = task.label_values
    sets = [[values.index(v) for v in sorted(r.labels)] for r in task.regions]
    sets += [[c] for c in range(1, len(values))]
    return torch.cat([torch.isin(classes, torch.tensor(s, device=classes.device)) for s in sets], 1).float()


def _spacing_of(image: Any) -> list[float] | None:
    """Voxel size (x, y, z) in mm of a MetaTensor batch, or ``None``."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return None
    affine = torch.as_tensor(affine)
    if affine.ndim == 3:
        affine = affine[0]
    return [float(v) for v in torch.linalg.norm(affine[:3, :3].double(), dim=0)]


__all__ = ["ValidationSums", "class_masks"]
