"""End to end through the CLI on the real broker: produce → worker → alerts / deadletter."""
from __future__ import annotations

import time

import orjson
import pytest

from stream.demo import Injection, generate

pytestmark = pytest.mark.kafka

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 60)  # window-aligned start, hours of event time
SPIKE_AT = T0 + 5 * 3600 + 120  # the spiked series (h3) is x10 for one minute at hour 5


def _events(injections, hours=6.0):
    return b"".join(orjson.dumps(e) + b"\n" for e in generate(4, T0, hours, 10.0, injections=injections))


def _firing(alerts):
    return [a for a in alerts if a["status"] == "firing"]


def test_spike_is_alerted_with_context_and_steady_series_are_not(stream_env, tmp_path):
    env = stream_env
    data = tmp_path / "metrics.jsonl"
    data.write_bytes(_events((Injection(3, "spike", SPIKE_AT, 60),)))
    env.start_worker()
    t = time.monotonic()
    env.cli("produce", "--topic", env.env["STREAM_TOPIC_METRICS"], str(data), "--no-progress")
    produced_in = time.monotonic() - t
    assert produced_in < 30, f"6 h of event time should produce in seconds, took {produced_in:.1f}s"

    res = env.cli("alerts", "tail", "--json", "--from-beginning", "--timeout", "90", "--max", "1", timeout=120)
    alerts = [orjson.loads(l) for l in res.stdout.splitlines() if l.strip()]
    assert alerts, "no alert within 90 s:\n" + env.worker_log()[-3000:]
    # let the rest of the stream be processed, then read everything
    time.sleep(5)
    res = env.cli("alerts", "tail", "--json", "--from-beginning", "--timeout", "8", timeout=60)
    alerts = [orjson.loads(l) for l in res.stdout.splitlines() if l.strip()]
    firing = _firing(alerts)
    assert {a["series"]["labels"]["host"] for a in firing} == {"h3"}, [a["series"]["id"] for a in firing]
    a = firing[0]
    assert a["kind"] == "anomaly"
    assert a["window"]["start"] <= SPIKE_AT < a["window"]["end"], a["window"]
    assert a["window"]["end"] - a["window"]["start"] == 60
    assert a["series"]["id"] == "default/http_latency_ms{host=h3}"
    assert len(a["alert_id"]) == 32
    assert a["score"] >= a["threshold"]["score_floor"] and 0 <= a["grade"] <= 1
    # attribution, direction and baseline: the spike is in the level features, high against baseline
    top = a["attribution"][0]
    assert top["direction"] == "high"
    assert top["feature"].split(":")[1] in {"mean", "median", "max", "min", "std", "iqr"}
    base = a["baseline"]["http_latency_ms:mean"]
    assert 150 < base["mean"] < 200 and base["std"] > 0  # series h3 sits around 160
    assert a["features"]["http_latency_ms:mean"] > 5 * base["mean"]
    # source offsets: the window's events, on the input topic, in one partition
    src = a["source"]
    assert src["topic"] == env.env["STREAM_TOPIC_METRICS"]
    assert 0 <= src["first_offset"] <= src["last_offset"]
    assert src["last_offset"] - src["first_offset"] == 5  # six 10-second samples of one series
    assert a["model"]["warm"] is True
    # the worker's Prometheus endpoint counts what happened
    import urllib.request

    port = env.env["STREAM_WEB_PORT"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    processed = [l for l in body.splitlines()
                 if l.startswith("stream_events_total{") and 'outcome="processed"' in l]
    assert processed and float(processed[0].rsplit(" ", 1)[1]) == 4 * 6 * 360
    assert 'stream_alerts_total{detector="default",kind="anomaly",severity="warning"}' in body
    # every entity's state reached the changelog at a commit, and the commits' write time is measured
    series = {l.split(" ")[0]: float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l and not l.startswith("#")}
    assert series["stream_state_writes_total"] >= 4, series.get("stream_state_writes_total")
    assert series["stream_state_write_seconds_count"] >= 1
    # ... and the table's local store keeps no second, serialized copy of a live entity's state
    assert series["stream_entities_active{detector=\"default\"}"] == 4
    assert series["stream_state_stored_entities"] == 0
    # the collector's pauses are timed per generation (stream.metrics.tune_gc, run by the worker)
    assert all(f'stream_gc_pause_seconds_count{{generation="{g}"}}' in series for g in "012")
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).status == 200


def test_an_expired_entity_is_tombstoned_in_the_changelog(kafka_bootstrap, tmp_path):
    """STREAM_ENTITY_TTL_SECONDS: an entity idle that long in event time is forgotten, and its
    table key deleted with a tombstone (the table's store holds no copy of a live entity's state,
    so the worker writes the tombstone itself: a Table.pop would find nothing and send none)."""
    from confluent_kafka import Consumer

    from tests.conftest import StreamEnv

    # one partition: both entities share a lane, so h0's event time expires the silent h1
    env = StreamEnv(kafka_bootstrap, tmp_path, STREAM_TOPIC_PARTITIONS="1", STREAM_ENTITY_TTL_SECONDS="1800")
    env.cli("topics", "apply")
    try:
        env.start_worker()
        data = tmp_path / "metrics.jsonl"
        events = list(generate(2, T0, 2.0, 10.0)) + list(generate(1, T0 + 7200, 2.0, 10.0))
        data.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        env.cli("produce", "--topic", env.env["STREAM_TOPIC_METRICS"], str(data), "--no-progress")
        topic = f"{env.env['STREAM_APP_ID']}-entity-state-changelog"
        live, gone = b"default/http_latency_ms{host=h0}", b"default/http_latency_ms{host=h1}"
        last: dict[bytes, bytes | None] = {}
        c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"t-{env.tag}-cl",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic])
        deadline = time.monotonic() + 120
        # each entity's state is two or three records: its sample part (key: the entity id) and its
        # window part in slot 0 and later 1 (key: NUL, the slot, the entity id); all are tombstoned
        # when it expires
        both_gone = lambda: all(k in last and last[k] is None for k in (gone, b"\x000" + gone, b"\x001" + gone))  # noqa: E731
        try:  # until h1's last records are tombstones and h0's state was written (at a commit)
            while time.monotonic() < deadline and not (both_gone() and last.get(live) and last.get(b"\x000" + live)):
                msg = c.poll(0.5)
                if msg is not None and not msg.error():
                    last[msg.key()] = msg.value()
        finally:
            c.close()
        assert both_gone(), f"no tombstones for the expired entity: {sorted(last)}\n" + env.worker_log()[-3000:]
        assert last.get(live) and last.get(b"\x000" + live), "the live entity's state should be in the changelog"
        import urllib.request

        body = urllib.request.urlopen(f"http://127.0.0.1:{env.env['STREAM_WEB_PORT']}/metrics", timeout=10).read()
        assert b'stream_entities_active{detector="default"} 1.0' in body
    finally:
        env.stop()


