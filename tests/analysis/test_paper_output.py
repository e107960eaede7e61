"""Paper-ready output of ``robust_api.analyze``: human legends, vector plots, sequential curves
that stop at their target, the LaTeX table, the self-contained HTML report, image names."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from robust_api import RobustAPI
from robust_api.analysis import AnalysisReport, GroupSummary, analyze, check_plot_path, group_labels, latex_escape
from robust_api.analysis.labels import denoiser_label, method_label, provider_label
from robust_api.errors import InvalidParameterError
from robust_api.images import as_image, image_digest
from robust_api.query_logs import open_log

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "query_logs"
LABELS = ROOT / "examples" / "images" / "LABELS.csv"
HOSTILE_LABEL = "<script>alert('label')</script>"
HOSTILE_NAME = '"><img src=x onerror=alert(1)>_name'


@pytest.fixture(scope="module")
def samples():
    """The repository's three sample logs, with the true labels."""
    return analyze(LOGS, labels=LABELS, radii=(0, 0.125, 0.25, 0.375, 0.5))


def _hostile(batch):
    """A hostile label for dark images, "cat & dog" for light ones."""
    return [HOSTILE_LABEL if float(image.mean()) < 0.5 else "cat & dog" for image in batch]


@pytest.fixture()
def hostile(tmp_path):
    """Two image files, a log of their certificates whose labels, names and truths are hostile
    text, and the analysis of it (names put in the headers as a log would hold them)."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    pixels = {"dark.png": np.full((12, 10), 20, np.uint8), "light.png": np.full((12, 10), 235, np.uint8)}
    for name, array in pixels.items():
        Image.fromarray(array).save(folder / name)
    (folder / "other.png").write_bytes((folder / "dark.png").read_bytes()[:20])  # not a readable image
    log_path = tmp_path / "log.sqlite3"
    api = RobustAPI(_hostile, log=log_path, seed=0, progress=False)
    for name in pixels:
        api.certify(folder / name, noise_sd=0.25, N0=10, N=50, alpha=0.01)
    api.close()
    digests = {name: image_digest(as_image(folder / name)) for name in pixels}
    with open_log(log_path) as log:
        calls = [log.load_call(summary.header.run_id) for summary in log.call_summaries()]
    names = {digests["dark.png"]: HOSTILE_NAME, digests["light.png"]: "light.png"}
    calls = [replace(call, header=replace(call.header, params={**call.header.params,
                                                                 "image_name": names[call.header.image_digest]}))
             for call in calls]
    truths = {digests["dark.png"]: HOSTILE_LABEL, digests["light.png"]: "cat & dog"}
    return folder, digests, analyze(calls, labels=truths, radii=(0, 0.25))


# ----------------------------------------------------------------------------------- labels


def test_machine_keys_get_human_names(samples):
    assert samples.group_labels() == [
        "Google (emulator), DnCNN σ=0.25, Cohen N=100",
        "Google (emulator), DnCNN σ=0.25, sequential r=0.25 N≤400",
        "Fashion-MNIST CNN (local), σ=0.12, no denoiser, Cohen N=100",
        "Fashion-MNIST CNN (local), σ=0.25, no denoiser, Cohen N=100",
    ]
    assert provider_label("google:label_detection") == "Google"
    assert provider_label("aws:rekognition.detect_labels@[::1]:4566") == "AWS Rekognition (emulator)"
    assert provider_label("azure:image_analysis.v4.tags@vision.example.com:443") == "Azure v4 (vision.example.com)"
    assert provider_label("tsv:/home/someone/runs/log.txt") == "predecessor TSV log.txt"  # never a folder
    assert provider_label("legacy:azure") == "Azure (predecessor log)"
    assert denoiser_label("denoiser:fashion-mnist-dncnn-0.50", 0.25) == "DnCNN (trained σ=0.5)"
    assert denoiser_label("none", 0.25) is None
    assert method_label("cohen", "clean N=100") == "Cohen N=100 (clean selection)"


def test_names_stay_distinct_and_name_alpha_only_where_it_differs():
    base = dict(provider="local:fashion_mnist_cnn", denoiser="none", noise_sd=0.25, method="cohen")
    keys = [dict(base, settings="N0=20 N=100", alpha=0.001), dict(base, settings="N0=50 N=100", alpha=0.001),
            dict(base, settings="N0=20 N=100", alpha=0.01)]
    labels = group_labels(keys)
    assert len(set(labels)) == 3
    assert "N0=50" in labels[1] and "α=0.01" in labels[2]
    assert group_labels([dict(base, settings="N0=20 N=100", alpha=0.001)]) == [
        "Fashion-MNIST CNN (local), σ=0.25, no denoiser, Cohen N=100"]
    assert group_labels([{"provider": "x"}, {"provider": "x"}]) == ["x [1]", "x [2]"]


# ------------------------------------------------------------------------------------ plots


def _svg_text(path: Path) -> str:
    root = ElementTree.parse(path).getroot()  # well-formed XML, or this raises
    assert root.tag.endswith("svg")
    return " ".join(" ".join(element.itertext()) for element in root.iter())


def test_plot_formats_follow_the_suffix_are_deterministic_and_name_groups_in_words(samples, tmp_path):
    pytest.importorskip("matplotlib")
    written = {}
    for suffix in ("svg", "pdf", "png", "SVG"):
        path = tmp_path / f"figure.{suffix}"
        samples.plot(path)
        written[suffix] = path.read_bytes()
        assert len(written[suffix]) > 1000
    assert written["pdf"].startswith(b"%PDF") and written["png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert written["svg"] == written["SVG"]  # no date, fixed ids: the same figure gives the same file
    samples.plot(tmp_path / "again.pdf")
    assert (tmp_path / "again.pdf").read_bytes() == written["pdf"]
    text = _svg_text(tmp_path / "figure.svg")
    for label in samples.group_labels():
        assert label in text
    assert "L2 radius (pixel units of [0,1] images)" in text and "certified accuracy (%)" in text
    svg = written["svg"].decode()
    assert "google:label_detection" not in svg and "denoiser:" not in svg  # no machine keys
    assert str(ROOT) not in svg and "LABELS.csv" not in svg and "query_logs" not in svg  # no file paths
    assert "ground truth: true labels" in text


@pytest.mark.parametrize("name", ["plot.jpg", "plot.eps", "plot.xyz", "plot"])
def test_other_plot_formats_are_refused_before_anything_is_written(samples, tmp_path, name):
    pytest.importorskip("matplotlib")
    with pytest.raises(InvalidParameterError, match=r"use \.png, \.pdf or \.svg"):
        check_plot_path(tmp_path / name)
    with pytest.raises(InvalidParameterError, match=r"use \.png, \.pdf or \.svg"):
        samples.plot(tmp_path / name)
    assert not (tmp_path / name).exists()


def test_sequential_curves_stop_at_their_target(samples):
    pytest.importorskip("matplotlib")
    curves = samples.curves()
    by_method = {curve.key["method"] + str(curve.key["noise_sd"]) + curve.key["provider"][:5]: curve
                 for curve in curves}
    sequential = by_method["sequential0.25googl"]
    cohen = by_method["cohen0.25googl"]
    assert sequential.end == 0.25 and cohen.end is None
    assert sequential.radii[-1] == 0.25 and sequential.radii.max() == 0.25
    # one certificate of that log certified r = 0.267 at the cap: the curve still ends at the target
    assert max(row.radius for row in samples.rows if row.method == "sequential") > 0.25
    group = next(g for g in samples.groups if g.key["method"] == "sequential")
    assert sequential.accuracy[-1] == pytest.approx(group.certified_accuracy[0.25])
    assert cohen.radii[-1] > 0.5  # the others run to the axis' end
    figure = samples.plot()
    lines = figure.axes[0].get_lines()
    assert len(lines) == len(samples.groups)  # one Line2D per group, the end marker included
    drawn = {line.get_label(): line for line in lines}
    line = drawn[sequential.label]
    assert np.max(line.get_xdata()) == 0.25 and line.get_marker() == "o"
    assert list(line.get_markevery()) == [len(sequential.radii) - 1]
    assert np.max(drawn[cohen.label].get_xdata()) > 0.5 and drawn[cohen.label].get_marker() in ("None", "", None)
    # grouped together with untargeted calls, the curve runs on
    assert all(curve.end is None for curve in analyze(LOGS, labels=LABELS, by=("provider",)).curves())


def test_a_leading_underscore_or_dollar_does_not_hide_or_format_a_legend(hostile):
    pytest.importorskip("matplotlib")
    _, _, report = hostile
    assert report.group_labels()[0].startswith("_hostile")  # a callable named _hostile
    legend = report.plot().axes[0].get_legend()
    assert [text.get_text().strip() for text in legend.get_texts()] == report.group_labels()
    figure = report.plot(labels=["cost $5 and $6"])
    assert figure.axes[0].get_legend().get_texts()[0].get_text() == r"cost \$5 and \$6"


# ------------------------------------------------------------------------------------ LaTeX


def _synthetic_report(providers, accuracies, acrs):
    groups = [
        GroupSummary(key={"provider": provider}, images=4, with_truth=4,
                     certified_accuracy={0.0: values[0], 0.25: values[1]}, acr=acr, abstention_rate=0.0,
                     queries=400, samples=400, cost_usd=0.6)
        for provider, values, acr in zip(providers, accuracies, acrs)
    ]
    return AnalysisReport(rows=[], groups=groups, radii=(0.0, 0.25), by=("provider",), truth="labels",
                          truth_description="true labels", sources=[])


def test_latex_table_structure_and_escaping(tmp_path):
    report = _synthetic_report(["my_model 100% & #1 {x} $y^2~\\", "google:label_detection"],
                               [(1.0, 0.75), (0.5, math.nan)], [0.2, math.nan])
    assert report.to_latex() == (
        "\\begin{tabular}{lrr}\n"
        "\\toprule\n"
        " & \\multicolumn{2}{c}{Certified accuracy (\\%) at radius $r$} \\\\\n"
        "\\cmidrule(lr){2-3}\n"
        "Setting & $0$ & $0.25$ \\\\\n"
        "\\midrule\n"
        "my\\_model 100\\% \\& \\#1 \\{x\\} \\$y\\textasciicircum{}2\\textasciitilde{}\\textbackslash{}"
        " & 100.0 & 75.0 \\\\\n"
        "Google & 50.0 & -- \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
    )
    text = report.to_latex(tmp_path / "table.tex", acr=True, labels=["a_b", "σ ≤ 1"])
    assert (tmp_path / "table.tex").read_text(encoding="utf-8") == text
    lines = text.splitlines()
    assert lines[0] == "\\begin{tabular}{lrrr}"
    assert lines[2] == " & \\multicolumn{2}{c}{Certified accuracy (\\%) at radius $r$} &  \\\\"
    assert lines[4] == "Setting & $0$ & $0.25$ & ACR \\\\"
    assert lines[6:8] == ["a\\_b & 100.0 & 75.0 & 0.200 \\\\", "$\\sigma$ $\\leq$ 1 & 50.0 & -- & -- \\\\"]
    with pytest.raises(InvalidParameterError, match="labels"):
        report.to_latex(labels=["only one"])


def test_latex_escape_leaves_no_special_character_unescaped():
    hostile = "\\input{/etc/passwd}\n%$#_&{}~^<>|"
    escaped = latex_escape(hostile)
    assert "\n" not in escaped and "\\input" not in escaped
    stripped = escaped
    for command in ("\\textbackslash{}", "\\textasciitilde{}", "\\textasciicircum{}", "\\textless{}",
                    "\\textgreater{}", "\\textbar{}"):
        stripped = stripped.replace(command, "")
    for char in "%$#_&{}":
        stripped = stripped.replace("\\" + char, "")
    assert not set(stripped) & set("\\%$#_&{}~^")


def test_latex_of_the_sample_logs(samples):
    text = samples.to_latex()
    assert text.count("\\\\\n") == 2 + len(samples.groups)
    assert "Google (emulator), DnCNN $\\sigma$=0.25, Cohen N=100 & 100.0 & 90.0 & 80.0 & 50.0 & 0.0 \\\\" in text


# ------------------------------------------------------------------------------------- HTML


class _Page(HTMLParser):
    """Tags, attributes and text of a page (text unescaped, as a browser shows it)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text, self.images, self.open = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in ("meta", "img", "br", "path", "use", "rect", "line", "circle", "polyline", "stop"):
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("path", "use", "rect", "line", "circle", "polyline", "stop"):
            return
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert page.open == []  # every element closed, in order
    return page


