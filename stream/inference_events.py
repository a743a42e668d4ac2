"""Decoding and validation of model-inference and feedback events (``topics/schemas``).

Like :mod:`stream.events`: hand-written checks (they run on every message), never raising; a
bad message or a bad item of a batch becomes a :class:`stream.events.Rejection`, which the
worker turns into a dead-letter record with :func:`stream.events.deadletter_record`.

Reasons: ``empty``, ``oversized``, ``not_json``, ``invalid_utf8``, ``wrong_shape``,
``missing_field``, ``unknown_field``, ``bad_model`` (model / version / request_id not a
non-empty name), ``bad_timestamp``, ``bad_features``, ``bad_prediction``, ``bad_label``,
``non_numeric`` (score not a number), ``non_finite`` (NaN / infinity anywhere), ``bad_labels``.

>>> ok, bad = decode_inferences(b'{"model":"m","version":"1","request_id":"r1","ts":1,'
...                             b'"features":{"x":1.5,"c":"a"},"prediction":0.7}', max_bytes=10000, max_batch=10)
>>> ok[0].model, ok[0].features, bad
('m', {'x': 1.5, 'c': 'a'}, [])
>>> ok, bad = decode_feedback(b'{"model":"m","version":"1","request_id":"r1","label":"x"}', max_bytes=1000)
>>> bad[0].reason
'missing_field'
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


from stream.detect._binning import features_ok, inference_fast
from stream.events import Rejection, encode_item, parse_json

_MODEL_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_INFERENCE_KEYS = frozenset(("model", "version", "request_id", "ts", "features", "prediction", "score", "labels"))
_INFERENCE_REQUIRED = ("model", "version", "request_id", "ts", "features", "prediction")
_FEEDBACK_KEYS = frozenset(("model", "version", "request_id", "label", "ts"))
_FEEDBACK_REQUIRED = ("model", "version", "request_id", "label", "ts")
MAX_FEATURES = 1000
MAX_LABELS = 32
MAX_NAME = 200
MAX_STRING = 1000


@dataclass(slots=True)
class Inference:
    model: str
    version: str
    request_id: str
    ts: float
    features: dict[str, Any]  # name -> float | int | str | bool | None
    prediction: Any  # float | int | str
    score: float | None = None
    labels: dict[str, str] | None = None


@dataclass(slots=True)
class Feedback:
    model: str
    version: str
    request_id: str
    label: Any  # float | int | str
    ts: float


def _name(obj: dict, key: str, pattern: re.Pattern | None = None) -> str | tuple[str, str]:
    v = obj[key]
    if not isinstance(v, str) or not v or len(v) > MAX_NAME or (pattern is not None and not pattern.match(v)):
        return "bad_model", f"'{key}' must be a non-empty name of at most {MAX_NAME} characters, got {v!r:.80}"
    return v


def _double_int(v: Any) -> bool:
    """False for an integer beyond the range of a double (JSON allows any size)."""
    try:
        float(v)
    except OverflowError:
        return False
    return True


def _ts(obj: dict) -> float | tuple[str, str]:
    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return "bad_timestamp", f"'ts' must be seconds since the epoch, got {type(ts).__name__}"
    try:
        ts = float(ts)
    except OverflowError:
        ts = math.inf
    if not math.isfinite(ts) or ts < 0:
        return "bad_timestamp", f"'ts' must be a finite non-negative number, got {ts}"
    return ts


def _target(v: Any, key: str, reason: str) -> Any:
    """A prediction or label: a finite number or a string."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return reason, f"'{key}' must be a number or a string, got {type(v).__name__}"
    if isinstance(v, float) and not math.isfinite(v):
        return "non_finite", f"'{key}' must be finite, got {v}"
    if isinstance(v, int) and not _double_int(v):
        return "non_finite", f"'{key}' is beyond the range of a double"
    if isinstance(v, str) and len(v) > MAX_STRING:
        return reason, f"'{key}' is longer than {MAX_STRING} characters"
    return v


def _feature_problem(feats: dict) -> tuple[str, str] | None:
    """The first invalid feature of an inference as ``(reason, message)``, or None."""
    for k, v in feats.items():
        if not k or len(k) > MAX_NAME:
            return "bad_features", f"feature name {k!r:.60} must have 1 to {MAX_NAME} characters"
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, int):
            if not _double_int(v):
                return "non_finite", f"feature {k!r:.60} is beyond the range of a double"
            continue
        if isinstance(v, float):
            if not math.isfinite(v):
                return "non_finite", f"feature {k!r:.60} must be finite, got {v}"
            continue
        if isinstance(v, str):
            if len(v) > MAX_STRING:
                return "bad_features", f"feature {k!r:.60} is longer than {MAX_STRING} characters"
            continue
        return "bad_features", f"feature {k!r:.60} must be a number, string, boolean or null, got {type(v).__name__}"
    return None


_MODEL_CACHE: dict[str, bool] = {}  # model names known to match _MODEL_RE (the compiled fast path's)


def _check_inference(obj: Any) -> Inference | tuple[str, str]:
    inf = inference_fast(obj, Inference, _INFERENCE_KEYS, _MODEL_CACHE, _MODEL_RE, MAX_NAME, MAX_STRING,
                         MAX_FEATURES, MAX_LABELS)
    if inf is not None:
        return inf
    return _check_inference_slow(obj)


