"""Pictures: comparison maps, plane slicing, figures are valid PNGs, the report is valid offline HTML."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from brats_pipeline.reports.evaluation import write_report
from brats_pipeline.viz import (
    comparison_map,
    plane_slice,
    plot_case,
    plot_metric_boxplot,
    plot_overlay,
    plot_surfaces,
    plot_training_curves,
    to_closest_ras,
    tumour_centre,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    data = Path(path).read_bytes()
    return data[:8] == PNG_MAGIC and b"IEND" in data[-12:]


def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.normal(1.0, 0.1, (32, 28, 24)).astype(np.float32)
    truth = np.zeros((32, 28, 24), dtype=np.uint8)
    truth[8:20, 8:20, 6:16] = 2
    truth[11:17, 11:17, 9:13] = 1
    truth[13:15, 13:15, 10:12] = 4
    pred = np.zeros_like(truth)
    pred[9:21, 8:20, 6:16] = 2
    pred[11:17, 11:17, 9:13] = 4
    image[truth > 0] += 1.0
    return image, pred, truth


def test_comparison_map_classes() -> None:
    pred = np.array([1, 1, 0, 0], dtype=bool)
    truth = np.array([1, 0, 1, 0], dtype=bool)
    assert comparison_map(pred, truth).tolist() == [1, 2, 3, 0]  # TP, FP, FN, TN
    with pytest.raises(ValueError, match="shapes differ"):
        comparison_map(np.zeros(3), np.zeros(4))


def test_centre_and_planes() -> None:
    _, _, truth = _case()
    c = tumour_centre(truth > 0)
    assert c == (14, 14, 10)  # centre of mass (13.5, 13.5, 10.5), rounded half to even
    assert tumour_centre(np.zeros((4, 6, 8))) == (2, 3, 4)
    assert plane_slice(truth, "axial", c).shape == (28, 32)  # (y, x) for imshow
    assert plane_slice(truth, "coronal", c).shape == (24, 32)
    assert plane_slice(truth, "sagittal", c).shape == (24, 28)
    with pytest.raises(ValueError, match="unknown plane"):
        plane_slice(truth, "oblique", c)


def test_to_closest_ras_permutes_and_flips() -> None:
    arr = np.arange(24).reshape(2, 3, 4)
    affine = np.array([[0, 0, -2.0, 0], [1.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])  # i->y, j->z, k->-x
    out, spacing = to_closest_ras(arr, affine)
    assert out.shape == (4, 2, 3) and spacing == (2.0, 1.0, 3.0)
    assert out[0, 0, 0] == arr[0, 0, 3]  # x flipped


def test_figures_are_pngs(tmp_path: Path) -> None:
    image, pred, truth = _case()
    affine = np.diag([1.0, 1.2, 2.0, 1.0])
    paths = [
        plot_overlay(image, pred > 0, truth > 0, tmp_path / "overlay.png", affine, title="WT"),
        plot_case(image, pred, truth, "brats2021", tmp_path / "case.png", affine, title="case"),
        plot_surfaces(pred, "brats2021", tmp_path / "surface.png", truth, affine),
        plot_metric_boxplot({"a": {"WT": {"dice": 0.9}, "TC": {"dice": 0.5}}, "b": {"WT": {"dice": 0.7}, "TC": {"dice": 0.6}}},
                            tmp_path / "box.png"),
        plot_training_curves([{"epoch": 0, "train/loss_epoch": 1.0, "val/dice_WT": 0.3},
                              {"epoch": 1, "train/loss_epoch": 0.5, "val/dice_WT": 0.6}], tmp_path / "curves.png"),
    ]
    for p in paths:
        assert _is_png(p), p
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        d = dict(attrs)
        if tag == "img":
            self.srcs.append(d["src"] or "")
        if tag in ("a", "link", "script") and (d.get("href") or d.get("src")):
            self.hrefs.append(d.get("href") or d.get("src") or "")


def _report(tmp_path: Path, embed: bool) -> Path:
    image, pred, truth = _case()
    from brats_pipeline.metrics import aggregate, case_metrics_from_labels

    per_case = {"c1": case_metrics_from_labels(pred, truth, "brats2021", (1, 1, 1)),
                "c2": case_metrics_from_labels(truth, truth, "brats2021", (1, 1, 1))}
    fig = plot_case(image, pred, truth, "brats2021", tmp_path / "r" / "figures" / "c1_planes.png")
    curves = plot_training_curves([{"epoch": 0, "val/dice_WT": 0.5}], tmp_path / "curves.png")
    return write_report(tmp_path / "r", per_case, aggregate(per_case.values()), "brats2021", {"c1": [fig]}, curves,
                        title="Test <report>", notes=["a note & more"], missing=["c3"], embed=embed)


def test_report_is_valid_offline_html_with_images(tmp_path: Path) -> None:
    report = _report(tmp_path, embed=False)
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert {"html", "table", "img", "h1"} <= set(parser.tags)
    assert "Test &lt;report&gt;" in text and "a note &amp; more" in text and "c3" in text
    assert len(parser.srcs) == 3  # box plot, training curves, one case figure
    for src in parser.srcs:
        assert not re.match(r"^(https?:|/)", src)  # relative, offline
        assert _is_png(report.parent / src)
    assert all(h.startswith("#") for h in parser.hrefs)  # no external links or scripts
    assert "WT" in text and "Dice per region" in text


def test_report_can_embed_its_images(tmp_path: Path) -> None:
    report = _report(tmp_path, embed=True)
    parser = _Collector()
    parser.feed(report.read_text())
    assert parser.srcs and all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    assert base64.b64decode(parser.srcs[0].split(",", 1)[1])[:8] == PNG_MAGIC