def test_html_report_escapes_log_text_and_embeds_thumbnails(hostile, tmp_path):
    folder, digests, report = hostile
    text = report.to_html(tmp_path / "report.html", images=folder)
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == text
    assert text.startswith("<!DOCTYPE html>")
    page = _parse(text)
    assert "script" not in page.tags and "<script" not in text and "<img src=x" not in text
    assert all(set(image) <= {"class", "src", "width", "height", "alt"} for image in page.images)  # no onerror
    shown = "".join(page.text)
    assert HOSTILE_LABEL in shown and HOSTILE_NAME in shown and "cat & dog" in shown and "light.png" in shown
    assert html_escaped(HOSTILE_NAME) in text
    thumbnails = [image for image in page.images if image["src"].startswith("data:image/png;base64,")]
    assert len(thumbnails) == len(page.images) == len(report.rows) == 2  # no other image, no external source
    assert all(image["width"] == "50" and image["height"] == "60" for image in thumbnails)  # 10×12, 5× enlarged
    # the summary: images, certified, ground truth, queries and dollars; the groups' accuracies
    assert "2 certified image(s) in 1 setting(s)" in shown and "queries paid" in shown and "USD" in shown
    assert "r=0.25" in shown


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_html_report_without_images_shows_digests_and_inlines_the_plot(hostile):
    _, digests, report = hostile
    text = report.to_html()
    page = _parse(text)
    assert page.images == [] or all(not image["src"].startswith("data:image/png") for image in page.images)
    for digest in digests.values():
        assert digest[:12] in "".join(page.text)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "<svg" not in text
    else:
        assert text.count("<svg") == 1 and "<?xml" not in text and "<!DOCTYPE svg" not in text
        assert "_hostile (callable)" in "".join(page.text)  # the legend, as text in the SVG
    assert "<svg" not in report.to_html(plot=False)


