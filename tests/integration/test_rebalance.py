"""Input a worker took before a rebalance is left to the partition's new owner (stream.rebalance).

Faust does not wait for the agents at a revocation (the worker sets ``stream_wait_empty=False``),
so events an agent has taken but not processed yet reach it after its partitions were revoked. The
co-partitioned ingest agent holds up to STREAM_INGEST_BATCH_MESSAGES of them in its take buffer.
Processed there, they re-created the revoked partitions' entities on the old owner (which then
wrote their state to changelog partitions the new owner held) while the new owner processed the
same events again.

The test makes that window wide: worker w1 runs with a take buffer that only a full batch empties
(a 600 s linger), takes the first part of the stream and holds it; then w2 joins and the group
rebalances, w1 keeping half of the partitions. When the rest of the stream fills w1's buffer, the
held events must be set aside (counted in ``stream_stale_events_skipped_total``), and no entity may
be held by both workers. Then both stop, a third worker takes over, and the alerts must be the
uninterrupted reference's: the set-aside events were never committed, so nothing is lost. Three
bad messages held with the first part are dead-lettered exactly once (w1 dead-lettered them too
before: twice).
"""
from __future__ import annotations

import base64
import json
import time

import pytest

from tests.conftest import StreamEnv, _free_port, web
from tests.integration.test_failover import (FAST_FAILURE_DETECTION, Reference, alerts_of, compare_with_reference,
                                             lines, processed, produce, ready)
from tests.integration.test_restart import _caught_up

pytestmark = pytest.mark.kafka

HOLD = {"STREAM_INGEST_LINGER_SECONDS": "600", "STREAM_INGEST_BATCH_MESSAGES": "2000"}
FIRST = 1000  # messages w1 takes and holds before w2 joins (fewer than a batch)
BAD = [b"not json", b'{"metric": "cpu", "labels": {"host": "h0"}, "value": "high", "ts": 1699999990}',
       b'{"metric": "cpu", "labels": {"host": "h1"}, "value": 1.0}']  # (no ts) held with the first messages


def _metric(port, name: str) -> float:
    """The sum of a metric's samples on a worker's /metrics (0 if it has none)."""
    status, body = web(port, "metrics")
    assert status == 200, body[:300]
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith((name + "{", name + " ")))


def _delivered(port, topic: str) -> int:
    """Messages of ``topic`` the worker's consumer has handed to its agents (read offsets + 1)."""
    status, body = web(port, "debug/consumer")
    if status != 200:
        return 0
    parts = json.loads(body)["partitions"]
    return sum(p["read_offset"] + 1 for p in parts if p["topic"] == topic and p["read_offset"] is not None)


def _wait(what: str, cond, timeout: float, env: StreamEnv) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n" + env.diagnostics())


def test_input_taken_before_a_rebalance_is_left_to_the_new_owner(kafka_bootstrap, tmp_path_factory):
    with Reference(kafka_bootstrap, tmp_path_factory.mktemp("ref")) as ref:
        tmp = tmp_path_factory.mktemp("rebalance")
        env = StreamEnv(kafka_bootstrap, tmp, STREAM_TOPIC_PARTITIONS="8", STREAM_COPARTITIONED_INPUT="true")
        env.cli("topics", "apply")
        topic = env.env["STREAM_TOPIC_METRICS"]
        data = lines()
        try:
            port1, port2 = env.env["STREAM_WEB_PORT"], str(_free_port())
            env.start_worker("w1", **FAST_FAILURE_DETECTION, **HOLD)
            _wait("w1 ready", lambda: ready(port1).get("ready"), 120, env)
            produce(env, tmp / "first.jsonl", data[:FIRST] + BAD)
            _wait("w1 to take the first messages", lambda: _delivered(port1, topic) >= FIRST + len(BAD), 60, env)
            time.sleep(1)  # (from its stream's queue into the take buffer)
            assert processed(port1) == 0, "w1 processed a batch it should still hold"

            env.start_worker("w2", STREAM_WEB_PORT=port2, **FAST_FAILURE_DETECTION, **HOLD)
            _wait("both workers to share the partitions",
                  lambda: all(r.get("ready") and r.get("partitions") for r in (ready(port1), ready(port2))), 120, env)

            produce(env, tmp / "rest.jsonl", data[FIRST:])  # fills both take buffers, several times
            _wait("both workers to process a batch", lambda: processed(port1) > 0 and processed(port2) > 0, 120, env)
            skipped = _metric(port1, "stream_stale_events_skipped_total")
            held = [_metric(p, "stream_entities_active") for p in (port1, port2)]
            series = len({json.loads(line)["labels"]["host"] for line in data})
            print(f"\nrebalance: w1 set aside {skipped:.0f} of the {FIRST + len(BAD)} messages it held; entities held "
                  f"by w1, w2: {held} of {series}")
            assert sum(held) == series, f"an entity is held by both workers: {held} of {series}"
            assert skipped > 0, "w1's held batch was not set aside (did the rebalance come after it was processed?)"
            env.stop()  # (the take buffers' partial batches were never processed: not committed)

            port3 = str(_free_port())
            env.start_worker("w3", STREAM_WEB_PORT=port3)
            t0 = time.monotonic()
            _caught_up(env, 240)
            print(f"rebalance: w3 caught up in {time.monotonic() - t0:.1f}s")
            compare_with_reference(alerts_of(env), ref.alerts(), processed(port3, "late"))
            # the bad messages w1 held were dead-lettered once, by whoever owned their partition
            dead = env.consume(env.env["STREAM_TOPIC_DEADLETTER"], until=lambda r: False, timeout=6)
            assert sorted(d["original_b64"] for d in dead) == sorted(base64.b64encode(b).decode() for b in BAD), dead
        finally:
            env.stop()
