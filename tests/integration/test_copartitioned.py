"""STREAM_COPARTITIONED_INPUT on the real broker: detection where the input is read, no internal hop.

With input keyed so that every entity stays on one metrics partition, the worker detects in its
ingest agent and keeps each entity's state on its input partition. It must give the alerts the
re-partitioning path gives (the ``reference`` run of test_restart), survive a SIGKILL with its
state recovered from the changelog, never write the internal topic, dead-letter bad input as
before, count an entity that arrives on a second partition, and refuse to start when the metrics
topic's partition count is not the changelog's.
"""
from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Producer

from tests.conftest import StreamEnv, web
from tests.integration.test_restart import _alerts, _caught_up, _key, _sigkill_mid_stream_and_restart, reference  # noqa: F401

pytestmark = pytest.mark.kafka

COPART = {"STREAM_COPARTITIONED_INPUT": "true"}


def _series(env: StreamEnv) -> dict[str, float]:
    status, body = web(env, "metrics")
    assert status == 200, body[:500]
    return {l.split(" ")[0]: float(l.rsplit(" ", 1)[1]) for l in body.decode().splitlines()
            if l and not l.startswith("#")}


def test_copartitioned_sigkill_gives_the_alerts_of_the_repartitioning_path(reference, kafka_bootstrap, tmp_path):
    # `stream produce` keys each message by its series id; the stream has one series per host, so
    # every entity (host) stays on one metrics partition
    env = StreamEnv(kafka_bootstrap, tmp_path, **COPART)
    env.cli("topics", "apply")
    try:
        recovery = _sigkill_mid_stream_and_restart(env, tmp_path, settle=4, timeout=180)
        got = _alerts(env)
        assert {a["kind"] for a in reference} >= {"anomaly"}
        assert _key(got) == _key(reference), sorted(_key(got) ^ _key(reference))
        internal = env.consume(f"{env.env['STREAM_APP_ID']}-entity-samples", until=lambda r: bool(r), timeout=4,
                               raw=True)
        assert internal == [], "the co-partitioned path wrote the internal topic"
        series = _series(env)
        assert series['stream_entities_active{detector="default"}'] == 4, series
        assert series["stream_copartition_violations_total"] == 0
        print(f"co-partitioned SIGKILL recovery to caught-up: {recovery:.1f}s; alerts {len(got)}")
    finally:
        env.stop()


def test_copartitioned_dead_letters_bad_input_and_counts_an_entity_on_a_second_partition(kafka_bootstrap, tmp_path):
    env = StreamEnv(kafka_bootstrap, tmp_path, **COPART)
    env.cli("topics", "apply")
    env.start_worker()
    topic = env.env["STREAM_TOPIC_METRICS"]
    try:
        p = Producer({"bootstrap.servers": kafka_bootstrap})

        def send(part: int, value: bytes) -> None:
            p.produce(topic, value, b"k", partition=part)
            p.flush(10)

        good = {"samples": [{"metric": "cpu", "labels": {"host": "a"}, "value": 1.0, "ts": 1_700_000_000.0}]}
        send(0, orjson.dumps(good))
        send(0, b'{"samples": [{"metric": "cpu", "labels": {"host": "a"}, "value": "high", "ts": 1700000001}]}')
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the worker may still be joining the group
            series = _series(env) if web(env, "metrics")[0] == 200 else {}
            if series.get('stream_entities_active{detector="default"}') == 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the good sample was not processed:\n" + env.diagnostics())
        dead = env.consume(env.env["STREAM_TOPIC_DEADLETTER"], until=lambda r: len(r) >= 1, timeout=30)
        assert len(dead) == 1 and (dead[0]["source"]["partition"], dead[0]["source"]["offset"]) == (0, 1), dead
        assert series["stream_copartition_violations_total"] == 0
        # the same entity on partition 2: processed (the state stays on partition 0) and counted
        later = {"samples": [{"metric": "cpu", "labels": {"host": "a"}, "value": 2.0, "ts": 1_700_000_010.0}]}
        send(2, orjson.dumps(later))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _series(env)["stream_copartition_violations_total"] < 1:
            time.sleep(0.5)
        assert _series(env)["stream_copartition_violations_total"] == 1
        assert "the input is not co-partitioned by entity" in env.worker_log()
    finally:
        env.stop()


def test_copartitioned_refuses_a_metrics_topic_with_another_partition_count(kafka_bootstrap, tmp_path):
    env = StreamEnv(kafka_bootstrap, tmp_path, **COPART)
    env.env["STREAM_TOPIC_PARTITIONS"] = "2"  # the metrics topic is created with 2 partitions ...
    env.cli("topics", "apply")
    env.env["STREAM_TOPIC_PARTITIONS"] = "4"  # ... and the worker's changelog has 4
    res = env.cli("worker", check=False, timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 2, err[-2000:]
    assert "STREAM_COPARTITIONED_INPUT=true needs the metrics topic" in err and "it has 2" in err, err[-2000:]
