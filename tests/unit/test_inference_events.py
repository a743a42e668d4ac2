"""Inference / feedback decoding: reasons, batches, and agreement with the JSON Schemas."""
from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from stream.inference_events import decode_feedback, decode_inferences

SCHEMAS = Path(__file__).resolve().parents[2] / "topics" / "schemas"
GOOD = {"model": "churn", "version": "v1", "request_id": "r1", "ts": 1_700_000_000.5,
        "features": {"age": 41, "income": 5.2e4, "country": "fr", "vip": False, "tenure": None},
        "prediction": 1, "score": 0.83, "labels": {"team": "growth"}}
FB = {"model": "churn", "version": "v1", "request_id": "r1", "label": 0, "ts": 1_700_000_100.0}


def dec(raw):
    return decode_inferences(raw, max_bytes=10_000, max_batch=100)


def with_(base, **kw):
    d = dict(base)
    for k, v in kw.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return d


BAD_INFERENCES = [
    (b"not json", "not_json"),
    (b"\xff\xfe", "invalid_utf8"),
    (b"[1]", "wrong_shape"),
    (b'{"inferences": []}', "wrong_shape"),
    (b'{"inferences": [], "x": 1}', "wrong_shape"),
    (orjson.dumps(with_(GOOD, request_id=...)), "missing_field"),
    (orjson.dumps(with_(GOOD, extra=1)), "unknown_field"),
    (orjson.dumps(with_(GOOD, model="")), "bad_model"),
    (orjson.dumps(with_(GOOD, model="a b")), "bad_model"),
    (orjson.dumps(with_(GOOD, version=3)), "bad_model"),
    (orjson.dumps(with_(GOOD, ts="now")), "bad_timestamp"),
    (orjson.dumps(with_(GOOD, ts=-1)), "bad_timestamp"),
    (orjson.dumps(with_(GOOD, features=[1, 2])), "bad_features"),
    (orjson.dumps(with_(GOOD, features={"x": [1]})), "bad_features"),
    (orjson.dumps(with_(GOOD, features={"x": {"y": 1}})), "bad_features"),
    (orjson.dumps(with_(GOOD, prediction=None)), "bad_prediction"),
    (orjson.dumps(with_(GOOD, prediction=True)), "bad_prediction"),
    (orjson.dumps(with_(GOOD, score="high")), "non_numeric"),
    (orjson.dumps(with_(GOOD, labels={"a": 1})), "bad_labels"),
    (b'{"model":"m","version":"1","request_id":"r","ts":1,"features":{"x":NaN},"prediction":1}', "non_finite"),
    (b'{"model":"m","version":"1","request_id":"r","ts":1,"features":{},"prediction":Infinity}', "non_finite"),
]


def test_good_inference_and_defaults():
    ok, bad = dec(orjson.dumps(GOOD))
    assert bad == [] and len(ok) == 1
    i = ok[0]
    assert (i.model, i.version, i.request_id, i.prediction, i.score, i.labels) == ("churn", "v1", "r1", 1, 0.83, {"team": "growth"})
    assert i.features["tenure"] is None and i.features["vip"] is False
    ok, bad = dec(orjson.dumps(with_(GOOD, score=..., labels=..., prediction="yes")))
    assert ok[0].score is None and ok[0].labels is None and ok[0].prediction == "yes"


@pytest.mark.parametrize("raw,reason", BAD_INFERENCES)
def test_bad_inferences_have_their_reason(raw, reason):
    ok, bad = dec(raw)
    assert ok == [] and len(bad) == 1 and bad[0].reason == reason, (bad[0].reason, bad[0].error)
    assert bad[0].error and bad[0].original == raw


def test_empty_and_oversized():
    assert dec(None)[1][0].reason == "empty"
    assert decode_inferences(orjson.dumps(GOOD), max_bytes=10, max_batch=10)[1][0].reason == "oversized"
    big = orjson.dumps({"inferences": [GOOD] * 3})
    assert decode_inferences(big, max_bytes=100_000, max_batch=2)[1][0].reason == "oversized"


def test_mixed_batch_keeps_good_items():
    raw = orjson.dumps({"inferences": [GOOD, with_(GOOD, ts="x"), with_(GOOD, request_id="r2")]})
    ok, bad = dec(raw)
    assert [i.request_id for i in ok] == ["r1", "r2"]
    assert len(bad) == 1 and bad[0].batch_index == 1 and bad[0].reason == "bad_timestamp"
    assert orjson.loads(bad[0].original)["ts"] == "x" and bad[0].error.startswith("inferences[1]")


def test_feedback():
    ok, bad = decode_feedback(orjson.dumps(FB), max_bytes=1000)
    assert bad == [] and (ok[0].request_id, ok[0].label) == ("r1", 0)
    for d, reason in [(with_(FB, label=...), "missing_field"), (with_(FB, label=None), "bad_label"),
                      (with_(FB, label=[1]), "bad_label"), (with_(FB, extra=1), "unknown_field"),
                      (with_(FB, ts=None), "bad_timestamp"), (with_(FB, request_id=""), "bad_model")]:
        ok, bad = decode_feedback(orjson.dumps(d), max_bytes=1000)
        assert ok == [] and bad[0].reason == reason
    assert decode_feedback(b"{", max_bytes=1000)[1][0].reason == "not_json"
    assert decode_feedback(None, max_bytes=1000)[1][0].reason == "empty"


def test_decoder_agrees_with_the_json_schemas():
    jsonschema = pytest.importorskip("jsonschema")
    inf = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "inference.schema.json").read_text()))
    fb = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "feedback.schema.json").read_text()))
    cases = [orjson.dumps(GOOD), orjson.dumps({"inferences": [GOOD, GOOD]})]
    cases += [raw for raw, reason in BAD_INFERENCES if reason not in ("not_json", "invalid_utf8", "non_finite")]
    for raw in cases:
        ok, bad = dec(raw)
        assert inf.is_valid(json.loads(raw)) == (not bad), raw
    for d in (FB, with_(FB, label="cat"), with_(FB, label=None), with_(FB, version=...), with_(FB, extra=1)):
        ok, bad = decode_feedback(orjson.dumps(d), max_bytes=1000)
        assert fb.is_valid(d) == (not bad), d
    import yaml

    for name in ("inferences", "feedback"):
        spec = yaml.safe_load((SCHEMAS.parent / f"{name}.yaml").read_text())
        assert spec["setting"] == f"topic_{name}" and (SCHEMAS.parent / spec["schema"]).is_file()


def test_bad_items_of_a_batch_keep_their_original_json():
    from stream.inference_events import decode_inferences

    raw = (b'{"inferences":[{"model":"m","version":"1","request_id":"a","ts":1,"features":{},"prediction":NaN},'
           b'{"model":"m","version":"1","request_id":"b","ts":1,"features":{"x":1},"prediction":1,'
           b'"bogus":123456789012345678901234567890}]}')
    ok, bad = decode_inferences(raw, max_bytes=10_000, max_batch=10)
    assert len(bad) == 2
    assert b"NaN" in bad[0].original  # not turned into null
    assert b"123456789012345678901234567890" in bad[1].original  # a 100-bit integer survives


def test_utf8_encoded_surrogates_are_invalid_utf8():
    from stream.inference_events import decode_feedback

    raw = b'{"model":"m","version":"1","request_id":"\xed\xa0\x80","label":1,"ts":1}'
    ok, bad = decode_feedback(raw, max_bytes=10_000)
    assert not ok and bad[0].reason == "invalid_utf8"
