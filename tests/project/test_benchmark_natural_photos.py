"""The pure helpers of benchmarks/natural_photos.py: the docs-section replacement, the
--denoiser option, the per-row log names, the interval it reports, and at which σ a denoiser gets a
row. Nothing is measured here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch  # the benchmark script imports torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("natural_photos_benchmark", ROOT / "benchmarks" / "natural_photos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_replace_marked_section_keeps_the_rest(bench):
    begin, end = bench.BEGIN_MARKER, bench.END_MARKER
    text = f"# Benchmarks\n\nbefore\n\n{begin}\n## old\nold table\n{end}\n\n## after\nkept\n"
    once = bench.replace_marked_section(text, "## new\n\n| a |\n")
    assert once == f"# Benchmarks\n\nbefore\n\n{begin}\n## new\n\n| a |\n{end}\n\n## after\nkept\n"
    # replacing again with the same section changes nothing; another section replaces only the inside
    assert bench.replace_marked_section(once, "## new\n\n| a |\n") == once
    again = bench.replace_marked_section(once, "## newer")
    assert again.startswith("# Benchmarks\n\nbefore\n\n") and again.endswith(f"{end}\n\n## after\nkept\n")
    assert "## new\n" not in again and f"{begin}\n## newer\n{end}" in again


@pytest.mark.parametrize("text", [
    "no markers at all\n",
    "<!-- natural_photos:begin -->\nonly the beginning\n",
    "<!-- natural_photos:end -->\n<!-- natural_photos:begin -->\n",
    "<!-- natural_photos:begin -->\n<!-- natural_photos:end -->\n<!-- natural_photos:begin -->\n<!-- natural_photos:end -->\n",
])
def test_replace_marked_section_refuses_missing_repeated_or_reversed_markers(bench, text):
    with pytest.raises(ValueError, match="natural_photos"):
        bench.replace_marked_section(text, "## new")


def test_the_docs_have_the_markers_once(bench):
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert text.count(bench.BEGIN_MARKER) == 1 and text.count(bench.END_MARKER) == 1
    assert text.index(bench.BEGIN_MARKER) < text.index(bench.END_MARKER)


def test_parse_denoiser_option(bench):
    assert bench.parse_denoiser_option("photonet-mse=build/denoisers/photonet-mse.final.safetensors") == (
        "photonet-mse", "build/denoisers/photonet-mse.final.safetensors")
    assert bench.parse_denoiser_option("photo-0.25") == ("photo-0.25", "photo-0.25")
    assert bench.parse_denoiser_option("build/x/stab-0.25.safetensors") == ("stab-0.25", "build/x/stab-0.25.safetensors")
    for bad in ("=photo-0.25", "label=", "none=photo-0.25", "a|b=photo-0.25"):
        with pytest.raises(ValueError):
            bench.parse_denoiser_option(bad)


def test_parse_skip_option(bench):
    assert bench.parse_skip_option("ffdnet@0.12") == ("ffdnet", 0.12)
    assert bench.parse_skip_option("stab@home@0.25") == ("stab@home", 0.25)
    for bad in ("ffdnet", "ffdnet@", "@0.25", "ffdnet@0", "ffdnet@1.5", "ffdnet@x"):
        with pytest.raises(ValueError, match="LABEL@SIGMA"):
            bench.parse_skip_option(bad)


def test_log_file_names_separate_rows(bench):
    names = {bench.log_file_name(label, sigma) for label in ("none", "ffdnet", "photo 0.25/stab") for sigma in (0.12, 0.25)}
    assert len(names) == 6
    assert bench.log_file_name("ffdnet", 0.25) == "ffdnet-sigma0.25.sqlite3"
    assert bench.log_file_name("photo 0.25/stab", 0.12) == "photo_0.25_stab-sigma0.12.sqlite3"
    assert bench.log_file_name("ffdnet", 0.25, "cuda:0") == "ffdnet-sigma0.25-cuda0.sqlite3"


def test_radius_columns_end_at_the_largest_certifiable_radius(bench):
    from robust_api.statistics import max_certifiable_radius

    for sigma in (0.12, 0.25, 0.5):
        columns = bench.radius_columns(sigma)
        assert columns[0] == 0 and columns == sorted(columns)
        assert columns[-1] <= max_certifiable_radius(100, sigma, 0.001)


def test_interval_half_width_is_the_two_sided_clopper_pearson(bench):
    from scipy.stats import beta

    k, n = 32, 65
    expected = (beta.ppf(0.975, k + 1, n - k) - beta.ppf(0.025, k, n - k + 1)) / 2
    assert bench.interval_half_width(k, n) == pytest.approx(expected, rel=1e-9)
    assert 0.12 < bench.interval_half_width(k, n) < 0.14  # the "±13 points" the report states for 65 crops


def test_a_denoiser_has_rows_only_at_the_sigma_it_was_trained_or_fine_tuned_for(bench, tmp_path):
    from robust_api.denoisers import build_architecture, save_denoiser

    net = build_architecture("photonet", widths=(8, 16, 16), blocks=1)
    ranged = save_denoiser(net, tmp_path / "ranged.safetensors", noise_sd=None)
    tuned = save_denoiser(net, tmp_path / "tuned.safetensors", noise_sd=0.25)
    for sigma in (0.12, 0.25):
        module, note = bench.load_denoiser_for(str(ranged), sigma, "cpu")
        assert module is not None and note == ""
    module, note = bench.load_denoiser_for(str(tuned), 0.26, "cpu")
    assert module is not None and note == ""
    module, note = bench.load_denoiser_for(str(tuned), 0.12, "cpu")
    assert module is None and note == "trained for σ = 0.25"
    module, note = bench.load_denoiser_for(str(ranged), 0.7, "cpu")
    assert module is not None and "outside its trained σ range [0, 0.55]" in note
    assert bench.load_denoiser_for(None, 0.25, "cpu") == (None, "")
