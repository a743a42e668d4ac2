"""Property-based fuzzing of the metrics input, through the real broker and one worker.

Hypothesis generates well over 10,000 messages, good and bad mixed: not JSON, invalid UTF-8, wrong
types, NaN/Infinity literals, huge numbers, lone surrogates, missing/unknown fields, bad names and
labels, oversized messages (STREAM_MAX_MESSAGE_BYTES is small here), batches of the wrong shape and
batches mixing good and bad samples. Every message carries the outcome its generator intended
(good samples, and per bad message or bad batch sample its reason). Before anything reaches Kafka,
each message is checked three ways: the intended outcome, the pure decoder
(:func:`stream.events.decode_metrics`) and an independent oracle (stdlib ``json`` plus the JSON
Schema ``topics/schemas/metric.schema.json``, with ECMA-262 anchors and IEEE-754 range) must agree.

Then all of them go through a real worker, and the test checks: the worker is alive; every bad
message or bad batch sample is dead-lettered exactly once (matched by source partition + offset +
batch index) with the intended reason and the decoder's original bytes; every good sample was
processed (the worker's /metrics counter, and the samples forwarded to the internal entity topic).
"""
from __future__ import annotations

import base64
import json
import math
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stream.events import decode_metrics
from tests.integration.test_restart import _caught_up

ROOT = Path(__file__).resolve().parents[2]
MAX_BYTES = 2048
MAX_BATCH = 8
N_EXAMPLES = 10_000
T0 = 1_700_000_000.0

# ------------------------------------------------------------------------------------------
# the independent oracle: stdlib json + the JSON Schema, with ECMA-262 anchors and float64 range

_SCHEMA = json.loads((ROOT / "topics/schemas/metric.schema.json").read_text())


def _validators():
    import jsonschema

    cls = jsonschema.validators.validator_for(_SCHEMA)
    sample_schema = {**_SCHEMA["$defs"]["sample"], "$defs": _SCHEMA["$defs"]}
    batch = dict(_SCHEMA["oneOf"][1])
    batch["properties"] = {"samples": {k: v for k, v in batch["properties"]["samples"].items() if k != "items"}}
    return cls(sample_schema), cls(batch)


SAMPLE_V, BATCH_SHAPE_V = _validators()
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:.]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _finite64(x) -> bool:
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _utf8_encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _oracle_sample_ok(item) -> bool:
    """A sample is good when the schema says so and the parts the schema cannot say hold too."""
    if not SAMPLE_V.is_valid(item):
        return False
    # ECMA-262 '$' does not match before a trailing newline (Python's re.search '$' does)
    if not _NAME.fullmatch(item["metric"]):
        return False
    labels = item.get("labels", {})
    if any(not _LABEL.fullmatch(k) for k in labels):
        return False
    if any(not _utf8_encodable(v) for v in labels.values()):  # lone surrogates cannot be UTF-8
        return False
    return _finite64(item["value"]) and _finite64(item["ts"])


def oracle(raw: bytes | None) -> tuple[str | None, list[bool]]:
    """(whole-message reason or None, per-sample validity) without using stream.events."""
    if raw is None:
        return "empty", []
    if len(raw) > MAX_BYTES:
        return "oversized", []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8", []
    try:
        obj = json.loads(text)
    except ValueError:
        return "not_json", []
    if isinstance(obj, dict) and "samples" in obj:
        if not BATCH_SHAPE_V.is_valid(obj):
            return "wrong_shape", []
        if len(obj["samples"]) > MAX_BATCH:
            return "oversized", []
        return None, [_oracle_sample_ok(x) for x in obj["samples"]]
    return None, [_oracle_sample_ok(obj)]


# ------------------------------------------------------------------------------------------
# generators: each returns (python object or raw bytes, intended reason or None)

@dataclass
class Msg:
    raw: bytes | None
    whole: str | None  # reason for the whole message, or None
    samples: list[str | None]  # per sample: None (good) or the reason of its one defect
    batch: bool = False


METRICS = st.sampled_from(["http_latency_ms", "errors_total", "queue:depth", "pool.wait_seconds", "up"])
HOSTS = st.sampled_from([f"h{i}" for i in range(6)])
name_text = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:.]{0,30}", fullmatch=True)
label_key = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
label_val = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70)
good_ts = st.floats(T0, T0 + 7200) | st.just(0) | st.integers(0, 2**40) | st.floats(0, 1e15)
ANY_LABELS = st.dictionaries(label_key, label_val, max_size=4)


@st.composite
def good_sample(draw) -> dict:
    if draw(st.integers(0, 19)) < 19:  # mostly a few series (bounded worker state), sometimes anything
        metric, labels = draw(METRICS), {"host": draw(HOSTS)}
    else:
        metric, labels = draw(name_text), draw(ANY_LABELS)
    d = {"metric": metric, "value": draw(finite), "ts": draw(good_ts)}
    if labels or draw(st.booleans()):
        d["labels"] = labels
    return d


GOOD = good_sample()
NAN_LITERALS = st.sampled_from([float("nan"), float("inf"), float("-inf")])
NON_NUMBERS = st.one_of(st.text(max_size=10), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
HUGE = st.integers(309, 400).map(lambda k: 10**k)  # not representable as a 64-bit float
DEFECTS = st.sampled_from(["unknown_field", "missing_field", "bad_metric", "non_numeric", "non_finite",
                           "bad_timestamp", "bad_labels"])
UNKNOWN_NAME = (st.text(max_size=12) | st.text(max_size=3).map(lambda k: k + "\udc80")).filter(
    lambda k: k not in ("metric", "labels", "value", "ts", "samples"))
UNKNOWN_VALUE = st.integers() | st.text(max_size=5) | st.none() | NAN_LITERALS | HUGE
REQUIRED = st.sampled_from(["metric", "value", "ts"])
BAD_METRIC = st.one_of(
    st.integers(), st.none(), st.booleans(), st.lists(st.text(max_size=3), max_size=2), st.just(""),
    st.text(min_size=1, max_size=20).filter(lambda s: not _NAME.fullmatch(s)),
    name_text.map(lambda s: s + "\n"), st.just("a" * 201))
BAD_TS = st.one_of(NON_NUMBERS, NAN_LITERALS, HUGE, st.floats(max_value=-1e-300, allow_infinity=False),
                   st.integers(max_value=-1))
BAD_LABELS = st.one_of(
    st.none(), st.lists(st.text(max_size=3), max_size=2), st.text(max_size=4), st.integers(), st.booleans(),
    st.dictionaries(label_key, st.integers() | st.none() | st.booleans(), min_size=1, max_size=2),
    st.dictionaries(st.text(max_size=8).filter(lambda k: not _LABEL.fullmatch(k)), label_val, min_size=1, max_size=2),
    label_key.map(lambda k: {k + "\n": "x"}), st.just({"k" * 101: "x"}), st.just({"k": "v" * 501}),
    st.just({f"l{i}": "v" for i in range(33)}),
    st.text(min_size=1, max_size=3).map(lambda s: {"host": s + "\ud800"}))


@st.composite
def bad_sample(draw) -> tuple[dict, str]:
    d = draw(GOOD)
    kind = draw(DEFECTS)
    if kind == "unknown_field":
        d[draw(UNKNOWN_NAME)] = draw(UNKNOWN_VALUE)
    elif kind == "missing_field":
        del d[draw(REQUIRED)]
    elif kind == "bad_metric":
        d["metric"] = draw(BAD_METRIC)
    elif kind == "non_numeric":
        d["value"] = draw(NON_NUMBERS)
    elif kind == "non_finite":
        d["value"] = draw(NAN_LITERALS | HUGE)
    elif kind == "bad_timestamp":
        d["ts"] = draw(BAD_TS)
    else:
        d["labels"] = draw(BAD_LABELS)
    return d, kind


BAD = bad_sample()


def _dumps(obj, draw) -> bytes:
    """JSON bytes the way different producers write them (stdlib writes NaN/Infinity literals)."""
    try:
        if draw(st.booleans()):
            return json.dumps(obj, ensure_ascii=False, allow_nan=True).encode("utf-8")
    except UnicodeEncodeError:
        pass
    return json.dumps(obj, ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode()


KINDS = st.sampled_from(["good", "good", "good", "bad", "bad", "batch_good", "batch_mixed", "batch_mixed",
                         "batch_shape", "batch_many", "oversized", "not_json", "invalid_utf8", "top_shape", "empty"])
ITEM_KIND = st.sampled_from(["good", "good", "bad", "bad", "bad", "shape"])
NOT_SAMPLE = st.one_of(st.integers(), st.text(max_size=4), st.none(), st.lists(st.integers(), max_size=2))
BATCH_SHAPE = st.one_of(
    st.fixed_dictionaries({"samples": st.one_of(st.just([]), st.none(), st.integers(), st.text(max_size=5),
                                                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))}),
    st.fixed_dictionaries({"samples": st.lists(GOOD, min_size=1, max_size=2), "extra": st.integers()}))
NOT_JSON = st.one_of(
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    st.sampled_from([b"", b"nan", b"{'metric': 'up'}", b'{"metric": "up", "value": 1,',
                     b'{"metric":"up","value":1,"ts":1}\n{"metric":"up","value":2,"ts":2}',
                     b'{"metric":"up","value":0x10,"ts":1}', b'{"metric":"up","value":+1,"ts":1}']))
BAD_BYTES = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"])
ANY_SAMPLE = GOOD | BAD.map(lambda t: t[0])
TOP_SHAPE = st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5), st.none(),
                      st.booleans(), st.just(float("nan")))


