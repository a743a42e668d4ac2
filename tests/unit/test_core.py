"""Unit tests of the pure core: events, windows (vs numpy), specs, settings. No broker."""
from __future__ import annotations

import math
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from stream.detect import _window
from stream.detect.spec import DetectorSpec, SpecError, load_specs
from stream.detect.window import WindowStore
from stream.events import decode_metrics
from stream.settings import Settings, SettingsError, settings_table

ROOT = Path(__file__).resolve().parents[2]
METRIC_SCHEMA = orjson.loads((ROOT / "topics/schemas/metric.schema.json").read_bytes())


def test_window_aggregation_is_the_compiled_module():
    assert Path(_window.__file__).suffix == ".so", _window.__file__


@given(st.lists(st.tuples(st.floats(0, 59.999), st.floats(-1e6, 1e6)), min_size=1, max_size=80))
@hsettings(max_examples=200, deadline=None)
def test_window_summary_matches_numpy(samples):
    store = WindowStore(60.0, buffer_size=128)
    for i, (t, v) in enumerate(samples):
        store.add("e", "m", t, v, offset=100 + i, partition=3)
    (w,) = store.close_until(1e9)
    s = w.summary["m"]
    ts = np.array([t for t, _ in samples])
    vs = np.array([v for _, v in samples])
    assert s["count"] == len(vs)
    assert s["mean"] == pytest.approx(vs.mean(), rel=1e-9, abs=1e-6)
    assert s["std"] == pytest.approx(vs.std(), rel=1e-6, abs=1e-6)
    assert (s["min"], s["max"]) == (vs.min(), vs.max())
    assert s["median"] == pytest.approx(np.median(vs), rel=1e-12, abs=1e-9)
    q1, q3 = np.quantile(vs, [0.25, 0.75])
    assert s["iqr"] == pytest.approx(q3 - q1, rel=1e-9, abs=1e-6)
    first = vs[np.argmin(ts)]  # earliest event time (first occurrence on ties)
    last = vs[len(ts) - 1 - np.argmax(ts[::-1])]  # latest event time (last occurrence on ties)
    assert s["delta"] == pytest.approx(last - first, rel=1e-12, abs=1e-9)
    if ts.var() > 1e-9:
        slope = np.cov(ts, vs, bias=True)[0, 1] / ts.var()
        assert s["slope"] == pytest.approx(slope, rel=1e-6, abs=1e-6)
    assert (s["first_offset"], s["last_offset"], s["partition"]) == (100, 100 + len(vs) - 1, 3)


def test_window_late_samples_are_counted_not_folded():
    store = WindowStore(60.0)
    store.add("e", "m", 10.0, 1.0)
    store.add("e", "m", 70.0, 1.0)
    assert [w.start for w in store.close_entity("e", 119.0)] == [0.0]
    assert store.add("e", "m", 30.0, 5.0) is False and store.late == 1


def test_window_state_round_trip():
    a, b = WindowStore(60.0), WindowStore(60.0)
    for i in range(50):
        a.add("e", "m", float(i), float(i * i))
    b.import_entity("e", orjson.loads(orjson.dumps(a.export_entity("e"))))
    assert a.close_until(1e9)[0].summary == b.close_until(1e9)[0].summary


GOOD = [
    {"metric": "cpu", "value": 1, "ts": 1.5},
    {"metric": "http_latency_ms", "labels": {"host": "a", "route": "/x"}, "value": -3.2, "ts": 1700000000},
    {"samples": [{"metric": "a:b", "value": 0.0, "ts": 0}]},
]
BAD = [
    (b"not json", "not_json"),
    (b"\xff\xfe", "invalid_utf8"),
    (b'{"metric":"cpu","ts":1}', "missing_field"),
    (b'{"metric":"cpu","value":"1","ts":1}', "non_numeric"),
    (b'{"metric":"cpu","value":true,"ts":1}', "non_numeric"),
    (b'{"metric":"cpu","value":NaN,"ts":1}', "non_finite"),
    (b'{"metric":"cpu","value":-Infinity,"ts":1}', "non_finite"),
    (b'{"metric":"cpu","value":1,"ts":-5}', "bad_timestamp"),
    (b'{"metric":"cpu","value":1,"ts":1,"extra":2}', "unknown_field"),
    (b'{"metric":"9cpu","value":1,"ts":1}', "bad_metric"),
    (b'{"metric":"cpu","value":1,"ts":1,"labels":{"a":1}}', "bad_labels"),
    (b'[1]', "wrong_shape"),
    (b'{"samples":[]}', "wrong_shape"),
    (b'{"samples":[1],"x":1}', "wrong_shape"),
]


