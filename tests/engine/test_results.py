"""Results as data: ABSTAIN's conventions, counts, to_dict, pickles, DataFrames and their files,
notebook display, the image's name and tag, and the predecessor's lists of answers offline."""

from __future__ import annotations

import copy
import io
import pickle
from collections import defaultdict

import numpy as np
import pytest

import robust_api
from robust_api import ABSTAIN, RobustAPI
from robust_api.errors import InvalidInputError, InvalidParameterError, LogMismatchError
from robust_api.query_logs.answers import AnswerDict, AnswerList, answer_of, provider_family
from robust_api.query_logs.records import QueryRecord


def halfspace(batch):
    return np.where(batch[:, 0, 0, 0] < 0.5, "A", "B").tolist()


def always_a(batch):
    return ["A"] * len(batch)


def coin(batch):
    return ["A" if i % 2 else "B" for i in range(len(batch))]


@pytest.fixture
def image():
    return np.full((8, 8, 3), 0.2, dtype=np.float32)


class _BuiltinsOnly(pickle.Unpickler):
    """Loads what a process without robust_api could: any other module is refused."""

    def find_class(self, module, name):
        if module != "builtins":
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


def _load_plain(blob: bytes):
    return _BuiltinsOnly(io.BytesIO(blob)).load()


# -- ABSTAIN ---------------------------------------------------------------------------------

def test_abstain_equals_minus_one_and_nothing_else():
    assert ABSTAIN == -1 and -1 == ABSTAIN and ABSTAIN == -1.0 and np.int64(-1) == ABSTAIN
    assert not (ABSTAIN != -1) and ABSTAIN != 0 and ABSTAIN != 1
    for other in ("ABSTAIN", "abstain", "-1", None, True, False, np.bool_(True), [], {}):
        assert ABSTAIN != other and not (ABSTAIN == other)
    assert hash(ABSTAIN) == hash(-1) and str(ABSTAIN) == "ABSTAIN" and f"{ABSTAIN}" == "ABSTAIN"
    assert pickle.loads(pickle.dumps(ABSTAIN)) == -1  # plain data
    assert copy.copy(ABSTAIN) is ABSTAIN and copy.deepcopy(ABSTAIN) is ABSTAIN


def test_an_abstaining_certificate_compares_equal_to_minus_one(image):
    cert = RobustAPI(coin, log=False, seed=1).certify(image, 0.25, 10, 100, 0.001)
    assert cert.abstained and cert.label is ABSTAIN and cert.label == -1
    certified = RobustAPI(halfspace, log=False, seed=1).certify(image, 0.25, 10, 100, 0.001)
    assert not certified.abstained and certified.label != -1


# -- counts -----------------------------------------------------------------------------------

def test_counts_read_unseen_labels_as_zero_without_adding_them(image):
    pred = RobustAPI(halfspace, log=False, seed=0).predict(image, N=20, noise_sd=0.1)
    assert isinstance(pred.counts, defaultdict) and pred.counts.default_factory is int
    assert pred.counts["never"] == 0 and "never" not in pred.counts
    assert pred.counts == {"A": 20} and repr(pred.counts) == "{'A': 20}"
    assert type(pickle.loads(pickle.dumps(pred.counts))) is dict


# -- to_dict, pickles --------------------------------------------------------------------------

def test_to_dict_is_flat_plain_data_without_the_log(image):
    cert = RobustAPI(always_a, log=False, seed=0).certify(image, 0.25, 10, 50, 0.001, name="cat.png", tag="run 1")
    row = cert.to_dict()
    assert row["image"] == "cat.png" and row["tag"] == "run 1" and row["label"] == "A" and not row["abstained"]
    assert row["radius"] == cert.radius and row["counts"] == {"A": 50} and type(row["counts"]) is dict
    assert row["N0"] == 10 and row["N"] == 50 and row["queries"] == 60 and row["seed"] == 0
    assert row["image_digest"] == cert.logs.header.image_digest and row["run_id"] == cert.logs.header.run_id
    assert "logs" not in row and all(not hasattr(v, "records") for v in row.values())
    import json

    json.dumps(row)  # plain


def test_results_pickle_as_plain_data_readable_without_robust_api(image):
    api = RobustAPI(always_a, log=False, seed=0)
    cert, pred = api.certify(image, 0.25, 10, 30, 0.001), api.predict(image, N=5, noise_sd=0)
    blob = pickle.dumps({"ground_truth": pred.logs, "pred": cert.logs, "cert": cert, "pred_result": pred})
    assert b"robust_api" not in blob
    loaded = _load_plain(blob)  # dict / list / int only: no robust_api class
    assert loaded["pred"] == ["A"] * 40 and loaded["ground_truth"] == ["A"] * 5
    assert loaded["cert"]["label"] == "A" and loaded["cert"]["logs"] == ["A"] * 40
    assert copy.deepcopy(cert) is cert and copy.copy(cert) is cert  # copies keep the object


