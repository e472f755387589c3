"""Synthetic BraTS-like phantoms: the embedded default data of the demo and the test suite.

A phantom is a head (scalp, skull, CSF, cortex-like grey matter, white matter, ventricles) with
one or two tumours, each made of nested compartments — a necrotic core inside an enhancing
rim inside oedema — with irregular, seed-dependent boundaries. Every modality is rendered
from the same tissue map with that contrast's relative intensities (enhancing tumour bright
on T1c, oedema bright on T2/FLAIR, necrosis dark on T1c, CSF dark on FLAIR), blurred slightly
(partial volume), multiplied by a smooth bias field of its own and given Rician noise.

Arrays are x, y, z; the affine is RAS with the volume centred on the origin; spacing in mm.
Everything is drawn from ``numpy.random.default_rng([seed, case_index])``: the same seed gives
identical files, and case *i* of a cohort does not depend on how many cases are written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brats_pipeline.constants import Task, get_task

# Tissue classes of the phantom's tissue map.
BACKGROUND, SCALP, SKULL, CSF, GM, WM, EDEMA, ENHANCING, NECROSIS = range(9)
TISSUE_NAMES = ("background", "scalp", "skull", "csf", "gm", "wm", "edema", "enhancing", "necrosis")

#: Relative intensity of each tissue (in TISSUE_NAMES order) for each contrast.
CONTRAST_TABLE: dict[str, tuple[float, ...]] = {
    #         bg    scalp skull csf   gm    wm    edema enh   necr
    "t1": (0.0, 0.90, 0.15, 0.25, 0.55, 0.75, 0.45, 0.55, 0.30),
    "t1c": (0.0, 0.90, 0.15, 0.25, 0.55, 0.75, 0.48, 1.00, 0.18),
    "t2": (0.0, 0.55, 0.10, 1.00, 0.65, 0.45, 0.85, 0.70, 0.95),
    "flair": (0.0, 0.50, 0.10, 0.12, 0.60, 0.48, 0.95, 0.80, 0.55),
}

#: Stored intensity of a relative intensity of 1.0 (files are int16, like most scanners' output).
INTENSITY_SCALE = 1000.0


@dataclass
class Phantom:
    """One synthetic case.

    Attributes:
        images: modality name -> float32 array (x, y, z), in the task's modality order.
        label: uint8 label map (x, y, z) in the task's label scheme.
        tissue: uint8 tissue map (x, y, z), values index :data:`TISSUE_NAMES`.
        affine: 4x4 voxel-to-RAS (mm).
        task: the task whose modalities and labels were rendered.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    task: Task
    n_tumours: int = 1
    meta: dict = field(default_factory=dict)


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], coarse: int = 5) -> np.ndarray:
    """A smooth random field in [-1, 1]: Gaussian noise on a coarse grid, cubic-spline upsampled.

    The upsampling is separable (one small interpolation matrix per axis), which is exactly
    ``scipy.ndimage.zoom(grid, order=3)`` but an order of magnitude faster on large volumes.
    """
    from scipy.ndimage import zoom

    grid = rng.standard_normal((coarse, coarse, coarse))
    mats = [zoom(np.eye(coarse), (n / coarse, 1), order=3, mode="nearest", grid_mode=True)[:n] for n in shape]
    up = np.einsum("ia,jb,kc,abc->ijk", *mats, grid, optimize=True)
    peak = np.abs(up).max()
    return (up / peak if peak > 0 else up).astype(np.float32)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def make_phantom(
    task: str | Task = "brats2021",
    shape: Sequence[int] = (96, 96, 64),
    seed: int | Sequence[int] = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    skull_stripped: bool = False,
    noise: float = 0.025,
    bias: float = 0.25,
) -> Phantom:
    """Draw one BraTS-like case.

    Args:
        task: task name or :class:`Task`; decides modalities and label values.
        shape: volume shape (x, y, z) in voxels; each at least 24.
        seed: an int or a sequence of ints for ``numpy.random.default_rng``.
        spacing: voxel size (x, y, z) in mm.
        skull_stripped: zero everything outside the brain (CSF included), as BraTS ships data.
        noise: Rician noise sigma relative to white-matter-ish intensity 1.0.
        bias: peak amplitude of the log bias field (0.25 -> intensities scaled by up to ~±28 %).

    Returns:
        A :class:`Phantom` whose label compartments are nested (necrosis ⊂ enhancing rim
        ⊂ oedema, as regions: ET ⊂ TC ⊂ WT).
    """
    task = get_task(task)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 24:
        raise ValueError(f"phantom shape must be three sizes of at least 24 voxels, got {shape}")
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or (spacing <= 0).any():
        raise ValueError(f"spacing must be three positive sizes in mm, got {tuple(spacing)}")
    rng = np.random.default_rng(seed)

    # Physical coordinates (mm) centred on the volume.
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    extent = np.array(shape) * spacing
    semi = extent / 2.0 * np.array([0.86, 0.90, 0.84]) * rng.uniform(0.95, 1.02, 3)

    # Head: normalised ellipsoidal radius with a gently irregular outline.
    r = np.sqrt((X / semi[0]) ** 2 + (Y / semi[1]) ** 2 + (Z / semi[2]) ** 2).astype(np.float32)
    r_outline = r * (1.0 + 0.02 * _smooth_field(rng, shape, 4))
    r_cortex = r * (1.0 + 0.05 * _smooth_field(rng, shape, 7))  # folded-looking GM/WM boundary

    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[r_outline <= 1.00] = SCALP
    tissue[r_outline <= 0.94] = SKULL
    tissue[r_outline <= 0.88] = CSF
    tissue[r_outline <= 0.84] = GM
    tissue[r_cortex <= 0.72] = WM
    brain = r_outline <= 0.84
    # Lateral ventricles: two ellipsoids either side of the midline.
    for side in (-1.0, 1.0):
        v = ((X - side * 0.13 * semi[0]) / (0.07 * semi[0])) ** 2 + (Y / (0.26 * semi[1])) ** 2
        v = v + ((Z - 0.05 * semi[2]) / (0.14 * semi[2])) ** 2
        tissue[v <= 1.0] = CSF

    # Tumours: nested compartments with irregular outlines, inside the brain.
    n_tumours = 1 if rng.random() < 0.7 else 2
    necrosis = np.zeros(shape, dtype=bool)
    enhancing = np.zeros(shape, dtype=bool)
    edema = np.zeros(shape, dtype=bool)
    base = float(min(semi))
    for k in range(n_tumours):
        scale = 1.0 if k == 0 else 0.6
        r_edema = base * rng.uniform(0.45, 0.58) * scale
        r_enh = r_edema * rng.uniform(0.60, 0.75)
        r_nec = r_enh * rng.uniform(0.50, 0.70)
        for _ in range(100):  # centre well inside the brain
            c = rng.uniform(-0.5, 0.5, 3) * semi
            if np.sqrt(((c / semi) ** 2).sum()) < 0.5:
                break
        rot = _random_rotation(rng)
        stretch = rng.uniform(0.8, 1.25, 3)
        d = np.stack([X - c[0], Y - c[1], Z - c[2]], axis=-1) @ rot
        dist = np.sqrt(((d / stretch) ** 2).sum(-1)).astype(np.float32)
        dist *= 1.0 + 0.18 * _smooth_field(rng, shape, 6)
        necrosis |= dist <= r_nec
        enhancing |= dist <= r_enh
        edema |= dist <= r_edema
    enhancing &= brain
    edema &= brain
    necrosis &= brain
    tissue[edema] = EDEMA
    tissue[enhancing] = ENHANCING
    tissue[necrosis] = NECROSIS

    label = np.zeros(shape, dtype=np.uint8)
    label[edema] = task.compartment_labels["edema"]
    label[enhancing] = task.compartment_labels["enhancing"]
    label[necrosis] = task.compartment_labels["necrosis"]

    images: dict[str, np.ndarray] = {}
    from scipy.ndimage import gaussian_filter

    head = r_outline <= 1.0
    for modality in task.modalities:
        table = np.asarray(CONTRAST_TABLE[modality.contrast], dtype=np.float32)
        clean = table[tissue] * (1.0 + 0.04 * _smooth_field(rng, shape, 9))  # tissue texture
        clean = gaussian_filter(clean, sigma=0.6 * spacing.min() / spacing)
        log_bias = bias * _smooth_field(rng, shape, 3)
        signal = clean * np.exp(log_bias)
        n1 = rng.standard_normal(shape).astype(np.float32) * noise
        n2 = rng.standard_normal(shape).astype(np.float32) * noise
        img = np.sqrt((signal + n1) ** 2 + n2**2)  # Rician magnitude
        if skull_stripped:
            img[~(r_outline <= 0.88)] = 0.0
        else:
            img[~head] *= 0.5  # air: lower noise floor than tissue, as on magnitude images
        images[modality.name] = np.round(img * INTENSITY_SCALE).astype(np.float32)

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2.0 * spacing
    meta = {"seed": seed, "shape": shape, "spacing": spacing.tolist(), "skull_stripped": skull_stripped, "noise": noise, "bias": bias}
    return Phantom(images, label, tissue, affine, task, n_tumours, meta)


