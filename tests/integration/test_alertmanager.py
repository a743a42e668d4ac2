"""`stream alertmanager-bridge` against a real Alertmanager (Debian's prometheus-alertmanager)."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from stream.alertmanager import AlertmanagerClient, Rejected, to_alertmanager
from tests.promtools import Alertmanager, free_port, need

ROOT = Path(__file__).resolve().parents[2]


def _alert(status: str = "firing", incident: str | None = None, host: str = "h3") -> dict:
    aid = uuid.uuid4().hex
    a = {"alert_id": aid, "status": status, "kind": "anomaly", "detector": "default", "severity": "warning",
         "series": {"id": f"default/http_latency_ms{{host={host}}}",
                    "labels": {"__name__": "http_latency_ms", "host": host, "9bad-name": "x"}},
         "window": {"start": 1700018100.0, "end": 1700018160.0}, "score": 0.985, "grade": 1.0,
         "threshold": {"grade": 0.99}, "source": {"topic": "metrics", "partition": 5, "first_offset": 10,
                                                 "last_offset": 15},
         "attribution": [{"feature": "http_latency_ms:mean", "share": 0.21, "direction": "high", "value": 1612.4,
                          "baseline": {"mean": 161.2, "std": 3.2}}],
         "created_at": time.time()}
    if incident:
        a["incident_id"] = incident
    return a


def test_mapping_labels_annotations_and_times():
    now = time.time()
    fire = _alert()
    am = to_alertmanager(fire, now=now, firing_ttl=3600)
    assert am["labels"] == {"alertname": "anomaly", "detector": "default", "severity": "warning",
                            "series": "default/http_latency_ms{host=h3}", "incident": fire["alert_id"],
                            "metric": "http_latency_ms", "host": "h3", "_9bad_name": "x"}
    ann = am["annotations"]
    assert ann["alert_id"] == fire["alert_id"] and ann["summary"].startswith("anomaly on default/http_latency_ms")
    assert "http_latency_ms:mean high (1612 vs baseline 161.2)" in ann["attribution"]
    assert am["endsAt"] > am["startsAt"]
    res = to_alertmanager(_alert("resolved", incident=fire["alert_id"]), now=now)
    assert res["labels"] == am["labels"]  # same incident = same Alertmanager alert
    assert res["endsAt"] >= res["startsAt"]


def test_replayed_history_older_than_the_ttl_arrives_ended():
    """A new bridge group reads the alerts topic from the beginning: a two-day-old firing event must
    not fire again in Alertmanager (its endsAt is in the past), a fresh one must."""
    now = time.time()
    old = _alert()
    old["created_at"] = now - 2 * 86400
    am = to_alertmanager(old, now=now, firing_ttl=86400)
    assert am["startsAt"] < am["endsAt"] < to_alertmanager(_alert(), now=now)["startsAt"]
    fresh = to_alertmanager(_alert(), now=now, firing_ttl=86400)
    assert fresh["endsAt"] > fresh["startsAt"]


def test_client_retries_then_delivers_and_skips_rejected_alerts():
    calls, logs = [], []

    class Flaky(AlertmanagerClient):
        def post(self, alerts):
            calls.append(len(alerts))
            if len(calls) <= 3:
                raise OSError("connection refused")
            if any(a.get("bad") for a in alerts):
                raise Rejected("HTTP 400: bad alert")

    waits = []
    c = Flaky("http://127.0.0.1:1", log=logs.append, sleep=waits.append, max_backoff=1.5)
    assert c.deliver([{"a": 1}, {"bad": True, "annotations": {"alert_id": "x"}}])
    assert waits == [0.5, 1.0, 1.5]  # exponential, capped
    assert calls == [2, 2, 2, 2, 1, 1]  # the rejected batch is retried one by one
    assert "cannot deliver to Alertmanager at http://127.0.0.1:1" in logs[0] and "--alertmanager-url" in logs[0]
    assert any("rejected alert x" in l for l in logs)


def test_a_port_that_does_not_speak_http_is_retried_not_fatal():
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def garbage():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.recv(4096)
            c.sendall(b"\x00\x01not http\r\n\r\n")
            c.close()

    threading.Thread(target=garbage, daemon=True).start()
    logs, attempts = [], []
    c = AlertmanagerClient(f"http://127.0.0.1:{srv.getsockname()[1]}", log=logs.append, sleep=attempts.append,
                           stop=lambda: len(attempts) >= 2)
    try:
        assert c.deliver([{"labels": {}}]) is False  # stopped while still failing: nothing acknowledged
    finally:
        srv.close()
    assert c.retries >= 2 and "is this Alertmanager's port?" in logs[0]


def _produce(bootstrap: str, topic: str, alerts: list[dict]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap})
    for a in alerts:
        p.produce(topic, key=a["series"]["id"].encode(), value=orjson.dumps(a))
    assert p.flush(30) == 0


def _bridge(env, url: str, tmp: Path, *extra: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "stream.cli", "alertmanager-bridge", "--alertmanager-url", url,
                          "--max-backoff", "1", *extra], env=env.env, stdout=open(tmp / "bridge.log", "wb"),
                         stderr=subprocess.STDOUT, cwd=ROOT)
    env.procs.append(p)
    return p


def _wait(what, fn, timeout, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = fn()
        if r:
            return r
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")


@pytest.mark.kafka
def test_firing_alert_appears_and_resolved_alert_ends_it(stream_env, tmp_path):
    env = stream_env
    am = Alertmanager(tmp_path).start()
    try:
        bridge = _bridge(env, am.url, tmp_path)
        fire = _alert()
        _produce(env.env["STREAM_BOOTSTRAP_SERVERS"], env.env["STREAM_TOPIC_ALERTS"], [fire])
        log = lambda: (tmp_path / "bridge.log").read_text()  # noqa: E731
        got = _wait("the alert in Alertmanager", lambda: am.alerts(incident=fire["alert_id"]), 60, log)
        a = got[0]
        assert a["labels"]["alertname"] == "anomaly" and a["labels"]["host"] == "h3"
        assert a["labels"]["severity"] == "warning" and a["labels"]["series"] == fire["series"]["id"]
        assert a["annotations"]["alert_id"] == fire["alert_id"] and a["annotations"]["attribution"]
        assert a["status"]["state"] == "active"
        _produce(env.env["STREAM_BOOTSTRAP_SERVERS"], env.env["STREAM_TOPIC_ALERTS"],
                 [_alert("resolved", incident=fire["alert_id"])])
        _wait("the alert resolved", lambda: am.alerts(incident=fire["alert_id"]) == [], 60, log)
        assert bridge.poll() is None
    finally:
        am.stop()


@pytest.mark.kafka
def test_alertmanager_down_at_first_then_delivered_and_committed(stream_env, tmp_path):
    env = stream_env
    am = Alertmanager(tmp_path)  # port chosen, not started yet
    mport = free_port()
    bridge = _bridge(env, am.url, tmp_path, "--metrics-port", str(mport))
    fire = _alert(host="h9")
    _produce(env.env["STREAM_BOOTSTRAP_SERVERS"], env.env["STREAM_TOPIC_ALERTS"], [fire])
    log = lambda: (tmp_path / "bridge.log").read_text()  # noqa: E731
    _wait("the bridge to report Alertmanager down", lambda: "cannot deliver to Alertmanager" in log(), 60, log)
    assert f"at {am.url}" in log()
    time.sleep(2)  # a few retries while it is down
    assert bridge.poll() is None, log()
    try:
        am.start()
        _wait("the alert delivered after Alertmanager started", lambda: am.alerts(incident=fire["alert_id"]), 60, log)
        assert "reachable again" in log()
        # the offset is committed only now: a restarted bridge would not send it again, and nothing was skipped
        from confluent_kafka import Consumer, TopicPartition

        group = env.env["STREAM_APP_ID"] + "-alertmanager-bridge"
        c = Consumer({"bootstrap.servers": env.env["STREAM_BOOTSTRAP_SERVERS"], "group.id": group})
        topic = env.env["STREAM_TOPIC_ALERTS"]
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        committed = _wait("the commit", lambda: sum(max(tp.offset, 0) for tp in c.committed(
            [TopicPartition(topic, p) for p in parts], timeout=10)) == 1 or None, 20)
        c.close()
        assert committed
        import urllib.request

        body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        vals = {l.split(" ")[0]: float(l.split(" ")[1]) for l in body.splitlines() if l.startswith("stream_")}
        assert vals["stream_alertmanager_bridge_alerts_delivered_total"] == 1
        assert vals["stream_alertmanager_bridge_delivery_failures_total"] >= 2
    finally:
        am.stop()


def test_shipped_alertmanager_config_is_valid():
    need("prometheus-alertmanager", "prometheus-alertmanager")
    amtool = need("amtool", "prometheus-alertmanager")
    res = subprocess.run([amtool, "check-config", str(ROOT / "deploy" / "alertmanager.yml")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
