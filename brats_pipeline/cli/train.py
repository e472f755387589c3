"""``brats-train``: LightningCLI over :class:`BratsSegmentationModule` and :class:`BratsDataModule`.

``brats-train fit --config brats_pipeline/configs/tiny_cpu.yaml --data.datalist demo_data/datalist.json``
(also ``validate``, ``test``, ``predict``; ``--print_config`` shows every option). The CLI itself —
checkpoints, early stopping, the data -> model links, the optimiser options, resuming into the same
log version — is built by :func:`brats_pipeline.training_cli.build_cli` (see that module); this is
its entry point.
"""

from __future__ import annotations

from collections.abc import Sequence

from brats_pipeline.training_cli import CONFIG_DIR, BratsCLI, build_cli

__all__ = ["CONFIG_DIR", "BratsCLI", "build_cli", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``brats-train``; a DDP run destroys its process group before the process exits.

    Lightning leaves the ``torch.distributed`` process group alive; a rank whose gloo (or NCCL)
    threads are still running when the interpreter exits aborts ("terminate called without an
    active exception", SIGABRT), failing a finished job under ``srun``/``torchrun``.
    """
    import torch

    try:
        build_cli(argv)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
