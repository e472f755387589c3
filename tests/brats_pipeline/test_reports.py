"""The HTML reports from their templates: best/median/worst cases per region equal what metrics.csv says,
every image is on disk (or a data URI), text is escaped, the templates ship as package data; and (slow)
the report opened in a real headless Chromium: every image loads, the console has no error, a screenshot is kept."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import sys
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from brats_pipeline.cli.evaluate import main as evaluate_main
from brats_pipeline.radiogenomics.report import report_html
from brats_pipeline.reports.evaluation import RANKS, pick_cases, write_report
from preprocessing.io import read_array, write_nifti

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _browser_module():
    spec = importlib.util.spec_from_file_location("_brats_browser", Path(__file__).with_name("_browser.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class _Page(HTMLParser):
    """The ``<img>`` sources, the picks (``data-region/rank/case``) and the text of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.picks: dict[str, dict[str, str]] = {}
        self.links: list[str] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        if tag == "img":
            self.srcs.append(d["src"] or "")
        if "data-rank" in d:
            self.picks.setdefault(d["data-region"], {})[d["data-rank"]] = d["data-case"]
        if tag in ("a", "link", "script"):
            self.links.append(d.get("href") or d.get("src") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _assert_images_exist(page: _Page, folder: Path, embedded: bool) -> None:
    assert page.srcs
    for src in page.srcs:
        if embedded:
            assert src.startswith("data:image/png;base64,"), src[:60]
        else:
            assert not src.startswith(("data:", "http:", "https:", "/", "file:")), src
            assert (folder / unquote(src)).read_bytes()[:8] == PNG_MAGIC, src


# ----------------------------------------------------------------------------- a tiny evaluation on phantoms
def _predictions(datalist: dict, folder: Path) -> None:
    """Per case a prediction from its truth, each wrong in another way, so each region ranks the cases differently."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, entry in enumerate(datalist["training"]):
        truth, geometry = read_array(entry["label"], ndim=(3,), dtype=np.int16)
        pred = truth.copy()
        if i == 1:
            pred = np.roll(truth, 1, axis=0)  # every region a little off
        elif i == 2:
            pred = np.roll(truth, 3, axis=1)  # every region further off
        elif i == 3:
            pred[truth == 4] = 1  # enhancing called necrotic: ET missed, TC and WT exact
        elif i == 4:
            pred[truth == 2] = 0  # oedema missed: WT worse, TC and ET exact
        write_nifti(pred.astype(np.uint8), geometry.affine, folder / f"{entry['case_id']}.nii.gz", dtype=np.uint8)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory, brats_cohort) -> Path:
    """``brats-evaluate --report`` of 5 phantoms (linked images in ``eval/``, embedded in ``eval_embed/``)."""
    root = tmp_path_factory.mktemp("evaluation")
    dl_path, datalist = brats_cohort(root, 5)
    _predictions(datalist, root / "pred")
    args = ["--pred", str(root / "pred"), "--truth", str(dl_path), "--no-progress", "--report", "--no-surfaces"]
    assert evaluate_main([*args, "-o", str(root / "eval"), "--max-figures", "2"]) == 0
    assert evaluate_main([*args, "-o", str(root / "eval_embed"), "--max-figures", "1", "--embed-images"]) == 0
    return root


def _picks_from_csv(path: Path) -> dict[str, dict[str, str]]:
    """Best, median, worst per region, recomputed from metrics.csv: Dice high to low, ties by case id."""
    by_region: dict[str, list[tuple[float, str]]] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            if math.isfinite(float(row["dice"])):
                by_region.setdefault(row["region"], []).append((float(row["dice"]), row["case_id"]))
    picks = {}
    for region, values in by_region.items():
        ranked = sorted(values, key=lambda v: (-v[0], v[1]))
        picks[region] = {"best": ranked[0][1], "median": ranked[(len(ranked) - 1) // 2][1], "worst": ranked[-1][1]}
    return picks


def test_best_median_worst_per_region_match_metrics_csv(evaluation: Path) -> None:
    out = evaluation / "eval"
    page = _Page((out / "report.html").read_text(encoding="utf-8"))
    expected = _picks_from_csv(out / "metrics.csv")
    assert set(expected) == {"TC", "WT", "ET"}
    assert page.picks == expected
    ids = sorted({row["case_id"] for row in csv.DictReader((out / "metrics.csv").open())})
    # the phantoms were spoiled so that the regions disagree: ET's worst misses ET, WT's worst lost the oedema or shifted
    assert expected["ET"]["worst"] in (ids[2], ids[3]) and expected["WT"]["best"] == ids[0]
    assert len({p["worst"] for p in expected.values()}) > 1 or len({p["median"] for p in expected.values()}) > 1
    for region, picks in expected.items():  # each pick has its overlay
        for cid in picks.values():
            assert (out / "figures" / f"{cid}_{region}_overlay.png").read_bytes()[:8] == PNG_MAGIC


def test_every_image_of_the_report_exists(evaluation: Path) -> None:
    out = evaluation / "eval"
    page = _Page((out / "report.html").read_text(encoding="utf-8"))
    _assert_images_exist(page, out, embedded=False)
    # 9 picks (3 regions x best/median/worst), the box plot, 2 cases' 3-plane figures
    assert len(page.srcs) == 9 + 1 + 2
    assert all(link.startswith("#case-") for link in page.links)  # no scripts, no external links
    embedded = evaluation / "eval_embed"
    page = _Page((embedded / "report.html").read_text(encoding="utf-8"))
    _assert_images_exist(page, embedded, embedded=True)
    assert len(page.srcs) == 9 + 1 + 1


def test_pick_cases_order_ties_and_gaps() -> None:
    def cohort(values: dict[str, float]) -> dict:
        return {cid: {"WT": {"dice": v}} for cid, v in values.items()}

    assert pick_cases(cohort({"a": 0.5, "b": 0.9, "c": 0.1})) == {"WT": {"best": "b", "median": "a", "worst": "c"}}
    # even number: the better of the two middle cases; ties by case id
    assert pick_cases(cohort({"d": 0.2, "c": 0.8, "b": 0.8, "a": 0.4})) == {"WT": {"best": "b", "median": "c", "worst": "d"}}
    assert pick_cases(cohort({"x": 0.7})) == {"WT": {"best": "x", "median": "x", "worst": "x"}}
    assert pick_cases(cohort({"x": float("nan"), "y": 0.3})) == {"WT": {"best": "y", "median": "y", "worst": "y"}}
    assert pick_cases(cohort({"x": float("nan")})) == {}
    assert RANKS == ("best", "median", "worst")


def test_text_and_case_ids_are_escaped(tmp_path: Path) -> None:
    from brats_pipeline.metrics import METRIC_NAMES, aggregate
    from brats_pipeline.viz import plot_training_curves

    nasty = "a<b>&\"c'#1%"
    per_case = {cid: {"WT": {**dict.fromkeys(METRIC_NAMES, 1.0), "dice": dice}} for cid, dice in ((nasty, 0.9), ("plain", 0.4))}
    figures = tmp_path / "r" / "figures"
    png = plot_training_curves([{"epoch": 0, "val/dice_WT": 0.5}], figures / f"{nasty}_WT_overlay.png")
    shutil.copyfile(png, figures / f"{nasty}_planes.png")
    report = write_report(tmp_path / "r", per_case, aggregate(per_case.values()), "brats2021", {nasty: [figures / f"{nasty}_planes.png"]},
                          title="T <script>alert(1)</script>", notes=["x < y & z"], missing=["<m>"],
                          failed={"<f>": "bad <tag>"}, overlays={"WT": {nasty: png}})
    text = report.read_text(encoding="utf-8")
    assert "<script>" not in text and "<b>" not in text and "<m>" not in text and "<tag>" not in text
    assert "T &lt;script&gt;alert(1)&lt;/script&gt;" in text and "x &lt; y &amp; z" in text
    assert "a&lt;b&gt;&amp;&#34;c&#39;#1%" in text  # the case id as text
    page = _Page(text)
    assert page.picks["WT"]["best"] == nasty and page.picks["WT"]["worst"] == "plain"
    assert nasty in "".join(page.text)
    _assert_images_exist(page, report.parent, embedded=False)  # '#' and '%' in file names are URL-quoted
    assert f"#case-{nasty}" in page.links


def test_radiogenomics_page_from_its_template(tmp_path: Path) -> None:
    md = "# Shape <vs> subtype\n\nA paragraph & more.\n\n| feature | p |\n| --- | ---: |\n| bevr | 0.01* |\n\n- [fig](figures/x.png)\n"
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "x.png").write_bytes(PNG_MAGIC + b"\0" * 8)
    page_text = report_html(md, [("P <values>", "figures/x.png")], ["def <1>"])
    assert "<title>Shape &lt;vs&gt; subtype</title>" in page_text and "A paragraph &amp; more." in page_text
    assert page_text.count("<table>") == 1 and "<td class=\"l\">bevr</td><td>0.01*</td>" in page_text
    assert "<li>def &lt;1&gt;</li>" in page_text and "<h2>Definitions</h2>" in page_text
    page = _Page(page_text)
    assert page.srcs == ["figures/x.png"]
    embedded = _Page(report_html(md, [("P", "figures/x.png")], [], embed_dir=tmp_path))
    assert embedded.srcs[0].startswith("data:image/png;base64,")


def test_templates_are_package_data_and_jinja2_a_dependency() -> None:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["brats_pipeline"]
    package = REPO_ROOT / "brats_pipeline"
    templates = sorted((package / "reports" / "templates").glob("*"))
    assert {t.name for t in templates} >= {"base.html.j2", "macros.html.j2", "evaluation.html.j2", "radiogenomics.html.j2"}
    for template in templates:
        rel = template.relative_to(package).as_posix()
        assert any(fnmatch(rel, g) for g in globs), f"{rel} is not package data ({globs})"
    assert any(d.lower().replace(" ", "").startswith("jinja2") for d in config["project"]["dependencies"])


# ----------------------------------------------------------------------------- internal vs external side by side
class _Numbers(HTMLParser):
    """The numbers of a comparison page by (cohort, region, metric, stat), its summary tables' cohorts and its links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.values: dict[tuple[str, str, str, str], str] = {}
        self.tables: list[str] = []
        self.links: list[str] = []
        self._key: tuple[str, str, str, str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        if tag == "span" and "data-stat" in d:
            self._key = (d["data-cohort"], d["data-region"], d["data-metric"], d["data-stat"])
        if tag == "table" and d.get("class") == "summary":
            self.tables.append(d["data-cohort"])
        if tag == "a":
            self.links.append(d["href"] or "")

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            assert self._key not in self.values, self._key
            self.values[self._key] = data
            self._key = None


NAMES = ("internal (CV folds)", "external <2021>")


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory: pytest.TempPathFactory, evaluation: Path, brats_cohort) -> Path:
    """``brats-evaluate`` of the 5 phantoms (internal) and of 3 others predicted differently (external), with reports."""
    root = tmp_path_factory.mktemp("side_by_side")
    dl_path, datalist = brats_cohort(root, 3)
    _predictions(datalist, root / "pred")
    for entry in datalist["training"][:2]:  # the external cohort is predicted worse: a region lost in two cases
        truth, geometry = read_array(entry["label"], ndim=(3,), dtype=np.int16)
        write_nifti(np.where(truth == 1, 2, truth).astype(np.uint8), geometry.affine,
                    root / "pred" / f"{entry['case_id']}.nii.gz", dtype=np.uint8)
    assert evaluate_main(["--pred", str(evaluation / "pred"), "--truth", str(evaluation / "dl.json"),
                          "--external-pred", str(root / "pred"), "--external-truth", str(dl_path), "--names", *NAMES,
                          "-o", str(root / "eval"), "--no-progress", "--report", "--no-surfaces", "--max-figures", "0"]) == 0
    return root / "eval"


def test_internal_and_external_side_by_side_equal_their_summaries(side_by_side: Path) -> None:
    from brats_pipeline.reports.comparison import COMPARED_METRICS

    page = _Numbers((side_by_side / "report.html").read_text(encoding="utf-8"))
    assert page.tables == list(NAMES)  # two tables, in order, in one page
    summaries = {name: json.loads((side_by_side / sub / "summary.json").read_text(encoding="utf-8"))
                 for name, sub in zip(NAMES, ("internal", "external"))}
    assert [s["n_cases"] for s in summaries.values()] == [5, 3]
    expected: dict[tuple[str, str, str, str], float] = {}
    digits = {metric: d for _, metric, d in COMPARED_METRICS}
    for name, data in summaries.items():
        for region, metrics in data["summary"].items():
            expected[(name, region, "dice", "n")] = metrics["dice"]["n"]
            for metric in digits:
                for stat in ("mean", "std", "median", "p5", "p95"):
                    expected[(name, region, metric, stat)] = metrics[metric][stat]
    first, second = (s["summary"] for s in summaries.values())
    for region in first:
        for metric in digits:
            expected[(NAMES[1], region, metric, "delta")] = second[region][metric]["mean"] - first[region][metric]["mean"]
    assert set(page.values) == set(expected)
    assert {r for _, r, _, _ in expected} == {"TC", "WT", "ET"}
    for key, value in expected.items():
        d = 0 if key[3] == "n" else digits[key[2]]
        text = page.values[key]
        if not math.isfinite(value):
            assert text == "–", (key, text)
            continue
        assert abs(float(text) - value) <= 0.5 * 10 ** -d + 1e-9, (key, text, value)
        if key[3] != "delta":  # the summary.json value, rounded as the table shows it
            assert text == f"{value:.{d}f}", (key, text, value)
    dice = [page.values[(n, "WT", "dice", "mean")] for n in NAMES]
    assert dice[0] != dice[1]  # the two evaluations differ, so a swapped table would be seen
    # each evaluation's own report and summary.json are linked and exist; the Markdown version has every row
    assert page.links == ["internal/report.html", "internal/summary.json", "external/report.html", "external/summary.json"]
    assert all((side_by_side / link).is_file() for link in page.links)
    markdown = (side_by_side / "comparison.md").read_text(encoding="utf-8")
    assert markdown.count("| WT |") == len(COMPARED_METRICS) and "external <2021> (n=3)" in markdown
    assert "external &lt;2021&gt;" in (side_by_side / "report.html").read_text(encoding="utf-8")  # escaped


def test_side_by_side_needs_both_external_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--pred", "p", "--truth", "dl.json", "-o", str(tmp_path / "out")]
    for extra, message in ((["--external-pred", "q"], "--external-pred and --external-truth go together"),
                           (["--external-pred", "q", "--external-truth", "x.json", "--names", "a", "a"], "different names"),
                           (["--names", "a", "b"], "--names names the two evaluations")):
        with pytest.raises(SystemExit) as exited:
            evaluate_main([*base, *extra])
        assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- in a real browser (slow)
@pytest.fixture(scope="module")
def browser():
    module = _browser_module()
    if module.find_chromium() is None:
        pytest.skip("no Chromium binary on PATH (" + ", ".join(module.CHROMIUM_NAMES) + "; or set BRATS_CHROMIUM): "
                    "apt-get install chromium")
    return module


@pytest.mark.slow
def test_the_checker_sees_a_broken_image_and_console_errors(browser, tmp_path: Path) -> None:
    """The browser check itself: a page with a missing image, a console error and an exception fails it."""
    (tmp_path / "ok.png").write_bytes(_tiny_png())
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head><body>'
                    '<img src="ok.png" alt="ok"><img src="missing.png" alt="gone">'
                    '<script>console.error("boom"); undefinedFunction();</script></body></html>', encoding="utf-8")
    load = browser.open_page(page)
    assert [img["src"] for img in load.broken_images] == ["missing.png"]
    assert len(load.images) == 2 and load.images[0]["width"] == 1
    errors = "\n".join(load.errors)
    assert "missing.png" in errors and "console.error: boom" in errors and "undefinedFunction" in errors


