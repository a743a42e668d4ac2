"""Table recovery that Faust alone never finishes, on the real broker.

A changelog written under ``exactly_once`` ends with a transaction marker: an offset that holds no
record a consumer is ever given. Faust's recovery waits for a record at the changelog's last offset,
so a worker started with ``at_least_once`` on such a changelog (an operator switching the
guarantee back, say) stays in recovery for ever: never ready, processing nothing. Faust handles
markers only when it runs ``exactly_once`` itself.

The worker's recovery watchdog (``stream.consumer_fix.RecoveryWatch``) seeks the partition again
once the recovery has waited 15 s without progress; when the consumer again reads to the log end
with nothing delivered, the offsets left hold no record and the partition counts as recovered.
This test writes such a changelog with a transactional producer before the worker starts, and
asserts that the worker becomes ready, says what it did, and then processes input.
"""
from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from stream.demo import generate
from tests.conftest import StreamEnv, web

pytestmark = pytest.mark.kafka

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 60)


def _metric(env: StreamEnv, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    _, body = web(env, "metrics")
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith(name + "{") and all(w in line for w in want))


def test_a_changelog_ending_in_a_transaction_marker_is_recovered(kafka_bootstrap, tmp_path):
    env = StreamEnv(kafka_bootstrap, tmp_path)
    env.cli("topics", "apply")
    changelog = f"{env.env['STREAM_APP_ID']}-entity-state-changelog"
    # (`stream topics apply` declares the table changelogs too)
    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(changelog, timeout=30)
    assert changelog in md.topics and md.topics[changelog].error is None, md.topics
    # one committed transactional record: offset 0 the record, offset 1 the commit marker
    p = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{env.tag}-tx"})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(changelog, key=b"nobody/none", value=b"\x00", partition=0)
    p.commit_transaction(30)

    env.start_worker()
    try:
        t0 = time.monotonic()
        status = 0
        while time.monotonic() - t0 < 120 and status != 200:
            time.sleep(1)
            status, body = web(env, "ready")
        took = time.monotonic() - t0
        assert status == 200, f"not ready after {took:.0f} s ({body!r}):\n{env.diagnostics()}"
        log = env.worker_log()
        assert "hold no record (transaction markers); the partition is recovered" in log, env.diagnostics()
        assert _metric(env, "stream_recovery_unstuck_total", action="log_end") >= 1
        print(f"recovered past the transaction marker; ready {took:.0f} s after start")

        # and the worker works: input is processed
        path = tmp_path / "in.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(e) for e in generate(2, T0, 0.5, 10.0)) + b"\n")
        env.cli("produce", "--topic", env.env["STREAM_TOPIC_METRICS"], str(path), "--no-progress")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _metric(env, "stream_events_total", outcome="processed"):
            time.sleep(1)
        assert _metric(env, "stream_events_total", outcome="processed") > 0, env.diagnostics()
    finally:
        env.stop()