def test_html_thumbnails_from_a_mapping_by_name_or_digest_only_when_the_pixels_match(hostile, caplog):
    folder, digests, report = hostile
    text = report.to_html(images={"light.png": folder / "light.png"})
    assert text.count("data:image/png;base64,") == 1
    text = report.to_html(images={digests["dark.png"]: folder / "dark.png", "light.png": folder / "light.png"})
    assert text.count("data:image/png;base64,") == 2
    with caplog.at_level("WARNING", logger="robust_api.analysis.html"):
        text = report.to_html(images={"light.png": folder / "dark.png"})  # the name of another picture
    assert "data:image/png" not in text and "does not hold the logged image" in caplog.text
    assert report.to_html(images=[folder / "dark.png"]).count("data:image/png;base64,") == 1
    with pytest.raises(InvalidParameterError, match="no file"):
        report.to_html(images=folder / "missing")
    with pytest.raises(InvalidParameterError, match="no image file"):
        report.to_html(images={"light.png": folder / "missing.png"})
    with pytest.raises(InvalidParameterError, match="images must be"):
        report.to_html(images=42)


def test_html_report_of_the_sample_logs_with_the_example_images(samples, tmp_path):
    text = samples.to_html(tmp_path / "samples.html", images=ROOT / "examples" / "images")
    page = _parse(text)
    # each of the 10 images of the logs is found in examples/images/ by its digest, in every group
    assert len(page.images) == len(samples.rows) == 40
    shown = "".join(page.text)
    assert "fmnist_test_00002_trouser.png" in shown  # named after the file found when the log has no name
    for label in samples.group_labels():
        assert label in shown
    paid = sum(row.queries for row in samples.rows) + samples.predict_queries + samples.incomplete_queries
    assert f"{paid:,}" in shown


