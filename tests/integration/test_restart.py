"""Durable state on the real broker: a worker restarted mid-stream gives the same alerts.

The same stream goes to two isolated deployments: one processed without interruption, one whose
worker is stopped (cleanly, or with SIGKILL) in the middle and started again. State comes back
from the changelog-backed table; the source-offset cursor skips what the state already holds.
The alert ids (deterministic) and statuses must be equal as sets (at-least-once delivery may
repeat an alert after SIGKILL; consumers deduplicate on the id).
"""
from __future__ import annotations

import signal
import time

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from stream.demo import Injection, generate
from tests.conftest import StreamEnv, log_end, web

pytestmark = pytest.mark.kafka

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 60)
INJ = (Injection(3, "spike", T0 + 4 * 3600 + 120, 60), Injection(1, "level_shift", T0 + 4.5 * 3600, 1800),
       Injection(2, "spike", T0 + 2.5 * 3600, 60))


def _lines():
    return [orjson.dumps(e) for e in generate(4, T0, 5.0, 10.0, injections=INJ)]


def _caught_up(env: StreamEnv, timeout: float) -> None:
    """Wait until the worker's group has committed every input and internal offset.

    Under exactly_once a transaction's commit marker takes an offset after its last record, so a
    partition whose committed offset is below the log end counts as caught up when a read_committed
    consumer finds no record from the committed offset on (only markers, or aborted records)."""
    group = env.env["STREAM_APP_ID"]
    topics = [env.env["STREAM_TOPIC_METRICS"], f"{group}-entity-samples"]
    c = Consumer({"bootstrap.servers": env.env["STREAM_BOOTSTRAP_SERVERS"], "group.id": group})
    probe = Consumer({"bootstrap.servers": env.env["STREAM_BOOTSTRAP_SERVERS"], "group.id": f"{group}-probe",
                      "isolation.level": "read_committed", "enable.auto.commit": False,
                      "enable.partition.eof": True})
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            behind = 0
            for t in topics:
                md = c.list_topics(t, timeout=10).topics[t]
                tps = [TopicPartition(t, p) for p in md.partitions]
                for tp in c.committed(tps, timeout=10):
                    hi = log_end(c, tp)
                    gap = hi - max(tp.offset, 0)
                    if 0 < gap <= 4 and not _records_from(probe, tp):
                        gap = 0
                    behind += gap
            if behind == 0:
                return
            time.sleep(1)
    finally:
        c.close()
        probe.close()
    raise AssertionError(f"worker did not catch up within {timeout}s ({behind} behind):\n{env.diagnostics()}")


def _records_from(probe: Consumer, tp: TopicPartition) -> bool:
    """True if a read_committed consumer finds a record at or after tp.offset."""
    probe.assign([TopicPartition(tp.topic, tp.partition, max(tp.offset, 0))])
    try:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            msg = probe.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                return False  # partition EOF: nothing committed after the offset
            return True
        return False
    finally:
        probe.unassign()


def _alerts(env: StreamEnv) -> list[dict]:
    return env.consume(env.env["STREAM_TOPIC_ALERTS"], until=lambda r: False, timeout=6)


def _produce(env: StreamEnv, path, lines) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")
    env.cli("produce", "--topic", env.env["STREAM_TOPIC_METRICS"], str(path), "--no-progress")


@pytest.fixture
def reference(kafka_bootstrap, tmp_path_factory):
    """Alerts of the uninterrupted run."""
    env = StreamEnv(kafka_bootstrap, tmp_path_factory.mktemp("ref"))
    env.cli("topics", "apply")
    env.start_worker()
    _produce(env, env.tmp / "all.jsonl", _lines())
    _caught_up(env, 150)
    alerts = _alerts(env)
    env.stop()
    return alerts


def _key(alerts):
    return {(a["alert_id"], a["status"]) for a in alerts}


