"""The two peers of the LGG benchmark, built from stock MONAI parts and left untuned.

``peer3d`` — MONAI's tutorial 3D recipe (spleen / BraTS tutorials): ``UNet(16-32-64-128-256,
strides 2, num_res_units 2, batch norm)``, 2 softmax channels, ``DiceCELoss``; per step one
volume → 4 patches 128×128×32 from ``RandCropByPosNegLabeld`` (pos 1, neg 1, volumes
padded to the patch first), flips on each axis (p 0.5), ``RandRotate90d`` in-plane (p 0.1),
``RandScaleIntensityd`` / ``RandShiftIntensityd`` (0.1, p 1); AdamW 1e-3, constant.
Inference: ``sliding_window_inference`` roi 128×128×32, 4 windows a batch, overlap 0.25.

``peer2d`` — a plain 2D slice UNet: ``UNet(spatial_dims=2, 32-64-128-256, strides 2,
num_res_units 2)`` (instance norm), 2 softmax channels, ``DiceCELoss``; each epoch all axial
slices with tumour plus as many slices without (drawn anew), shuffled, batch 16 of 256²;
per slice ``RandFlipd`` on both axes (p 0.5), ``RandAffined`` (p 0.5, ±15°, ±10 % scale),
``RandScaleIntensityd`` / ``RandShiftIntensityd`` (0.1, p 0.5); AdamW 1e-3 with a cosine
schedule. Inference: every axial slice, argmax.

Budget and schedule: each method runs until its :class:`~_lgg_common.Budget` (process CPU
time) is spent, counting everything it does from its first line (building its datasets,
augmentation, steps; data loading in-process, ``num_workers=0``). The cosine schedule is
driven by the budget fraction used, ``lr = 1e-3 · ½(1 + cos(π · used/budget))``, so it
anneals to zero exactly when the budget runs out, however busy the machine is. The
volumes arrive decoded and normalised (shared by all methods, not counted).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from _bench_common import autocast, sync
from _lgg_common import Budget, LggCase, MethodRun

PATCH_3D = (128, 128, 32)
LR = 1e-3


def cosine_lr(base: float) -> Callable[[float], float]:
    """``f ↦ base · ½(1 + cos(π f))`` for the budget fraction ``f`` in [0, 1]."""
    return lambda f: base * 0.5 * (1.0 + math.cos(math.pi * min(max(f, 0.0), 1.0)))


def train_until_spent(
    net: torch.nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    budget: Budget,
    device: torch.device,
    precision: str,
    lr_at: Callable[[float], float] | None = None,
) -> tuple[int, list[float]]:
    """AdamW steps with ``DiceCELoss`` (softmax, one-hot labels) until ``budget`` is spent (at least one).

    Args:
        net: the network (2 output channels), already on ``device``.
        batches: endless ``(image, label)`` batches; label ``(B, 1, ...)`` in {0, 1}.
        budget: the compute budget, already running.
        device: where to train.
        precision: ``fp32`` or ``bf16`` (autocast).
        lr_at: learning rate as a function of the budget fraction used (default constant 1e-3).

    Returns:
        ``(steps, losses)``.
    """
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=LR)
    net.train()
    steps, losses = 0, []
    while steps == 0 or not budget.exhausted():
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(budget.fraction())
        image, label = next(batches)
        image, label = image.to(device), label.to(device)
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = net(image)
        loss = loss_fn(logits.float(), label.float())
        loss.backward()
        opt.step()
        sync(device)
        losses.append(float(loss.detach()))
        steps += 1
    return steps, losses


def _endless(make_loader: Callable[[], Sequence]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        epoch += 1
        for batch in make_loader():
            yield torch.as_tensor(batch["image"]), torch.as_tensor(batch["label"])


def _stats(losses: list[float]) -> dict[str, float]:
    tail = losses[-20:]
    return {"first_loss": losses[0], "final_loss_mean20": float(np.mean(tail))}


# --------------------------------------------------------------------------------------- peer3d
def run_peer3d(
    train_cases: Sequence[LggCase], test_cases: Sequence[LggCase], budget_s: float, device: torch.device, precision: str, seed: int = 0
) -> MethodRun:
    """MONAI's tutorial 3D recipe (module docstring) trained for ``budget_s`` budget seconds."""
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet
    from monai.transforms import (
        Compose,
        EnsureTyped,
        FgBgToIndicesd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    budget = Budget(budget_s, device)
    torch.manual_seed(seed)
    keys = ["image", "label"]
    transform = Compose([
        SpatialPadd(keys, spatial_size=PATCH_3D),
        FgBgToIndicesd(keys="label"),
        RandCropByPosNegLabeld(
            keys, label_key="label", spatial_size=PATCH_3D, pos=1, neg=1, num_samples=4,
            fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices",
        ),
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys, prob=0.5, spatial_axis=2),
        RandRotate90d(keys, prob=0.1, max_k=3),
        RandScaleIntensityd("image", factors=0.1, prob=1.0),
        RandShiftIntensityd("image", offsets=0.1, prob=1.0),
        EnsureTyped(keys, dtype=torch.float32, track_meta=False),
    ]).set_random_state(seed)
    data = [{"image": c.image, "label": c.label[None]} for c in train_cases]
    dataset = CacheDataset(data, transform, cache_rate=1.0, num_workers=0, progress=False)
    generator = torch.Generator().manual_seed(seed)
    batches = _endless(lambda: DataLoader(dataset, batch_size=1, shuffle=True, num_workers=0, generator=generator))
    net = UNet(3, 3, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch").to(device)
    steps, losses = train_until_spent(net, batches, budget, device, precision)
    train_cpu, train_wall = budget.cpu_s(), budget.wall_s()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    net.eval()
    predictions = {}
    with torch.inference_mode(), autocast(device, precision):
        for case in test_cases:
            x = torch.from_numpy(case.image)[None].to(device)
            logits = sliding_window_inference(x, PATCH_3D, 4, net, overlap=0.25)
            predictions[case.case_id] = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
    sync(device)
    extra = {"patches_per_step": 4, "epochs": steps / max(len(train_cases), 1), **_stats(losses)}
    return MethodRun(predictions, steps, train_cpu, train_wall, time.process_time() - cpu0, time.perf_counter() - wall0, extra)


# --------------------------------------------------------------------------------------- peer2d
def run_peer2d(
    train_cases: Sequence[LggCase],
    test_cases: Sequence[LggCase],
    budget_s: float,
    device: torch.device,
    precision: str,
    seed: int = 0,
    batch_size: int = 16,
) -> MethodRun:
    """A plain 2D slice UNet (module docstring) trained for ``budget_s`` budget seconds."""
    from monai.data import DataLoader, Dataset
    from monai.networks.nets import UNet
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandAffined,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    budget = Budget(budget_s, device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    keys = ["image", "label"]
    transform = Compose([
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandAffined(
            keys, prob=0.5, rotate_range=(math.pi / 12,), scale_range=(0.1, 0.1),
            mode=("bilinear", "nearest"), padding_mode="zeros",
        ),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        EnsureTyped(keys, dtype=torch.float32, track_meta=False),
    ]).set_random_state(seed)
    tumour, empty = [], []
    for case in train_cases:
        for z in range(case.label.shape[2]):
            item = {"image": case.image[..., z], "label": case.label[None, :, :, z]}
            (tumour if item["label"].any() else empty).append(item)
    if not tumour:
        raise ValueError("peer2d: no training slice with tumour")
    generator = torch.Generator().manual_seed(seed)
    epochs = [0]

    def loader() -> DataLoader:
        epochs[0] += 1
        picked = rng.choice(len(empty), size=min(len(tumour), len(empty)), replace=False) if empty else []
        data = tumour + [empty[i] for i in picked]
        return DataLoader(
            Dataset(data, transform), batch_size=batch_size, shuffle=True, num_workers=0,
            drop_last=len(data) >= batch_size, generator=generator,
        )

    net = UNet(2, 3, 2, (32, 64, 128, 256), (2, 2, 2), num_res_units=2).to(device)
    steps, losses = train_until_spent(net, _endless(loader), budget, device, precision, cosine_lr(LR))
    train_cpu, train_wall = budget.cpu_s(), budget.wall_s()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    net.eval()
    predictions = {}
    with torch.inference_mode(), autocast(device, precision):
        for case in test_cases:
            slices = torch.from_numpy(case.image).permute(3, 0, 1, 2)  # (Z, C, X, Y)
            labels = [net(chunk.to(device)).argmax(1) for chunk in slices.split(batch_size)]
            predictions[case.case_id] = torch.cat(labels).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
    sync(device)
    extra = {"batch": batch_size, "epochs": epochs[0], "tumour_slices": len(tumour), "empty_slices": len(empty), **_stats(losses)}
    return MethodRun(predictions, steps, train_cpu, train_wall, time.process_time() - cpu0, time.perf_counter() - wall0, extra)
