"""Training-step benchmark: our pipeline vs the MONAI model-zoo BraTS recipe, in one run.

Prints, on the same synthetic BraTS-like cohort (written to a temporary folder):

1. ours, compute only: forward + backward + optimiser step of the default network on a batch
   already on the device (bf16 autocast on CUDA);
2. ours, full step: cached deterministic transforms -> patch sampling in loader workers ->
   transfer -> batched on-device augmentation (flips, rotation, scaling, shear, coarse elastic,
   intensity, noise, smoothing) -> step;
3. the model-zoo recipe (SegResNet 16 filters, blocks 1-2-2-4, 224×224×144 crops, batch 1,
   its per-sample CPU transform list read from disk every epoch) with 4 and 8 workers,
   compute only and full step.

Targets (issue #5, on a GPU): our full step ≤ 1.1× our compute-only step; our samples/s with
full augmentation ≥ 3× the recipe's.

    python benchmarks/bench_train.py                      # GPU, BraTS-sized phantoms
    python benchmarks/bench_train.py --device cpu --shape 64 64 48 --patch 32 --recipe-roi 48 48 32 \
        --cases 4 --steps 3 --workers 1 2                 # CPU smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _step(net: torch.nn.Module, loss_fn: Any, opt: torch.optim.Optimizer, image: torch.Tensor, label: torch.Tensor, device: torch.device) -> None:
    opt.zero_grad(set_to_none=True)
    with _autocast(device):
        loss = loss_fn(net(image), label)
    loss.backward()
    opt.step()


def time_compute(net: torch.nn.Module, loss_fn: Any, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, steps: int) -> float:
    """Median seconds per step on a fixed on-device batch (after 2 warm-up steps)."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    image, label = (t.to(device) for t in batch)
    times = []
    for i in range(steps + 2):
        _sync(device)
        t0 = time.perf_counter()
        _step(net, loss_fn, opt, image, label, device)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_full(net: torch.nn.Module, loss_fn: Any, loader: Any, augment: Any, device: torch.device, steps: int) -> tuple[float, int]:
    """Median seconds per step including data loading/augmentation; returns (seconds, batch size)."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    times, batch_size = [], 1
    it = iter(loader)
    for i in range(steps + 2):
        _sync(device)
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        image = torch.as_tensor(batch["image"]).to(device, non_blocking=True)
        label = torch.as_tensor(batch["label"]).to(device, non_blocking=True).float()
        if augment is not None:
            image, label = augment(image, label)
        _step(net, loss_fn, opt, image, label, device)
        _sync(device)
        batch_size = image.shape[0]
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), batch_size


def recipe_transforms(roi: tuple[int, ...]) -> Any:
    """The model-zoo brats_mri_segmentation training transforms (per sample, CPU)."""
    from monai.transforms import (
        Compose,
        ConvertToMultiChannelBasedOnBratsClassesd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
        Spacingd,
    )

    keys = ["image", "label"]
    return Compose([
        LoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
        ConvertToMultiChannelBasedOnBratsClassesd(keys="label"),
        EnsureTyped(keys=keys, dtype=torch.float32),
        Orientationd(keys=keys, axcodes="RAS"),
        Spacingd(keys=keys, pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        RandSpatialCropd(keys=keys, roi_size=roi, random_size=False),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155))
    parser.add_argument("--patch", type=int, default=128, help="our cubic patch size")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--recipe-roi", type=int, nargs=3, default=(224, 224, 144))
    parser.add_argument("--workers", type=int, nargs="+", default=(4, 8), help="loader workers to measure")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--network", default="unet3d")
    args = parser.parse_args()

    from monai.data import CacheDataset, DataLoader, Dataset, load_decathlon_datalist
    from monai.networks.nets import SegResNet
    from monai.transforms import Compose

    from brats_pipeline.data.augment import BatchAugment
    from brats_pipeline.data.augmentation_config import AugmentationConfig
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.synthetic import write_cohort
    from brats_pipeline.data.transforms import deterministic_transforms, patch_sampling
    from brats_pipeline.losses import build_loss
    from brats_pipeline.networks import build_network

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"{args.cases} phantoms of {tuple(args.shape)}; steps timed: {args.steps}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cohort"
        write_cohort(root, "brats2021", n_cases=args.cases, shape=args.shape, seed=0, skull_stripped=True)
        dl_path = write_datalist(build_datalist(root, "brats2021", folds=2, check="header"), Path(tmp) / "dl.json")
        entries = load_decathlon_datalist(str(dl_path), data_list_key="training")
        loss_fn = build_loss("dice_ce", mode="sigmoid")
        patch = (args.patch,) * 3
        results: dict[str, float] = {}

        # ---- ours
        net = build_network(args.network, 4, 3).to(device)
        fake = (torch.randn(args.batch, 4, *patch), (torch.rand(args.batch, 3, *patch) > 0.5).float())
        ours_compute = time_compute(net, loss_fn, fake, device, args.steps)
        sample = tuple(int(-(-s * 1.2 // 2) * 2) for s in patch)
        train_tf = Compose([*deterministic_transforms("brats2021").transforms, *patch_sampling(sample, num_samples=args.batch)])
        ds = CacheDataset(entries, train_tf, num_workers=1, progress=False)
        loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=min(args.workers), persistent_workers=min(args.workers) > 0)
        augment = BatchAugment(AugmentationConfig(elastic_prob=1.0), out_size=patch)
        ours_full, bs = time_full(net, loss_fn, loader, augment, device, args.steps)
        results["ours"] = bs / ours_full
        print(f"ours ({args.network}, batch {bs}x4x{patch}): compute-only {ours_compute:.3f} s/step, "
              f"full step with augmentation incl. elastic {ours_full:.3f} s/step "
              f"(ratio {ours_full / ours_compute:.2f}x, target <= 1.1x), {bs / ours_full:.2f} samples/s")

        # ---- model-zoo recipe
        recipe_net = SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4,
                               out_channels=3, dropout_prob=0.2).to(device)
        roi = tuple(args.recipe_roi)
        recipe_compute = time_compute(recipe_net, loss_fn, (torch.randn(1, 4, *roi), (torch.rand(1, 3, *roi) > 0.5).float()),
                                      device, args.steps)
        print(f"recipe (SegResNet, batch 1x4x{roi}): compute-only {recipe_compute:.3f} s/step")
        for workers in args.workers:
            rds = Dataset(entries, recipe_transforms(roi))
            rloader = DataLoader(rds, batch_size=1, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
            recipe_full, rbs = time_full(recipe_net, loss_fn, rloader, None, device, args.steps)
            results[f"recipe_{workers}"] = rbs / recipe_full
            print(f"recipe, {workers} workers: full step {recipe_full:.3f} s/step "
                  f"({recipe_full / recipe_compute:.2f}x its compute), {rbs / recipe_full:.2f} samples/s")
        for workers in args.workers:
            print(f"ours / recipe ({workers} workers) samples/s: {results['ours'] / results[f'recipe_{workers}']:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
