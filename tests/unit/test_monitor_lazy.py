"""Lazy model-state writes (at-least-once): dirty models are written once per offset commit.

The worker calls :meth:`MonitorProcessor.flush` right before every offset commit and
:meth:`MonitorProcessor.revoke` when partitions are taken away. Here a dict plays the table and
its changelog, a list of writes records what went to the changelog and on which partition, and a
"crash" is a new processor over the table as it was at the last commit, fed again from the
committed offsets: the alerts and the final state must be those of an uninterrupted run.
"""
from __future__ import annotations

import numpy as np
import orjson

from stream.detect.monitor import Monitors
from stream.detect.monitor_spec import MonitorSpec
from stream.models_worker import BASELINE_PREFIX, SNAPSHOT_EVERY, MonitorProcessor, _baseline_key, _pack, _unpack
from stream.settings import Settings

T0 = 1_700_000_000.0
SPEC = MonitorSpec(baseline_size=200, window=100, compare_every=20)
S = Settings(max_message_bytes=1 << 24, max_batch_samples=1 << 16)


def _stream(n=1200, models=(("drift", 0), ("pred", 1), ("calm", 0))):
    """(topic, partition, offset, key, value) in consumption order: one inference per message,
    models interleaved, inputs of ``drift`` and predictions of ``pred`` shifting at 600, labels
    for ``calm`` on the feedback topic (some before their inference)."""
    rng = np.random.default_rng(5)
    offs: dict[tuple[str, int], int] = {}
    out = []

    def put(topic, part, model, obj):
        o = offs.get((topic, part), 0)
        offs[(topic, part)] = o + 1
        out.append((topic, part, o, model.encode(), orjson.dumps(obj)))

    for i in range(n):
        for model, part in models:
            shift = 1.5 if (model == "drift" and i >= 600) else 0.0
            rate = 0.8 if (model == "pred" and i >= 600) else 0.3
            pred = int(rng.random() < rate)
            inf = {"model": model, "version": "1", "request_id": f"{model}-{i}", "ts": T0 + i,
                   "features": {"a": float(rng.normal(shift, 1)), "b": str(rng.choice(["x", "y"]))},
                   "prediction": pred}
            fb = {"model": model, "version": "1", "request_id": f"{model}-{i}", "label": pred, "ts": T0 + i}
            if model == "calm" and i % 3 == 0:
                put("feedback", part, model, fb)  # the label first
                put("inferences", part, model, inf)
            else:
                put("inferences", part, model, inf)
                if model == "calm":
                    put("feedback", part, model, fb)
    return out


class Changelog:
    """The table (a dict) plus the record of lazy writes (key, partition)."""

    def __init__(self):
        self.table: dict = {}
        self.writes: list[tuple[bytes, int | None]] = []

    def write(self, key, partition, blob):
        if blob is None:
            self.table.pop(key, None)
        else:
            self.table[key] = blob
        self.writes.append((key, partition))

    def model_writes(self):
        """Writes of model states (not of baselines stored apart)."""
        return [w for w in self.writes if not w[0].startswith(BASELINE_PREFIX)]


def _proc(log: Changelog) -> MonitorProcessor:
    return MonitorProcessor(S, Monitors([SPEC]), log.table, lazy=True, write=log.write)


def _run(proc, msgs):
    alerts = []
    for msg in msgs:
        alerts += proc.process(*msg)[1]
    return alerts


def _ids(alerts):
    return [(a["alert_id"], a["status"]) for a in alerts]


def _state(proc, model):
    return proc.mons.export_state(model)


def test_processing_writes_nothing_and_a_flush_writes_each_dirty_model_once_on_its_partition():
    log = Changelog()
    proc = _proc(log)
    msgs = _stream(300)
    _run(proc, msgs)
    assert log.table == {} and log.writes == []  # no snapshot per N messages any more
    assert proc.dirty == {"drift", "pred", "calm"}
    assert proc.flush() == 3
    assert sorted(log.model_writes()) == [(b"calm", 0), (b"drift", 0), (b"pred", 1)]
    n = len(log.writes)
    assert proc.flush() == 0 and len(log.writes) == n  # nothing changed since
    # the stored blob holds the offsets it reflects
    head, state = _unpack(log.table[b"calm"])
    last = {f"{t}/{p}": o for t, p, o, k, _ in msgs if k == b"calm"}
    assert {k: v for k, v in head.items() if not k.startswith("_")} == last
    assert state == proc.mons.export_state("calm", frozen_apart=True)
    # one more message of one model: only that model is written at the next commit
    t, p, o, k, v = [m for m in _stream(301) if m[3] == b"pred"][-1]
    proc.process(t, p, o, k, v)
    assert proc.flush() == 1 and log.writes[-1] == (b"pred", 1) and len(log.writes) == n + 1
    assert proc.flush(lanes={0}) == 0


