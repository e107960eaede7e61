"""examples/tutorial.ipynb: committed clean, and runs top to bottom on CPU with no account,
from an installed package.

The execution test runs the notebook in a Jupyter kernel of this very interpreter (a temporary
kernelspec pointing at ``sys.executable``, so a fresh venv needs no ``ipykernel install``),
from an empty folder outside the checkout (the package found on PYTHONPATH, as an installed
one would be; its example images come from the package data), against the Google Cloud Vision
emulator. A cell appended by the test prints the notebook's results as JSON, which are then
checked.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NOTEBOOK = EXAMPLES / "tutorial.ipynb"
RESULT_MARKER = "TUTORIAL_RESULTS "
TIME_LIMIT_S = 300

# appended after the notebook's last cell: everything the assertions need, from the kernel
RESULTS_CELL = r"""
import json as _json, os as _os, sys as _sys

def _cert(c):
    return {"label": None if c.label is ABSTAIN else str(c.label), "radius": c.radius, "p_lower": c.p_lower,
            "queries": c.queries, "samples": c.samples, "n0": c.n0, "n": c.n, "method": c.method}

print("TUTORIAL_RESULTS " + _json.dumps({
    "executable": _sys.executable,
    "cwd": _os.getcwd(),
    "package_dir": _os.path.dirname(robust_api.__file__),
    "image_paths": [str(p) for p in image_paths],
    "labels_path": str(LABELS),
    "work": str(WORK),
    "work_exists": WORK.exists(),
    "log_paths": [str(api.log.path), str(evaluation_api.log.path)],
    "emulated": endpoint is not None,
    "endpoint_stopped": endpoint is not None and endpoint.stopped,
    "provider": PROVIDER,
    "prediction": {"label": str(prediction.label), "queries": prediction.queries, "counts": prediction.counts},
    "clean_label": str(clean_prediction.label),
    "cert": _cert(cert),
    "recertified": _cert(recertified),
    "recertified_01": _cert(recertified_01),
    "stored_calls": len(stored_calls),
    "exported_calls": exported_calls,
    "cohen": [_cert(row["cohen"]) for row in comparison],
    "sequential": [_cert(row["sequential"]) for row in comparison],
    "evaluated": len(certificates),
    "groups": [{"key": str(g.key), "images": g.images, "certified_accuracy": {str(r): a for r, a in g.certified_accuracy.items()},
                "acr": g.acr, "queries": g.queries} for g in report.groups],
    "with_and_without": [{setting: {**_cert(row[setting]), "digest": row[setting].logs.header.image_digest,
                                    "seed": row[setting].logs.header.seed, "noise_sd": row[setting].noise_sd,
                                    "denoiser": row[setting].logs.header.denoiser_id}
                          for setting in ("none", "denoised")} for row in with_and_without],
    "photo_rows": None if photo_rows is None else [
        [name, {setting: _cert(c) for setting, c in certs.items()}, certs["none"].guess] for name, certs in photo_rows],
}, default=str))
"""


def _kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernelspec "python3" that runs this interpreter, first on JUPYTER_PATH; a kernel
    environment that plots with Agg, finds this checkout and never uses a real service."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (robust-api tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(tmp_path / "jupyter"), os.environ.get("JUPYTER_PATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the checkout's package, as an installed one would be found (the notebook has no path to the checkout)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's temporary folder goes here
    monkeypatch.delenv("ROBUST_API_TUTORIAL_PROVIDER", raising=False)
    monkeypatch.delenv("ROBUST_API_GOOGLE_ENDPOINT", raising=False)


def _outputs(cell) -> list:
    return list(cell.get("outputs", []))


def _text(cell) -> str:
    return "".join(out.get("text", "") for out in _outputs(cell) if out.get("output_type") == "stream")


def _has_png(cell) -> bool:
    return any("image/png" in out.get("data", {}) for out in _outputs(cell))


def test_committed_notebook_is_clean_and_small():
    nbformat = pytest.importorskip("nbformat")
    assert NOTEBOOK.stat().st_size < 100_000
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "no code cells"
    for cell in code:
        assert cell.outputs == [], f"cell {cell.get('id')} has outputs"
        assert cell.execution_count is None, f"cell {cell.get('id')} has an execution count"
    ids = [cell.get("id") for cell in nb.cells]
    assert len(ids) == len(set(ids)), "duplicate cell ids"
    text = "\n".join(cell.source for cell in nb.cells)
    for needed in ("../docs/concepts.md", "../docs/soundness.md", "ROBUST_API_TUTORIAL_PROVIDER", "%matplotlib inline",
                   "robust_api.analyze(", "import-legacy", "certify_folder.py", "reanalyze_logs.py", "example_images()",
                   "example_labels()", "../docs/natural-photos.md", "robust-api[imagenet]"):
        assert needed in text, needed
    # it finds everything through the installed package: no path into a source checkout
    source = "\n".join(cell.source for cell in code)
    for forbidden in ("examples/images", "LABELS.csv", "sys.path", "find_repository_root", "__file__", "urllib",
                      "requests.", "download("):
        assert forbidden not in source, forbidden
    # the emulator is stopped and the temporary folder removed by the last cell
    assert "endpoint.stop()" in code[-1].source and "WORKDIR.cleanup()" in code[-1].source


@pytest.mark.torch
def test_tutorial_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    _kernel_env(tmp_path, monkeypatch)
    default_log_dir = EXAMPLES / "query_logs"
    had_default_log_dir = default_log_dir.exists()
    run_dir = tmp_path / "elsewhere"  # not in the checkout: the notebook must not need one
    run_dir.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(RESULTS_CELL, id="test-results"))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=240, allow_errors=False,
        resources={"metadata": {"path": str(run_dir)}},
    )
    started = time.monotonic()
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails
    elapsed = time.monotonic() - started
    print(f"tutorial executed in {elapsed:.1f} s")
    assert elapsed < TIME_LIMIT_S

    lines = [line for line in _text(nb.cells[-1]).splitlines() if line.startswith(RESULT_MARKER)]
    assert len(lines) == 1, _text(nb.cells[-1])
    r = json.loads(lines[0][len(RESULT_MARKER):])

    # the kernel is this interpreter, ran outside the checkout, and read the images shipped in the package
    assert r["executable"] == sys.executable
    assert Path(r["cwd"]).resolve() == run_dir.resolve()
    examples_data = Path(r["package_dir"]).resolve() / "assets" / "examples"
    assert len(r["image_paths"]) == 30
    assert all(Path(p).resolve().parent == examples_data for p in r["image_paths"] + [r["labels_path"]])
    assert list(run_dir.iterdir()) == [], "the notebook wrote into its working folder"

    # emulator by default, stopped at the end; everything written under the temporary folder, then removed
    assert r["emulated"] and r["provider"] == "google"
    assert r["endpoint_stopped"]
    work = Path(r["work"])
    assert work.resolve().is_relative_to(tmp_path.resolve())
    assert not r["work_exists"] and not work.exists()
    for path in r["log_paths"]:
        assert Path(path).resolve().is_relative_to(work.resolve()), path
    if not had_default_log_dir:
        assert not default_log_dir.exists(), "the notebook wrote the default query log into examples/"

    # predict and certify: the trouser image is an easy one for the denoised pipeline
    assert r["prediction"]["label"] == "Trouser" and r["prediction"]["queries"] == 100
    assert r["clean_label"] == "Trouser"
    cert = r["cert"]
    assert cert["label"] == "Trouser" and (cert["n0"], cert["n"]) == (20, 100)
    assert 0.25 < cert["radius"] <= 0.3752 and 0.5 < cert["p_lower"] < 1
    assert cert["queries"] == 120

    # the log holds the three calls; offline re-certification sends nothing and agrees at the same alpha
    assert r["stored_calls"] == r["exported_calls"] == 3
    same = r["recertified"]
    assert (same["label"], same["radius"], same["p_lower"]) == (cert["label"], cert["radius"], cert["p_lower"])
    assert same["queries"] == 0 and r["recertified_01"]["queries"] == 0
    assert r["recertified_01"]["label"] == cert["label"] and r["recertified_01"]["radius"] > cert["radius"]

    # Cohen vs sequential on 6 images: same labels where both certify, fewer queries for sequential
    cohen, sequential = r["cohen"], r["sequential"]
    assert len(cohen) == len(sequential) == 6
    assert all(c["samples"] == 120 and c["method"] == "cohen" for c in cohen)
    assert all(s["method"] == "sequential" and s["samples"] <= 401 for s in sequential)
    mean_cohen = sum(c["samples"] for c in cohen) / 6
    mean_sequential = sum(s["samples"] for s in sequential) / 6
    assert mean_sequential < mean_cohen
    for c, s in zip(cohen, sequential):
        if c["label"] is not None and s["label"] is not None:
            assert c["label"] == s["label"]

    # the same six images with and without the denoiser: same pixels, seed and sigma; the denoised
    # certificates are read back from the log (0 paid), and the denoiser certifies more, with larger radii
    rows = r["with_and_without"]
    assert len(rows) == 6
    for row in rows:
        none, denoised = row["none"], row["denoised"]
        assert (none["digest"], none["seed"], none["noise_sd"]) == (denoised["digest"], denoised["seed"], 0.25)
        assert none["denoiser"] is None and denoised["denoiser"] == "denoiser:fashion-mnist-dncnn-0.25"
        assert (none["n0"], none["n"]) == (denoised["n0"], denoised["n"]) == (20, 100)
        assert none["queries"] == 120 and denoised["queries"] == 0
    certified = {s: sum(row[s]["label"] is not None for row in rows) for s in ("none", "denoised")}
    mean_radius = {s: sum(row[s]["radius"] for row in rows) / 6 for s in ("none", "denoised")}
    assert certified["denoised"] >= certified["none"] and mean_radius["denoised"] > mean_radius["none"], rows
    assert "certified" in _text(next(cell for cell in nb.cells if cell.get("id") == "denoiser"))

    # certified accuracy: one group (google emulator, the denoiser, sigma 0.25, cohen), sensible numbers
    assert r["evaluated"] == 15
    assert len(r["groups"]) == 1, r["groups"]
    group = r["groups"][0]
    assert group["images"] == 15
    accuracy = [group["certified_accuracy"][key] for key in sorted(group["certified_accuracy"], key=float)]
    assert accuracy[0] >= 0.6, group
    assert all(a >= b for a, b in zip(accuracy, accuracy[1:])), group
    assert 0 < group["acr"] <= 0.3752

    # natural photos (when the Debian photos and the ImageNet weights are installed): two crops,
    # alone and denoised, each certifying the classifier's clean answer or abstaining
    if r["photo_rows"] is not None:
        from robust_api.statistics import max_certifiable_radius

        assert len(r["photo_rows"]) == 2
        for name, certs, clean_label in r["photo_rows"]:
            assert set(certs) == {"none", "denoised"}, name
            for c in certs.values():
                assert c["method"] == "cohen" and c["n"] == 30 and c["queries"] == 31, (name, c)
                assert c["label"] in (None, clean_label), (name, c)
                assert 0 <= c["radius"] <= max_certifiable_radius(30, 0.25, 0.001) + 1e-9, (name, c)
        natural_photos_printed = _text(next(cell for cell in nb.cells if cell.get("id") == "natural-photos"))
        assert "clean label" in natural_photos_printed and r["photo_rows"][0][0] in natural_photos_printed

    # the figures are inline PNGs
    cells = {cell.get("id"): cell for cell in nb.cells}
    assert _has_png(cells["noise"])
    assert _has_png(cells["analyze-plot"])
    table = _text(cells["analyze"])
    assert "cohen" in table and "fashion-mnist-dncnn-0.25" in table, table
    # the other sections printed what they explain
    assert "clean label:" in _text(cells["predict"]) and "radius" in _text(cells["certify"])
    assert "sequential" in _text(cells["plan"]) and "fewer" in _text(cells["compare"])


def test_packaged_example_images_are_the_repositorys():
    """robust_api/assets/examples (package data, what the tutorial reads) holds exactly the
    files of examples/images (what the README's command reads)."""
    from robust_api.datasets import example_images, example_labels

    packaged = {path.name: path.read_bytes() for path in example_images() + [example_labels()]}
    repository = {path.name: path.read_bytes() for path in sorted((EXAMPLES / "images").iterdir())}
    assert packaged == repository
    assert len(example_images()) == 30 and example_labels().name == "LABELS.csv"