def test_clean_restart_mid_stream_gives_the_same_alerts(reference, stream_env, tmp_path):
    env = stream_env
    lines = _lines()
    half = len(lines) // 2
    w = env.start_worker("w1")
    _produce(env, tmp_path / "a.jsonl", lines[:half])
    _caught_up(env, 150)
    w.send_signal(signal.SIGTERM)
    w.wait(60)
    t = time.monotonic()
    w2 = env.start_worker("w2")
    _produce(env, tmp_path / "b.jsonl", lines[half:])
    # After a restart faust-streaming used to lose records fetched around its seek to the committed
    # offsets, and the group's commits then stalled on one partition (3 of about 10 runs):
    # stream.consumer_fix. The restarted worker must commit everything.
    _caught_up(env, 150)
    assert w2.poll() is None, "the restarted worker exited:\n" + env.worker_log("w2")[-3000:]
    got = _alerts(env)
    assert {a["kind"] for a in reference} >= {"anomaly"}
    assert len({a["series"]["id"] for a in reference if a["status"] == "firing"}) >= 2
    assert _key(got) == _key(reference), (sorted(_key(got) ^ _key(reference)))
    # every entity sent samples after the restart: each was loaded from the table's store into the
    # engine, and the store dropped its serialized copy (the engine holds the live state)
    status, body = web(env, "metrics")
    series = {l.split(" ")[0]: float(l.rsplit(" ", 1)[1]) for l in body.decode().splitlines()
              if l and not l.startswith("#")}
    assert status == 200 and series['stream_entities_active{detector="default"}'] == 4, series
    assert series["stream_state_stored_entities"] == 0
    print(f"restart + catch-up took {time.monotonic() - t:.1f}s")


def _sigkill_mid_stream_and_restart(env: StreamEnv, tmp_path, *, settle: float, timeout: float) -> float:
    """Produce the stream, SIGKILL the worker `settle` seconds after its tables are up (partway
    through), start another; returns the seconds from the restart until the group caught up."""
    w = env.start_worker("w1")
    _produce(env, tmp_path / "all.jsonl", _lines())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "entity-state" not in env.worker_log("w1"):
        time.sleep(0.5)
    time.sleep(settle)
    w.send_signal(signal.SIGKILL)
    w.wait(30)
    t = time.monotonic()
    env.start_worker("w2")
    _caught_up(env, timeout)
    return time.monotonic() - t


def test_sigkill_mid_stream_loses_no_alert(reference, stream_env, tmp_path):
    env = stream_env
    recovery = _sigkill_mid_stream_and_restart(env, tmp_path, settle=4, timeout=180)
    got = _alerts(env)
    assert _key(got) == _key(reference), (sorted(_key(got) ^ _key(reference)))
    print(f"SIGKILL recovery to caught-up: {recovery:.1f}s; alerts {len(got)} (distinct {len(_key(got))})")


@pytest.mark.xfail(strict=False, reason=(
    "exactly_once does not hold end to end here (README, Delivery): faust-streaming picks a send's transaction "
    "by its destination partition, and the re-partitioning hop writes to every partition from each input "
    "partition, so one input record's effects span transactions committed one after another; a SIGKILL between "
    "them duplicates (or drops) alerts. Passed 3 of 3 runs before 2026-11-26's changes, 2 of 7 after them; "
    "co-partitioned input, which would align the transactions, refuses exactly_once (README, Delivery)"))
def test_exactly_once_sigkill_read_committed_consumer_sees_each_alert_once(reference, kafka_bootstrap, tmp_path):
    """STREAM_PROCESSING_GUARANTEE=exactly_once (Faust over Kafka transactions): after a SIGKILL
    mid-stream and a restart, a read_committed consumer of `alerts` sees every alert of the
    uninterrupted run exactly once (at-least-once may repeat some; consumers would deduplicate)."""
    env = StreamEnv(kafka_bootstrap, tmp_path, STREAM_PROCESSING_GUARANTEE="exactly_once")
    env.cli("topics", "apply")
    try:
        recovery = _sigkill_mid_stream_and_restart(env, tmp_path, settle=6, timeout=240)
        got = env.consume(env.env["STREAM_TOPIC_ALERTS"], until=lambda r: False, timeout=8,
                          isolation_level="read_committed")
        raw = env.consume(env.env["STREAM_TOPIC_ALERTS"], until=lambda r: False, timeout=8,
                          isolation_level="read_uncommitted")
        ids = [(a["alert_id"], a["status"]) for a in got]
        assert set(ids) == _key(reference), sorted(set(ids) ^ _key(reference))
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        assert not dupes, f"duplicate alerts under exactly_once: {dupes}"
        print(f"exactly_once SIGKILL recovery to caught-up: {recovery:.1f}s; read_committed alerts {len(got)} "
              f"(distinct {len(set(ids))}); read_uncommitted saw {len(raw)} records (aborted ones included)")
    finally:
        env.stop()