@pytest.mark.parametrize("event", GOOD)
def test_good_events_decode_and_satisfy_the_schema(event):
    jsonschema.validate(event, METRIC_SCHEMA)
    ok, bad = decode_metrics(orjson.dumps(event), max_bytes=10_000, max_batch=100)
    assert ok and not bad


@pytest.mark.parametrize("raw,reason", BAD)
def test_bad_events_are_rejected_with_reason(raw, reason):
    ok, bad = decode_metrics(raw, max_bytes=10_000, max_batch=100)
    assert not ok and len(bad) == 1 and bad[0].reason == reason and bad[0].original == raw


def test_size_limits():
    big = orjson.dumps({"samples": [{"metric": "m", "value": 1, "ts": 1}] * 11})
    assert decode_metrics(big, max_bytes=10, max_batch=100)[1][0].reason == "oversized"
    assert decode_metrics(big, max_bytes=10_000, max_batch=10)[1][0].reason == "oversized"


_sample = st.fixed_dictionaries(
    {"metric": st.sampled_from(["cpu", "9x", "", "a:b"]),
     "value": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3), st.booleans()),
     "ts": st.one_of(st.floats(0, 2e9), st.floats(-10, -1))},
    optional={"labels": st.dictionaries(st.sampled_from(["host", "1bad"]), st.one_of(st.text(max_size=5), st.integers(-5, 5)), max_size=2),
              "junk": st.integers(-1000, 1000)})


@given(st.one_of(_sample, st.fixed_dictionaries({"samples": st.lists(_sample, min_size=1, max_size=4)})))
@hsettings(max_examples=300, deadline=None)
def test_decoder_agrees_with_the_json_schema(event):
    try:
        jsonschema.validate(event, METRIC_SCHEMA)
        schema_ok = True
    except jsonschema.ValidationError:
        schema_ok = False
    ok, bad = decode_metrics(orjson.dumps(event), max_bytes=1 << 20, max_batch=1000)
    assert (not bad) == schema_ok, (event, [b.error for b in bad])


def test_spec_errors_name_file_and_field(tmp_path):
    cases = {
        "features: [mean, nope]": "field 'features'",
        "window: {size: -5}": "field 'window.size'",
        "selector: {metrics: []}": "field 'selector.metrics'",
        "model: {n_trees: 0}": "field 'model.n_trees'",
        "bogus: 1": "field 'bogus'",
    }
    for i, (text, field) in enumerate(cases.items()):
        d = tmp_path / f"d{i}"
        d.mkdir()
        (d / "bad.yaml").write_text(text)
        with pytest.raises(SpecError) as exc:
            load_specs(d)
        assert str(d / "bad.yaml") in str(exc.value) and field in str(exc.value)


def test_default_spec_when_no_directory():
    (spec,) = load_specs(None, window=30)
    assert spec.name == "default" and spec.window == 30 and spec.group_by is None


def test_group_by_makes_multivariate_entities():
    spec = DetectorSpec.from_dict({"name": "db", "selector": {"metrics": ["a", "b"], "labels": {"env": "prod|stage"}},
                                   "group_by": ["db"]})
    assert spec.entity_of("a", {"db": "x", "env": "prod"}) == spec.entity_of("b", {"db": "x", "env": "prod", "k": "1"})
    assert spec.entity_of("a", {"db": "x", "env": "dev"}) is None


