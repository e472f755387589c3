"""The data module's loaders: evaluation shared out over DDP ranks, batch augmentation in the loader worker.

:func:`make_loader` builds a MONAI ``DataLoader``. Validation/test loaders yield whole volumes
(batch size 1) with an ``eval_weight`` of 1 (:class:`_Weighted`); under DDP each rank gets a
disjoint share of the cases (:class:`EvalShardSampler`), and a rank left without a case gets a
weight-0 copy of one (see :mod:`brats_pipeline.data.datamodule`). :class:`AugmentingCollate`
augments each collated training batch inside the loader's worker; :class:`ThreadedAugmentLoader`
does the same in a thread of the training process (no worker processes, no batch copied between
processes), one batch ahead of the training step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from brats_pipeline.data.slices import SliceDataset, collate_slices, plain_tensor


def make_loader(dataset: Any, batch_size: int, num_workers: int, shuffle: bool, evaluation: bool = False) -> Any:
    """A MONAI ``DataLoader`` over ``dataset`` (slices: torch's collate; volumes: MONAI's).

    Args:
        dataset: a dataset of the data module (a :class:`~brats_pipeline.data.slices.SliceDataset` or volumes).
        batch_size: items per batch.
        num_workers: loader worker processes (kept between epochs when > 0).
        shuffle: shuffle every epoch (training); otherwise, under DDP, each rank gets its share in order.
        evaluation: whole-volume validation/test: items carry ``eval_weight``, one disjoint share of
            the cases per DDP rank (:class:`EvalShardSampler`).
    """
    from monai.data import DataLoader, DistributedSampler

    workers = num_workers
    sampler = None
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if evaluation:
        dataset = _Weighted(dataset)
        if distributed:
            sampler = EvalShardSampler(dataset)
    elif not shuffle and distributed:
        sampler = DistributedSampler(dataset, shuffle=False, even_divisible=False)
    # slices are plain tensors, fetched a batch at a time (SliceDataset.__getitems__), without MONAI's MetaTensor handling
    collate = {"collate_fn": collate_slices} if isinstance(dataset, SliceDataset) else {}
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), **collate,
    )


class AugmentingCollate:
    """Collate a training batch, then augment it with a :class:`BatchAugment` (in the loader worker).

    Args:
        collate: the loader's collate function.
        augment: the batch augmentation; the batch's ``image`` and ``label`` leave as plain tensors.
    """

    def __init__(self, collate: Any, augment: Any) -> None:
        self.collate, self.augment = collate, augment

    def __call__(self, samples: Any) -> Any:
        return augment_batch(self.collate(samples), self.augment)


def augment_batch(batch: Any, augment: Callable[..., Any]) -> Any:
    """``batch`` with ``image`` and ``label`` replaced by ``augment``'s output on their plain tensors."""
    image, label = augment(plain_tensor(batch["image"]), plain_tensor(batch["label"]))
    return {**batch, "image": image, "label": label}


class ThreadedAugmentLoader:
    """A training loader whose batches are drawn, collated and augmented in a background thread.

    On a CPU the training step leaves part of the cores idle (2 torch threads keep about 1.6 of
    2 cores busy) and torch releases the GIL inside its operations, so a thread that samples the
    next batch and runs ``augment`` on it (with ``threads`` intra-op threads of its own) overlaps
    that work with the step instead of adding to it. The batches, and the random numbers drawn
    for them (the sampler's, Python's, torch's global generator), come in the same order as
    without the thread: the training step itself draws none. An error in the thread is raised
    in the training loop at that batch.

    Args:
        loader: the training ``DataLoader`` (``num_workers=0``).
        augment: ``(image, label) -> (image, label)``, e.g. a :class:`BatchAugment`.
        threads: torch intra-op threads of the background thread.
        depth: batches made ahead of the one the step is using.
    """

    def __init__(self, loader: Any, augment: Callable[..., Any], threads: int = 1, depth: int = 1) -> None:
        self.loader, self.augment, self.threads, self.depth = loader, augment, int(threads), int(depth)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        done = object()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            torch.set_num_threads(self.threads)  # this thread's own intra-op threads (OpenMP: per calling thread)
            try:
                for batch in self.loader:
                    if not put(augment_batch(batch, self.augment)):
                        return
                put(done)
            except BaseException as exc:  # noqa: BLE001 - handed to the training loop, raised there
                put(exc)

        thread = threading.Thread(target=work, name="brats-batch-augment", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()


class _Weighted(torch.utils.data.Dataset):
    """An evaluation dataset whose items carry ``eval_weight``: 1, or 0 for an index past the end.

    Index ``len + k`` is a copy of case ``k`` with weight 0: :class:`EvalShardSampler` hands
    it to a rank that has no case of its own.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        n = len(self.dataset)
        item = self.dataset[index % n]
        return {**item, "eval_weight": 1.0 if index < n else 0.0}


class EvalShardSampler(torch.utils.data.DistributedSampler):
    """Rank ``r`` of ``W`` evaluates cases ``r, r + W, ...``: disjoint shares, none padded or repeated.

    A rank with no case (fewer cases than ranks) gets index ``len(dataset) + r % len``, which
    :class:`_Weighted` turns into a weight-0 copy: every rank then runs the loop (Lightning
    skips a loop with no batches, which would leave the other ranks waiting in the metric
    ``all_reduce``) and nothing is counted twice. A subclass of ``DistributedSampler``, so
    Lightning does not wrap it in another one.
    """

    def __init__(self, dataset: Any, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n = len(dataset)
        self.indices = list(range(self.rank, n, self.num_replicas)) or ([n + self.rank % n] if n else [])
        self.num_samples = len(self.indices)

    def __iter__(self) -> Any:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples
