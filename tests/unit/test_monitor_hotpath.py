"""The compiled per-event paths agree with the plain Python definitions they replace."""
from __future__ import annotations

import math

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.detect import _binning
from stream.detect.baseline import _to_float
from stream.detect.monitor import _TYPE_CODES, type_of
from stream.inference_events import (
    _INFERENCE_KEYS,
    _MODEL_RE,
    MAX_FEATURES,
    MAX_LABELS,
    MAX_NAME,
    MAX_STRING,
    Inference,
    _check_inference_slow,
    decode_inferences,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.just(10**400), st.just(-10**400),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                    st.just("x" * (MAX_STRING + 1)), st.lists(st.integers(), max_size=2))
names = st.one_of(st.sampled_from(["m", "churn-v2", "a.b:c_d", "", "bad name", "x" * (MAX_NAME + 1), "m\n"]),
                  st.integers(), st.none())
feature_maps = st.dictionaries(st.sampled_from(["x", "y", "", "k" * (MAX_NAME + 1)]), scalars, max_size=4)


@st.composite
def inference_objects(draw):
    obj = {"model": draw(names), "version": draw(names), "request_id": draw(names),
           "ts": draw(st.one_of(st.floats(-1, 2e9), st.integers(-5, 10**30), st.just(10**400), st.booleans(),
                                st.just(math.nan), st.text(max_size=2))),
           "features": draw(st.one_of(feature_maps, st.lists(st.integers(), max_size=1))),
           "prediction": draw(scalars)}
    for k in ("score", "labels", "extra"):
        if draw(st.booleans()):
            obj[k] = draw(st.one_of(scalars, st.dictionaries(st.sampled_from(["a", "", "l" * 101]),
                                                              st.one_of(st.text(max_size=3), st.integers()),
                                                              max_size=2)))
    for k in draw(st.lists(st.sampled_from(["model", "ts", "features", "prediction"]), max_size=1)):
        obj.pop(k, None)
    return obj


@FAST
@given(inference_objects())
def test_fast_inference_path_accepts_only_what_the_full_check_accepts(obj):
    fast = _binning.inference_fast(obj, Inference, _INFERENCE_KEYS, {}, _MODEL_RE, MAX_NAME, MAX_STRING,
                                   MAX_FEATURES, MAX_LABELS)
    slow = _check_inference_slow(obj)
    if fast is not None:
        assert isinstance(slow, Inference) and fast == slow
        assert type(fast.ts) is float and (fast.score is None or type(fast.score) is float)


@FAST
@given(feature_maps)
def test_features_ok_is_the_python_rule(feats):
    from stream.inference_events import _feature_problem
    assert _binning.features_ok(feats, MAX_NAME, MAX_STRING) == (_feature_problem(feats) is None)


def test_integers_beyond_double_range_are_rejected_not_crashing():
    big = "1" + "0" * 400  # valid JSON; orjson refuses it, the stdlib fallback parses it
    fields = {"x": '{"x": %s}', "prediction": "%s", "score": "-%s", "ts": "%s"}
    for field, text in fields.items():
        body = {"model": '"m"', "version": '"1"', "request_id": '"r"', "ts": "1", "features": '{"x": 1}',
                "prediction": "1"}
        body["features" if field == "x" else field] = text % big
        raw = ("{" + ", ".join(f'"{k}": {v}' for k, v in body.items()) + "}").encode()
        ok, bad = decode_inferences(raw, max_bytes=10**6, max_batch=10)
        assert ok == [] and bad[0].reason in ("non_finite", "bad_timestamp"), (field, bad)


@FAST
@given(st.lists(st.dictionaries(st.sampled_from(["a", "b", "c", "new"]), scalars, max_size=4), min_size=1,
                max_size=12))
def test_scan_records_equals_type_of_and_to_float(rows):
    fields = ("a", "b", "c")
    expected = np.array([1, 2, 0], dtype=np.int32)
    numcol = np.array([0, -1, 1], dtype=np.int32)
    X = np.empty((len(rows), 2))
    tally = np.zeros((3, 5), dtype=np.int64)
    extra = _binning.scan_records(rows, fields, expected, numcol, X, tally, _to_float)
    for i, k in enumerate(fields):
        assert tally[i, 0] == sum(k not in r for r in rows)
        for t, code in _TYPE_CODES.items():
            assert tally[i, 1 + code] == sum(k in r and type_of(r[k]) == t for r in rows), (k, t)
    for r, row in enumerate(rows):
        for k, c in (("a", 0), ("c", 1)):
            want = _to_float(row.get(k))
            assert (math.isnan(X[r, c]) and math.isnan(want)) or X[r, c] == want
    assert extra == [r for r, row in enumerate(rows) if "new" in row]


