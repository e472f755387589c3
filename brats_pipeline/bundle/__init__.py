"""MONAI bundles: the parts their configs build, and tools.

The bundles in ``bundles/`` are hand-written JSON (the source), keep MONAI's layout and ids, and
build stock MONAI transforms, datasets and inferers plus, with ``"_target_": "brats_pipeline.bundle.<name>"``,
the names below (``train.json``'s transforms, datasets, loss, optimiser and inferer are objects the
LightningModule and data module receive):

* :mod:`~brats_pipeline.bundle.training` — ``train.json``: :func:`split_cases` (``train#dataset#data``,
  ``validate#dataset#data``; MONAI Label fills them), :func:`bundle_datamodule`, device
  mapping for the Lightning ``Trainer``, :class:`SaveBestNetwork` (``models/model.pt``);
* :mod:`~brats_pipeline.bundle.inference` — ``inference.json``/``evaluate.json``:
  :func:`train_network` (``network_def``: the network ``train.json`` defines), :func:`inference_preprocessing`,
  :class:`~brats_pipeline.inference.postprocess.RegionsToLabelsd` (softmax bundles:
  :class:`~brats_pipeline.inference.postprocess.ClassesToLabelsd`), strict :func:`load_network`;
  :mod:`~brats_pipeline.bundle.cases` — :func:`inference_cases`; :mod:`~brats_pipeline.bundle.runner` —
  :class:`LabelWriter`, :class:`CaseScorer`, :class:`BundleRunner`;
* :mod:`~brats_pipeline.bundle.tools` — :func:`export_checkpoint`, :func:`verify_bundle`,
  :func:`stack_modalities` (``brats-bundle export|verify|stack``).
"""

from brats_pipeline.bundle.cases import case_id_of, image_files, inference_cases
from brats_pipeline.bundle.inference import as_device, inference_preprocessing, load_network, train_network
from brats_pipeline.bundle.input_checks import CheckChannelsd, SourceFilesd
from brats_pipeline.bundle.runner import BundleRunner, CaseScorer, LabelWriter, root_cause
from brats_pipeline.bundle.tools import (
    CONFIG_FILES,
    MODEL_FILE,
    SCHEMA_FILE,
    SCHEMA_URL,
    Check,
    bundle_parser,
    case_modality_files,
    config_property_problems,
    export_checkpoint,
    stack_modalities,
    verify_bundle,
)
from brats_pipeline.bundle.training import (
    SaveBestNetwork,
    accelerator_of,
    bundle_datamodule,
    ddp_devices,
    devices_of,
    load_cases,
    precision_of,
    split_cases,
)
from brats_pipeline.callbacks import SlurmRequeue, TrainingCurves
from brats_pipeline.inference.postprocess import ClassesToLabelsd, RegionsToLabelsd
from brats_pipeline.weights import network_state_dict, save_state_dict

__all__ = [
    "CONFIG_FILES", "MODEL_FILE", "SCHEMA_FILE", "SCHEMA_URL", "BundleRunner", "ClassesToLabelsd",
    "CaseScorer", "Check", "CheckChannelsd", "LabelWriter", "RegionsToLabelsd",
    "SaveBestNetwork", "SlurmRequeue", "SourceFilesd", "TrainingCurves", "accelerator_of", "as_device", "bundle_parser",
    "case_id_of", "case_modality_files", "config_property_problems", "ddp_devices",
    "devices_of", "export_checkpoint", "image_files", "inference_cases",
    "inference_preprocessing", "load_cases", "load_network", "network_state_dict", "precision_of",
    "root_cause", "save_state_dict", "split_cases", "bundle_datamodule",
    "stack_modalities", "train_network", "verify_bundle",
]
