"""Import of the predecessor's pickled query logs and TSV results (microsoft/denoised-smoothing)."""

from __future__ import annotations

import builtins
import codecs
import hashlib
import io
import logging
import os
import pickle
import random
import re
import subprocess
import sys
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from robust_api import (
    ABSTAIN,
    InvalidParameterError,
    LogMismatchError,
    NotAQueryLogError,
    RobustAPI,
    UnsafePickleError,
    open_log,
)
from robust_api.commands.cli import main
from robust_api.offline import certify_from_log, predict_from_log
from robust_api.pricing import price_per_query
from robust_api.providers.cloud import NO_LABEL
from robust_api.query_logs import MemoryQueryLog, SQLiteQueryLog
from robust_api.query_logs.legacy import (
    LegacyTSVRow,
    import_legacy,
    load_legacy_pickle,
    read_legacy_tsv,
)

SIGMA = 0.25
ALPHA = 0.001
N0 = 20
EMPTY = None  # marks an empty API answer in the label lists below


# ---------------------------------------------------------------------------------------
# realistic responses of the four APIs, as the predecessor pickled them
# ---------------------------------------------------------------------------------------
def google_response(label):
    if label is EMPTY:
        return OrderedDict()
    return OrderedDict([(label, 0.962), ("Vertebrate", 0.91), ("Whiskers", 0.874), ("Carnivore", 0.83)])


def clarifai_response(label):
    if label is EMPTY:
        return {}
    concepts = [
        {"id": f"ai_{label}", "name": label, "value": 0.991, "app_id": "main"},
        {"id": "ai_mammal", "name": "mammal", "value": 0.97, "app_id": "main"},
    ]
    return {
        "status": {"code": 10000, "description": "Ok", "req_id": "9f1b"},
        "outputs": [
            {
                "id": "c4e2",
                "status": {"code": 10000, "description": "Ok"},
                "created_at": "2020-02-11T18:03:22.512Z",
                "model": {"id": "aaa03c23b3724a16a56b629203edc62c", "name": "general", "output_info": {"type": "concept"}},
                "input": {"id": "in1", "data": {"image": {"base64": b"\x89PNG\r\n\x1a\n\x00", "url": ""}}},
                "data": {"concepts": concepts},
            }
        ],
        "raw_extra": (1, 2.5, b""),  # a tuple and an empty bytes (written via builtins.bytes at protocol 2)
    }


def clarifai_no_concepts():
    return {"status": {"code": 10000}, "outputs": [{"id": "c5", "data": {}}]}


def aws_response(label):
    if label is EMPTY:
        return []
    return [
        {
            "Name": label,
            "Confidence": 97.31,
            "Instances": [{"BoundingBox": {"Width": 0.61, "Height": 0.82, "Left": 0.2, "Top": 0.1}, "Confidence": 93.4}],
            "Parents": [{"Name": "Animal"}, {"Name": "Mammal"}],
        },
        {"Name": "Pet", "Confidence": 91.0, "Instances": [], "Parents": [{"Name": "Animal"}]},
    ]


def azure_response(label):
    if label is EMPTY:
        return []
    return [{"name": label, "confidence": 0.987}, {"name": "indoor", "confidence": 0.61}]


BUILDERS = {"google": google_response, "clarifai": clarifai_response, "aws": aws_response, "azure": azure_response}


def shuffled(counts, seed):
    labels = [label for label, count in counts for _ in range(count)]
    random.Random(seed).shuffle(labels)
    return labels