# ------------------------------------------------------------------------------ image names


def test_rows_carry_the_logged_image_name(hostile):
    _, digests, report = hostile
    data = json.loads(json.dumps(report.to_json(rows=True)))
    names = {row["image"]: (row["image_name"], row["name"]) for row in data["rows"]}
    assert names[digests["light.png"]] == ("light.png", "light.png")
    assert names[digests["dark.png"]] == (HOSTILE_NAME, HOSTILE_NAME)


def test_rows_without_a_logged_name_are_named_by_their_digest(samples):
    data = samples.to_json(rows=True)
    for row in data["rows"]:
        assert row["name"] == (row["image_name"] or row["image"][:12])
        assert row["image_shape"] == (28, 28, 1)
    sequential = [row for row in data["rows"] if row["method"] == "sequential"]
    assert {row["target_radius"] for row in sequential} == {0.25}


# ------------------------------------------------------------------------- the docs' figures


def test_the_docs_show_the_generated_figure_and_table(samples):
    doc = (ROOT / "docs" / "analysis.md").read_text(encoding="utf-8")
    assert "python examples/paper_figures.py" in doc and "](img/certified_accuracy.svg)" in doc
    block = doc.split("```latex\n", 1)[1].split("```", 1)[0]
    assert block == samples.to_latex() == (ROOT / "docs" / "img" / "certified_accuracy.tex").read_text(encoding="utf-8")
    text = _svg_text(ROOT / "docs" / "img" / "certified_accuracy.svg")
    for label in samples.group_labels():
        assert label in text