def _tiny_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return PNG_MAGIC + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + chunk(
        b"IDAT", zlib.compress(b"\0\xff\0\0")) + chunk(b"IEND", b"")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["eval", "eval_embed"])
def test_report_in_headless_chromium(browser, evaluation: Path, tmp_path: Path, variant: str) -> None:
    report = evaluation / variant / "report.html"
    shot = tmp_path / f"evaluation_report_{variant}.png"
    load = browser.open_page(report, screenshot=shot)
    assert len(load.images) == len(_Page(report.read_text(encoding="utf-8")).srcs) == (12 if variant == "eval" else 11)
    assert not load.broken_images, load.broken_images
    assert not load.errors, "\n".join(load.errors)
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 50_000  # a page of tables and figures, not a blank
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / shot.name)


@pytest.mark.slow
def test_radiogenomics_page_in_headless_chromium(browser, tmp_path: Path) -> None:
    from brats_pipeline.viz import plot_metric_boxplot

    plot_metric_boxplot({"a": {"WT": {"dice": 0.9}}, "b": {"WT": {"dice": 0.7}}}, tmp_path / "figures" / "p values.png")
    md = "# Radiogenomics <test>\n\nText.\n\n| feature | p |\n| --- | ---: |\n| mf | 0.2 |\n"
    page = tmp_path / "report.html"
    page.write_text(report_html(md, [("p values", "figures/p values.png")], ["a definition"]), encoding="utf-8")
    load = browser.open_page(page, screenshot=tmp_path / "radiogenomics_report.png")
    assert len(load.images) == 1 and not load.broken_images, load.images
    assert not load.errors, "\n".join(load.errors)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "radiogenomics_report.png", ARTIFACTS / "radiogenomics_report.png")


@pytest.mark.slow
def test_side_by_side_page_in_headless_chromium(browser, side_by_side: Path, tmp_path: Path) -> None:
    shot = tmp_path / "comparison_report.png"
    load = browser.open_page(side_by_side / "report.html", screenshot=shot)
    assert not load.images and not load.errors, "\n".join(load.errors)
    assert shot.read_bytes()[:8] == PNG_MAGIC
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / shot.name)