@st.composite
def message(draw) -> Msg:
    kind = draw(KINDS)
    if kind == "good":
        return Msg(_dumps(draw(GOOD), draw), None, [None])
    if kind == "bad":
        d, reason = draw(BAD)
        return Msg(_dumps(d, draw), None, [reason])
    if kind in ("batch_good", "batch_mixed"):
        n = draw(st.integers(1, 3) | st.just(MAX_BATCH))
        items, reasons = [], []
        for _ in range(n):
            r = draw(ITEM_KIND) if kind == "batch_mixed" else "good"
            if r == "good":
                items.append(draw(GOOD))
                reasons.append(None)
            elif r == "bad":
                d, reason = draw(BAD)
                items.append(d)
                reasons.append(reason)
            else:
                items.append(draw(NOT_SAMPLE))
                reasons.append("wrong_shape")
        raw = _dumps({"samples": items}, draw)
        if len(raw) > MAX_BYTES:
            return Msg(raw, "oversized", [])
        return Msg(raw, None, reasons, batch=True)
    if kind == "batch_shape":
        obj = draw(BATCH_SHAPE)
        return Msg(_dumps(obj, draw), "wrong_shape", [])
    if kind == "batch_many":
        raw = orjson.dumps({"samples": [{"metric": "up", "value": 1, "ts": T0 + i} for i in range(MAX_BATCH + 1
                                                                                                   + draw(st.integers(0, 20)))]})
        return Msg(raw, "oversized", [])
    if kind == "oversized":
        good = draw(st.booleans())
        d = draw(GOOD) if good else draw(BAD)[0]
        body = _dumps(d, draw)
        pad = b" " * (MAX_BYTES + 1 - len(body) + draw(st.integers(0, 3000)))
        return Msg(body[:1] + pad + body[1:] if len(body) <= MAX_BYTES else body, "oversized", [])
    if kind == "not_json":
        raw = draw(NOT_JSON)
        try:
            json.loads(raw.decode("utf-8"))
            return draw(MESSAGE)  # happened to be valid JSON: draw another message instead
        except (ValueError, UnicodeDecodeError):
            pass
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return Msg(raw, "invalid_utf8", [])
        return Msg(raw, "not_json", [])
    if kind == "invalid_utf8":
        body = _dumps(draw(ANY_SAMPLE), draw)
        bad_bytes = draw(BAD_BYTES)
        at = body.index(b'"', 1) + 1 if b'"' in body[1:] else 1  # inside the first key string
        return Msg(body[:at] + bad_bytes + body[at:], "invalid_utf8", [])
    if kind == "top_shape":
        obj = draw(TOP_SHAPE)
        return Msg(_dumps(obj, draw), None, ["wrong_shape"])
    return Msg(None, "empty", [])  # a tombstone


MESSAGE = message()


# ------------------------------------------------------------------------------------------

def _expected(m: Msg) -> tuple[int, list[tuple[int | None, str]]]:
    if m.whole:
        return 0, [(None, m.whole)]
    if m.batch:
        return sum(r is None for r in m.samples), [(i, r) for i, r in enumerate(m.samples) if r]
    return sum(r is None for r in m.samples), [(None, r) for r in m.samples if r]


def _same_json(a, b) -> bool:
    """Equal as JSON values, NaN equal to NaN; numbers as float64 (orjson reads 65-bit ints as floats)."""
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        if isinstance(a, float) or isinstance(b, float):
            fa, fb = float(a), float(b)  # an overflow here is a real difference: let it raise
            return fa == fb or (math.isnan(fa) and math.isnan(fb))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def generate_messages(send=None) -> list[Msg]:
    """Run hypothesis; each example is checked (intent == decoder == oracle), kept and sent."""
    out: list[Msg] = []

    @settings(max_examples=N_EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink))
    @given(MESSAGE)
    def check(m: Msg):
        n_good, expect = _expected(m)
        good, bad = decode_metrics(m.raw, max_bytes=MAX_BYTES, max_batch=MAX_BATCH)
        got = [(r.batch_index, r.reason) for r in bad]
        assert (len(good), got) == (n_good, expect), (m, [r.error for r in bad])
        whole, valid = oracle(m.raw)
        if m.whole:
            assert whole == m.whole, (m, whole)
        else:
            assert whole is None and [r is None for r in m.samples] == valid, (m, whole, valid)
        for r in bad:  # the original bytes: the message, or the bad sample re-encoded faithfully
            if r.batch_index is None:
                assert r.original == (m.raw or b"")
            else:
                item = json.loads(m.raw)["samples"][r.batch_index]
                assert _same_json(json.loads(r.original), item), (r.original, item)
        if send is not None:
            send(len(out), m)
        out.append(m)

    check()
    return out