def write_pickle(path, obj, protocol=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def write_case(folder, index, api, clean, selection, estimation, protocol, extra=None):
    """One predecessor file: clean label, selection labels, estimation labels (EMPTY = empty answer)."""
    build = BUILDERS[api]
    pred = [build(label) for label in selection + estimation]
    for position, response in (extra or {}).items():
        pred[position] = response
    return write_pickle(Path(folder) / f"pred_hist_{index}.pkl", {"ground_truth": [build(clean)], "pred": pred}, protocol)


def our_label(label):
    return NO_LABEL if label is EMPTY else label


def reference(selection, estimation, noise_sd=SIGMA, alpha=ALPHA):
    """The predecessor's certification (cAHat, radius, pABar), -1 for abstain; labels as robust_api names them."""
    votes = Counter(our_label(label) for label in selection).most_common()
    assert len(votes) == 1 or votes[0][1] > votes[1][1], "test data must not tie in the selection"
    c_hat = votes[0][0]
    n_a = sum(1 for label in estimation if our_label(label) == c_hat)
    p_a_bar = proportion_confint(n_a, len(estimation), alpha=2 * alpha, method="beta")[0]
    if p_a_bar < 0.5:
        return -1, 0.0, p_a_bar
    return c_hat, noise_sd * norm.ppf(p_a_bar), p_a_bar


# api, protocol, per image index: (clean label, selection counts, estimation counts)
CASES = {
    "google": (0, {
        2: ("tabby cat", [("tabby cat", 14), ("dog", 6)], [("tabby cat", 80), ("dog", 15), ("fox", 4), (EMPTY, 1)]),
        10: ("dog", [("dog", 17), (EMPTY, 3)], [("dog", 97), (EMPTY, 3)]),
    }),
    "clarifai": (2, {
        2: ("dog", [("dog", 12), ("wolf", 7), (EMPTY, 1)], [("dog", 70), ("wolf", 29), (EMPTY, 1)]),
        10: ("wolf", [("wolf", 20)], [("wolf", 60), ("dog", 20), ("husky", 20)]),
    }),
    "aws": (None, {
        2: ("Cat", [("Cat", 18), ("Tiger", 2)], [("Cat", 95), (EMPTY, 5)]),
        10: ("Tiger", [("Tiger", 11), ("Cat", 8), ("Lion", 1)], [("Tiger", 58), ("Cat", 40), ("Lion", 2)]),
    }),
    "azure": (2, {
        # abstains: the estimation votes for "cat" are too few for p_lower > 1/2
        2: (EMPTY, [("cat", 11), ("dog", 9)], [("cat", 52), ("dog", 46), (EMPTY, 2)]),
        10: ("dog", [("dog", 19), (EMPTY, 1)], [("dog", 99), ("cat", 1)]),
    }),
}


def build_folder(root, api):
    protocol, images = CASES[api]
    folder = Path(root) / api
    expected = {}
    for index, (clean, selection_counts, estimation_counts) in images.items():
        selection = shuffled(selection_counts, seed=index)
        estimation = shuffled(estimation_counts, seed=100 + index)
        extra = {}
        if api == "clarifai" and index == 2:
            # an answer with no concepts is the empty class too (it replaces one EMPTY estimation answer)
            extra[N0 + estimation.index(EMPTY)] = clarifai_no_concepts()
        path = write_case(folder, index, api, clean, selection, estimation, protocol, extra)
        expected[index] = (path, clean, selection, estimation)
    return folder, expected


@pytest.mark.parametrize("api", sorted(CASES))
def test_import_matches_the_reference_formula(tmp_path, api):
    folder, expected = build_folder(tmp_path, api)
    log = import_legacy(folder, api, SIGMA, N0=N0, alpha=ALPHA, denoiser="their-dncnn")
    assert isinstance(log, MemoryQueryLog)
    calls = list(log)
    assert [c.header.kind for c in calls] == ["predict", "certify"] * 2
    # numeric order of i (2 before 10), not the lexicographic one
    assert [c.header.params["legacy_index"] for c in calls] == [2, 2, 10, 10]
    offline = RobustAPI(api, online=False)
    for (index, (path, clean, selection, estimation)), predict_call, certify_call in zip(
        expected.items(), calls[0::2], calls[1::2]
    ):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        mtime = path.stat().st_mtime
        for call in (predict_call, certify_call):
            header = call.header
            assert header.image_digest == digest and header.image_shape == ()
            assert header.provider == f"legacy:{api}" and header.model_version is None
            # the clean query went to the API without the denoiser, as the predecessor sent it
            assert header.denoiser_id == ("their-dncnn" if header.kind == "certify" else None)
            assert header.denoiser_digest is None
            assert header.seed == 0 and header.params["seed"] == "unrecorded"
            assert header.params["file"] == path.name and header.params["legacy_api"] == api
            assert header.params["imported_from"] == "microsoft/denoised-smoothing"
            assert header.created == mtime and call.status == "complete"
            for record in call.records:
                assert record.cost_usd == price_per_query(api) > 0
                assert record.timestamp == mtime and record.latency_s == 0.0
                assert record.error is None and record.reused is False

        # the clean call: one clean query, noise 0, its label is the ground truth
        assert predict_call.header.noise_sd == 0.0
        assert predict_call.header.params["N"] == 1 and predict_call.header.params["alpha"] == ALPHA
        assert [(r.phase, r.sample_index) for r in predict_call.records] == [("clean", 0)]
        assert predict_call.records[0].label == our_label(clean)
        assert offline.predict(predict_call).label == our_label(clean)

        # the certify call: selection 0..N0-1 then estimation 0..n-1, labels by the predecessor's rule
        assert certify_call.header.noise_sd == SIGMA
        assert certify_call.header.params == {
            "method": "cohen", "selection": "noise", "N0": N0, "N": len(estimation), "alpha": ALPHA,
            "imported_from": "microsoft/denoised-smoothing", "file": path.name, "legacy_api": api,
            "legacy_index": index, "seed": "unrecorded",
        }
        phases = [(r.phase, r.sample_index) for r in certify_call.records]
        assert phases == [("selection", i) for i in range(N0)] + [("estimation", i) for i in range(len(estimation))]
        assert [r.label for r in certify_call.records] == [our_label(label) for label in selection + estimation]

        label, radius, p_a_bar = reference(selection, estimation)
        for cert in (offline.certify(certify_call), certify_from_log(certify_call)):
            assert cert.offline and cert.queries == 0
            if label == -1:
                assert cert.label is ABSTAIN and cert.radius == 0.0
            else:
                assert cert.label == label
                assert abs(cert.radius - radius) <= 1e-12
            assert abs(cert.p_lower - p_a_bar) <= 1e-12
            assert cert.n0 == N0 and cert.n == len(estimation)
        # PREDICT on the estimation votes agrees in the clear cases
        assert predict_from_log(certify_call).n == len(estimation)


def test_every_case_kind_is_covered():
    """The fixtures certify with several radii, abstain once, and hold empty answers for each API."""
    outcomes = [reference(shuffled(s, 0), shuffled(e, 1)) for _, images in CASES.values() for _, s, e in images.values()]
    assert any(label == -1 for label, _, _ in outcomes)
    assert len({round(radius, 6) for label, radius, _ in outcomes if label != -1}) >= 5
    assert {pickle.DEFAULT_PROTOCOL, 0, 2} <= {p if p is not None else pickle.DEFAULT_PROTOCOL for p, _ in CASES.values()}


def test_raw_responses_are_stored_as_json_data(tmp_path):
    folder, expected = build_folder(tmp_path, "clarifai")
    log = import_legacy(folder, "clarifai", SIGMA, out=tmp_path / "log.sqlite3")
    try:
        certify_call = [c for c in log if c.header.kind == "certify"][0]
        raw = certify_call.records[0].raw
        image = raw["outputs"][0]["input"]["data"]["image"]
        assert image["base64"] == {"bytes_base64": "iVBORw0KGgoA"}  # b"\x89PNG\r\n\x1a\n\x00"
        assert raw["raw_extra"] == [1, 2.5, {"bytes_base64": ""}]
        assert raw["outputs"][0]["data"]["concepts"][0]["value"] == 0.991
        google_log = import_legacy(build_folder(tmp_path, "google")[0], "google", SIGMA)
        first = [c for c in google_log if c.header.kind == "certify"][0].records[0].raw
        assert type(first) is dict and list(first)[1:] == ["Vertebrate", "Whiskers", "Carnivore"]  # order kept
    finally:
        log.close()


def test_single_file_and_list_of_files(tmp_path):
    folder, expected = build_folder(tmp_path, "aws")
    one = import_legacy(expected[10][0], "aws", SIGMA)
    assert len(one) == 2 and [c.header.params["legacy_index"] for c in one] == [10, 10]
    both = import_legacy([expected[10][0], expected[2][0]], "aws", SIGMA)
    assert [c.header.params["legacy_index"] for c in both] == [10, 10, 2, 2]  # the order given
    renamed = tmp_path / "image_seven.pickle"
    renamed.write_bytes(expected[2][0].read_bytes())
    calls = list(import_legacy(renamed, "aws", SIGMA))
    assert calls[1].header.params["legacy_index"] is None and calls[1].header.params["file"] == "image_seven.pickle"
    # same bytes → same run ids (the run id is a function of the file digest and the call kind)
    assert [c.header.run_id for c in calls] == [c.header.run_id for c in both][2:]


def test_reimport_into_the_same_sqlite_log_adds_nothing(tmp_path, caplog):
    folder, _ = build_folder(tmp_path, "azure")
    out = tmp_path / "logs"  # a folder: queries.sqlite3 inside
    log = import_legacy(folder, "azure", SIGMA, out=out)
    assert isinstance(log, SQLiteQueryLog) and log.path == out / "queries.sqlite3"
    first = [c.header.run_id for c in log]
    log.close()
    assert len(first) == 4
    with caplog.at_level(logging.INFO, logger="robust_api.query_logs.legacy"):
        again = import_legacy(folder, "azure", SIGMA, out=out)
    try:
        assert [c.header.run_id for c in again] == first
    finally:
        again.close()
    assert "skipped 4" in caplog.text
    with open_log(out) as reopened:
        assert len(reopened) == 4
    # the same file under another noise level is still the same queries: skipped, with a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robust_api.query_logs.legacy"):
        import_legacy(folder, "azure", 0.5, out=out).close()
    assert "imported before with noise_sd=0.25" in caplog.text
    with open_log(out) as reopened:
        assert len(reopened) == 4


def test_jsonl_output_round_trip(tmp_path):
    folder, _ = build_folder(tmp_path, "google")
    target = tmp_path / "exports" / "legacy.jsonl"
    log = import_legacy(folder, "google", SIGMA, out=target)
    assert isinstance(log, MemoryQueryLog) and target.exists()
    assert not list(target.parent.glob("*.partial"))
    reread = list(open_log(target))
    assert reread == list(log) and len(reread) == 4
    certify_call = reread[1]
    assert RobustAPI("google", online=False).certify(certify_call).label == "tabby cat"
    # importing again into the same export adds nothing
    assert len(import_legacy(folder, "google", SIGMA, out=target)) == 4
    assert len(open_log(target)) == 4


def test_wrong_api_for_the_response_shape(tmp_path):
    folder, expected = build_folder(tmp_path, "aws")
    with pytest.raises(NotAQueryLogError, match=r"pred_hist_2\.pkl.*ground_truth\[0\].*OrderedDict.*--api"):
        import_legacy(folder, "google", SIGMA)
    with pytest.raises(NotAQueryLogError, match=r"ground_truth\[0\].*\"name\""):
        import_legacy(folder, "azure", SIGMA)  # aws items have "Name", azure's have "name"
    # one odd answer deep in the file: the message names its index
    selection, estimation = ["Cat"] * 20, ["Cat"] * 30
    path = write_case(tmp_path / "mixed", 0, "aws", "Cat", selection, estimation, None,
                      extra={27: azure_response("cat")})
    with pytest.raises(NotAQueryLogError, match=r"pred_hist_0\.pkl: pred\[27\]"):
        import_legacy(path, "aws", SIGMA)
    with pytest.raises(NotAQueryLogError, match=r"outputs"):
        import_legacy(build_folder(tmp_path, "google")[0], "clarifai", SIGMA)


def test_too_few_answers_for_N0(tmp_path):
    path = write_case(tmp_path, 0, "azure", "cat", ["cat"] * 20, [], 2)
    with pytest.raises(LogMismatchError, match=r"holds 20 noisy responses.*N0=20.*at least 21"):
        import_legacy(path, "azure", SIGMA)
    assert len(import_legacy(path, "azure", SIGMA, N0=19)) == 2  # 19 selection + 1 estimation
    with pytest.raises(InvalidParameterError, match="N0"):
        import_legacy(path, "azure", SIGMA, N0=0)


@pytest.mark.parametrize(
    "payload, message",
    [
        ([[azure_response("cat")], [azure_response("cat")] * 30], "holds a list, expected a dict"),
        ({"ground_truth": [[]]}, r"missing \['pred'\]"),
        ({"ground_truth": [[]], "pred": [[]] * 30, "noise_sd": 0.25}, r"unexpected \['noise_sd'\]"),
        ({"ground_truth": [[], []], "pred": [[]] * 30}, "exactly one response"),
        ({"ground_truth": [[]], "pred": "cat"}, "'pred' must be a list"),
        ("just text", "holds a str"),
    ],
)
def test_not_a_predecessor_log(tmp_path, payload, message):
    path = write_pickle(tmp_path / "pred_hist_0.pkl", payload)
    with pytest.raises(NotAQueryLogError, match=message) as info:
        import_legacy(path, "azure", SIGMA)
    assert "pred_hist_0.pkl" in str(info.value)
    assert not isinstance(info.value, UnsafePickleError)


def test_not_a_pickle_and_other_plain_data_refusals(tmp_path):
    text = tmp_path / "pred_hist_0.pkl"
    text.write_text("just some notes\n")
    with pytest.raises(NotAQueryLogError, match="not a readable predecessor pickle"):
        load_legacy_pickle(text)
    # protocol 4+ sets come from an opcode, not a global: refused as non-plain data
    with pytest.raises(NotAQueryLogError, match="holds a set"):
        load_legacy_pickle(write_pickle(tmp_path / "s.pkl", {"ground_truth": [{"a"}], "pred": []}, protocol=4))
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(NotAQueryLogError, match="cycle"):
        load_legacy_pickle(write_pickle(tmp_path / "c.pkl", {"ground_truth": [cyclic], "pred": []}))
    bomb = ["x"]
    for _ in range(40):  # a few hundred bytes that expand to 2**40 values
        bomb = [bomb, bomb]
    with pytest.raises(NotAQueryLogError, match="expands to more than"):
        load_legacy_pickle(write_pickle(tmp_path / "b.pkl", {"ground_truth": [bomb], "pred": []}))
    deep = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(NotAQueryLogError, match="nested deeper"):
        load_legacy_pickle(write_pickle(tmp_path / "d.pkl", {"ground_truth": [deep], "pred": []}))
    with pytest.raises(NotAQueryLogError, match="more than the 64 bytes"):
        load_legacy_pickle(build_folder(tmp_path, "aws")[1][2][0], max_bytes=64)
    with pytest.raises(FileNotFoundError):
        load_legacy_pickle(tmp_path / "missing.pkl")
    good = load_legacy_pickle(build_folder(tmp_path, "google")[1][2][0])
    assert set(good) == {"ground_truth", "pred"} and type(good["pred"][0]) is OrderedDict


def test_python2_style_pickle(tmp_path):
    """Protocol 2 as Python 2 wrote it: 8-bit str (SHORT_BINSTRING) and OrderedDict rebuilt from [key, value] pairs."""
    blob = (
        b"\x80\x02}q\x00(U\x0cground_truthq\x01]q\x02ccollections\nOrderedDict\nq\x03]q\x04(]q\x05(U\x03catq\x06"
        b"G?\xec\xcc\xcc\xcc\xcc\xcc\xcde]q\x07(U\x03petq\x08G?\xe0\x00\x00\x00\x00\x00\x00ee\x85q\tRq\naU\x04predq\x0b"
        b"]q\x0c(h\nh\nh\nc__builtin__\nbytes\nq\r)Rq\x0eeu."
    )
    path = tmp_path / "pred_hist_0.pkl"
    path.write_bytes(blob)
    data = load_legacy_pickle(path)
    assert data == {"ground_truth": [OrderedDict([("cat", 0.9), ("pet", 0.5)])],
                    "pred": [OrderedDict([("cat", 0.9), ("pet", 0.5)])] * 3 + [b""]}
    assert type(data["ground_truth"][0]) is OrderedDict and data["pred"][0] is not data["pred"][1]  # fresh copies
    calls = list(import_legacy(path, "google", SIGMA, N0=2))
    assert calls[0].records[0].label == "cat"
    assert [r.label for r in calls[1].records] == ["cat", "cat", "cat", NO_LABEL]  # b"" is an empty answer


def test_bad_parameters(tmp_path):
    folder, _ = build_folder(tmp_path, "aws")
    with pytest.raises(InvalidParameterError, match="'azure', 'google', 'aws', 'clarifai'"):
        import_legacy(folder, "rekognition", SIGMA)
    for noise_sd in (0, -0.1, 1.5, None, float("nan")):
        with pytest.raises(InvalidParameterError, match="noise_sd"):
            import_legacy(folder, "aws", noise_sd)
    with pytest.raises(InvalidParameterError, match="alpha"):
        import_legacy(folder, "aws", SIGMA, alpha=1.0)
    with pytest.raises(InvalidParameterError, match="denoiser"):
        import_legacy(folder, "aws", SIGMA, denoiser="")
    with pytest.raises(FileNotFoundError):
        import_legacy(tmp_path / "nowhere", "aws", SIGMA)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAQueryLogError, match="no pred_hist_<i>.pkl files"):
        import_legacy(tmp_path / "empty", "aws", SIGMA)
    # an existing file that is not a log is left untouched
    not_a_log = tmp_path / "notes.txt"
    not_a_log.write_text("hello")
    with pytest.raises(NotAQueryLogError):
        import_legacy(folder, "aws", SIGMA, out=not_a_log)
    assert not_a_log.read_text() == "hello"


