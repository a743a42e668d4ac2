"""The project's Kafka launcher (stream/kafka/launcher.py) and `stream kafka up|down|status`.

Starts its own broker on free ports with a temporary state dir, so it never touches the
broker of tests/conftest.py or anyone else's; it shares the repo's jar cache
(<repo>/.var/kafka-jars) so mvn runs at most once per machine.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import time
import uuid
from pathlib import Path

import pytest

from stream.kafka import launcher
from stream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
JAR_CACHE = REPO / ".var" / "kafka-jars"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_for(state_dir: Path, port: int | None = None, controller_port: int | None = None) -> Settings:
    port = port or free_port()
    cport = controller_port or free_port()
    while cport == port:
        cport = free_port()
    return dataclasses.replace(Settings.load(), kafka_port=port, kafka_controller_port=cport,
                               state_dir=str(state_dir), bootstrap_servers=f"127.0.0.1:{port}")


def broker_processes(settings: Settings) -> list[int]:
    """Live java processes running the broker of these settings (by their properties file)."""
    props = str(launcher.BrokerPaths.for_settings(settings).properties_file)
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if "kafka.Kafka" in cmd and props in cmd and state != "Z":
                pids.append(int(proc.name))
    return pids


# ---------------------------------------------------------------------------------------------
# no broker needed

def test_properties_are_generated_by_one_function_with_room_for_extra_listeners(tmp_path):
    s = settings_for(tmp_path, 31092, 31093)
    paths = launcher.BrokerPaths.for_settings(s)
    props = launcher.broker_properties(s, paths)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:31092,CONTROLLER://127.0.0.1:31093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:31093"
    assert props["log.dirs"] == str(tmp_path.resolve() / "kafka" / "31092" / "data")
    assert props["offsets.topic.replication.factor"] == "1"

    sasl = launcher.Listener("SASL_PLAINTEXT", 31094, properties={
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": "x required;",
    })
    props = launcher.broker_properties(s, paths, [sasl])
    assert props["listeners"].endswith(",SASL_PLAINTEXT://127.0.0.1:31094")
    assert "SASL_PLAINTEXT:SASL_PLAINTEXT" in props["listener.security.protocol.map"]
    assert props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] == "x required;"


def test_cli_help_everywhere(capsys):
    from stream.cli import main

    for argv in (["kafka", "--help"], ["kafka", "up", "--help"], ["kafka", "down", "--help"],
                 ["kafka", "status", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "STREAM_KAFKA_PORT" in out and "--json" in out and "SIGKILL" in out


def _fake_broker(paths: "launcher.BrokerPaths", logging_every: float | None):
    """A live process standing in for a starting broker that never answers: it appends a line
    to the broker log every ``logging_every`` s (a broker loading its data), or writes nothing."""
    import subprocess
    import sys

    paths.root.mkdir(parents=True, exist_ok=True)
    paths.log_file.write_text("starting\n")
    code = ("import sys, time\n"
            "while True:\n"
            + (f"    open(sys.argv[1], 'a').write('loading\\n'); time.sleep({logging_every})\n"
               if logging_every else "    time.sleep(1)\n"))
    return subprocess.Popen([sys.executable, "-c", code, str(paths.log_file)])


@pytest.mark.parametrize("logging", [True, False], ids=["still-logging", "silent"])
def test_wait_ready_waits_for_a_broker_that_is_still_loading_not_for_a_silent_one(tmp_path, monkeypatch, logging):
    # the CI failure this guards against: a restarted broker loading thousands of partitions
    # was killed at the fixed deadline while it was still making progress
    s = settings_for(tmp_path)  # a free port nobody answers on
    paths = launcher.BrokerPaths.for_settings(s)
    monkeypatch.setattr(launcher, "_WAIT_CAP", 4)
    proc = _fake_broker(paths, 0.2 if logging else None)
    reports: list[float] = []
    t0 = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            launcher._wait_ready(proc.pid, s, paths, wait=1.0, progress=reports.append)
    finally:
        proc.kill()
        proc.wait()
    took = time.monotonic() - t0
    if logging:
        assert took >= 3.5, took  # kept waiting past `wait` while the log grew, up to the cap (4 x 1 s)
    else:
        assert took < 3.0, took   # nothing logged for `wait` s: gave up, long before the cap


# ---------------------------------------------------------------------------------------------
# a real broker

@pytest.mark.kafka
def test_port_taken_by_another_process_fails_naming_the_port(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        s = settings_for(tmp_path, port)
        t0 = time.monotonic()
        with pytest.raises(launcher.LauncherError) as exc:
            launcher.up(s, jar_cache=JAR_CACHE)
        assert time.monotonic() - t0 < 5  # fails before resolving jars or starting java
    msg = str(exc.value)
    assert str(port) in msg and "STREAM_KAFKA_PORT" in msg and "in use" in msg
    assert not broker_processes(s)
    assert launcher.status(s)["running"] is False


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    s = settings_for(tmp_path_factory.mktemp("kstate"))
    t0 = time.monotonic()
    info = launcher.up(s, jar_cache=JAR_CACHE, wait=90)
    info_elapsed = time.monotonic() - t0
    try:
        yield s, info, info_elapsed
    finally:
        launcher.down(s, timeout=20)


@pytest.mark.kafka
def test_up_twice_leaves_one_broker(broker):
    s, first, elapsed = broker
    assert not first.already_running
    assert elapsed < 60, f"broker took {elapsed:.1f} s to start"
    second = launcher.up(s, jar_cache=JAR_CACHE)
    assert second.already_running and second.pid == first.pid
    assert broker_processes(s) == [first.pid]
    assert launcher.ensure_running(s, jar_cache=JAR_CACHE) == f"127.0.0.1:{s.kafka_port}"
    assert broker_processes(s) == [first.pid]


@pytest.mark.kafka
def test_status_reports_the_broker(broker):
    s, info, _ = broker
    st = launcher.status(s)
    assert st["running"] and st["answering"]
    assert st["pid"] == info.pid
    assert st["bootstrap"] == f"127.0.0.1:{s.kafka_port}"
    assert st["version"] == s.kafka_version
    assert st["uptime_seconds"] is not None and st["uptime_seconds"] >= 0
    assert Path(st["log_file"]).is_file() and Path(st["data_dir"]).is_dir()
    assert Path(st["data_dir"], "meta.properties").is_file()
    json.dumps(st)  # serialisable for `status --json`


@pytest.mark.kafka
def test_cli_status_json(broker, monkeypatch, capsys):
    from stream.cli import main
    from stream.settings import get_settings

    s, info, _ = broker
    monkeypatch.setenv("STREAM_KAFKA_PORT", str(s.kafka_port))
    monkeypatch.setenv("STREAM_KAFKA_CONTROLLER_PORT", str(s.kafka_controller_port))
    monkeypatch.setenv("STREAM_STATE_DIR", s.state_dir)
    get_settings(reload=True)
    try:
        assert main(["kafka", "status", "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["running"] and st["pid"] == info.pid
        assert main(["kafka", "up"]) == 0
        out = capsys.readouterr().out
        assert "already running" in out and f"127.0.0.1:{s.kafka_port}" in out and "broker.log" in out
    finally:
        monkeypatch.undo()
        get_settings(reload=True)


@pytest.mark.kafka
def test_topic_produce_consume(broker):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    s, info, _ = broker
    topic = f"launcher-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": info.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(20)

    producer = Producer({"bootstrap.servers": info.bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(20) == 0

    consumer = Consumer({"bootstrap.servers": info.bootstrap, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        msg = None
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                break
        assert msg is not None and msg.error() is None and msg.value() == b"hello"
    finally:
        consumer.close()


@pytest.mark.kafka
def test_down_stops_it_and_is_idempotent(broker):
    s, info, _ = broker
    result = launcher.down(s, timeout=20)
    assert result["stopped"] and result["pid"] == info.pid and result["clean"]
    assert not broker_processes(s)
    st = launcher.status(s)
    assert st["running"] is False and st["pid"] is None
    assert not Path(st["pid_file"]).exists()
    assert launcher.down(s)["stopped"] is False
