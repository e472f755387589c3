"""``configs/metadata.json`` of a bundle from its :class:`~brats_pipeline.bundle.specs.BundleSpec`.

:func:`metadata` follows the MONAI bundle schema (:data:`~brats_pipeline.bundle.specs.SCHEMA_URL`):
the network's inputs (modalities, and for 2.5D networks the slice of each channel) and outputs
(region channels, or one channel per class of a softmax bundle), the labels, and the versions the
bundles were generated with (:data:`GENERATED_WITH`, :data:`REQUIRED_PACKAGES`). Measured
``eval_metrics`` are passed in (:mod:`~brats_pipeline.bundle.templates` keeps the bundle's own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from brats_pipeline.bundle.specs import SCHEMA_URL, BundleSpec
from brats_pipeline.metrics import METRIC_DEFINITIONS

#: Versions the committed bundles were generated and tested with (fixed, so that rendering is reproducible).
GENERATED_WITH = {"monai": "1.6.1", "pytorch": "2.13.0", "numpy": "2.4.6"}
REQUIRED_PACKAGES = {"brats-pipeline": "0.1.0", "pytorch-lightning": "2.6.6", "nibabel": "5.4.2"}

__all__ = ["GENERATED_WITH", "REQUIRED_PACKAGES", "metadata"]


def metadata(spec: BundleSpec, eval_metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``configs/metadata.json`` following the MONAI bundle schema.

    ``outputs.pred`` describes the network output (one sigmoid channel per region, listed in
    ``regions``; softmax bundles: ``format`` ``labels``, one channel per class, listed in ``classes``
    with its label value); its ``channel_def`` maps the **label values** of the post-processed label map
    to names, because that is the list MONAI Label shows and returns as ``label_names``.
    """
    task, read = spec.task_obj, spec.input_task  # read: the modalities the network reads (a subset, or all)
    modality_names = {"t1c": "T1c (T1 post-contrast)", "t1": "T1 (native)", "t2": "T2", "flair": "FLAIR"}
    labels = {"0": "background", **{str(k): v for k, v in sorted(task.labels.items())}}
    inputs = _network_inputs(spec)
    if spec.spatial_dims == 3:
        shape = ["32*n", "32*n", "32*n"]
        description = (f"{spec.title}. Input: {len(read.modalities)} co-registered MRI sequences "
                       f"({', '.join(read.modality_names)}); ")
        image_classes = ", ".join(f"channel {i}: {modality_names.get(m.contrast, m.name)}"
                                  for i, m in enumerate(read.modalities))
    else:
        # sides: multiples of 2 ** (levels + 1) (x the downsampling): at least 2 x 2 at the bottleneck (instance norm)
        kwargs = dict(spec.network_kwargs)
        shape = [f"{2 ** (len(kwargs.get('strides', [2] * 4)) + 1) * int(kwargs.get('downsample', 1))}*n"] * 2
        axis = "xyz"[spec.slice_axis]
        description = (f"{spec.title}. Input: a volume of {len(read.modalities)} co-registered MRI sequences "
                       f"({', '.join(read.modality_names)}); the 2D network ({spec.network}) segments it slice by "
                       f"slice across axis {spec.slice_axis} ({axis}), each slice with {spec.context} neighbour(s) on "
                       f"each side stacked as channels: {spec.in_channels} input channels = "
                       f"{', '.join(read.modality_names)} at slices "
                       f"{', '.join(_slice_name(axis, j) for j in range(-spec.context, spec.context + 1))} "
                       f"(channel c * {2 * spec.context + 1} + j: modality c at slice {axis} - {spec.context} + j; "
                       "edge slices repeated); ")
        image_classes = ", ".join(f"channel {i}: {name}" for i, name in inputs.items())
    out = _outputs(spec, labels, shape)
    return {
        "schema": SCHEMA_URL,
        "version": spec.version,
        "changelog": dict(spec.changelog),
        "monai_version": GENERATED_WITH["monai"],
        "pytorch_version": GENERATED_WITH["pytorch"],
        "numpy_version": GENERATED_WITH["numpy"],
        "required_packages_version": dict(REQUIRED_PACKAGES),
        "name": spec.title,
        "task": spec.title,
        "description": description + out["description"],
        "authors": "brats-pipeline contributors",
        "copyright": "Copyright (c) brats-pipeline contributors",
        "data_source": spec.data_source,
        "data_type": "nibabel",
        "image_classes": image_classes,
        "label_classes": ", ".join(f"{k}: {v}" for k, v in labels.items()),
        "pred_classes": out["pred_classes"],
        "eval_metrics": dict(eval_metrics or {}),
        # what the *_dice_* / *_hd95_* entries of eval_metrics mean (validation and brats-evaluate share them)
        "metric_definitions": dict(METRIC_DEFINITIONS),
        "intended_use": "Research only; not for clinical use.",
        "references": [spec.paper, task.description],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "MR", "num_channels": spec.in_channels,
                "spatial_shape": shape, "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": inputs,
            }},
            "outputs": {"pred": out["pred"]},
        },
    }


def _outputs(spec: BundleSpec, labels: Mapping[str, str], shape: list[str]) -> dict[str, Any]:
    """The network output in ``metadata.json``: ``description`` (its end), ``pred_classes`` and ``pred``
    (``network_data_format.outputs``): region channels (sigmoid) or one channel per class (softmax)."""
    task = spec.task_obj
    if spec.output_mode == "softmax":
        return {
            "description": (f"output: {task.n_classes} class channels ({', '.join(task.class_names)}; softmax), whose "
                            f"argmax gives the {task.name} labels {list(task.label_values)}."),
            "pred_classes": ", ".join(f"channel {i}: {name} = label {value}"
                                      for i, (name, value) in enumerate(zip(task.class_names, task.label_values))),
            "pred": {"type": "image", "format": "labels", "num_channels": task.n_classes, "spatial_shape": shape,
                     "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": dict(labels),
                     "classes": {str(i): {"name": name, "label": value}
                                 for i, (name, value) in enumerate(zip(task.class_names, task.label_values))}},
        }
    return {
        "description": (f"output: {len(task.regions)} region channel(s) "
                        f"({', '.join(task.region_names)}), turned into the {task.name} labels {list(task.label_values)}."),
        "pred_classes": ", ".join(f"channel {i}: {r.name} = labels {sorted(r.labels)}" for i, r in enumerate(task.regions)),
        "pred": {
            "type": "image", "format": "segmentation", "num_channels": len(task.regions), "spatial_shape": shape,
            "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": dict(labels),
            "regions": {str(i): {"name": r.name, "labels": sorted(r.labels)} for i, r in enumerate(task.regions)},
        },
    }


def _slice_name(axis: str, offset: int) -> str:
    return f"{axis}{offset:+d}" if offset else axis


def _network_inputs(spec: BundleSpec) -> dict[str, str]:
    """The network's input channels by index: modality names (3D), ``"<modality> <slice>"`` for 2.5D."""
    names = spec.input_task.modality_names
    if spec.spatial_dims == 3 or not spec.context:
        return {str(i): m for i, m in enumerate(names)}
    axis, k = "xyz"[spec.slice_axis], spec.context
    slices = [_slice_name(axis, j) for j in range(-k, k + 1)]
    return {str(i): f"{m} {sl}" for i, (m, sl) in enumerate((m, sl) for m in names for sl in slices)}
