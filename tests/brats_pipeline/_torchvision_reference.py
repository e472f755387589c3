"""Reference weights and feature maps from real torchvision models (for ``test_encoders_torchvision.py``).

Run with a python that has torchvision (``.venv-monailabel``, see ``scripts/install_monailabel.sh``);
it imports nothing of this project::

    .venv-monailabel/bin/python tests/brats_pipeline/_torchvision_reference.py OUT_DIR

For ``resnet50`` and ``mobilenet_v2`` (seeded random weights, BatchNorm affine parameters and
running statistics randomised too, eval mode) it writes

- ``OUT_DIR/<arch>.pth``: ``torch.save(model.state_dict())``, classifier included, as a real
  weight file would be;
- ``OUT_DIR/<arch>_reference.pt``: a dict of tensors: ``x`` (2x3x64x64, N(0, 1)) and ``feat{i}``
  its five feature maps; ``grey`` (2x1x64x64) and ``grey_feat{i}`` the maps of ``grey`` repeated
  over the three RGB channels; ``unit`` (2x3x64x64, U[0, 1)) and ``unit_feat{i}`` the maps of
  ``torchvision.transforms.functional.normalize(unit, mean, std)``; ``mean`` and ``std`` from the
  weights' own ``transforms()``.

The maps are captured by forward hooks during the model's own ``forward`` (classifier
included): resnet50 after ``relu`` (stem: relu(bn1(conv1(x)))), ``layer1`` (after the max-pool),
``layer2``, ``layer3``, ``layer4``; mobilenet_v2 after ``features[1, 3, 6, 13, 18]``.

Exit status 3 (and a line on stderr) when torch or torchvision cannot be imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import torch
    import torchvision
    from torchvision.transforms.functional import normalize
except ImportError as exc:  # the caller skips the test on status 3
    print(f"torchvision unavailable: {exc}", file=sys.stderr)
    sys.exit(3)

TAPS = {
    "resnet50": ("relu", "layer1", "layer2", "layer3", "layer4"),
    "mobilenet_v2": tuple(f"features.{i}" for i in (1, 3, 6, 13, 18)),
}
WEIGHTS = {
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
    "mobilenet_v2": torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2,
}


def build(arch: str, seed: int) -> torch.nn.Module:
    """The torchvision model with seeded random weights and randomised BatchNorm statistics."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, torch.nn.Linear):  # the classifier: random too, so that it is really in the file
                m.weight.normal_(0.0, 0.01, generator=g)
                m.bias.normal_(0.0, 0.01, generator=g)
    return model.eval()


def features(model: torch.nn.Module, arch: str, x: torch.Tensor) -> list[torch.Tensor]:
    """The five tapped maps of ``model(x)``, captured by forward hooks."""
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    hooks = [
        modules[name].register_forward_hook(lambda _m, _i, y, name=name: out.setdefault(name, y.detach().clone()))
        for name in TAPS[arch]
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [out[name] for name in TAPS[arch]]


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=g)
    grey = torch.randn(2, 1, 64, 64, generator=g)
    unit = torch.rand(2, 3, 64, 64, generator=g)
    for seed, arch in enumerate(TAPS):
        model = build(arch, seed)
        torch.save(model.state_dict(), out_dir / f"{arch}.pth")
        transform = WEIGHTS[arch].transforms()  # builds the preprocessing; downloads nothing
        mean, std = torch.tensor(transform.mean), torch.tensor(transform.std)
        ref: dict[str, torch.Tensor] = {"x": x, "grey": grey, "unit": unit, "mean": mean, "std": std}
        for prefix, image in (("", x), ("grey_", grey.repeat(1, 3, 1, 1)), ("unit_", normalize(unit, transform.mean, transform.std))):
            for i, f in enumerate(features(model, arch, image)):
                ref[f"{prefix}feat{i}"] = f
        torch.save(ref, out_dir / f"{arch}_reference.pt")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
