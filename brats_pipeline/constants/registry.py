"""The registered tasks (BraTS 2013-2015, 2020/2021, 2023+, MSD Task01, LGG) and :func:`get_task`.

Each is a :class:`~brats_pipeline.constants.task.Task`; :data:`TASKS` holds them by name and
:data:`TASK_ALIASES` maps other names to them (``brats2020`` reads with the BraTS 2021 scheme).
"""

from __future__ import annotations

from brats_pipeline.constants.task import Modality, Region, Task


def _brats_regions(ncr: int, ed: int, et: int) -> tuple[Region, ...]:
    return (
        Region("TC", frozenset({ncr, et}), "tumour core: necrosis/non-enhancing + enhancing"),
        Region("WT", frozenset({ncr, ed, et}), "whole tumour: core + oedema"),
        Region("ET", frozenset({et}), "enhancing tumour"),
    )


BRATS2021 = Task(
    name="brats2021",
    description="BraTS 2020/2021 glioma: labels 1 NCR/NET, 2 ED, 4 ET (BraTS20_Training_001 / BraTS2021_00000 folders)",
    modalities=(
        Modality("t1c", "t1c", ("t1ce", "t1c", "t1gd")),
        Modality("t1", "t1", ("t1", "t1n")),
        Modality("t2", "t2", ("t2", "t2w")),
        Modality("flair", "flair", ("flair", "t2f")),
    ),
    labels={1: "NCR/NET", 2: "ED", 4: "ET"},
    label_keys={1: "NCR", 2: "ED", 4: "ET"},
    regions=_brats_regions(ncr=1, ed=2, et=4),
    compartment_labels={"necrosis": 1, "edema": 2, "enhancing": 4},
    separator="_",
    label_suffixes=("seg",),
    case_pattern=r"(BraTS20_(Training|Validation)_\d+|BraTS2021_\d+|.+)",
    synth_case_format="BraTS2021_{i:05d}",
)

BRATS2015 = Task(
    name="brats2015",
    description="BraTS 2013-2015 glioma: labels 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing "
    "(case folders converted to NIfTI, e.g. brats_2013_pat0001_1/brats_2013_pat0001_1_flair.nii.gz)",
    modalities=(
        Modality("t1c", "t1c", ("t1c", "t1ce")),
        Modality("t1", "t1", ("t1",)),
        Modality("t2", "t2", ("t2",)),
        Modality("flair", "flair", ("flair",)),
    ),
    labels={1: "necrosis", 2: "oedema", 3: "non-enhancing tumour", 4: "enhancing tumour"},
    label_keys={1: "NCR", 2: "ED", 3: "NET", 4: "ET"},
    # BraTS 2015 regions (Menze et al. 2015): complete = all four, core = all but oedema,
    # enhancing = 4. TC owns two labels (1, 3) beside ET, so a fourth channel, necrosis {1},
    # keeps labels <-> regions exact (TC then owns 3, the non-enhancing tumour).
    regions=(
        Region("TC", frozenset({1, 3, 4}), "tumour core: necrosis + non-enhancing + enhancing"),
        Region("WT", frozenset({1, 2, 3, 4}), "whole (complete) tumour: core + oedema"),
        Region("ET", frozenset({4}), "enhancing (active) tumour"),
        Region("NCR", frozenset({1}), "necrosis (keeps the non-enhancing label 3 recoverable)"),
    ),
    compartment_labels={"necrosis": 1, "edema": 2, "enhancing": 4},  # phantoms draw no label 3
    separator="_",
    label_suffixes=("seg", "ot"),
    patient_pattern=r"^(brats_(?:2013|tcia)_pat\d+)_\d+$",
    synth_case_format="brats_2013_pat{i:04d}_1",
)

BRATS2023 = Task(
    name="brats2023",
    description="BraTS 2023+ glioma: labels 1 NETC, 2 SNFH, 3 ET (BraTS-GLI-00000-000 folders)",
    modalities=(
        Modality("t1c", "t1c", ("t1c",)),
        Modality("t1n", "t1", ("t1n",)),
        Modality("t2w", "t2", ("t2w",)),
        Modality("t2f", "flair", ("t2f",)),
    ),
    labels={1: "NETC", 2: "SNFH", 3: "ET"},
    label_keys={1: "NETC", 2: "SNFH", 3: "ET"},
    regions=_brats_regions(ncr=1, ed=2, et=3),
    compartment_labels={"necrosis": 1, "edema": 2, "enhancing": 3},
    separator="-",
    label_suffixes=("seg",),
    patient_pattern=r"^(BraTS-[A-Z]+-\d+)-\d+$",
    synth_case_format="BraTS-GLI-{i:05d}-000",
)

MSD_TASK01 = Task(
    name="msd_task01",
    description="Medical Segmentation Decathlon Task01_BrainTumour: 4D images, labels 1 edema, 2 non-enhancing, 3 enhancing",
    modalities=(
        Modality("flair", "flair", ("FLAIR",)),
        Modality("t1", "t1", ("T1w",)),
        Modality("t1c", "t1c", ("t1gd",)),
        Modality("t2", "t2", ("T2w",)),
    ),
    labels={1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
    label_keys={1: "ED", 2: "NET", 3: "ET"},
    regions=_brats_regions(ncr=2, ed=1, et=3),
    compartment_labels={"necrosis": 2, "edema": 1, "enhancing": 3},
    layout="msd",
    synth_case_format="BRATS_{i:03d}",
)

LGG = Task(
    name="lgg",
    description="TCGA lower-grade glioma FLAIR abnormality (Buda et al. 2019): label 1 FLAIR abnormality",
    modalities=(
        Modality("t1", "t1", ("t1",)),
        Modality("flair", "flair", ("flair",)),
        Modality("t1c", "t1c", ("t1c",)),
    ),
    labels={1: "FLAIR abnormality"},
    label_keys={1: "FLAIR"},
    regions=(Region("WT", frozenset({1}), "FLAIR abnormality"),),
    compartment_labels={"necrosis": 1, "edema": 1, "enhancing": 1},
    separator="_",
    label_suffixes=("seg", "mask"),
    patient_pattern=r"^(TCGA_[A-Z0-9]+_[A-Z0-9]+)_\d+$",
    synth_case_format="TCGA_SY_{i:04d}_20000101",
)

#: Registry of tasks by name; ``brats2020`` reads BraTS 2020 with the BraTS 2021 scheme (same labels).
TASKS: dict[str, Task] = {t.name: t for t in (BRATS2015, BRATS2021, BRATS2023, MSD_TASK01, LGG)}
TASK_ALIASES: dict[str, str] = {"brats2020": "brats2021"}


def get_task(name: str | Task) -> Task:
    """Return the task called ``name`` (a :class:`Task` is returned unchanged)."""
    if isinstance(name, Task):
        return name
    key = TASK_ALIASES.get(name, name)
    if key not in TASKS:
        choices = ", ".join(sorted([*TASKS, *TASK_ALIASES]))
        raise ValueError(f"unknown task {name!r}; choose one of {choices}")
    return TASKS[key]