def test_an_abstaining_result_pickles_label_none(image):
    cert = RobustAPI(coin, log=False, seed=1).certify(image, 0.25, 10, 100, 0.001)
    loaded = pickle.loads(pickle.dumps(cert))
    assert loaded["label"] is None and loaded["abstained"] is True


# -- logs[i] -----------------------------------------------------------------------------------

@pytest.mark.parametrize("provider, raw, expected", [
    ("google:label_detection@h", {"labelAnnotations": [{"description": "cat", "score": 0.6},
                                                       {"description": "dog", "score": 0.9}]},
     {"dog": 0.9, "cat": 0.6}),
    ("azure:image_analysis.v4.tags", {"tags": [{"name": "dog", "confidence": 0.9}]},
     [{"name": "dog", "confidence": 0.9}]),
    ("aws:rekognition@h", {"Labels": [{"Name": "dog", "Confidence": 90.0}, {"Name": "cat", "Confidence": 95.0}]},
     [{"Name": "cat", "Confidence": 95.0}, {"Name": "dog", "Confidence": 90.0}]),
    ("clarifai:general", {"data": {"concepts": [{"name": "dog", "value": 0.9}]}},
     {"outputs": [{"data": {"concepts": [{"name": "dog", "value": 0.9}]}}]}),
])
def test_answers_take_the_predecessors_shape(provider, raw, expected):
    label = expected[0]["Name"] if isinstance(expected, list) and "Name" in expected[0] else None
    top = label or ("dog" if "dog" in str(expected) else None)
    record = QueryRecord("estimation", 3, top, raw, 0.1, 0.001, 1.0)
    answer = answer_of(record, provider)
    assert answer == expected and isinstance(answer, (AnswerDict, AnswerList))
    assert answer.phase == "estimation" and answer.sample_index == 3 and answer.record is record
    assert type(pickle.loads(pickle.dumps(answer))) in (dict, list)
    with pytest.raises(AttributeError):
        answer.not_a_field


def test_the_parsed_vote_comes_first_even_on_a_score_tie():
    raw = {"labelAnnotations": [{"description": "b", "score": 0.5}, {"description": "a", "score": 0.5}]}
    answer = answer_of(QueryRecord("predict", 0, "a", raw, 0.0, 0.0, 0.0), "google:x")
    assert [*answer][0] == "a"


def test_a_failed_query_reads_as_an_empty_answer():
    failed = QueryRecord("predict", 0, None, None, 0.0, 0.0, 0.0, error="timeout")
    assert answer_of(failed, "aws:x") == [] and answer_of(failed, "google:x") == {}
    assert answer_of(failed, "local:cnn") is failed  # no predecessor shape: the record
    assert provider_family("legacy:aws") == "aws" and provider_family("callable:f") == "callable"


# -- DataFrames and files -----------------------------------------------------------------------

@pytest.fixture
def results(image):
    api = RobustAPI(always_a, log=False, seed=0)
    return [
        api.certify(image, 0.25, 10, 50, 0.001, name="a.png"),
        RobustAPI(coin, log=False, seed=1).certify(image, 0.25, 10, 100, 0.001, tag="coin"),  # abstains
        api.predict(image, N=3, noise_sd=0),
        api.certify(image, 0.25, N=200, radius=0.1),  # sequential
    ]


