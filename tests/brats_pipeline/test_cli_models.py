"""``brats-models``: the network listing."""

from __future__ import annotations

import pytest

from brats_pipeline.cli.models import list_networks, main
from brats_pipeline.networks import NETWORKS, build_network, count_parameters


def test_lists_every_network_with_params_and_paper(capsys):
    assert main(["--in-channels", "4", "--out-channels", "3", "--spatial-dims", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "networks for in_channels=4, out_channels=3, spatial_dims=3:"
    assert lines[1].split()[:3] == ["network", "dims", "parameters"]
    for name, spec in NETWORKS.items():
        row = next(line for line in lines if line.startswith(name + " "))
        assert spec.paper in row
    unet_row = next(line for line in lines if line.startswith("unet3d "))
    assert f"{count_parameters(build_network('unet3d', 4, 3)):,}" in unet_row
    resnet_row = next(line for line in lines if line.startswith("resnet_unet "))
    assert " - " in resnet_row  # 2D only: no count for 3D


def test_counts_depend_on_channels_and_dims():
    rows = {r["name"]: r for r in list_networks(in_channels=3, out_channels=1, spatial_dims=2)}
    assert rows["mobilenet_unet"]["params"] == count_parameters(build_network("mobilenet_unet", 3, 1, 2))
    assert rows["bunet"]["params"] == count_parameters(build_network("bunet", 3, 1, 2))
    rows3 = {r["name"]: r for r in list_networks(in_channels=3, out_channels=1, spatial_dims=3)}
    assert rows3["bunet"]["params"] > rows["bunet"]["params"]
    assert rows3["mobilenet_unet"]["params"] is None


def test_markdown_table(capsys):
    assert main(["--spatial-dims", "2", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| network | dims | parameters | paper |"
    assert len(lines) == 2 + len(NETWORKS)
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--spatial-dims", "4"], "invalid choice: 4"),
        (["--in-channels", "0"], "--in-channels must be >= 1, got 0"),
        (["--out-channels", "x"], "invalid int value"),
    ],
)
def test_bad_arguments_exit_with_usage(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