def _check_inference_slow(obj: Any) -> Inference | tuple[str, str]:
    """Every check, in order, naming the first problem (the fast path's fallback)."""
    if not isinstance(obj, dict):
        return "wrong_shape", f"an inference must be a JSON object, got {type(obj).__name__}"
    extra = obj.keys() - _INFERENCE_KEYS
    if extra:
        return "unknown_field", f"unknown field(s): {', '.join(sorted(map(str, extra)))}"
    for key in _INFERENCE_REQUIRED:
        if key not in obj:
            return "missing_field", f"missing field '{key}'"
    model = _name(obj, "model", _MODEL_RE)
    if isinstance(model, tuple):
        return model
    version = _name(obj, "version")
    if isinstance(version, tuple):
        return version
    rid = _name(obj, "request_id")
    if isinstance(rid, tuple):
        return rid
    ts = _ts(obj)
    if isinstance(ts, tuple):
        return ts
    feats = obj["features"]
    if not isinstance(feats, dict):
        return "bad_features", f"'features' must be an object, got {type(feats).__name__}"
    if len(feats) > MAX_FEATURES:
        return "bad_features", f"at most {MAX_FEATURES} features, got {len(feats)}"
    if not features_ok(feats, MAX_NAME, MAX_STRING):  # compiled fast path; the loop names the problem
        bad = _feature_problem(feats)
        if bad is not None:
            return bad
    pred = _target(obj["prediction"], "prediction", "bad_prediction")
    if isinstance(pred, tuple):
        return pred
    score = obj.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            return "non_numeric", f"'score' must be a number, got {type(score).__name__}"
        score = float(score) if _double_int(score) else math.inf
        if not math.isfinite(score):
            return "non_finite", f"'score' must be finite, got {score}"
    labels = obj.get("labels")
    if labels is not None:
        if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
            return "bad_labels", f"'labels' must be an object of at most {MAX_LABELS} strings"
        for k, v in labels.items():
            if not isinstance(v, str) or len(v) > 500 or not k or len(k) > 100:
                return "bad_labels", f"label {k!r:.60} must be a name with a string value"
    return Inference(model, version, rid, ts, feats, pred, score, labels or None)


def _check_feedback(obj: Any) -> Feedback | tuple[str, str]:
    if not isinstance(obj, dict):
        return "wrong_shape", f"feedback must be a JSON object, got {type(obj).__name__}"
    extra = obj.keys() - _FEEDBACK_KEYS
    if extra:
        return "unknown_field", f"unknown field(s): {', '.join(sorted(map(str, extra)))}"
    for key in _FEEDBACK_REQUIRED:
        if key not in obj:
            return "missing_field", f"missing field '{key}'"
    model = _name(obj, "model", _MODEL_RE)
    if isinstance(model, tuple):
        return model
    version = _name(obj, "version")
    if isinstance(version, tuple):
        return version
    rid = _name(obj, "request_id")
    if isinstance(rid, tuple):
        return rid
    ts = _ts(obj)
    if isinstance(ts, tuple):
        return ts
    label = _target(obj["label"], "label", "bad_label")
    if isinstance(label, tuple):
        return label
    return Feedback(model, version, rid, label, ts)


def decode_inferences(raw: bytes | None, *, max_bytes: int, max_batch: int) -> tuple[list[Inference], list[Rejection]]:
    """One message of the inferences topic: an inference or ``{"inferences": [...]}``.

    The good items of a mixed batch are kept; each bad one is rejected on its own.
    """
    obj, rej = parse_json(raw, max_bytes)
    if rej is not None:
        return [], [rej]
    if isinstance(obj, dict) and "inferences" in obj:
        batch = obj["inferences"]
        if len(obj) != 1:
            return [], [Rejection("wrong_shape", "a batch object has only the field 'inferences'", raw)]
        if not isinstance(batch, list) or not batch:
            return [], [Rejection("wrong_shape", "'inferences' must be a non-empty array", raw)]
        if len(batch) > max_batch:
            return [], [Rejection("oversized", f"batch of {len(batch)} inferences exceeds {max_batch} (STREAM_MAX_BATCH_SAMPLES)", raw)]
        good: list[Inference] = []
        bad: list[Rejection] = []
        for i, item in enumerate(batch):
            res = _check_inference(item)
            if isinstance(res, Inference):
                good.append(res)
            else:
                bad.append(Rejection(res[0], f"inferences[{i}]: {res[1]}", encode_item(item), i))
        return good, bad
    res = _check_inference(obj)
    if isinstance(res, Inference):
        return [res], []
    return [], [Rejection(res[0], res[1], raw)]


def decode_feedback(raw: bytes | None, *, max_bytes: int) -> tuple[list[Feedback], list[Rejection]]:
    """One message of the feedback topic (one label per message)."""
    obj, rej = parse_json(raw, max_bytes)
    if rej is not None:
        return [], [rej]
    res = _check_feedback(obj)
    if isinstance(res, Feedback):
        return [res], []
    return [], [Rejection(res[0], res[1], raw)]