def test_to_pandas_gives_named_typed_columns(results):
    pd = pytest.importorskip("pandas")
    frame = robust_api.to_pandas(results)
    assert list(frame.columns[:15]) == ["image", "label", "abstained", "radius", "p_lower", "counts", "queries",
                                        "cost_usd", "method", "noise_sd", "alpha", "seed", "denoiser", "provider",
                                        "model_version"]
    assert frame["label"].tolist() == ["A", None, "A", "A"]
    assert frame["abstained"].tolist() == [False, True, False, False] and frame["abstained"].dtype == bool
    assert frame["image"].tolist()[:2] == ["a.png", None] and frame["tag"].tolist()[1] == "coin"
    assert frame["kind"].tolist() == ["certify", "certify", "predict", "certify"]
    assert frame["method"].tolist()[3] == "sequential" and pd.isna(frame["radius"][2])
    assert frame["counts"][0] == {"A": 50}
    assert robust_api.to_pandas(results[0])["label"].tolist() == ["A"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_result_files_round_trip(tmp_path, results, suffix):
    pd = pytest.importorskip("pandas")
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / f"results{suffix}"
    assert robust_api.write_results(results, path) == 4
    pd.testing.assert_frame_equal(robust_api.read_results(path), robust_api.to_pandas(results))


def test_bad_tables_are_refused(tmp_path, results):
    pytest.importorskip("pandas")
    with pytest.raises(InvalidInputError, match="not a Certificate or Prediction"):
        robust_api.to_pandas(["not a result"])
    with pytest.raises(InvalidParameterError, match=".csv"):
        robust_api.write_results(results, tmp_path / "results.xlsx")


def test_results_display_as_html_tables_with_text_escaped(image):
    cert = RobustAPI(lambda b: ["<script>x</script>"] * len(b), log=False, seed=0).certify(
        image, 0.25, 10, 20, 0.001, name="<b>.png")
    page = cert._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;.png" in page
    assert page.startswith("<table") and "radius" in page


# -- names and tags ------------------------------------------------------------------------------

def test_a_path_records_its_file_name(tmp_path):
    from PIL import Image

    path = tmp_path / "photo 1.png"
    Image.fromarray(np.full((8, 8, 3), 40, dtype=np.uint8)).save(path)
    api = RobustAPI(halfspace, log=False, seed=0)
    assert api.predict(str(path), N=1, noise_sd=0).logs.header.image_name == "photo 1.png"
    with Image.open(path) as opened:
        assert api.predict(opened, N=1, noise_sd=0).logs.header.image_name == "photo 1.png"
    assert api.predict(np.zeros((4, 4)), N=1, noise_sd=0).logs.header.image_name is None
    many = api.certify_many([str(path), np.zeros((4, 4))], noise_sd=0.25, N0=5, N=10, names=["x", "y"], tag="t")
    assert [c.logs.header.image_name for c in many] == ["x", "y"] and {c.logs.header.tag for c in many} == {"t"}


@pytest.mark.parametrize("bad", ["", "a\nb", "tab\there", 7, "x" * 1001])
def test_bad_names_are_refused_before_any_query(image, bad):
    calls = []
    api = RobustAPI(lambda b: calls.append(len(b)) or ["A"] * len(b), log=False)
    with pytest.raises(InvalidParameterError, match="name"):
        api.certify(image, 0.25, 10, 20, name=bad)
    with pytest.raises(InvalidParameterError, match="tag"):
        api.predict(image, N=2, noise_sd=0.1, tag=bad)
    assert calls == []


def test_names_are_for_online_calls(image):
    cert = RobustAPI(halfspace, log=False, seed=0).certify(image, 0.25, 10, 20)
    with pytest.raises(InvalidParameterError, match="online"):
        RobustAPI("local", online=False).certify(cert.logs, name="x")


# -- the predecessor's lists of answers, offline ------------------------------------------------------

def _azure(label):
    return [{"name": label, "confidence": 0.9}, {"name": "other", "confidence": 0.05}]


def test_offline_certify_reads_the_predecessors_list_of_answers():
    answers = [_azure("cat")] * 20 + [_azure("cat")] * 95 + [_azure("dog")] * 5
    offline = RobustAPI("azure", online=False)
    label, radius = offline.certify(answers, 0.25, 20, 100, 0.001)
    assert label == "cat" and radius > 0
    label2, counts = offline.predict([_azure("cat")])
    assert label2 == "cat" and counts == {"cat": 1} and counts["dog"] == 0
    with pytest.raises(InvalidParameterError, match="noise_sd"):
        offline.certify(answers)
    with pytest.raises(LogMismatchError, match="N0"):
        offline.certify(answers[:20], 0.25, 20)
    with pytest.raises(InvalidInputError, match="CallLog"):
        RobustAPI("local", online=False).certify(answers, 0.25, 20, 100)


def test_offline_certify_of_the_pickled_list_equals_the_online_certificate(image):
    cert = RobustAPI(halfspace, log=False, seed=4).certify(image, 0.25, 20, 100, 0.001)
    answers = pickle.loads(pickle.dumps(cert.logs))  # a callable's answers are its labels
    assert answers == [answer.label for answer in cert.logs] and set(answers) == {"A", "B"}
    # a callable has no predecessor API; re-shape as Azure answers, as the predecessor logged them
    label, radius = RobustAPI("azure", online=False).certify([_azure(a) for a in answers], 0.25, 20, 100, 0.001)
    assert (label, radius) == (cert.label, cert.radius)


def test_import_legacy_reads_our_pickled_results(tmp_path, image):
    api = RobustAPI(lambda b: [{"tags": [{"name": "A", "confidence": 0.9}]}] * len(b), log=False, seed=0,
                    label_fn=lambda raw: raw["tags"][0]["name"])
    cert, pred = api.certify(image, 0.25, 20, 50, 0.001), api.predict(image, N=1, noise_sd=0)
    folder = tmp_path / "pickles"
    folder.mkdir()
    with open(folder / "pred_hist_0.pkl", "wb") as handle:
        pickle.dump({"ground_truth": pred.logs, "pred": cert}, handle)
    # a callable's raw answers are stored as given: not the predecessor's Azure shape
    with pytest.raises(robust_api.NotAQueryLogError):
        robust_api.import_legacy(folder, "azure", noise_sd=0.25)
    with pytest.raises(LogMismatchError, match="noise_sd"):
        with open(folder / "pred_hist_0.pkl", "wb") as handle:
            pickle.dump({"ground_truth": [_azure("A")], "pred": {**cert.to_dict(), "logs": [_azure("A")] * 70}}, handle)
        robust_api.import_legacy(folder, "azure", noise_sd=0.5)
    log = robust_api.import_legacy(folder, "azure", noise_sd=0.25)
    certs = [RobustAPI("azure", online=False).certify(call) for call in log if call.kind == "certify"]
    assert len(certs) == 1 and certs[0].label == "A" and certs[0].n == 50
