"""Decoding and validation of input events (the contract in ``topics/schemas``).

Validation is hand-written for speed (it runs on every message) and kept in step with the JSON
Schemas by ``tests/unit/test_events.py``, which checks both agree on generated payloads.
A rejected message never raises: it becomes a :class:`Rejection` that the worker turns into a
dead-letter record (reason, original bytes in base64, source topic/partition/offset, time).
"""
from __future__ import annotations

import base64
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

# used with fullmatch: with match, '$' also matches before a trailing newline ("up\n" passed)
_METRIC_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:.]*")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SAMPLE_KEYS = frozenset(("metric", "labels", "value", "ts"))
MAX_LABELS = 32


@dataclass(slots=True)
class Sample:
    """One valid metric sample."""

    metric: str
    labels: dict[str, str]
    value: float
    ts: float
    series: str  # series id: metric{k=v,...} with labels sorted


@dataclass(slots=True)
class Rejection:
    reason: str  # machine-readable code
    error: str  # human-readable detail
    original: bytes  # the whole message, or the one bad sample of a batch
    batch_index: int | None = None


def series_id(metric: str, labels: dict[str, str]) -> str:
    """The Kafka key of a series: metric name plus its labels sorted by name.

    >>> series_id("http_latency", {"route": "/x", "host": "a"})
    'http_latency{host=a,route=/x}'
    >>> series_id("up", {})
    'up'
    """
    if not labels:
        return metric
    return metric + "{" + ",".join(f"{k}={labels[k]}" for k in sorted(labels)) + "}"


# Validation caches for the fast path: metric names and label sets already found valid. Exporters
# send the same few thousand series over and over; a hit skips the regular expressions. Bounded:
# cleared when full (a miss only costs the full check).
_OK_METRICS: set[str] = set()
_OK_LABELS: dict[tuple, str] = {}  # (metric, *label items) -> series id
_CACHE_MAX = 100_000
_EMPTY: dict[str, str] = {}
_FLOAT = float
_MAX_EXACT_INT = 2 ** 53


def _check_sample(obj: Any) -> Sample | tuple[str, str]:
    """Validate one sample: a :class:`Sample`, or ``(reason, detail)``.

    The fast path accepts exactly what the full check accepts: a dict with only known fields, a
    cached valid metric name and label set, and finite float (or small integer) value and ts.
    Anything else takes the full check, which also fills the caches.
    """
    if type(obj) is dict:
        n = len(obj)
        labels = obj.get("labels", _EMPTY)
        if ((n == 4 and labels is not _EMPTY) or (n == 3 and labels is _EMPTY)) and type(labels) is dict:
            metric = obj.get("metric")
            value = obj.get("value")
            ts = obj.get("ts")
            tv = type(value)
            tt = type(ts)
            if ((tv is _FLOAT or (tv is int and -_MAX_EXACT_INT < value < _MAX_EXACT_INT))
                    and (tt is _FLOAT or (tt is int and 0 <= ts < _MAX_EXACT_INT))
                    and type(metric) is str and metric in _OK_METRICS):
                try:
                    series = _OK_LABELS.get((metric, *labels.items()))
                except TypeError:  # an unhashable label value: the full check names it
                    series = None
                if series is not None:
                    value = _FLOAT(value)
                    ts = _FLOAT(ts)
                    if value - value == 0.0 and ts - ts == 0.0 and ts >= 0.0:  # finite (NaN/inf fail)
                        return Sample(metric, labels, value, ts, series)
    res = _check_sample_full(obj)
    if type(res) is Sample:
        if len(_OK_LABELS) >= _CACHE_MAX:
            _OK_LABELS.clear()
            _OK_METRICS.clear()
        _OK_METRICS.add(res.metric)
        _OK_LABELS[(res.metric, *res.labels.items())] = res.series
    return res


