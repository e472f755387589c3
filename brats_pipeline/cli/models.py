"""``brats-models``: list the registered networks with their parameter counts and papers.

Example::

    brats-models --in-channels 4 --out-channels 3 --spatial-dims 3
    brats-models --spatial-dims 2 --markdown
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brats-models",
        allow_abbrev=False,
        description="List the segmentation networks of brats_pipeline: name, parameter count for the "
        "given channels, paper. Networks that do not support --spatial-dims are listed with '-'.",
    )
    parser.add_argument(
        "--in-channels", type=int, default=4, help="input channels (default 4: BraTS modalities)"
    )
    parser.add_argument("--out-channels", type=int, default=3, help="output channels (default 3: TC, WT, ET)")
    parser.add_argument("--spatial-dims", type=int, default=3, choices=(2, 3), help="2 or 3 (default 3)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return parser


def _count(name: str, in_channels: int, out_channels: int, spatial_dims: int) -> int:
    """Parameters of ``name``, built on the meta device when possible (no memory, no init cost)."""
    import torch

    from brats_pipeline.networks import build_network, count_parameters

    try:
        with torch.device("meta"):
            return count_parameters(build_network(name, in_channels, out_channels, spatial_dims))
    except (RuntimeError, NotImplementedError):  # some constructors call .item() on tensors
        return count_parameters(build_network(name, in_channels, out_channels, spatial_dims))


def list_networks(
    in_channels: int = 4, out_channels: int = 3, spatial_dims: int = 3
) -> list[dict[str, object]]:
    """One row per registered network: ``name``, ``dims``, ``params`` (``None`` if unsupported), ``paper``.

    Args:
        in_channels: input channels the networks are built with.
        out_channels: output channels.
        spatial_dims: 2 or 3.
    """
    from brats_pipeline.networks import NETWORKS

    rows: list[dict[str, object]] = []
    for name, spec in NETWORKS.items():
        supported = spatial_dims in spec.spatial_dims
        rows.append(
            {
                "name": name,
                "dims": "/".join(f"{d}D" for d in spec.spatial_dims),
                "params": _count(name, in_channels, out_channels, spatial_dims) if supported else None,
                "paper": spec.paper,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, object]], markdown: bool = False) -> str:
    """Render :func:`list_networks` rows as aligned text or a Markdown table."""
    header = ("network", "dims", "parameters", "paper")
    body = [
        (str(r["name"]), str(r["dims"]), "-" if r["params"] is None else f"{r['params']:,}", str(r["paper"]))
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "| --- | --- | ---: | --- |"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(3)]
    fmt = f"{{:<{widths[0]}}}  {{:<{widths[1]}}}  {{:>{widths[2]}}}  {{}}"
    return "\n".join(fmt.format(*row) for row in (header, *body))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``brats-models``; returns the exit status."""
    args = _parser().parse_args(argv)
    for flag, value in (("--in-channels", args.in_channels), ("--out-channels", args.out_channels)):
        if value < 1:
            _parser().error(f"{flag} must be >= 1, got {value}")
    rows = list_networks(args.in_channels, args.out_channels, args.spatial_dims)
    if not args.markdown:
        print(
            f"networks for in_channels={args.in_channels}, out_channels={args.out_channels}, "
            f"spatial_dims={args.spatial_dims}:"
        )
    print(format_table(rows, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