# ---------------------------------------------------------------------------------------
# malicious pickles: refused before anything runs, nothing written
# ---------------------------------------------------------------------------------------
class Reducer:
    """Pickles as ``func(*args)``: what a malicious pickle does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class PersistentPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("external", 7) if obj == "PERSISTENT" else None


def malicious_payloads(marker: Path):
    touch = f"open({str(marker)!r}, 'w').close()"
    valid_pred = [azure_response("cat")] * 30
    deep = [azure_response("cat")] * 30
    deep[17] = [{"name": "cat", "confidence": {"nested": [1, 2, Reducer(os.system, f"touch {marker}")]}}]
    return {
        "os.system": (lambda: pickle.dumps(Reducer(os.system, f"touch {marker}")), "system"),
        "os.system-protocol-0": (lambda: pickle.dumps(Reducer(os.system, f"touch {marker}"), protocol=0), "system"),
        "eval": (lambda: pickle.dumps({"ground_truth": [Reducer(builtins.eval, touch)], "pred": valid_pred}),
                 "builtins.eval"),
        "exec": (lambda: pickle.dumps({"ground_truth": [[]], "pred": [Reducer(builtins.exec, touch)]}, protocol=2),
                 "__builtin__.exec"),
        "subprocess.Popen": (
            lambda: pickle.dumps({"ground_truth": [Reducer(subprocess.Popen, ["touch", str(marker)])], "pred": valid_pred}),
            "subprocess.Popen"),
        "nested-deep": (lambda: pickle.dumps({"ground_truth": [azure_response("cat")], "pred": deep}, protocol=2),
                        "system"),
        "codecs-utf8": (lambda: pickle.dumps({"ground_truth": [[]], "pred": [Reducer(codecs.encode, "abc", "utf-8")]},
                                             protocol=2), "calls _codecs.encode with \\(str, 'utf-8'\\)"),
        "codecs-rot13": (lambda: pickle.dumps([Reducer(codecs.encode, "abc", "rot13")], protocol=2),
                         "calls _codecs.encode with \\(str, 'rot13'\\)"),
        "codecs-int": (lambda: pickle.dumps([Reducer(codecs.encode, 12345, "latin1")], protocol=2),
                       "calls _codecs.encode with \\(int, 'latin1'\\)"),
        "codecs-3-args": (lambda: pickle.dumps([Reducer(codecs.encode, "abc", "latin1", "strict")], protocol=2),
                          "calls _codecs.encode with \\(str, str, str\\)"),
        "bytes-of-a-huge-int": (lambda: pickle.dumps([Reducer(bytes, 10**12)], protocol=2), "calls builtins.bytes with \\(int\\)"),
        "persistent-id": (lambda: persistent_blob(), "persistent id|opcode BINPERSID"),
        "set": (lambda: pickle.dumps({"ground_truth": [{"cat"}], "pred": valid_pred}, protocol=2), "set"),
        "copyreg": (lambda: pickle.dumps({"ground_truth": [Plain()], "pred": valid_pred}, protocol=1),
                    "copy_?reg._reconstructor|opcode BUILD"),
        "numpy": (lambda: pickle.dumps({"ground_truth": [[{"name": "cat", "confidence": np.float64(0.9)}]],
                                        "pred": valid_pred}), "numpy|opcode BUILD"),
    }


class Plain:
    """An ordinary object: protocol 0/1 pickle it with copyreg._reconstructor."""

    def __init__(self):
        self.name = "cat"


def persistent_blob():
    buffer = io.BytesIO()
    PersistentPickler(buffer, protocol=2).dump({"ground_truth": [[]], "pred": ["PERSISTENT"] + [[]] * 30})
    return buffer.getvalue()


MALICIOUS = sorted(malicious_payloads(Path("m")))


@pytest.mark.parametrize("name", MALICIOUS)
def test_malicious_pickles_are_refused_and_run_nothing(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    make, refused = malicious_payloads(marker)[name]
    blob = make()
    if name.startswith("codecs"):
        assert b"_codecs\nencode" in blob  # the global the check inspects is really in the file
    folder = tmp_path / "legacy"
    write_case(folder, 0, "azure", "cat", ["cat"] * 20, ["cat"] * 10, None)  # a valid file first
    (folder / "pred_hist_1.pkl").write_bytes(blob)
    out = tmp_path / "out" / "log.sqlite3"

    with pytest.raises(UnsafePickleError, match=refused) as info:
        import_legacy(folder, "azure", SIGMA, out=out)
    assert "pred_hist_1.pkl" in str(info.value) and "Nothing was executed" in str(info.value)
    assert isinstance(info.value, NotAQueryLogError)
    assert not marker.exists()
    assert not out.exists() and not out.parent.exists()  # nothing was written

    with pytest.raises(UnsafePickleError):
        load_legacy_pickle(folder / "pred_hist_1.pkl")
    assert not marker.exists()

    # into an existing log: its calls stay as they were
    existing = tmp_path / "existing.sqlite3"
    import_legacy(folder / "pred_hist_0.pkl", "azure", SIGMA, out=existing).close()
    with pytest.raises(UnsafePickleError):
        import_legacy(folder, "azure", SIGMA, out=existing)
    with open_log(existing) as log:
        assert len(log) == 2
    jsonl = tmp_path / "out.jsonl"
    with pytest.raises(UnsafePickleError):
        import_legacy(folder, "azure", SIGMA, out=jsonl)
    assert not jsonl.exists() and not marker.exists()


def test_malicious_cli_import_fails_cleanly(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "pred_hist_0.pkl").write_bytes(pickle.dumps(Reducer(os.system, f"touch {marker}")))
    out = tmp_path / "log.sqlite3"
    assert main(["import-legacy", str(folder), "--api", "aws", "--noise-sd", "0.25", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "robust-api: error:" in err and "refused" in err and "pred_hist_0.pkl" in err
    assert not marker.exists() and not out.exists()


# ---------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------
def test_cli_import_then_recertify(tmp_path, capsys):
    folder, expected = build_folder(tmp_path, "aws")
    log = tmp_path / "legacy.sqlite3"
    argv = ["import-legacy", str(folder), "--api", "aws", "--noise-sd", "0.25", "--out", str(log)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "imported 2 predecessor files" in out and "4 calls added" in out and "0 already there" in out
    assert f"robust-api recertify {log}" in out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 calls added" in out and "4 already there" in out

    assert main(["recertify", str(log)]) == 0
    out = capsys.readouterr().out
    assert "2 certify calls re-certified offline, 0 skipped" in out
    rows = [line.split() for line in out.splitlines() if re.fullmatch(r"[0-9a-f]{12}", (line.split() or [""])[0])]
    assert len(rows) == 2
    for row, (_, _, selection, estimation) in zip(rows, expected.values()):
        label, radius, _ = reference(selection, estimation)
        assert row[1:3] == (["ABSTAIN", "0.0000"] if label == -1 else [label, f"{radius:.4f}"])
    assert {row[1] for row in rows} == {"Cat", "ABSTAIN"}

    jsonl = tmp_path / "legacy.jsonl"
    assert main(["import-legacy", str(expected[2][0]), str(expected[10][0]), "--api", "aws", "--noise-sd", "0.25",
                 "--N0", "20", "--alpha", "0.01", "--denoiser", "dncnn", "--out", str(jsonl)]) == 0
    assert "4 calls added" in capsys.readouterr().out
    calls = list(open_log(jsonl))
    assert {c.header.params["alpha"] for c in calls} == {0.01} and {c.header.denoiser_id for c in calls} == {"dncnn", None}
    assert main(["recertify", str(jsonl)]) == 0
    assert "2 certify calls re-certified offline" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    folder, _ = build_folder(tmp_path, "aws")
    out = tmp_path / "log.sqlite3"
    assert main(["import-legacy", str(folder), "--api", "google", "--noise-sd", "0.25", "--out", str(out)]) == 2
    assert "--api" in capsys.readouterr().err and not out.exists()
    assert main(["import-legacy", str(folder), "--api", "aws", "--noise-sd", "2", "--out", str(out)]) == 2
    assert "noise_sd" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["import-legacy", str(folder), "--api", "bing", "--noise-sd", "0.25", "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["import-legacy", str(folder), "--api", "aws", "--out", str(out)])  # --noise-sd is required


# ---------------------------------------------------------------------------------------
# TSV results
# ---------------------------------------------------------------------------------------
def test_read_predecessor_tsv(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text(
        "idx\tcorrect\tradius\tlabel\tpredict\n"
        "0\tTrue\t0.412\tTabby cat\tTabby cat\n"
        "1\tFalse\t0.000\tdog\t-1\n"
        "2\tFalse\t0.130\tNone\tcat\n"
        "\n"
    )
    assert read_legacy_tsv(path) == [
        LegacyTSVRow(idx=0, true_label="Tabby cat", predicted="Tabby cat", radius=0.412, correct=True,
                     radius_lower=pytest.approx(0.4115)),
        LegacyTSVRow(idx=1, true_label="dog", predicted=None, radius=0.0, correct=False, radius_lower=0.0),
        LegacyTSVRow(idx=2, true_label="None", predicted="cat", radius=0.13, correct=False,
                     radius_lower=pytest.approx(0.1295)),
    ]
    with pytest.raises(Exception):
        read_legacy_tsv(path)[0].idx = 3  # frozen


def test_read_cohen_tsv(tmp_path):
    path = tmp_path / "certify_sigma_0.25.tsv"
    path.write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
        "0\t3\t3\t0.523\t1\t0:00:01.234\n"
        "20\t8\t-1\t0.0\t0\t0:00:01.101\n"
        "40\t0\t6\t0.2\t0\t0:00:01.3\n"
    )
    rows = read_legacy_tsv(path)
    assert [(r.idx, r.true_label, r.predicted, r.radius, r.correct) for r in rows] == [
        (0, "3", "3", 0.523, True), (20, "8", None, 0.0, False), (40, "0", "6", 0.2, False)
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("idx,label,predict,radius,correct\n0,1,1,0.5,1\n", "idx, label, predict, radius, correct"),
        ("idx\tlabel\tpredict\tcorrect\n0\t1\t1\t1\n", "missing radius"),
        ("", "empty"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t1\n1\t2\t2\tabc\t1\n", r":3: malformed row"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\n", r":2: 4 tab-separated fields"),
        ("idx\tlabel\tpredict\tradius\tcorrect\nzero\t1\t1\t0.5\t1\n", r":2: malformed row"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\tyes\n", r":2: .*not True/False or 1/0"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t-0.5\t1\n", r":2: .*radius"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\tnan\t1\n", r":2: .*radius"),
    ],
)
def test_malformed_tsv(tmp_path, text, message):
    path = tmp_path / "log.txt"
    path.write_text(text)
    with pytest.raises(NotAQueryLogError, match=message):
        read_legacy_tsv(path)


def test_copyreg_extension_codes_cannot_bypass_find_class(tmp_path):
    """EXT opcodes fetch from copyreg's extension cache without asking find_class: refused unread."""
    import copyreg
    import struct

    marker = tmp_path / "EXT_RAN"
    code = 0x7FF1
    copyreg.add_extension("os", "system", code)
    try:
        pickle.loads(b"\x80\x02\x83" + struct.pack("<H", code) + b".")  # fills copyreg._extension_cache
        command = f"touch {marker}".encode()
        path = tmp_path / "pred_hist_0.pkl"
        path.write_bytes(b"\x80\x02\x83" + struct.pack("<H", code) + b"X" + struct.pack("<I", len(command))
                         + command + b"\x85R.")
        with pytest.raises(UnsafePickleError, match="opcode EXT2"):
            load_legacy_pickle(path)
    finally:
        copyreg.remove_extension("os", "system", code)
        copyreg._extension_cache.pop(code, None)
    assert not marker.exists()