def _stream(seed=0, n=3000):
    from stream.inference_events import Feedback
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        model = "a" if rng.random() < 0.7 else "b"
        version = "v1" if i < n // 2 or rng.random() < 0.3 else "v2"
        shift = 1.5 if i > n * 0.6 else 0.0
        rid = f"r{i}" if rng.random() > 0.01 else "dup"  # a few repeated request ids
        items.append(Inference(model, version, rid, 1.7e9 + i, {"x": float(rng.normal(shift)),
                                                               "c": str(rng.choice(list("pqr")))},
                               int(rng.random() < 0.3 + 0.3 * (shift > 0)), None, None))
        if rng.random() < 0.5:
            items.append(Feedback(model, version, rid, int(rng.random() < 0.3), 1.7e9 + i + 2))
    return items


def test_observe_many_is_observe_in_order():
    from stream.detect.monitor import Monitors
    from stream.detect.monitor_spec import MonitorSpec
    from stream.inference_events import Feedback
    spec = MonitorSpec(baseline_size=200, window=100, compare_every=20, max_versions=2,
                       performance=__import__("stream.detect.monitor_spec", fromlist=["x"]).PerformancePolicy(
                           max_pending=150, join_ttl_seconds=400.0))
    items = _stream()
    one, many = Monitors([spec]), Monitors([spec])
    a1, a2 = [], []
    batch: list = []
    for it in items:
        if isinstance(it, Feedback):
            a1 += one.feedback(it)
            a2 += many.observe_many(batch)
            batch = []
            a2 += many.feedback(it)
        else:
            a1 += one.observe(it)
            batch.append(it)
            if len(batch) == 7:
                a2 += many.observe_many(batch)
                batch = []
    a2 += many.observe_many(batch)
    strip = lambda al: [{k: v for k, v in a.items() if k != "created_at"} for a in al]  # noqa: E731
    assert a1 and strip(a1) == strip(a2)
    for m in ("a", "b"):
        assert one.export_state(m) == many.export_state(m)
        assert one.models[m].stats == many.models[m].stats


def test_state_with_the_first_join_store_format_still_loads():
    import struct
    from stream.detect.monitor import Monitors
    from stream.detect.monitor_spec import MonitorSpec
    mon = Monitors([MonitorSpec(baseline_size=50)])
    for it in _stream(n=300):
        if isinstance(it, Inference):
            mon.observe(it)
        else:
            mon.feedback(it)
    blob = mon.export_state("a")
    (n,) = struct.unpack_from("<I", blob, 1)
    head = orjson.loads(blob[5:5 + n])
    assert isinstance(head["pending_inf"], dict) and head["pending_inf"]["ids"]
    for k in ("pending_inf", "pending_fb"):  # the first format: [id, *entry] rows
        head[k] = [[i, *e] for i, e in zip(head[k]["ids"], head[k]["entries"])]
    h = orjson.dumps(head)
    old = blob[:1] + struct.pack("<I", len(h)) + h + blob[5 + n:]
    again = Monitors([MonitorSpec(baseline_size=50)])
    again.import_state("a", old)
    assert again.models["a"].pending_inf == mon.models["a"].pending_inf
    assert again.models["a"].pending_fb == mon.models["a"].pending_fb
    assert again.export_state("a") == blob


@FAST
@given(st.lists(st.tuples(st.sampled_from(["put", "pop", "expire"]), st.integers(0, 12), st.integers(0, 40)),
                max_size=200))
def test_join_store_is_a_fifo_expiring_ordered_dict(ops):
    from collections import OrderedDict

    from stream.detect.monitor import _JoinStore
    js, ref = _JoinStore(), OrderedDict()
    now = 0
    for op, key, t in ops:
        rid = f"r{key}"
        if op == "put":
            now += 1
            js.put(rid, ("v", key, float(now)))
            ref[rid] = ("v", key, float(now))
            ref.move_to_end(rid)
        elif op == "pop":
            assert js.pop(rid, None) == ref.pop(rid, None)
        else:
            cap, horizon = t % 7, float(now - t)
            n = 0
            while ref and (len(ref) > cap or next(iter(ref.values()))[2] < horizon):
                ref.popitem(last=False)
                n += 1
            assert js.expire(horizon, cap) == n
        assert list(js.items()) == list(ref.items())
    again = _JoinStore.load({"ids": list(js), "entries": list(js.values())})
    assert list(again.items()) == list(ref.items())
