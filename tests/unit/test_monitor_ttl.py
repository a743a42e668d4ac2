"""Idle models and versions are forgotten (STREAM_MODEL_TTL_SECONDS), in the core and per message."""
from __future__ import annotations

import orjson

from stream.detect.monitor import Monitors
from stream.detect.monitor_spec import MonitorSpec
from stream.inference_events import Feedback, Inference
from stream.models_worker import BASELINE_PREFIX, SNAPSHOT_EVERY, MonitorProcessor, _unpack
from stream.settings import Settings

T0 = 1_700_000_000.0
SPEC = MonitorSpec(baseline_size=20, window=20, compare_every=10)


def inf(model, version, i, ts):
    return Inference(model, version, f"{model}-{version}-{i}", ts, {"x": float(i % 7), "c": "abc"[i % 3]},
                     float(i % 2), None, None)


def test_core_forgets_idle_versions_then_idle_models():
    mons = Monitors([SPEC])
    for i in range(50):
        mons.observe(inf("a", "v1", i, T0 + i))
        mons.observe(inf("b", "v1", i, T0 + i))
    for i in range(50, 100):  # a moves to v2; b goes quiet
        mons.observe(inf("a", "v2", i, T0 + 1000 + i))
    # nothing is idle for 2000 s yet
    assert mons.expire(T0 + 1100, ttl=2000) == ([], [])
    # at T0 + 1100, with a 500 s TTL: a@v1 and b@v1 are idle; a keeps v2, b is gone
    dropped, changed = mons.expire(T0 + 1100, ttl=500)
    assert dropped == ["b"] and changed == ["a"]
    assert set(mons.models) == {"a"} and list(mons.models["a"].versions) == ["v2"]
    assert mons.models["a"].stats["versions_expired"] == 1
    # a model whose versions are idle but whose feedback is recent stays (without versions)
    mons.feedback(Feedback("a", "v2", "late-label", 1.0, T0 + 5000))
    dropped, _ = mons.expire(T0 + 5100, ttl=500)
    assert dropped == [] and "a" in mons.models and not mons.models["a"].versions
    assert mons.expire(T0 + 9999, ttl=500)[0] == ["a"] and mons.models == {}
    # only the models asked about are examined
    mons.observe(inf("c", "v1", 0, T0))
    assert mons.expire(T0 + 9999, ttl=1, models=["zzz"]) == ([], []) and "c" in mons.models


def test_a_forgotten_model_starts_again_from_a_new_baseline():
    mons = Monitors([SPEC])
    for i in range(30):
        mons.observe(inf("a", "v1", i, T0 + i))
    assert mons.models["a"].versions["v1"].ready
    mons.expire(T0 + 10_000, ttl=100)
    mons.observe(inf("a", "v1", 0, T0 + 10_001))
    vm = mons.models["a"].versions["v1"]
    assert not vm.ready and vm.seen == 1


def _models(table) -> set:
    """Model keys of the state table (baselines stored apart have their own keys)."""
    return {k for k in table if not k.startswith(BASELINE_PREFIX)}


def _baselines(table) -> set:
    """Models whose frozen baselines are stored apart."""
    return {k[len(BASELINE_PREFIX):].split(b"\x00")[0] for k in table if k.startswith(BASELINE_PREFIX)}


def _msg(model, version, i, ts):
    return orjson.dumps({"model": model, "version": version, "request_id": f"{model}{version}{i}", "ts": ts,
                         "features": {"x": float(i % 7)}, "prediction": 1.0})


def test_processor_deletes_the_table_key_of_an_idle_model_and_rewrites_a_shrunk_one():
    s = Settings(model_ttl_seconds=600.0)
    mons = Monitors([SPEC])
    table: dict = {}
    proc = MonitorProcessor(s, mons, table)
    off = 0
    for i in range(SNAPSHOT_EVERY):  # both models snapshotted once
        for model, version in (("a", "v1"), ("a", "v2"), ("b", "v1")):
            proc.process("inferences", 3, off, model.encode(), _msg(model, version, i, T0 + i))
            off += 1
    assert _models(table) == {b"a", b"b"} == _baselines(table)
    # later on partition 3, only a@v2 keeps sending
    for i in range(5):
        proc.process("inferences", 3, off, b"a", _msg("a", "v2", 1000 + i, T0 + 2000 + i))
        off += 1
    assert _models(table) == {b"a"} == _baselines(table) and set(mons.models) == {"a"}
    assert "b" not in proc.offsets and "b" not in proc.sizes
    restored = Monitors([SPEC])
    restored.import_state("a", _unpack(table[b"a"])[1], frozen_lookup=lambda d: table[b"\x00baseline\x00a\x00" + d.encode()])
    assert list(restored.models["a"].versions) == ["v2"]
    # another partition's clock does not expire partition 3's models
    proc.process("inferences", 5, 0, b"z", _msg("z", "v1", 0, T0 + 99_999))
    assert set(mons.models) == {"a", "z"}


def test_ttl_setting_is_read_from_the_environment():
    assert Settings.load({"STREAM_MODEL_TTL_SECONDS": "3600"}).model_ttl_seconds == 3600.0
    assert Settings().model_ttl_seconds == 7 * 86400.0


def test_models_not_seen_since_a_restart_are_swept_from_the_table():
    s = Settings(model_ttl_seconds=600.0)
    table: dict = {}
    before = MonitorProcessor(s, Monitors([SPEC]), table)
    off = 0
    for i in range(SNAPSHOT_EVERY):
        for model, part in (("old", 2), ("other-lane", 4)):
            before.process("inferences", part, off, model.encode(), _msg(model, "v1", i, T0 + i))
            off += 1
    assert _models(table) == {b"old", b"other-lane"} == _baselines(table)
    head = _unpack(table[b"old"])[0]
    assert head["_lane"] == 2 and head["_now"] == T0 + SNAPSHOT_EVERY - 1
    # a restart: a new processor over the same table; neither model sends again
    after = MonitorProcessor(s, Monitors([SPEC]), table)
    after.process("inferences", 2, off, b"new", _msg("new", "v1", 0, T0 + 300))  # within the TTL
    assert _models(table) == {b"old", b"other-lane"}
    after.process("inferences", 2, off + 1, b"new", _msg("new", "v1", 1, T0 + 5000))
    assert _models(table) == {b"other-lane"} == _baselines(table)  # partition 4's clock has not moved
    # a model recovered from the table keeps its offsets without the sweep's fields
    after.recover("other-lane")
    assert all(not k.startswith("_") for k in after.offsets["other-lane"])
