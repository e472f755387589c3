"""2D and 2.5D training data: slices (or slabs of neighbouring slices) of volumes decoded once.

A volume is ``C×X×Y×Z`` (channels first, x, y, z). The **slice axis** is one of its spatial
axes (0 = x, 1 = y, 2 = z; default 2, the last: axial slices of RAS or LGG data); a slice keeps
the other two axes in their order (``(x, y)`` for slice axis 2).

**2.5D** (``context = k > 0``): slice ``i`` and its ``k`` neighbours on each side are stacked as
channels. Channel ``c * (2k + 1) + j`` holds modality ``c`` of slice ``clamp(i - k + j, 0, N - 1)``:
at the first and last slices the edge slice is repeated (replicate padding). :func:`slab` (one
slice, for training) and :func:`stack_context` (a whole volume, for inference) build exactly
these channels; ``context = 0`` is plain 2D.

:class:`SliceDataset` draws training slices from volumes held in memory (the data module's
deterministic transforms ran once per case): every slice that holds tumour, plus
``empty_slice_ratio`` times as many random tumour-free slices per epoch, optionally cropped or
padded in-plane to ``patch_size``. No file is read per slice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

#: In-plane sizes of whole slices (``patch_size=None``) are padded to a multiple of this, so
#: that U-Nets with up to five resolution levels accept them.
WHOLE_SLICE_MULTIPLE = 32


def check_slice_axis(axis: int) -> int:
    """``axis`` as an int in ``{0, 1, 2}`` (x, y, z), or ``ValueError`` naming it."""
    if isinstance(axis, bool) or not isinstance(axis, int) or axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0 (x), 1 (y) or 2 (z), got {axis!r}")
    return axis


def check_context(context: int) -> int:
    """``context`` (neighbours on each side) as a non-negative int, or ``ValueError`` naming it."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be a non-negative int (neighbouring slices on each side), got {context!r}")
    return context


def in_plane(sizes: Sequence[int], slice_axis: int, what: str = "size") -> tuple[int, ...]:
    """The two in-plane entries of a spatial size: ``sizes`` itself (2 values) or ``sizes`` without the slice axis (3 values).

    Raises:
        ValueError: not 2 or 3 positive values.
    """
    values = tuple(int(s) for s in sizes)
    if len(values) == 3:
        values = tuple(v for a, v in enumerate(values) if a != check_slice_axis(slice_axis))
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"{what} of a 2D network must be two in-plane sizes (or x, y, z), got {tuple(sizes)}")
    return values


def context_indices(index: int, n_slices: int, context: int) -> torch.Tensor:
    """Slice indices ``index - context .. index + context``, clamped to ``[0, n_slices - 1]``."""
    return torch.arange(index - context, index + context + 1).clamp_(0, n_slices - 1)


def slab(volume: torch.Tensor, index: int, slice_axis: int = 2, context: int = 0) -> torch.Tensor:
    """Slice ``index`` of a ``C×X×Y×Z`` volume with ``context`` neighbours each side as channels.

    Returns:
        ``(C * (2 * context + 1), A, B)``, channels ordered as in the module docstring.
    """
    n = volume.shape[slice_axis + 1]
    if not 0 <= index < n:
        raise IndexError(f"slice {index} out of range for {n} slices along axis {slice_axis}")
    picked = volume.index_select(slice_axis + 1, context_indices(index, n, context).to(volume.device))
    picked = picked.movedim(slice_axis + 1, 1)  # (C, 2k+1, A, B)
    return picked.reshape(-1, *picked.shape[2:])


def stack_context(volume: torch.Tensor, slice_axis: int = 2, context: int = 0) -> torch.Tensor:
    """Every slice of a batch of volumes with its neighbours as channels (the input of a 2.5D network).

    Args:
        volume: ``(B, C, X, Y, Z)``.
        slice_axis: 0, 1 or 2 (x, y, z).
        context: neighbours on each side (0 returns ``volume`` itself).

    Returns:
        ``(B, C * (2 * context + 1), X, Y, Z)``: along the slice axis, position ``i`` holds the
        channels :func:`slab` gives for slice ``i``.
    """
    if context == 0:
        return volume
    dim = slice_axis + 2
    n = volume.shape[dim]
    # edge slices repeated k times on each side, then 2k+1 shifted views: one copy (in the stack),
    # where index_select along a strided axis copied 2k+1 times and was the slow part of 2.5D inference
    first, last = volume.narrow(dim, 0, 1), volume.narrow(dim, n - 1, 1)
    padded = torch.cat([*[first] * context, volume, *[last] * context], dim=dim)
    stacked = torch.stack([padded.narrow(dim, j, n) for j in range(2 * context + 1)], dim=2)  # (B, C, 2k+1, X, Y, Z)
    return stacked.reshape(volume.shape[0], -1, *volume.shape[2:])