def test_settings_env_file_and_errors(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("web_port: 7000\nwindow_seconds: 30\n")
    s = Settings.load({"STREAM_CONFIG_FILE": str(f), "STREAM_WINDOW_SECONDS": "15"})
    assert s.web_port == 7000 and s.window_seconds == 15.0  # environment wins over the file
    with pytest.raises(SettingsError, match="STREAM_WEB_PORT"):
        Settings.load({"STREAM_WEB_PORT": "abc"})
    f.write_text("web_prot: 7000\n")
    with pytest.raises(SettingsError, match=r"s\.yaml: unknown field 'web_prot'"):
        Settings.load({"STREAM_CONFIG_FILE": str(f)})
    with pytest.raises(SettingsError, match=r"STREAM_PRODUCER_BATCH_BYTES: 2000000 is above the maximum 1000000"):
        Settings.load({"STREAM_PRODUCER_BATCH_BYTES": "2000000"})
    with pytest.raises(SettingsError, match="STREAM_NOPE"):
        Settings.load({"STREAM_NOPE": "1"})
    # booleans: the usual spellings either way, a typo is an error (it used to read as false)
    assert Settings.load({"STREAM_STATE_WRITE_DIRECT": "Off"}).state_write_direct is False
    assert Settings.load({"STREAM_STATE_WRITE_DIRECT": "YES"}).state_write_direct is True
    with pytest.raises(SettingsError, match=r"STREAM_STATE_WRITE_DIRECT: expected bool, got 'flase'"):
        Settings.load({"STREAM_STATE_WRITE_DIRECT": "flase"})
    f.write_text("state_write_direct: maybe\n")
    with pytest.raises(SettingsError, match=r"s\.yaml.*state_write_direct.*expected bool"):
        Settings.load({"STREAM_CONFIG_FILE": str(f)})
    masked = Settings.load({"STREAM_SASL_PASSWORD": "hunter2"}).masked()
    assert masked["sasl_password"] == "***"


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    for line in settings_table().splitlines()[2:]:
        var = line.split("`")[1]
        assert var in readme, f"{var} missing from the README's settings table"


def test_example_spec_loads():
    (spec,) = load_specs(ROOT / "specs")
    assert spec.name == "db-pool" and spec.group_by == ("db_host",) and spec.allowed_lateness == 30


def test_produce_keys_metric_and_inference_batches_by_their_first_item():
    from stream.commands.produce import _key_of

    assert _key_of(b'{"samples":[{"metric":"up","labels":{"b":"2","a":"1"},"value":1,"ts":1}]}') == b"up{a=1,b=2}"
    assert _key_of(b'{"inferences":[{"model":"churn","version":"1"}]}') == b"churn"
    assert _key_of(b'{"model":"churn"}') == b"churn"
    assert _key_of(b"not json") is None


def test_lane_watermark_does_not_close_windows_of_entities_still_receiving():
    store = WindowStore(60.0)
    store.add("busy", "m", 10.0, 1.0)
    store.add("quiet", "m", 10.0, 1.0)
    closed = store.close_until(10_000.0, may_close=lambda e: e == "quiet")
    assert [w.entity for w in closed] == ["quiet"]
    assert store.add("busy", "m", 20.0, 2.0) is True  # still open, not late
    assert [w.summary["m"]["count"] for w in store.close_until(10_000.0)] == [2]


def test_gc_threshold_setting_has_a_floor_and_names_itself():
    assert Settings.load({}).gc_threshold == 100_000
    assert Settings.load({"STREAM_GC_THRESHOLD": "5000"}).gc_threshold == 5000
    with pytest.raises(SettingsError, match="STREAM_GC_THRESHOLD"):
        Settings.load({"STREAM_GC_THRESHOLD": "10"})


def test_cyclic_garbage_is_still_collected_under_the_workers_gc_threshold():
    # the threshold counts net allocations: garbage the refcounts cannot free counts too, so it
    # triggers the young collection that frees it (no explicit gc.collect here)
    import gc
    import weakref

    from stream.metrics import tune_gc

    class Node:
        pass

    old = gc.get_threshold()
    tune_gc(1_000)
    try:
        assert gc.get_threshold() == (1_000, 10, 10)
        refs = []
        for i in range(5_000):
            n = Node()
            n.me = n  # a cycle: only the collector frees it
            if i < 100:
                refs.append(weakref.ref(n))
            del n
        assert sum(r() is not None for r in refs) == 0
    finally:
        gc.set_threshold(*old)
