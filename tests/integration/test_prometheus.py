"""Consumer lag through a real Prometheus (Debian's package), scraping a worker and `stream lag-exporter`.

The worker is paused (SIGSTOP) while thousands of messages are produced: its own /metrics cannot be
scraped then (up == 0), but the lag exporter keeps reporting the group's lag. After SIGCONT the
worker catches up and both report 0 again. The shipped rules are loaded and checked with promtool.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.promtools import Prometheus, free_port, need

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "rules" / "stream.yml"


def test_promtool_checks_and_unit_tests_the_rules():
    promtool = need("promtool", "prometheus")
    res = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([promtool, "test", "rules", "stream_test.yml"], cwd=RULES.parent, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # the compose stack's config (its rule path exists only inside the container: syntax only)
    res = subprocess.run([promtool, "check", "config", "--syntax-only", str(ROOT / "deploy" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def _wait(what: str, fn, timeout: float, every: float = 0.5, log=lambda: ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})\n{log()}")


def _ready(port: str) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2).status == 200
    except OSError:
        return False


@pytest.mark.kafka
def test_lag_rises_while_the_worker_is_paused_and_returns_to_zero(stream_env, tmp_path):
    env = stream_env
    topic = env.env["STREAM_TOPIC_METRICS"]
    group = env.env["STREAM_APP_ID"]
    worker = env.start_worker()
    web = env.env["STREAM_WEB_PORT"]
    _wait("the worker to be ready", lambda: _ready(web), 90, log=lambda: env.worker_log()[-3000:])

    exp_port = free_port()
    exp_log = open(tmp_path / "lag-exporter.log", "wb")
    exporter = subprocess.Popen([sys.executable, "-m", "stream.cli", "lag-exporter", "--group", group,
                                 "--port", str(exp_port), "--interval", "1"],
                                env=env.env, stdout=exp_log, stderr=subprocess.STDOUT, cwd=ROOT)
    env.procs.append(exporter)
    prom = Prometheus(tmp_path)
    try:
        prom.start({"stream-worker": [f"127.0.0.1:{web}"], "stream-lag-exporter": [f"127.0.0.1:{exp_port}"]},
                   rule_files=[str(RULES)])
        sel = f'{{topic="{topic}"}}'
        _wait("both targets up", lambda: prom.value('sum(up{job=~"stream-.*"})') == 2, 30,
              log=lambda: (tmp_path / "lag-exporter.log").read_text())
        # the worker reports its assigned input partitions; all four metrics partitions, lag 0
        _wait("the worker's lag series", lambda: prom.value(f'count(stream_consumer_lag_messages{{job="stream-worker",'
                                                              f'topic="{topic}"}})') == 4, 30)
        assert prom.value(f"sum(stream_consumer_lag_messages{sel})") == 0

        data = b"".join(orjson.dumps({"metric": "lag_probe", "labels": {"host": f"h{i % 16}"}, "value": float(i % 7),
                                      "ts": 1_700_000_000.0 + i}) + b"\n" for i in range(5000))
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            env.cli("produce", "--topic", topic, "-", "--no-progress", input=data)
            up_worker = 'up{job="stream-worker"}'
            _wait("up == 0 for the paused worker", lambda: prom.value(up_worker) == 0, 20)
            lag = _wait("lag > 0 while paused",
                        lambda: (prom.value(f'sum(stream_consumer_lag_messages{{job="stream-lag-exporter",'
                                            f'topic="{topic}"}})') or 0) > 0 and
                        prom.value(f'sum(stream_consumer_lag_messages{{job="stream-lag-exporter",topic="{topic}"}})'),
                        30)
            assert lag == 5000, lag  # nothing of it consumed by the paused worker
            # lag seconds: the oldest waiting record ages while the worker is paused
            t1 = _wait("lag seconds > 0", lambda: prom.value(f"max(stream_consumer_lag_seconds{sel})") or 0, 20)
            time.sleep(2.5)
            t2 = prom.value(f"max(stream_consumer_lag_seconds{sel})")
            assert t2 > t1, (t1, t2)
            # the recording rule (max per partition, then sum) and the worker-down rule see it too
            assert prom.value(f'group_topic:stream_consumer_lag_messages:sum{{group="{group}",topic="{topic}"}}') == 5000
            _wait("StreamWorkerDown pending", lambda: prom.query('ALERTS{alertname="StreamWorkerDown"}'), 10)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        # caught up: both the exporter's and the worker's series go back to 0
        _wait("the worker scraped again", lambda: prom.value(up_worker) == 1, 30)
        _wait("lag back to 0 on both jobs",
              lambda: [r["value"][1] for r in prom.query(f"sum by (job) (stream_consumer_lag_messages{sel})")]
              == ["0", "0"], 90, log=lambda: env.worker_log()[-2000:])
        _wait("lag seconds back to 0", lambda: prom.value(f"max(stream_consumer_lag_seconds{sel})") == 0, 30)
        assert prom.value(f'sum(stream_events_total{{job="stream-worker",topic="{topic}",outcome="processed"}})') == 5000
        # Faust's changelogs and assignor topic are not consumption: never reported as lag
        assert prom.query('stream_consumer_lag_messages{topic=~".*(-changelog|__assignor-__leader)"}') == []
        assert worker.poll() is None and exporter.poll() is None
        exp_out = (tmp_path / "lag-exporter.log").read_text()
        assert "retrying" not in exp_out and "cannot" not in exp_out, exp_out
        assert "consumer lag:" not in env.worker_log(), env.worker_log()[-2000:]
    finally:
        prom.stop()


def test_lag_monitor_names_an_unreachable_broker_and_reports_up_0():
    from prometheus_client import CollectorRegistry, generate_latest

    from stream.lag import LagError, LagMonitor, make_gauges
    from stream.settings import Settings

    reg = CollectorRegistry()
    port = free_port()
    mon = LagMonitor(Settings.load({"STREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}), ["g1"],
                     gauges=make_gauges(reg), timeout=1.0)
    with pytest.raises(LagError) as exc:
        mon.poll()
    assert f"127.0.0.1:{port}" in str(exc.value) and "STREAM_BOOTSTRAP_SERVERS" in str(exc.value)
    assert 'stream_consumer_lag_up{group="g1"} 0.0' in generate_latest(reg).decode()


def test_lag_exporter_names_a_port_in_use():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "stream.cli", "lag-exporter", "--group", "g", "--port", str(port)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env={**os.environ, "STREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert res.returncode == 2
    assert f"127.0.0.1:{port}" in res.stderr and "--port" in res.stderr


def test_worker_names_a_web_port_in_use():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "stream.cli", "worker"], capture_output=True, text=True,
                             timeout=60, cwd=ROOT, env={**{k: v for k, v in os.environ.items()
                                                           if not k.startswith("STREAM_")},
                                                        "STREAM_WEB_PORT": str(port),
                                                        "STREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert res.returncode == 2, res.stderr
    assert f"127.0.0.1:{port}" in res.stderr and "STREAM_WEB_PORT" in res.stderr


def test_isolated_lag_monitor_survives_its_probe_process_dying(kafka_bootstrap):
    """librdkafka#4605 can abort the process that runs the AdminClient; the worker's monitor runs it
    in a child process instead: a dead child is one failed poll (up 0), and the next poll works."""
    from prometheus_client import CollectorRegistry, generate_latest

    from confluent_kafka import Producer

    from stream.lag import LagError, LagMonitor, make_gauges
    from stream.settings import Settings

    topic = f"lagprobe-{os.getpid()}-{int(time.time())}"
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(7):
        p.produce(topic, value=b"x%d" % i)
    p.flush(30)
    reg = CollectorRegistry()
    mon = LagMonitor(Settings.load({"STREAM_BOOTSTRAP_SERVERS": kafka_bootstrap}), ["g-never-committed"],
                     gauges=make_gauges(reg), topics={topic}, partitions=lambda: {(topic, 0)}, isolated=True)
    try:
        rows = mon.poll()
        assert [(r.topic, r.messages) for r in rows] == [(topic, 7)]
        child = mon._probe.proc
        assert child is not None and child.pid != os.getpid()
        os.kill(child.pid, signal.SIGABRT)  # what librdkafka's assertion does
        child.join(10)
        rows = mon.poll()  # finds the probe dead, says so, and polls through a new one
        assert [(r.topic, r.messages) for r in rows] == [(topic, 7)]
        assert mon._probe.proc.pid != child.pid and mon._probe.restarts == 1
        assert 'stream_consumer_lag_up{group="g-never-committed"} 1.0' in generate_latest(reg).decode()
        # a child that dies *during* a call: that poll fails (up 0, exit code named), the next works
        os.kill(mon._probe.proc.pid, signal.SIGKILL)
        mon._probe.proc.join(10)
        mon._probe.proc = _AliveOnce(mon._probe.proc)  # looks alive until the call finds it dead
        with pytest.raises(LagError) as exc:
            mon.poll()
        assert "exit code" in str(exc.value)
        assert 'stream_consumer_lag_up{group="g-never-committed"} 0.0' in generate_latest(reg).decode()
        assert [(r.topic, r.messages) for r in mon.poll()] == [(topic, 7)]
    finally:
        mon.close()
    assert mon._probe.proc is None


class _AliveOnce:
    """A dead process that reports itself alive once (the race of a child dying mid-call)."""

    def __init__(self, proc):
        self._proc, self._alive = proc, True

    def is_alive(self):
        alive, self._alive = self._alive, False
        return alive

    def __getattr__(self, name):
        return getattr(self._proc, name)
