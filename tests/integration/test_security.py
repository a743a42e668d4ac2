"""SASL on a broker of our own: the right credentials work end to end, wrong ones fail in bounded time
naming authentication, and the secret never shows (worker log, /metrics, alerts, CLI output, doctor).

The broker (started through ``stream.kafka.launcher`` on free ports in a temporary state dir) has the
usual PLAINTEXT listener plus a SASL_PLAINTEXT listener with PLAIN and SCRAM-SHA-512; the SCRAM users
are created when the data dir is formatted. The clients are pointed at the SASL listener only.
"""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from stream.demo import Injection, generate
from tests.conftest import ROOT, StreamEnv, _free_port, log_end

pytestmark = pytest.mark.kafka

SECRET = "Xq7-sasl-SECRET-pw-91c4"
WRONG = "Wrong-pw-do-not-print-3b7"
T0 = 1_700_000_000.0 - (1_700_000_000.0 % 60)
SPIKE_AT = T0 + 2.5 * 3600 + 120


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    from stream.kafka import launcher
    from stream.settings import Settings

    port, cport, sport = _free_port(), _free_port(), _free_port()
    s = Settings.load({"STREAM_KAFKA_PORT": str(port), "STREAM_KAFKA_CONTROLLER_PORT": str(cport),
                       "STREAM_STATE_DIR": str(tmp_path_factory.mktemp("sasl-broker")), "STREAM_KAFKA_HEAP": "384m"})
    lst = launcher.sasl_listener(sport, {"admin": "admin-" + SECRET, "stream": SECRET}, ("PLAIN", "SCRAM-SHA-512"))
    t = time.monotonic()
    try:
        launcher.up(s, extra_listeners=[lst], jar_cache=ROOT / ".var" / "kafka-jars", wait=120)
    except Exception as exc:  # noqa: BLE001
        launcher.down(s)
        pytest.fail(f"SASL broker did not start: {exc}")
    print(f"\nSASL broker up in {time.monotonic() - t:.1f}s (plaintext {port}, SASL {sport})")
    yield {"sasl": f"127.0.0.1:{sport}", "plain": f"127.0.0.1:{port}"}
    launcher.down(s)


def _env(broker, tmp: Path, mech: str = "SCRAM-SHA-512", password: str = SECRET, user: str = "stream") -> StreamEnv:
    return StreamEnv(broker["sasl"], tmp, STREAM_SECURITY_PROTOCOL="SASL_PLAINTEXT", STREAM_SASL_MECHANISM=mech,
                     STREAM_SASL_USERNAME=user, STREAM_SASL_PASSWORD=password, STREAM_TOPIC_PARTITIONS="2")


def _no_secret(where: str, text: str | bytes, *secrets: str) -> None:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    for sec in secrets or (SECRET,):
        assert sec not in text, f"the SASL password appears in {where}"