def test_flush_of_some_partitions_leaves_the_others_dirty():
    log = Changelog()
    proc = _proc(log)
    _run(proc, _stream(50))
    assert proc.flush(lanes={1}) == 1 and log.model_writes() == [(b"pred", 1)]
    assert proc.dirty == {"drift", "calm"}


def test_a_crash_after_any_commit_replays_to_the_alerts_and_state_of_an_uninterrupted_run():
    """SIGKILL in miniature: commits (flush, then the offsets of every message processed so far)
    every 97 messages; a crash at several points keeps the table as of the last commit and
    replays from the committed offsets (messages processed after the commit included)."""
    msgs = _stream()
    ref = _proc(Changelog())
    expected = _run(ref, msgs)
    kinds = {(a["series"]["labels"]["model"], a["kind"]) for a in expected}
    assert {("drift", "data_drift"), ("pred", "prediction_drift")} <= kinds
    for crash_at in (150, 601, 1333, 2999):
        log = Changelog()
        proc = _proc(log)
        alerts, committed_table, committed = [], {}, 0
        for i, msg in enumerate(msgs[:crash_at]):
            alerts += proc.process(*msg)[1]
            if i % 97 == 96:  # commit: flush, then the offsets up to here are committed
                proc.flush()
                committed_table, committed = dict(log.table), i + 1
        # crash: what was processed after the last commit is lost from memory, not from the input
        log2 = Changelog()
        log2.table.update(committed_table)
        again = _proc(log2)
        alerts += _run(again, msgs[committed:])
        # at-least-once: an alert may be published twice (consumers deduplicate on its id)
        assert sorted(set(_ids(alerts))) == sorted(set(_ids(expected))), crash_at
        assert len(set(_ids(alerts))) == len(_ids(expected))
        for model in ("drift", "pred", "calm"):
            assert _state(again, model) == _state(ref, model), (crash_at, model)


def test_revoked_partitions_are_written_then_unloaded_and_reloaded_if_they_come_back():
    msgs = _stream(400)
    ref = _proc(Changelog())
    expected = _run(ref, msgs)
    log = Changelog()
    proc = _proc(log)
    half = len(msgs) // 2
    alerts = _run(proc, msgs[:half])
    gone = proc.revoke({0})
    assert sorted(gone) == ["calm", "drift"] and set(proc.mons.models) == {"pred"}
    assert sorted(log.model_writes()) == [(b"calm", 0), (b"drift", 0)]
    assert proc.dirty == {"pred"} and "drift" not in proc.offsets and "drift" not in proc.lane_of
    # partition 0 comes back (to this worker): its models are reloaded from the table
    alerts += _run(proc, msgs[half:])
    assert _ids(alerts) == _ids(expected)
    for model in ("drift", "pred", "calm"):
        assert _state(proc, model) == _state(ref, model)


def test_revocation_without_flush_drops_unwritten_changes():
    """exactly_once: no flush outside an event; the models still leave memory."""
    log = Changelog()
    proc = _proc(log)
    _run(proc, _stream(20))
    assert proc.revoke({0, 1}, flush=False) and proc.mons.models == {} and log.writes == []


def test_not_lazy_keeps_the_snapshot_every_n_messages():
    table: dict = {}
    proc = MonitorProcessor(S, Monitors([SPEC]), table)
    for i, msg in enumerate(m for m in _stream(SNAPSHOT_EVERY + 5) if m[3] == b"drift"):
        proc.process(*msg)
        assert (b"drift" in table) == (i + 1 >= SNAPSHOT_EVERY)
    assert not proc.dirty and proc.flush() == 0