def tumour_slices(label: torch.Tensor, slice_axis: int = 2) -> torch.Tensor:
    """Bool ``(N,)``: which slices of an ``R×X×Y×Z`` label (or ``1×X×Y×Z`` class indices) hold tumour (non-zero)."""
    return label.ne(0).movedim(slice_axis + 1, 0).flatten(1).any(dim=1)


def _pad_or_crop(image: torch.Tensor, label: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Random in-plane crop where a slice is larger than ``size``, centred zero padding where smaller."""
    for d, target in enumerate(size):
        dim = d + 1
        n = image.shape[dim]
        if n > target:
            start = random.randrange(n - target + 1)
            image, label = image.narrow(dim, start, target), label.narrow(dim, start, target)
    pads = []
    for d in reversed(range(len(size))):
        missing = max(0, size[d] - image.shape[d + 1])
        pads += [missing // 2, missing - missing // 2]
    if any(pads):
        image, label = F.pad(image, pads), F.pad(label, pads)
    return image, label


class SliceDataset(torch.utils.data.Dataset):
    """Training slices (2D) or slabs (2.5D) from volumes in memory.

    An epoch is every tumour slice once (in the order of the volumes) followed by
    ``round(empty_slice_ratio * tumour slices)`` draws of a random tumour-free slice (a fresh
    draw each time an index is read, so each epoch sees other empty slices); shuffle with the
    loader. ``empty_slice_ratio=None`` makes an epoch every slice once.

    Args:
        volumes: dicts with ``image`` (C×X×Y×Z float) and ``label`` (R×X×Y×Z region channels, or
            1×X×Y×Z class indices in the softmax output mode),
            e.g. the data module's cached, deterministically transformed cases.
        slice_axis: 0, 1 or 2 (x, y, z).
        context: neighbours on each side stacked as channels (0: plain 2D).
        empty_slice_ratio: tumour-free slices per tumour slice per epoch (``0``: tumour slices
            only; ``None``: all slices).
        patch_size: in-plane output size; larger slices are cropped at a random position,
            smaller ones zero-padded (centred). ``None``: whole slices, padded to the largest
            in-plane size of ``volumes`` rounded up to a multiple of :data:`WHOLE_SLICE_MULTIPLE`.
            The attribute may be changed after construction (the data module widens it by a margin).
        data: instead of ``volumes``: the cases (``image``/``label`` file entries), read by
            ``transform`` (MONAI's ``Dataset(data, transform)``; a bundle's ``train#preprocessing``).
        slice_transform: a callable on each item dict (``image`` (C·(2k+1), A, B), ``label``), e.g. a
            ``Compose`` of MONAI random dict transforms (a bundle's ``train#random_transforms``): a fresh
            draw per item, after the crop or pad.

    Items: ``image`` (C·(2k+1), A, B) float32 and ``label`` (R, A, B) float32 (0/1; class indices: (1, A, B)).
    """

    def __init__(
        self,
        volumes: Sequence[Mapping[str, Any]] | None = None,
        slice_axis: int = 2,
        context: int = 0,
        empty_slice_ratio: float | None = 1.0,
        patch_size: Sequence[int] | None = None,
        data: Sequence[Mapping[str, Any]] | None = None,
        transform: Any = None,
        slice_transform: Any = None,
    ) -> None:
        if (volumes is None) == (data is None):
            raise ValueError("SliceDataset takes volumes, or data (cases) with a transform that reads them; give one")
        if data is not None:  # MONAI's Dataset(data, transform) signature: a bundle's train#dataset (#data set by MONAI Label)
            from monai.data import Dataset

            volumes = Dataset(list(data), transform)
        #: the cases, when given as ``data`` (a bundle's record of what it trained on)
        self.data = None if data is None else list(data)
        # an empty Compose (a bundle without random transforms) is none: the batch fast path of __getitems__ stays
        self.slice_transform = None if len(getattr(slice_transform, "transforms", [None])) == 0 else slice_transform
        self.slice_axis = check_slice_axis(slice_axis)
        self.context = check_context(context)
        if empty_slice_ratio is not None and (isinstance(empty_slice_ratio, bool) or not float(empty_slice_ratio) >= 0):
            raise ValueError(f"empty_slice_ratio must be a non-negative number or None, got {empty_slice_ratio!r}")
        if not volumes:
            raise ValueError("SliceDataset needs at least one volume")
        self.images: list[torch.Tensor] = []  # (C, N, A, B): a slice is contiguous
        self.labels: list[torch.Tensor] = []  # (R, N, A, B) uint8
        tumour: list[tuple[int, int]] = []
        empty: list[tuple[int, int]] = []
        for v in range(len(volumes)):  # a MONAI Dataset decodes each volume here, once
            volume = volumes[v]
            image, label = plain_tensor(volume["image"]), plain_tensor(volume["label"])
            if image.ndim != 4 or label.ndim != 4 or image.shape[1:] != label.shape[1:]:
                source = _source(volume["image"])
                raise ValueError(f"{source}: expected image C×X×Y×Z and label R×X×Y×Z on one grid, got {tuple(image.shape)} and {tuple(label.shape)}")
            self.images.append(image.float().movedim(self.slice_axis + 1, 1).contiguous())
            # 0/1 region channels or class indices, kept exactly
            exact = label.round() if label.is_floating_point() else label
            self.labels.append(exact.to(torch.uint8).movedim(self.slice_axis + 1, 1).contiguous())
            for index, flag in enumerate(tumour_slices(label, self.slice_axis).tolist()):
                (tumour if flag else empty).append((v, index))
        self.tumour, self.empty = tumour, empty
        self.empty_slice_ratio = None if empty_slice_ratio is None else float(empty_slice_ratio)
        if self.empty_slice_ratio is None:
            self.empty_draws = 0
        else:
            if not tumour:
                raise ValueError("no slice of the training volumes holds tumour; set empty_slice_ratio to None to train on every slice")
            self.empty_draws = round(self.empty_slice_ratio * len(tumour)) if empty else 0
        #: the largest in-plane size among the volumes
        self.largest_slice = tuple(max(img.shape[d] for img in self.images) for d in (2, 3))
        if patch_size is None:
            self.patch_size = tuple(math.ceil(s / WHOLE_SLICE_MULTIPLE) * WHOLE_SLICE_MULTIPLE for s in self.largest_slice)
        else:
            self.patch_size = tuple(int(s) for s in patch_size)
            if len(self.patch_size) != 2 or min(self.patch_size) < 1:
                raise ValueError(f"patch_size must be two positive in-plane sizes, got {tuple(patch_size)}")

    @property
    def in_channels(self) -> int:
        """Channels of an item's ``image``: modalities × (2·context + 1)."""
        return self.images[0].shape[0] * (2 * self.context + 1)

    def __len__(self) -> int:
        if self.empty_slice_ratio is None:
            return len(self.tumour) + len(self.empty)
        return len(self.tumour) + self.empty_draws

    def slice_at(self, index: int) -> tuple[int, int]:
        """``(volume, slice)`` of item ``index`` (a random empty slice past the tumour slices)."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} slices")
        if index < len(self.tumour):
            return self.tumour[index]
        if self.empty_slice_ratio is None:
            return self.empty[index - len(self.tumour)]
        return self.empty[random.randrange(len(self.empty))]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        v, i = self.slice_at(index)
        image_slice = slab(self.images[v], i, 0, self.context)  # stored (C, N, A, B): slices along axis "0"
        label_slice = self.labels[v][:, i].float()
        image_slice, label_slice = _pad_or_crop(image_slice, label_slice, self.patch_size)
        item = {"image": image_slice.contiguous(), "label": label_slice.contiguous()}
        if self.slice_transform is not None:
            item = dict(self.slice_transform(item))
            item = {**item, "image": plain_tensor(item["image"]).float().contiguous(),
                    "label": plain_tensor(item["label"]).float().contiguous()}
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A whole batch, collated (torch's ``DataLoader`` asks for it so; :func:`collate_slices` passes it on):
        ``image`` ``(B, C·(2k+1), A, B)``, ``label`` ``(B, R, A, B)`` — the items of :meth:`__getitem__`, with the
        same random draws.

        Where every volume's slices are the patch size (nothing to crop or pad), each slab is copied
        straight into its place in the batch, once, instead of into an item that collation copies again.
        """
        if self.slice_transform is not None or any(tuple(image.shape[2:]) != self.patch_size for image in self.images):
            return collate_slices([self[index] for index in indices])
        places = [self.slice_at(index) for index in indices]
        k, (v0, _) = self.context, places[0]
        image = self.images[v0].new_empty((len(places), self.images[v0].shape[0], 2 * k + 1, *self.patch_size))
        label = torch.empty((len(places), self.labels[v0].shape[0], *self.patch_size))
        for b, (v, i) in enumerate(places):
            for j, source in enumerate(context_indices(i, self.images[v].shape[1], k).tolist()):
                image[b, :, j] = self.images[v][:, source]  # channel c·(2k+1) + j: modality c of slice i - k + j
            label[b] = self.labels[v][:, i]
        return {"image": image.flatten(1, 2), "label": label}


def collate_slices(items: Sequence[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The collate function of a :class:`SliceDataset` loader: pass through the batch ``__getitems__`` made,
    or batch ``items`` with torch's default collation."""
    if isinstance(items, Mapping):
        return dict(items)
    return torch.utils.data.default_collate(list(items))


def plain_tensor(x: Any) -> torch.Tensor:
    """A plain tensor: a MONAI ``MetaTensor`` without its metadata (no bookkeeping in hot loops), or ``x`` as a tensor."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _source(x: Any) -> str:
    meta = getattr(x, "meta", None) or {}
    return str(meta.get("filename_or_obj", "volume"))