def test_scram_end_to_end_and_no_secret_anywhere(sasl_broker, tmp_path):
    env = _env(sasl_broker, tmp_path)
    res = env.cli("topics", "apply", "--timeout", "20")
    _no_secret("`stream topics apply` output", res.stdout + res.stderr)
    assert b"created" in res.stdout, res.stdout
    data = tmp_path / "metrics.jsonl"
    data.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in generate(
        4, T0, 3.0, 10.0, injections=(Injection(3, "spike", SPIKE_AT, 60),))))
    worker = env.start_worker()
    res = env.cli("produce", "--topic", env.env["STREAM_TOPIC_METRICS"], str(data), "--no-progress")
    _no_secret("`stream produce` output", res.stdout + res.stderr)
    res = env.cli("alerts", "tail", "--json", "--from-beginning", "--timeout", "120", "--max", "1", timeout=150)
    alerts = [orjson.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert alerts, "no alert over SASL within 120 s:\n" + env.worker_log()[-3000:]
    a = alerts[0]
    assert a["status"] == "firing" and a["series"]["labels"]["host"] == "h3", a
    assert a["window"]["start"] <= SPIKE_AT < a["window"]["end"]
    _no_secret("the alert", res.stdout)
    _no_secret("`stream alerts tail` stderr", res.stderr)
    assert worker.poll() is None, env.worker_log()[-3000:]

    body = urllib.request.urlopen(f"http://127.0.0.1:{env.env['STREAM_WEB_PORT']}/metrics", timeout=10).read()
    assert b"stream_events_total" in body
    _no_secret("/metrics", body)
    for page in ("health", "ready"):
        try:
            _no_secret(f"/{page}", urllib.request.urlopen(f"http://127.0.0.1:{env.env['STREAM_WEB_PORT']}/{page}",
                                                         timeout=10).read())
        except urllib.error.HTTPError as exc:  # /ready may say 503 during a rebalance; the body still counts
            _no_secret(f"/{page}", exc.read())

    doctor = env.cli("doctor", check=False, timeout=60)
    if b"invalid choice" not in doctor.stderr:  # `stream doctor` exists
        out = doctor.stdout + doctor.stderr
        _no_secret("`stream doctor` output", out)
        assert b"***" in out, out[-2000:]  # the password is shown masked
        doctor_json = env.cli("doctor", "--json", check=False, timeout=60)
        _no_secret("`stream doctor --json` output", doctor_json.stdout + doctor_json.stderr)
        assert orjson.loads(doctor_json.stdout)  # valid JSON
        assert b'"sasl_password": "***"' in doctor_json.stdout or b'"sasl_password":"***"' in doctor_json.stdout

    env.stop()  # the whole log, shutdown included
    _no_secret("the worker log", env.worker_log())


def test_plain_mechanism_produces_and_applies(sasl_broker, tmp_path):
    from confluent_kafka import Consumer, TopicPartition

    env = _env(sasl_broker, tmp_path, mech="PLAIN")
    env.cli("topics", "apply", "--timeout", "20")
    lines = [orjson.dumps({"metric": "up", "labels": {"host": "a"}, "value": float(i), "ts": T0 + i}) for i in range(50)]
    res = env.cli("produce", "--topic", env.env["STREAM_TOPIC_METRICS"], "-", "--no-progress",
                  input=b"\n".join(lines) + b"\n")
    _no_secret("`stream produce` output", res.stdout + res.stderr)
    # what arrived, read through the broker's PLAINTEXT listener
    c = Consumer({"bootstrap.servers": sasl_broker["plain"], "group.id": "t-" + env.tag})
    try:
        topic = env.env["STREAM_TOPIC_METRICS"]
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        total = sum(log_end(c, TopicPartition(topic, p)) for p in parts)
    finally:
        c.close()
    assert total == 50


def _run(env: StreamEnv, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream.cli", *args], env=env.env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_wrong_credentials_fail_in_bounded_time_naming_authentication(sasl_broker, tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_bytes(orjson.dumps({"metric": "up", "value": 1, "ts": T0}) + b"\n")
    # every command with both mechanisms at once (each waits for the broker on its own)
    procs = {}
    for mech in ("SCRAM-SHA-512", "PLAIN"):
        (tmp_path / mech).mkdir()
        env = _env(sasl_broker, tmp_path / mech, mech=mech, password=WRONG)
        procs[(mech, "topics apply")] = _run(env, "topics", "apply", "--timeout", "10")
        procs[(mech, "produce")] = _run(env, "produce", "--topic", env.env["STREAM_TOPIC_METRICS"], str(data),
                                        "--no-progress")
        procs[(mech, "worker")] = _run(env, "worker", "--loglevel", "info")
    t0 = time.monotonic()
    took: dict = {}
    while len(took) < len(procs) and time.monotonic() - t0 < 100:
        for k, p in procs.items():
            if k not in took and p.poll() is not None:
                took[k] = time.monotonic() - t0
        time.sleep(0.2)
    outs = {}
    for k, p in procs.items():
        if p.poll() is None:
            p.kill()
        outs[k] = p.communicate()[0]
        (tmp_path / f"{k[0]}-{k[1]}.out").write_bytes(outs[k])
    print("\nwrong password: exit after " + ", ".join(
        f"{m} {n} {took[(m, n)]:.1f}s" if (m, n) in took else f"{m} {n} >100s (killed)" for m, n in procs))
    for (mech, name), out in outs.items():
        what = f"`stream {name}` ({mech}, wrong password)"
        _no_secret(f"{what} output", out, WRONG, SECRET)
        assert (mech, name) in took, f"{what} did not fail within 100 s:\n{out.decode()[-2000:]}"
        assert procs[(mech, name)].returncode != 0, f"{what} exited 0:\n{out.decode()[-2000:]}"
        assert b"authentication" in out.lower(), f"{what} does not name authentication:\n{out.decode()[-2000:]}"
        if name in ("topics apply", "produce"):  # our own message, not only librdkafka's log line
            assert b"authentication failed at Kafka" in out and b"STREAM_SASL_PASSWORD" in out, out.decode()[-2000:]
            assert took[(mech, name)] < 30, f"{what} took {took[(mech, name)]:.0f} s to give up"
