"""MONAI bundles: the parts their configs build, the template they are written from, and tools.

The bundles in ``bundles/`` keep MONAI's layout and ids, and build everything from this
package with ``"_target_": "brats_pipeline.bundle.<name>"`` (the names below):

* :mod:`~brats_pipeline.bundle.training` — ``train.json``: :class:`CaseSplit` (``train#dataset``,
  ``validate#dataset``; MONAI Label fills ``...#data``), :func:`split_datamodule`, device
  mapping for the Lightning ``Trainer``, :class:`SaveBestNetwork` (``models/model.pt``);
* :mod:`~brats_pipeline.bundle.inference` — ``inference.json``/``evaluate.json``:
  :func:`inference_preprocessing`, :class:`~brats_pipeline.inference.postprocess.RegionsToLabelsd` (softmax bundles:
  :class:`~brats_pipeline.inference.postprocess.ClassesToLabelsd`), strict :func:`load_network`;
  :mod:`~brats_pipeline.bundle.cases` — :func:`inference_cases`; :mod:`~brats_pipeline.bundle.runner` —
  :class:`LabelWriter`, :class:`CaseScorer`, :class:`BundleRunner`;
* :mod:`~brats_pipeline.bundle.specs` — what differs between the four bundles, one
  :class:`BundleSpec` each (:data:`BUNDLES`; the LGG one is the LGG CPU recipe, 2.5D);
  :mod:`~brats_pipeline.bundle.templates` — every file of a bundle from its spec
  (:mod:`~brats_pipeline.bundle.configs`, :mod:`~brats_pipeline.bundle.metadata`,
  :mod:`~brats_pipeline.bundle.docs`);
* :mod:`~brats_pipeline.bundle.tools` — :func:`export_checkpoint`, :func:`verify_bundle`,
  :func:`stack_modalities` (``brats-bundle export|verify|stack``).
"""

from brats_pipeline.bundle.cases import case_id_of, image_files, inference_cases
from brats_pipeline.bundle.docs import readme
from brats_pipeline.bundle.inference import as_device, inference_preprocessing, load_network
from brats_pipeline.bundle.input_checks import CheckChannelsd, SourceFilesd
from brats_pipeline.bundle.runner import BundleRunner, CaseOutcome, CaseScorer, LabelWriter, root_cause
from brats_pipeline.bundle.specs import BUNDLES, SCHEMA_URL, BundleSpec, get_bundle_spec, spec_from_recipe
from brats_pipeline.bundle.templates import check_bundle, render_bundle, write_bundle
from brats_pipeline.bundle.tools import (
    CONFIG_FILES,
    MODEL_FILE,
    Check,
    bundle_parser,
    case_modality_files,
    config_property_problems,
    export_checkpoint,
    stack_modalities,
    verify_bundle,
)
from brats_pipeline.bundle.training import (
    CaseSplit,
    SaveBestNetwork,
    accelerator_of,
    ddp_devices,
    devices_of,
    load_cases,
    precision_of,
    split_datamodule,
)
from brats_pipeline.callbacks import SlurmRequeue, TrainingCurves
from brats_pipeline.inference.postprocess import ClassesToLabelsd, RegionsToLabelsd
from brats_pipeline.weights import network_state_dict, save_state_dict

__all__ = [
    "BUNDLES", "CONFIG_FILES", "MODEL_FILE", "SCHEMA_URL", "BundleRunner", "BundleSpec", "CaseOutcome", "ClassesToLabelsd",
    "CaseScorer", "CaseSplit", "Check", "CheckChannelsd", "LabelWriter", "RegionsToLabelsd",
    "SaveBestNetwork", "SlurmRequeue", "SourceFilesd", "TrainingCurves", "accelerator_of", "as_device", "bundle_parser",
    "case_id_of", "case_modality_files", "check_bundle", "config_property_problems", "ddp_devices",
    "devices_of", "export_checkpoint", "get_bundle_spec", "image_files", "inference_cases",
    "inference_preprocessing", "load_cases", "load_network", "network_state_dict", "precision_of", "readme",
    "render_bundle", "root_cause", "save_state_dict", "spec_from_recipe", "split_datamodule",
    "stack_modalities", "verify_bundle", "write_bundle",
]
