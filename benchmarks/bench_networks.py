"""Training-step speed of every registered network, with MONAI's tutorial UNets as peers, in one run.

For each network of :data:`brats_pipeline.networks.NETWORKS` in each dimensionality it
supports (``--dims``), one training step (forward + ``DiceCELoss`` + backward + AdamW) on a
fixed random batch already on the device: 2D batch 16 × 3 × 256², 3D batch 4 × 3 × 128 × 128 × 32
(a size a network cannot take is raised to its ``min_size`` / ``size_multiple`` and the table
says so). The peers, in the same run and on the same batch: MONAI's tutorial UNets,
2D ``UNet(spatial_dims=2, channels 32-64-128-256, strides 2, num_res_units 2)`` and
3D ``UNet(channels 16-32-64-128-256, strides 2, num_res_units 2, batch norm)``.

``--candidates`` times instead the candidate 2D/2.5D nets for the LGG CPU recipe (stock MONAI
``UNet`` variants: levels, residual units, batch vs instance norm, 9-channel 2.5D input,
128² crops) beside the 2D peer; the target is at least twice the peer's slices per second.

After ``--warmup`` steps, ``--steps`` steps are timed; the table gives the median wall and
process-CPU seconds per step and samples (slices for 2D) per wall second. Precision: bf16
autocast on CUDA and on CPUs with AMX/AVX512-BF16, fp32 on other CPUs (``--precision`` to
force); torch threads = the cores available. The CPU model is printed and written.

    python benchmarks/bench_networks.py                              # all networks, 2D and 3D, peers
    python benchmarks/bench_networks.py --dims 2 --networks residual_unet bunet --steps 3
    python benchmarks/bench_networks.py --candidates --out candidates.json
    python benchmarks/bench_networks.py --device cuda --steps 20     # on a GPU
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# OpenMP threads wait by sleeping, not spinning (set before torch loads OpenMP): on a shared
# machine spinning threads burn CPU time and wall time while the other thread is descheduled
# (measured at load 9 on 2 cores: a tiny 2D UNet step 2.7 CPU s spinning, 0.035 s passive).
# Export OMP_WAIT_POLICY=ACTIVE to measure the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (  # noqa: E402
    PRECISIONS,
    autocast,
    set_up_compute,
    time_steps,
)

DEFAULT_BATCH = {2: 16, 3: 4}
DEFAULT_SHAPE = {2: (256, 256), 3: (128, 128, 32)}
IN_CHANNELS = 3  # LGG: t1, flair, t1c
OUT_CHANNELS = 2  # background, FLAIR abnormality (softmax, as the MONAI tutorials)


@dataclass
class Case:
    """One network configuration to time.

    Args:
        name: row label.
        kind: ``registry``, ``peer`` or ``candidate``.
        dims: 2 or 3.
        build: returns the network (``in_channels`` → ``OUT_CHANNELS`` logits).
        batch: batch size.
        shape: spatial input size.
        in_channels: input channels.
        note: anything the reader must know (e.g. a size that was raised).
    """

    name: str
    kind: str
    dims: int
    build: Callable[[], torch.nn.Module]
    batch: int
    shape: tuple[int, ...]
    in_channels: int = IN_CHANNELS
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def monai_unet(dims: int, channels: Sequence[int], res: int, norm: str = "instance", in_channels: int = IN_CHANNELS) -> torch.nn.Module:
    """A stock MONAI ``UNet`` with stride 2 between all levels."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=dims,
        in_channels=in_channels,
        out_channels=OUT_CHANNELS,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=res,
        norm=norm,
    )


def peer_cases(dims: Sequence[int], batch: dict[int, int], shape: dict[int, tuple[int, ...]]) -> list[Case]:
    """MONAI's tutorial UNets: 2D 32-256 res 2 (instance norm), 3D 16-256 res 2 (batch norm, spleen tutorial)."""
    cases = []
    if 2 in dims:
        cases.append(Case("peer2d UNet 32-256 res2", "peer", 2, lambda: monai_unet(2, (32, 64, 128, 256), 2), batch[2], shape[2]))
    if 3 in dims:
        cases.append(
            Case("peer3d UNet 16-256 res2 BN", "peer", 3, lambda: monai_unet(3, (16, 32, 64, 128, 256), 2, "batch"), batch[3], shape[3])
        )
    return cases


def _fit_shape(shape: tuple[int, ...], multiple: int, minimum: int) -> tuple[int, ...]:
    return tuple(max(minimum, math.ceil(s / multiple) * multiple) for s in shape)