def test_the_paper_figures_script_writes_figure_table_and_report(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_figures", ROOT / "examples" / "paper_figures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path), "--format", "pdf", "--html", str(tmp_path / "report.html")]) == 0
    assert (tmp_path / "certified_accuracy.pdf").read_bytes().startswith(b"%PDF")
    assert capsys.readouterr().out == (tmp_path / "certified_accuracy.tex").read_text(encoding="utf-8")
    assert (tmp_path / "report.html").read_text(encoding="utf-8").count("data:image/png;base64,") == 40


def test_without_matplotlib_tables_and_html_work_and_plots_say_what_to_install(hostile, tmp_path, monkeypatch):
    import sys

    from robust_api.errors import MissingDependencyError

    _, _, report = hostile
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"robust-api\[plot\]"):
        check_plot_path(tmp_path / "plot.svg")
    with pytest.raises(MissingDependencyError, match=r"robust-api\[plot\]"):
        report.plot()
    with pytest.raises(InvalidParameterError):  # the suffix is checked first: the clearer error
        check_plot_path(tmp_path / "plot.gif")
    text = report.to_html()
    assert "<svg" not in text and "robust-api[plot]" in text
    _parse(text)
    assert report.to_latex().startswith("\\begin{tabular}{lrr}")
    assert len(report.curves()) == 1  # the plotted data needs no matplotlib


# -- the CLI's paper outputs ----------------------------------------------------------------------

def test_cli_analyze_prints_latex_and_writes_an_html_report(tmp_path, capsys):
    from robust_api.commands.cli import main

    sample = sorted(Path(__file__).resolve().parents[2].joinpath("query_logs").glob("*.jsonl"))[0]
    assert main(["analyze", str(sample), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert latex.startswith("\\begin{tabular}") and "\\toprule" in latex and latex.rstrip().endswith("\\end{tabular}")
    page = tmp_path / "report.html"
    assert main(["analyze", str(sample), "--html", str(page), "--images", str(sample.parents[1] / "examples")]) == 0
    text = page.read_text()
    assert text.lstrip().lower().startswith("<!doctype html") and "data:image/png;base64," in text
    assert "fmnist_test_" in text  # images named, and matched to their files for thumbnails
    assert main(["analyze", str(sample), "--html", str(tmp_path / "report.txt")]) == 2
    assert main(["analyze", str(sample), "--html", str(page), "--images", str(tmp_path / "missing")]) == 2