def _check_sample_full(obj: Any) -> Sample | tuple[str, str]:
    if not isinstance(obj, dict):
        return "wrong_shape", f"a sample must be a JSON object, got {type(obj).__name__}"
    extra = obj.keys() - _SAMPLE_KEYS
    if extra:
        return "unknown_field", f"unknown field(s): {', '.join(sorted(map(str, extra)))}"
    for key in ("metric", "value", "ts"):
        if key not in obj:
            return "missing_field", f"missing field '{key}'"
    metric = obj["metric"]
    if not isinstance(metric, str) or not metric or len(metric) > 200 or not _METRIC_RE.fullmatch(metric):
        return "bad_metric", f"'metric' must be a Prometheus metric name, got {metric!r:.80}"
    value = obj["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "non_numeric", f"'value' must be a number, got {type(value).__name__}"
    try:
        value = float(value)
    except OverflowError:  # an integer beyond the float64 range (the slow JSON path keeps big ints)
        return "non_finite", "'value' must be finite, got an integer beyond the 64-bit float range"
    if not math.isfinite(value):
        return "non_finite", f"'value' must be finite, got {value}"
    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return "bad_timestamp", f"'ts' must be seconds since the epoch, got {type(ts).__name__}"
    try:
        ts = float(ts)
    except OverflowError:
        return "bad_timestamp", "'ts' must be a finite non-negative number, got an integer beyond the 64-bit float range"
    if not math.isfinite(ts) or ts < 0:
        return "bad_timestamp", f"'ts' must be a finite non-negative number, got {ts}"
    labels = obj.get("labels", {})
    if not isinstance(labels, dict):  # null, [], "" and 0 too: the schema says an object
        return "bad_labels", f"'labels' must be an object of strings, got {type(labels).__name__}"
    if len(labels) > MAX_LABELS:
        return "bad_labels", f"at most {MAX_LABELS} labels, got {len(labels)}"
    for k, v in labels.items():
        if not isinstance(v, str) or len(v) > 500 or len(k) > 100 or not _LABEL_RE.fullmatch(k):
            return "bad_labels", f"label {k!r:.60} must be a name with a string value"
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate escape ("\\ud800"): not text, cannot be sent on
                return "bad_labels", f"label {k!r:.60} has a value that is not valid Unicode text"
    return Sample(metric, labels, value, ts, series_id(metric, labels))


def encode_item(item: Any) -> bytes:
    """The JSON of one bad sample of a batch, faithful to what was sent.

    orjson would write NaN/Infinity as null and refuses integers beyond 64 bits and lone
    surrogates, all of which the slow JSON path lets through; the standard library keeps them.
    """
    try:
        return json.dumps(item, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep them as \\uXXXX escapes
        return json.dumps(item, ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode("ascii")


def parse_json(raw: bytes | None, max_bytes: int) -> tuple[Any, Rejection | None]:
    """Parse one message's JSON (shared by every input decoder); a rejection instead of raising.

    >>> parse_json(b'{"a": NaN}', 100)[0]
    {'a': nan}
    >>> parse_json(b'\\xff', 100)[1].reason
    'invalid_utf8'
    """
    if raw is None:
        return None, Rejection("empty", "message has no value (tombstone)", b"")
    if len(raw) > max_bytes:
        return None, Rejection("oversized", f"message of {len(raw)} bytes exceeds {max_bytes} (STREAM_MAX_MESSAGE_BYTES)", raw)
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as exc:
        # slow path, bad input only: JSON with NaN / Infinity literals gets a precise reason.
        # Decode strictly first: json.loads(bytes) would let UTF-8-encoded surrogates through.
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as uexc:
            return None, Rejection("invalid_utf8", f"not valid UTF-8: {uexc}", raw)
        try:
            return json.loads(text), None
        except Exception:  # noqa: BLE001
            return None, Rejection("not_json", f"not valid JSON: {exc}", raw)


def decode_metrics(raw: bytes | None, *, max_bytes: int, max_batch: int,
                   max_ts: float = math.inf) -> tuple[list[Sample], list[Rejection]]:
    """Decode one message from the metrics topic.

    Returns the valid samples and one rejection per bad message or bad sample of a batch; the
    good samples of a mixed batch are kept. A sample stamped after ``max_ts`` (the worker passes
    its clock plus ``STREAM_MAX_FUTURE_SECONDS``) is rejected as ``future_timestamp``: accepted,
    it would close its series' windows far ahead and turn every later sample into a late one.

    >>> ok, bad = decode_metrics(b'{"metric":"up","value":1,"ts":10}', max_bytes=1000, max_batch=10)
    >>> ok[0].series, bad
    ('up', [])
    >>> ok, bad = decode_metrics(b'{"samples":[{"metric":"up","value":1,"ts":1},{"metric":"up","value":"x","ts":2}]}',
    ...                          max_bytes=1000, max_batch=10)
    >>> len(ok), bad[0].reason, bad[0].batch_index
    (1, 'non_numeric', 1)
    """
    items, rej, single = metric_items(raw, max_bytes=max_bytes, max_batch=max_batch)
    if rej is not None:
        return [], [rej]
    good: list[Sample] = []
    bad: list[Rejection] = []
    for i, item in enumerate(items):
        res = _check_sample(item)
        if type(res) is Sample:
            if res.ts <= max_ts:
                good.append(res)
                continue
            res = _future(res.ts, max_ts)
        bad.append(sample_rejection(res, i, item, raw, single))
    return good, bad


def metric_items(raw: bytes | None, *, max_bytes: int, max_batch: int) -> tuple[list, Rejection | None, bool]:
    """The sample objects of one metrics message, before they are checked one by one:
    ``(items, None, single)``, or ``([], rejection, False)`` when the message as a whole is bad
    (not JSON, oversized, a batch of the wrong shape). ``single``: the message is one sample,
    not a batch."""
    obj, rej = parse_json(raw, max_bytes)
    if rej is not None:
        return [], rej, False
    if isinstance(obj, dict) and "samples" in obj:
        batch = obj["samples"]
        if len(obj) != 1:
            return [], Rejection("wrong_shape", "a batch object has only the field 'samples'", raw), False
        if not isinstance(batch, list) or not batch:
            return [], Rejection("wrong_shape", "'samples' must be a non-empty array", raw), False
        if len(batch) > max_batch:
            return [], Rejection("oversized", f"batch of {len(batch)} samples exceeds {max_batch} (STREAM_MAX_BATCH_SAMPLES)", raw), False
        return batch, None, False
    return [obj], None, True


def sample_rejection(res: tuple[str, str], i: int, item: Any, raw: bytes, single: bool) -> Rejection:
    """The rejection of one bad sample: the whole message when it is a single sample, else the
    sample's own JSON and its index in the batch."""
    if single:
        return Rejection(res[0], res[1], raw)
    return Rejection(res[0], f"samples[{i}]: {res[1]}", encode_item(item), i)


def _future(ts: float, max_ts: float) -> tuple[str, str]:
    return ("future_timestamp", f"'ts' {ts:.3f} is {ts - max_ts:.0f} s beyond the accepted horizon "
            f"{max_ts:.3f} (the worker's clock + STREAM_MAX_FUTURE_SECONDS)")


def deadletter_record(rej: Rejection, *, topic: str, partition: int, offset: int, key: bytes | None) -> dict:
    """The dead-letter event for a rejection (schema: topics/schemas/deadletter.schema.json)."""
    return {
        "reason": rej.reason,
        # the detail may quote input text, lone surrogates included: keep it encodable as UTF-8
        "error": rej.error.encode("utf-8", "backslashreplace").decode("utf-8"),
        "original_b64": base64.b64encode(rej.original).decode("ascii"),
        "batch_index": rej.batch_index,
        "source": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key_b64": base64.b64encode(key).decode("ascii") if key is not None else None,
        },
        "time": time.time(),
    }