def registry_cases(
    names: Sequence[str], dims: Sequence[int], batch: dict[int, int], shape: dict[int, tuple[int, ...]]
) -> list[Case]:
    """Every named registry network in every asked dimensionality it supports."""
    from brats_pipeline.networks import build_network, get_network_spec

    cases = []
    for name in names:
        spec = get_network_spec(name)
        for d in dims:
            if d not in spec.spatial_dims:
                continue
            fitted = _fit_shape(shape[d], spec.size_multiple, spec.min_size)
            note = "" if fitted == shape[d] else f"input raised from {'x'.join(map(str, shape[d]))} (needs ×{spec.size_multiple}, ≥{spec.min_size})"
            build = lambda name=name, d=d: build_network(name, IN_CHANNELS, OUT_CHANNELS, spatial_dims=d)  # noqa: E731
            cases.append(Case(name, "registry", d, build, batch[d], fitted, note=note))
    return cases


def candidate_cases(batch: int = 16) -> list[Case]:
    """Candidate 2D / 2.5D stock MONAI nets for the LGG CPU recipe, with the 2D peer first."""
    c5 = (16, 32, 64, 128, 256)

    def basic_unet_bn() -> torch.nn.Module:
        from monai.networks.nets import BasicUNet

        return BasicUNet(2, IN_CHANNELS, OUT_CHANNELS, features=(32, 64, 128, 256, 512, 32), norm="batch")

    full, crop = (256, 256), (128, 128)
    return [
        Case("peer2d UNet 32-256 res2 IN", "peer", 2, lambda: monai_unet(2, (32, 64, 128, 256), 2), batch, full),
        Case("peer2d UNet 32-256 res2 IN @128²", "candidate", 2, lambda: monai_unet(2, (32, 64, 128, 256), 2), batch, crop),
        Case("UNet 16-256 (5 lv) res1 IN", "candidate", 2, lambda: monai_unet(2, c5, 1), batch, full),
        Case("UNet 16-256 (5 lv) res1 BN", "candidate", 2, lambda: monai_unet(2, c5, 1, "batch"), batch, full),
        Case("UNet 16-256 (5 lv) res1 IN 2.5D 9ch", "candidate", 2, lambda: monai_unet(2, c5, 1, in_channels=9), batch, full, in_channels=9),
        Case("UNet 16-256 (5 lv) res1 BN 2.5D 9ch", "candidate", 2, lambda: monai_unet(2, c5, 1, "batch", 9), batch, full, in_channels=9),
        Case("UNet 16-256 (5 lv) res0 BN", "candidate", 2, lambda: monai_unet(2, c5, 0, "batch"), batch, full),
        Case("UNet 16-128 (4 lv) res1 BN", "candidate", 2, lambda: monai_unet(2, (16, 32, 64, 128), 1, "batch"), batch, full),
        Case("UNet 16-256 (5 lv) res1 BN @128²", "candidate", 2, lambda: monai_unet(2, c5, 1, "batch"), batch, crop),
        Case("UNet 32-512 (5 lv) res1 BN", "candidate", 2, lambda: monai_unet(2, (32, 64, 128, 256, 512), 1, "batch"), batch, full),
        Case("Buda-style BasicUNet 32-512 BN", "candidate", 2, basic_unet_bn, batch, full),
    ]


def measure(case: Case, device: torch.device, precision: str, warmup: int, steps: int) -> dict[str, Any]:
    """Time ``case``'s training step; returns a result row (``error`` set where it failed)."""
    from monai.losses import DiceCELoss

    row: dict[str, Any] = {
        "name": case.name,
        "kind": case.kind,
        "dims": case.dims,
        "batch": case.batch,
        "shape": list(case.shape),
        "in_channels": case.in_channels,
        "note": case.note,
    }
    try:
        torch.manual_seed(0)
        net = case.build().to(device).train()
        row["parameters"] = sum(p.numel() for p in net.parameters())
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        x = torch.randn(case.batch, case.in_channels, *case.shape, device=device)
        y = (torch.rand(case.batch, 1, *case.shape, device=device) > 0.9).float()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            loss.backward()
            opt.step()

        walls, cpus = time_steps(step, device, warmup, steps)
    except (RuntimeError, ValueError) as exc:  # OOM, a size the net rejects: report, go on
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return row
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    row.update(
        wall_s=wall,
        cpu_s=cpu,
        wall_s_all=walls,
        cpu_s_all=cpus,
        samples_per_s=case.batch / wall,
        samples_per_cpu_s=case.batch / cpu,
        mvoxels_per_s=case.batch * math.prod(case.shape) / wall / 1e6,
    )
    return row