BAD = [
    (b"this is not json", "not_json"),
    (b'{"metric": "http_latency_ms", "labels": {"host": "h0"}, "ts": 1700000000}', "missing_field"),
    (b'{"metric": "http_latency_ms", "labels": {"host": "h0"}, "value": "fast", "ts": 1700000000}', "non_numeric"),
    (b'{"metric": "http_latency_ms", "labels": {"host": "h0"}, "value": NaN, "ts": 1700000000}', "non_finite"),
    (b'{"metric": "http_latency_ms", "labels": {"host": "h0"}, "value": Infinity, "ts": 1700000000}', "non_finite"),
    (b'[1, 2, 3]', "wrong_shape"),
    (b'{"samples": "nope"}', "wrong_shape"),
]


def test_bad_input_is_deadlettered_once_and_the_worker_keeps_alerting(stream_env, tmp_path):
    env = stream_env
    data = tmp_path / "mixed.jsonl"
    good = _events((Injection(3, "spike", SPIKE_AT, 60),)).splitlines()
    # bad lines first, then a few interleaved, then the good stream with its spike after them
    lines = [b for b, _ in BAD] + good[:100] + [BAD[0][0]] + good[100:]
    data.write_bytes(b"\n".join(lines) + b"\n")
    worker = env.start_worker()
    env.cli("produce", "--topic", env.env["STREAM_TOPIC_METRICS"], str(data), "--no-progress")
    n_bad = len(BAD) + 1
    dead = env.consume(env.env["STREAM_TOPIC_DEADLETTER"], until=lambda r: len(r) >= n_bad, timeout=90)
    time.sleep(3)
    dead += env.consume(env.env["STREAM_TOPIC_DEADLETTER"], until=lambda r: False, timeout=3)[len(dead):]
    assert len(dead) == n_bad, [d["reason"] for d in dead]
    import base64

    by_original = {}
    for d in dead:
        by_original.setdefault(base64.b64decode(d["original_b64"]), []).append(d)
    for raw, reason in BAD:
        recs = by_original[raw]
        assert len(recs) == (2 if raw == BAD[0][0] else 1)
        assert recs[0]["reason"] == reason, (raw, recs[0])
        assert recs[0]["source"]["topic"] == env.env["STREAM_TOPIC_METRICS"]
        assert recs[0]["source"]["offset"] >= 0 and recs[0]["time"] > 0 and recs[0]["error"]
    alerts = env.consume(env.env["STREAM_TOPIC_ALERTS"],
                         until=lambda r: any(a["status"] == "firing" for a in r), timeout=90)
    assert worker.poll() is None, "worker died:\n" + env.worker_log()[-3000:]
    firing = _firing(alerts)
    assert firing and firing[0]["series"]["labels"]["host"] == "h3"
    assert firing[0]["window"]["start"] <= SPIKE_AT < firing[0]["window"]["end"]


def test_mixed_batch_keeps_good_samples(stream_env, tmp_path):
    env = stream_env
    batch = {"samples": [
        {"metric": "m", "labels": {"host": "x"}, "value": 1.0, "ts": T0},
        {"metric": "m", "labels": {"host": "x"}, "value": "bad", "ts": T0 + 1},
        {"metric": "m", "labels": {"host": "x"}, "value": 2.0, "ts": T0 + 2},
    ]}
    env.start_worker()
    env.cli("produce", "--topic", env.env["STREAM_TOPIC_METRICS"], "-", "--no-progress", input=orjson.dumps(batch) + b"\n")
    dead = env.consume(env.env["STREAM_TOPIC_DEADLETTER"], until=lambda r: len(r) >= 1, timeout=90)
    assert len(dead) == 1 and dead[0]["batch_index"] == 1 and dead[0]["reason"] == "non_numeric"
    # the two good samples were forwarded to the detector's entity topic
    from stream.routing import decode_payload

    fwd = env.consume(f"{env.env['STREAM_APP_ID']}-entity-samples", until=lambda r: len(r) >= 1, timeout=30,
                      raw=True)
    assert len(fwd) == 1
    (ent,) = decode_payload(fwd[0], None).values()  # (the internal messages are binary)
    ((_part, offset, rows),) = ent[1]  # one chunk: the one input message
    assert offset == dead[0]["source"]["offset"] and [row[2] for row in rows] == [1.0, 2.0]


def test_topics_apply_is_idempotent(stream_env):
    res = stream_env.cli("topics", "apply")
    out = res.stdout.decode()
    assert "created" not in out and out.count("unchanged") >= 3, out