def test_a_small_pickle_cannot_expand_into_a_huge_one(tmp_path):
    """One memoized list copied again and again through an admitted type: refused within budget."""
    items, copies = 100_000, 200
    parts = [b"\x80\x02cbuiltins\nlist\nq\x00]q\x01(" + b"K\x01" * items + b"e0",
             b"}q\x02(X\x0c\x00\x00\x00ground_truth]X\x04\x00\x00\x00pred](", b"h\x00h\x01\x85R" * copies, b"eu."]
    path = tmp_path / "pred_hist_0.pkl"
    path.write_bytes(b"".join(parts))
    with pytest.raises(UnsafePickleError, match="copies more items than the file could hold"):
        load_legacy_pickle(path)


def test_build_cannot_reach_the_unpickler_state(tmp_path):
    path = tmp_path / "pred_hist_0.pkl"
    path.write_bytes(b"c_codecs\nencode\n}S'polluted'\nI1\nsb.")
    with pytest.raises(UnsafePickleError, match="opcode BUILD"):
        load_legacy_pickle(path)


# ---------------------------------------------------------------------------------------
# files built to hang or exhaust the importer: refused, in bounded work
# ---------------------------------------------------------------------------------------
# A regression here hangs or crashes the interpreter rather than failing an assertion, so
# these cases run in a child interpreter; its generous timeout turns a hang into a failure
# (nothing is timed: a refusal takes well under a second, the old code hours or forever).
ISOLATED_TIMEOUT_S = 300