def format_table(rows: Sequence[dict[str, Any]], reference: dict[int, dict[str, Any]]) -> str:
    """A plain-text table; ``reference`` maps dims to the peer's row (for the ratio columns)."""
    head = (f"{'network':<38} {'D':>1} {'input':>17} {'params':>7} {'wall s':>7} {'CPU s':>7} {'samp/s':>7} "
            f"{'×peer':>6} {'×peer CPU':>9}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['batch']}×{r['in_channels']}×" + "×".join(map(str, r["shape"]))
        params = f"{r['parameters'] / 1e6:.2f}M" if "parameters" in r else "-"
        if "error" in r:
            lines.append(f"{r['name']:<38} {r['dims']:>1} {shape:>17} {params:>7} {'failed':>7} {'':>7} {'':>7} {'':>6} {'':>9}  {r['error']}")
            continue
        peer = reference.get(r["dims"])
        ratio = r["samples_per_s"] / peer["samples_per_s"] if peer else float("nan")
        ratio_cpu = r["samples_per_cpu_s"] / peer["samples_per_cpu_s"] if peer else float("nan")
        lines.append(
            f"{r['name']:<38} {r['dims']:>1} {shape:>17} {params:>7} {r['wall_s']:>7.3f} {r['cpu_s']:>7.3f} "
            f"{r['samples_per_s']:>7.2f} {ratio:>6.2f} {ratio_cpu:>9.2f}  {r['note']}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    from brats_pipeline.networks import network_names

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3], help="spatial dimensionalities")
    p.add_argument("--networks", nargs="+", default=list(network_names()), help="registry names (default: all)")
    p.add_argument("--no-peers", action="store_true", help="leave out MONAI's tutorial UNets")
    p.add_argument("--candidates", action="store_true", help="time the LGG recipe's candidate 2D nets instead of the registry")
    p.add_argument("--steps", type=int, default=5, help="timed steps per network (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: bf16 on CUDA and on CPUs with AMX/AVX512-BF16")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    p.add_argument("--batch2d", type=int, default=DEFAULT_BATCH[2])
    p.add_argument("--shape2d", type=int, nargs=2, default=list(DEFAULT_SHAPE[2]))
    p.add_argument("--batch3d", type=int, default=DEFAULT_BATCH[3])
    p.add_argument("--shape3d", type=int, nargs=3, default=list(DEFAULT_SHAPE[3]))
    p.add_argument("--out", type=Path, default=Path("bench_networks.json"), help="JSON results file")
    args = p.parse_args(argv)
    unknown = [n for n in args.networks if n not in network_names()]
    if unknown:
        p.error(f"unknown network(s) {', '.join(unknown)}; choose from {', '.join(network_names())}")
    for name in ("steps", "batch2d", "batch3d"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; prints the table and writes ``--out``. Returns the exit status."""
    from preprocessing.io import write_json

    args = parse_args(argv)
    try:
        device, precision, threads, info = set_up_compute(args.device, args.precision, args.threads)
    except ValueError as exc:
        print(f"bench_networks: {exc}", file=sys.stderr)
        return 2
    batch = {2: args.batch2d, 3: args.batch3d}
    shape = {2: tuple(args.shape2d), 3: tuple(args.shape3d)}
    if args.candidates:
        cases = candidate_cases(args.batch2d)
    else:
        cases = ([] if args.no_peers else peer_cases(args.dims, batch, shape)) + registry_cases(args.networks, args.dims, batch, shape)
    rows = []
    for case in cases:
        row = measure(case, device, precision, args.warmup, args.steps)
        rows.append(row)
        done = row.get("error") or f"{row['wall_s']:.3f} s wall, {row['cpu_s']:.3f} s CPU per step"
        print(f"  {case.name} ({case.dims}D): {done}", flush=True)
    reference = {r["dims"]: r for r in rows if r["kind"] == "peer" and "error" not in r}
    print()
    print(format_table(rows, reference))
    print("samp/s: samples (2D: slices) per wall second; ×peer / ×peer CPU: samples per wall / per CPU second relative to "
          "the MONAI tutorial UNet of the same dimensionality (on a busy machine trust the CPU column)")
    write_json({"machine": info, "warmup": args.warmup, "steps": args.steps, "results": rows}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