def test_ttl_in_lazy_mode_deletes_expired_models_and_marks_shrunk_ones_dirty():
    s = Settings(model_ttl_seconds=600.0)
    log = Changelog()
    proc = MonitorProcessor(s, Monitors([SPEC]), log.table, lazy=True, write=log.write)

    def msg(model, version, i, ts):
        return orjson.dumps({"model": model, "version": version, "request_id": f"{model}{version}{i}", "ts": ts,
                             "features": {"x": float(i % 7)}, "prediction": 1.0})

    off = 0
    for i in range(30):
        for model, version in (("a", "v1"), ("a", "v2"), ("b", "v1")):
            proc.process("inferences", 3, off, model.encode(), msg(model, version, i, T0 + i))
            off += 1
    proc.flush()
    assert set(log.table) == {b"a", b"b"}
    proc.process("inferences", 3, off, b"a", msg("a", "v2", 99, T0 + 2000))
    assert set(log.table) == {b"a"} and proc.dirty == {"a"}  # b deleted at once; a written at the commit
    proc.flush()
    assert list(Monitors([SPEC]).models) == [] and _unpack(log.table[b"a"])[0]["_lane"] == 3


def test_the_worker_registers_the_flush_before_commits_only_under_at_least_once(tmp_path):
    from stream.worker import build_app

    app = build_app(Settings(app_id="lazy-wiring", state_dir=str(tmp_path)))
    proc = app.monitor_processor
    assert proc.lazy and proc.flush in app.before_commit
    eos = build_app(Settings(app_id="eos-wiring", state_dir=str(tmp_path), processing_guarantee="exactly_once"))
    assert not eos.monitor_processor.lazy and eos.before_commit == []


def test_frozen_baselines_are_stored_once_apart_and_deleted_with_their_version():
    log = Changelog()
    proc = _proc(log)
    msgs = [m for m in _stream(400) if m[3] == b"drift"]
    _run(proc, msgs[:300])  # baseline (200) frozen
    proc.flush()
    keys = [k for k, _ in log.writes if k.startswith(BASELINE_PREFIX)]
    digest = proc.mons.models["drift"].versions["1"].frozen.digest
    assert keys == [_baseline_key("drift", digest)]
    blob = log.table[b"drift"]
    full = proc.mons.export_state("drift")
    assert len(blob) < len(full) - len(log.table[keys[0]]) // 2  # the state without its baseline
    assert _unpack(blob)[0]["_refs"] == {digest: len(log.table[keys[0]])}
    _run(proc, msgs[300:])
    proc.flush()
    assert [k for k, _ in log.writes if k.startswith(BASELINE_PREFIX)] == keys  # not written again
    # recovered from the two keys: the same state as in memory
    again = _proc(Changelog())
    again.table.update(log.table)
    again.recover("drift", 0)
    assert again.mons.export_state("drift") == proc.mons.export_state("drift")
    # a new version; the old one expires: its baseline key goes after the state that no longer names it
    s = Settings(model_ttl_seconds=50.0)
    proc.s, proc.ttl, proc.ttl_check_every = s, 50.0, 5.0
    t = 1_700_000_000.0 + 10_000
    for i in range(250):
        proc.process("inferences", 0, 10_000 + i, b"drift", orjson.dumps(
            {"model": "drift", "version": "2", "request_id": f"v2-{i}", "ts": t + i,
             "features": {"a": float(i % 5), "b": "x"}, "prediction": 1}))
    proc.flush()
    assert list(proc.mons.models["drift"].versions) == ["2"]
    assert keys[0] not in log.table and log.writes[-1] == (keys[0], 0)
    assert [k for k in log.table if k.startswith(BASELINE_PREFIX)] == \
        [_baseline_key("drift", proc.mons.models["drift"].versions["2"].frozen.digest)]


def test_a_state_stored_whole_by_an_earlier_build_is_still_recovered():
    ref = _proc(Changelog())
    msgs = [m for m in _stream(300) if m[3] == b"drift"]
    _run(ref, msgs)
    table = {b"drift": _pack({f"inferences/0": msgs[-1][2]}, ref.mons.export_state("drift"))}
    log = Changelog()
    log.table.update(table)
    proc = _proc(log)
    proc.recover("drift", 0)
    assert proc.mons.export_state("drift") == ref.mons.export_state("drift")
    proc.dirty.add("drift")
    proc.flush()  # rewritten with its baseline apart
    assert len([k for k in log.table if k.startswith(BASELINE_PREFIX)]) == 1