_REPORT = """
import sys
from robust_api.query_logs.legacy import import_legacy, load_legacy_pickle, read_legacy_tsv
def report(what, call):
    try:
        call()
    except BaseException as exc:
        print(what, type(exc).__name__, " ".join(str(exc).split()), sep="|", flush=True)
    else:
        print(what, "ok", "", sep="|", flush=True)
"""


def run_isolated(body: str, *, memory_limit: Optional[int] = None) -> dict:
    """Run ``body`` (after _REPORT) in a fresh interpreter; {what: (error type or "ok", message)}."""
    code = _REPORT
    if memory_limit is not None:
        code += (
            "import resource\n"
            "pages = int(open('/proc/self/statm').read().split()[0])\n"
            f"limit = pages * resource.getpagesize() + {memory_limit}\n"
            "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        )
    try:
        done = subprocess.run([sys.executable, "-c", code + body], capture_output=True, text=True,
                              timeout=ISOLATED_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the importer did not finish within {ISOLATED_TIMEOUT_S} s (it hangs)")
    assert done.returncode == 0, f"the child interpreter died (status {done.returncode}): {done.stderr[-2000:]}"
    results = {}
    for line in done.stdout.splitlines():
        what, kind, message = line.split("|", 2)
        results[what] = (kind, message)
    return results


def colliding_ints(count: int) -> list[int]:
    """Distinct ints with equal hash on 64-bit CPython: k·(2⁶¹ − 1) all hash to 0."""
    return [k * (2**61 - 1) for k in range(1, count + 1)]


def _long1(value: int) -> bytes:
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def collision_dict_pickle(count: int) -> bytes:
    """A protocol-2 pickle of a dict with ``count`` colliding int keys, written opcode by opcode
    (pickle.dumps would first have to build the dict, in quadratic time)."""
    return b"\x80\x02}(" + b"".join(_long1(key) + b"N" for key in colliding_ints(count)) + b"u."


def collision_set_pickle(count: int) -> bytes:
    """A protocol-4 pickle of a set of ``count`` colliding ints (EMPTY_SET, ADDITEMS)."""
    return b"\x80\x04\x8f(" + b"".join(_long1(key) for key in colliding_ints(count)) + b"\x90."


@pytest.mark.skipif(sys.platform == "win32" or sys.hash_info.width != 64, reason="64-bit CPython hashes")
def test_hash_collision_pickles_are_refused_without_quadratic_work(tmp_path):
    """200,000 colliding keys: inserting them takes ~10¹⁰ comparisons (the old importer ran
    for tens of minutes); now the 9th colliding key ends the load with UnsafePickleError."""
    assert len({hash(key) for key in colliding_ints(1000)}) == 1
    (tmp_path / "pred_hist_0.pkl").write_bytes(collision_dict_pickle(200_000))
    (tmp_path / "pred_hist_1.pkl").write_bytes(collision_set_pickle(200_000))
    out = tmp_path / "out.sqlite3"
    results = run_isolated(
        f"report('dict', lambda: load_legacy_pickle({str(tmp_path / 'pred_hist_0.pkl')!r}))\n"
        f"report('set', lambda: load_legacy_pickle({str(tmp_path / 'pred_hist_1.pkl')!r}))\n"
        f"report('import', lambda: import_legacy({str(tmp_path / 'pred_hist_0.pkl')!r}, 'aws', 0.25, out={str(out)!r}))\n"
    )
    assert results["dict"][0] == "UnsafePickleError" and "share the hash value 0" in results["dict"][1]
    assert results["import"][0] == "UnsafePickleError" and "Nothing was executed" in results["import"][1]
    assert results["set"][0] == "NotAQueryLogError" and "holds a set (opcode EMPTY_SET" in results["set"][1]
    assert not out.exists()


def _pickle_text_int(value: int) -> bytes:
    return b"I" + str(value).encode() + b"\n"


@pytest.mark.skipif(sys.hash_info.width != 64, reason="64-bit CPython hashes")
@pytest.mark.parametrize("route", ["SETITEMS", "SETITEM", "DICT", "OrderedDict-pairs", "nested-response"])
def test_colliding_keys_are_refused_on_every_way_a_dict_is_built(tmp_path, route):
    """Floats 2.0**(61·k) and ints 1 + k·(2⁶¹ − 1) all hash to 1: 20 such keys are refused
    however the pickle builds its dict; distinct honest keys never share a hash this way."""
    keys = [2.0 ** (61 * k) for k in range(17)] + [1 + k * (2**61 - 1) for k in range(2, 5)]
    assert len(set(keys)) == len(keys) and {hash(key) for key in keys} == {1}
    if route == "SETITEMS":
        blob = pickle.dumps(dict.fromkeys(keys), protocol=2)
    elif route == "SETITEM":
        blob = pickle.dumps(dict.fromkeys(keys), protocol=0)
    elif route == "DICT":  # MARK key value ... DICT: never written by CPython, easy to write by hand
        blob = b"(" + b"".join(_pickle_text_int(1 + k * (2**61 - 1)) + b"N" for k in range(2, 22)) + b"d."
    elif route == "OrderedDict-pairs":  # Python 2's OrderedDict([[key, value], ...])
        blob = pickle.dumps(OrderedDict((key, None) for key in keys), protocol=2)
        assert b"collections\nOrderedDict" in blob
    else:
        blob = pickle.dumps({"ground_truth": [[{"name": "cat", "extra": dict.fromkeys(keys)}]], "pred": []})
    path = tmp_path / "pred_hist_0.pkl"
    path.write_bytes(blob)
    with pytest.raises(UnsafePickleError, match="share the hash value 1"):
        load_legacy_pickle(path)


def test_keys_that_share_a_hash_honestly_still_load(tmp_path):
    """hash(-1) == hash(-2) on CPython, and 1, 1.0 and True are one key: a few are admitted."""
    path = write_pickle(tmp_path / "pred_hist_0.pkl",
                        {"ground_truth": [{-1: "a", -2: "b", 1: "c", "x": 0.5}], "pred": [[{"name": "cat"}]] * 2})
    assert load_legacy_pickle(path)["ground_truth"] == [{-1: "a", -2: "b", 1: "c", "x": 0.5}]


def test_deeply_nested_tuple_key_is_refused_before_it_is_hashed(tmp_path):
    """A dict key that is a tuple nested 200,000 deep: hashing it recursed in C until the old
    importer's interpreter crashed (SIGSEGV). Keys must be scalars; it is refused unhashed."""
    path = tmp_path / "pred_hist_0.pkl"
    path.write_bytes(b"\x80\x02}" + b")" + b"\x85" * 200_000 + b"Ns.")
    results = run_isolated(f"report('deep', lambda: load_legacy_pickle({str(path)!r}))\n")
    assert results["deep"][0] == "UnsafePickleError" and "a dict key is a tuple" in results["deep"][1]
    shallow = write_pickle(tmp_path / "pred_hist_1.pkl", {"ground_truth": [{(1, 2): "x"}], "pred": []})
    with pytest.raises(UnsafePickleError, match="a dict key is a tuple"):
        load_legacy_pickle(shallow)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/statm")
def test_a_memo_index_far_past_the_data_is_refused(tmp_path):
    """LONG_BINPUT at index 2³¹ in an 11-byte file: the C unpickler sizes its memo to the index
    (tens of GB; here a MemoryError under a 1 GiB address-space limit). Refused by the scan."""
    import struct

    path = tmp_path / "pred_hist_0.pkl"
    path.write_bytes(b"\x80\x02N" + b"r" + struct.pack("<I", 2**31) + b".")
    results = run_isolated(f"report('memo', lambda: load_legacy_pickle({str(path)!r}))\n", memory_limit=2**30)
    assert results["memo"][0] == "UnsafePickleError" and "memo entry 2,147,483,648" in results["memo"][1]
    with pytest.raises(UnsafePickleError, match="memo index built to exhaust memory"):
        load_legacy_pickle(path)


def test_huge_integers_are_refused(tmp_path):
    """A 4000-bit int (LONG4) cannot be printed (Python refuses int → str past 4300 digits for
    bigger ones) and no API answer holds one; 1024 bits are read at most."""
    path = write_pickle(tmp_path / "pred_hist_0.pkl", {"ground_truth": [[{"name": "cat", "id": 2**4000}]], "pred": []})
    with pytest.raises(UnsafePickleError, match="an integer of 501 bytes"):
        load_legacy_pickle(path)
    fine = write_pickle(tmp_path / "pred_hist_1.pkl", {"ground_truth": [[{"name": "cat", "id": 2**1000}]], "pred": []})
    assert load_legacy_pickle(fine)["ground_truth"][0][0]["id"] == 2**1000


def test_the_number_of_opcodes_is_capped(tmp_path, monkeypatch):
    from robust_api.query_logs import legacy

    path = write_pickle(tmp_path / "pred_hist_0.pkl", {"ground_truth": [[]], "pred": [[{"name": "cat"}]] * 300})
    assert load_legacy_pickle(path)["pred"][0] == [{"name": "cat"}]
    monkeypatch.setattr(legacy, "MAX_PICKLE_OPCODES", 100)
    with pytest.raises(NotAQueryLogError, match="more than 100 pickle opcodes"):
        load_legacy_pickle(path)
    # the unpickler bounds its own work too, when used without the scan
    with pytest.raises(NotAQueryLogError, match="more than 50 pickle opcodes"):
        legacy.RestrictedUnpickler(io.BytesIO(path.read_bytes()), path, max_opcodes=50).load()


def test_opcodes_outside_plain_data_are_not_in_the_unpicklers_table(tmp_path):
    """Without the scan, the unpickler itself refuses BUILD and set opcodes (its table lacks them)."""
    from robust_api.query_logs.legacy import RestrictedUnpickler

    for blob, name in ((pickle.dumps({1, 2}, protocol=4), "EMPTY_SET"), (b"}}b.", "BUILD")):
        with pytest.raises(UnsafePickleError, match=f"opcode {name}"):
            RestrictedUnpickler(io.BytesIO(blob)).load()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_are_refused_without_blocking(tmp_path):
    """A FIFO (as a source, inside a source folder, as a TSV, or as ``out``) blocked the old
    importer forever in open(); it is refused from its stat, never opened."""
    import shutil

    fifo = tmp_path / "pred_hist_0.pkl"
    os.mkfifo(fifo)
    folder = tmp_path / "legacy"
    folder.mkdir()
    os.mkfifo(folder / "pred_hist_3.pkl")
    tsv = tmp_path / "log.txt"
    os.mkfifo(tsv)
    good = build_folder(tmp_path, "aws")[1][2][0]
    out_fifo = tmp_path / "out.sqlite3"
    os.mkfifo(out_fifo)
    shutil.copy(good, folder / "pred_hist_2.pkl")
    results = run_isolated(
        f"report('file', lambda: load_legacy_pickle({str(fifo)!r}))\n"
        f"report('import', lambda: import_legacy({str(fifo)!r}, 'aws', 0.25, out={str(tmp_path / 'a.sqlite3')!r}))\n"
        f"report('folder', lambda: import_legacy({str(folder)!r}, 'aws', 0.25, out={str(tmp_path / 'b.sqlite3')!r}))\n"
        f"report('list', lambda: import_legacy([{str(good)!r}, {str(fifo)!r}], 'aws', 0.25))\n"
        f"report('tsv', lambda: read_legacy_tsv({str(tsv)!r}))\n"
        f"report('out', lambda: import_legacy({str(good)!r}, 'aws', 0.25, out={str(out_fifo)!r}))\n"
        f"report('out.jsonl', lambda: import_legacy({str(good)!r}, 'aws', 0.25, out={str(tmp_path / 'c.jsonl')!r}))\n"
    )
    for what in ("file", "import", "list"):
        assert results[what] == ("NotAQueryLogError", results[what][1]) and "is a FIFO (named pipe)" in results[what][1]
    assert results["folder"][0] == "NotAQueryLogError" and "pred_hist_3.pkl is a FIFO" in results["folder"][1]
    assert results["tsv"][0] == "NotAQueryLogError" and "log.txt is a FIFO" in results["tsv"][1]
    assert results["out"][0] == "NotAQueryLogError" and "not a log file or folder" in results["out"][1]
    assert results["out.jsonl"] == ("ok", "")  # control: the same import into a real path works
    assert not (tmp_path / "a.sqlite3").exists() and not (tmp_path / "b.sqlite3").exists()


def test_devices_and_sockets_are_refused_unopened(tmp_path):
    import socket

    if os.path.exists("/dev/zero"):  # the old importer read 512 MiB of zeros from it
        with pytest.raises(NotAQueryLogError, match="is a character device"):
            load_legacy_pickle("/dev/zero")
        with pytest.raises(NotAQueryLogError, match="is a character device"):
            read_legacy_tsv("/dev/zero")
    if hasattr(socket, "AF_UNIX"):
        path = tmp_path / "pred_hist_0.pkl"
        server = socket.socket(socket.AF_UNIX)
        try:
            server.bind(str(path))
            with pytest.raises(NotAQueryLogError, match="is a socket"):
                import_legacy(path, "aws", SIGMA)
        finally:
            server.close()
    with pytest.raises(NotAQueryLogError, match="is a folder"):
        load_legacy_pickle(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_cli_import_of_a_fifo_is_one_line_and_fails(tmp_path):
    fifo = tmp_path / "pred_hist_0.pkl"
    os.mkfifo(fifo)
    out = tmp_path / "log.sqlite3"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "robust_api", "import-legacy", str(fifo), "--api", "aws", "--noise-sd", "0.25",
             "--out", str(out)],
            capture_output=True, text=True, timeout=ISOLATED_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("robust-api import-legacy hangs on a FIFO")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("robust-api: error: ")
    assert "is a FIFO (named pipe)" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