def write_case(phantom: Phantom, out_dir: str | os.PathLike, case_id: str, with_label: bool = True) -> list[Path]:
    """Write one phantom in its task's ``case_folder`` layout; returns the files written.

    ``OUT/<case_id>/<case_id><sep><suffix>.nii.gz`` per modality (first suffix of each), and
    ``<case_id><sep>seg.nii.gz`` if ``with_label``. Images are int16, labels uint8; each file
    is written atomically.
    """
    from preprocessing.io import write_nifti

    task = phantom.task
    if task.layout != "case_folder":
        raise ValueError(f"write_case writes case_folder layouts; task {task.name!r} uses {task.layout!r}")
    case_dir = Path(out_dir) / case_id
    written = []
    for modality in task.modalities:
        path = case_dir / f"{case_id}{task.separator}{modality.suffixes[0]}.nii.gz"
        written.append(write_nifti(phantom.images[modality.name], phantom.affine, path, dtype=np.int16))
    if with_label:
        path = case_dir / f"{case_id}{task.separator}{task.label_suffixes[0]}.nii.gz"
        written.append(write_nifti(phantom.label, phantom.affine, path, dtype=np.uint8))
    return written


def write_cohort(
    out_dir: str | os.PathLike,
    task: str | Task = "brats2021",
    n_cases: int = 4,
    shape: Sequence[int] = (96, 96, 64),
    seed: int = 0,
    n_unlabelled: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    skull_stripped: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Write ``n_cases`` labelled and ``n_unlabelled`` unlabelled phantoms in the task's real layout.

    Args:
        out_dir: dataset root (created).
        task: task name or :class:`Task`.
        n_cases: labelled cases (ids 0 .. n_cases-1 in ``task.synth_case_format``).
        shape: volume shape (x, y, z).
        seed: cohort seed; case *i* uses ``default_rng([seed, i])``.
        n_unlabelled: cases written without segmentation (BraTS validation style / MSD imagesTs).
        spacing: voxel size in mm.
        skull_stripped: zero everything outside the brain.
        progress: show a tqdm bar.

    Returns:
        ``case_folder`` tasks: the case folders. ``msd``: the image files.
    """
    task = get_task(task)
    if n_cases < 0 or n_unlabelled < 0 or n_cases + n_unlabelled == 0:
        raise ValueError(f"need at least one case, got n_cases={n_cases}, n_unlabelled={n_unlabelled}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = range(n_cases + n_unlabelled)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"synthesising {task.name}", unit="case")
    written: list[Path] = []
    msd_training, msd_test = [], []
    for i in indices:
        case_id = task.synth_case_format.format(i=i)
        phantom = make_phantom(task, shape, seed=[seed, i], spacing=spacing, skull_stripped=skull_stripped)
        labelled = i < n_cases
        if task.layout == "msd":
            written.append(_write_msd_case(phantom, out_dir, case_id, labelled))
            entry = f"./{'imagesTr' if labelled else 'imagesTs'}/{case_id}.nii.gz"
            if labelled:
                msd_training.append({"image": entry, "label": f"./labelsTr/{case_id}.nii.gz"})
            else:
                msd_test.append(entry)
        else:
            write_case(phantom, out_dir, case_id, with_label=labelled)
            written.append(out_dir / case_id)
    if task.layout == "msd":
        _write_msd_dataset_json(out_dir, task, msd_training, msd_test)
    return written


def _write_msd_case(phantom: Phantom, out_dir: Path, case_id: str, labelled: bool) -> Path:
    from preprocessing.io import write_nifti

    stack = np.stack([phantom.images[m.name] for m in phantom.task.modalities], axis=-1)  # x,y,z,C
    image = write_nifti(
        stack, phantom.affine, out_dir / ("imagesTr" if labelled else "imagesTs") / f"{case_id}.nii.gz", np.float32
    )
    if labelled:
        write_nifti(phantom.label, phantom.affine, out_dir / "labelsTr" / f"{case_id}.nii.gz", np.uint8)
    return image


def _write_msd_dataset_json(out_dir: Path, task: Task, training: list[dict], test: list[str]) -> None:
    from preprocessing.io import write_json

    dataset = {
        "name": "BRATS",
        "description": f"synthetic phantoms in the layout of {task.description}",
        "tensorImageSize": "4D",
        "modality": {str(i): m.suffixes[0] for i, m in enumerate(task.modalities)},
        "labels": {"0": "background", **{str(k): v for k, v in task.labels.items()}},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    write_json(dataset, out_dir / "dataset.json")