def _metric_value(body: str, name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in body.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("raw, reason", [
    (b'{"metric":"up","value":1' + b"0" * 400 + b',"ts":1}', "non_finite"),  # raised OverflowError
    (b'{"metric":"up","value":1,"ts":1' + b"0" * 400 + b"}", "bad_timestamp"),  # raised OverflowError
    (b'{"metric":"up","labels":{"a":"\\ud800"},"value":1,"ts":1}', "bad_labels"),  # crashed the worker later
    (b'{"metric":"up\\n","value":1,"ts":1}', "bad_metric"),  # '$' matched before the newline
    (b'{"metric":"up","labels":{"a\\n":"x"},"value":1,"ts":1}', "bad_labels"),
    (b'{"metric":"up","labels":null,"value":1,"ts":1}', "bad_labels"),  # falsy labels were taken as {}
    (b'{"metric":"up","labels":[],"value":1,"ts":1}', "bad_labels"),
    (b'{"metric":"up","value":NaN,"ts":1,"\xed\xa0\x80":1}', "invalid_utf8"),  # json.loads used surrogatepass
])
def test_decoder_regressions_found_by_this_fuzzer(raw, reason):
    good, bad = decode_metrics(raw, max_bytes=MAX_BYTES, max_batch=MAX_BATCH)
    assert not good and [r.reason for r in bad] == [reason], [r.error for r in bad]
    from stream.events import deadletter_record

    orjson.dumps(deadletter_record(bad[0], topic="t", partition=0, offset=0, key=None))  # must not raise


def test_bad_batch_samples_keep_their_original_json():
    raw = b'{"samples":[{"metric":"up","value":NaN,"ts":1},{"metric":"up","value":1,"ts":1,"x":1' + b"0" * 30 \
        + b'},{"metric":"up","value":1,"ts":1,"\\udc80":2}]}'
    good, bad = decode_metrics(raw, max_bytes=MAX_BYTES, max_batch=MAX_BATCH)
    assert not good and [r.reason for r in bad] == ["non_finite", "unknown_field", "unknown_field"]
    assert bad[0].original == b'{"metric":"up","value":NaN,"ts":1}'  # orjson wrote "value":null
    assert bad[1].original.endswith(b'"x":1' + b"0" * 30 + b"}")  # orjson raised: 64-bit range
    assert bad[2].original.endswith(b'"\\udc80":2}')  # orjson raised: surrogates
    from stream.events import deadletter_record

    for r in bad:
        orjson.dumps(deadletter_record(r, topic="t", partition=0, offset=0, key=None))


@pytest.mark.kafka
def test_fuzzed_input_is_deadlettered_exactly_once_and_good_samples_are_processed(kafka_bootstrap, tmp_path):
    from confluent_kafka import Producer

    from tests.conftest import StreamEnv

    t_start = time.monotonic()
    # good timestamps reach year 30,000 here; the future-timestamp rule has its own unit test
    env = StreamEnv(kafka_bootstrap, tmp_path, STREAM_MAX_MESSAGE_BYTES=str(MAX_BYTES),
                    STREAM_MAX_BATCH_SAMPLES=str(MAX_BATCH), STREAM_MAX_FUTURE_SECONDS="1e18")
    env.cli("topics", "apply")
    try:
        worker = env.start_worker()
        topic = env.env["STREAM_TOPIC_METRICS"]
        where: dict[int, tuple[int, int]] = {}
        errors: list[str] = []

        def delivered(i):
            def cb(err, msg):
                if err is not None:
                    errors.append(str(err))
                else:
                    where[i] = (msg.partition(), msg.offset())
            return cb

        p = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 50, "enable.idempotence": True,
                      "message.max.bytes": 1_000_000})

        def send(i: int, m: Msg) -> None:  # each message goes out as soon as it is generated and checked
            while True:
                try:
                    p.produce(topic, value=m.raw, key=f"fuzz-{i}".encode(), on_delivery=delivered(i))
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)

        msgs = generate_messages(send)
        t_gen = time.monotonic() - t_start
        assert p.flush(60) == 0 and not errors, errors[:3]
        assert len(msgs) >= N_EXAMPLES and len(where) == len(msgs), (len(msgs), len(where))
        expectations = [_expected(m) for m in msgs]
        n_good = sum(e[0] for e in expectations)
        n_bad = sum(len(e[1]) for e in expectations)
        reasons: dict[str, int] = {}
        for _, rej in expectations:
            for _, r in rej:
                reasons[r] = reasons.get(r, 0) + 1
        print(f"\nfuzz: {len(msgs)} messages generated, cross-checked and produced in {t_gen:.1f}s: "
              f"{n_good} good samples, {n_bad} rejections {dict(sorted(reasons.items()))}")
        # every reason of the contract is exercised
        assert set(reasons) >= {"not_json", "invalid_utf8", "missing_field", "unknown_field", "non_numeric",
                                "non_finite", "bad_timestamp", "bad_metric", "bad_labels", "wrong_shape",
                                "oversized", "empty"}
        t0 = time.monotonic()
        _caught_up(env, 150)
        caught = time.monotonic() - t0
        print(f"fuzz: worker caught up {caught:.1f}s after the last message was generated")
        assert worker.poll() is None, "worker died:\n" + env.worker_log()[-3000:]

        dead = env.consume(env.env["STREAM_TOPIC_DEADLETTER"], until=lambda r: len(r) >= n_bad, timeout=60)
        dead += env.consume(env.env["STREAM_TOPIC_DEADLETTER"], until=lambda r: False, timeout=3)[len(dead):]
        got: dict[tuple[int, int, int | None], list[dict]] = {}
        for d in dead:
            got.setdefault((d["source"]["partition"], d["source"]["offset"], d["batch_index"]), []).append(d)
        dupes = {k: len(v) for k, v in got.items() if len(v) > 1}
        assert not dupes, f"dead-lettered more than once: {list(dupes.items())[:5]}"
        missing, wrong = [], []
        for i, (m, (_, rej)) in enumerate(zip(msgs, expectations)):
            part, off = where[i]
            _, bad = decode_metrics(m.raw, max_bytes=MAX_BYTES, max_batch=MAX_BATCH)
            originals = {r.batch_index: r.original for r in bad}
            for bi, reason in rej:
                recs = got.pop((part, off, bi), None)
                if recs is None:
                    missing.append((part, off, bi, reason, m.raw[:80] if m.raw else m.raw))
                    continue
                rec = recs[0]
                if (rec["reason"] != reason or base64.b64decode(rec["original_b64"]) != originals[bi]
                        or rec["source"]["topic"] != topic
                        or base64.b64decode(rec["source"]["key_b64"]) != f"fuzz-{i}".encode()):
                    wrong.append((reason, rec))
        assert not missing, f"{len(missing)} rejections not dead-lettered, e.g. {missing[:5]}"
        assert not wrong, f"{len(wrong)} dead-letter records wrong, e.g. {wrong[:3]}"
        assert not got, f"{len(got)} unexpected dead-letter records, e.g. {list(got.values())[:3]}"

        body = urllib.request.urlopen(f"http://127.0.0.1:{env.env['STREAM_WEB_PORT']}/metrics",
                                      timeout=10).read().decode()
        assert _metric_value(body, "stream_events_total", topic=topic, outcome="processed") == n_good
        assert _metric_value(body, "stream_events_total", topic=topic, outcome="deadlettered") == n_bad
        for reason, n in reasons.items():
            assert _metric_value(body, "stream_deadletter_total", reason=reason) == n, reason
        # the good samples reached the detectors' entity topic, each once
        fwd_topic = f"{env.env['STREAM_APP_ID']}-entity-samples"
        count = [0]

        from stream.routing import decode_payload

        def n_samples(recs):  # internal messages: {entity: (labels, [[part, offset, rows], ...])} decoded
            return sum(len(rows) for r in recs for _labels, chunks in decode_payload(r, None).values()
                       for _p, _o, rows in chunks)

        def enough(recs):
            count[0] = n_samples(recs)
            return count[0] >= n_good

        fwd = env.consume(fwd_topic, until=enough, timeout=60, raw=True)
        assert n_samples(fwd) == n_good
        assert worker.poll() is None, "worker died:\n" + env.worker_log()[-3000:]
        print(f"fuzz: {len(dead)} dead-letter records, {n_good} good samples processed; "
              f"total {time.monotonic() - t_start:.1f}s")
    finally:
        env.stop()
