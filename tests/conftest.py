"""Shared fixtures: the real Kafka broker (started by the project's launcher) and workers.

Unless ``KAFKA_BOOTSTRAP_SERVERS`` names a broker, the session starts one through
``stream.kafka.launcher`` on a test port. With ``CI=true`` a broker that cannot start fails the
run; elsewhere the Kafka tests are skipped with the reason.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_KAFKA_PORT = int(os.environ.get("STREAM_TEST_KAFKA_PORT", "39092"))


def _settings_for_test_broker():
    from stream.settings import Settings

    return Settings.load({
        "STREAM_KAFKA_PORT": str(TEST_KAFKA_PORT),
        "STREAM_KAFKA_CONTROLLER_PORT": str(TEST_KAFKA_PORT + 1),
        "STREAM_STATE_DIR": str(ROOT / ".var" / "test"),
        "STREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{TEST_KAFKA_PORT}",
    })


@pytest.fixture(scope="session")
def kafka_bootstrap():
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        _delete_test_topics(external, StreamEnv.tags)
        return
    from stream.kafka import launcher

    s = _settings_for_test_broker()
    started = not launcher.status(s).get("running")
    try:
        bootstrap = launcher.ensure_running(s, jar_cache=ROOT / ".var" / "kafka-jars", wait=120)
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and the Kafka broker could not start: {exc}", pytrace=False)
        pytest.skip(f"Kafka broker could not start: {exc}")
    yield bootstrap
    _delete_test_topics(bootstrap, StreamEnv.tags)
    # stop only the broker this session started (STREAM_KEEP_TEST_BROKER=1 keeps it for the next run)
    if started and not os.environ.get("STREAM_KEEP_TEST_BROKER"):
        launcher.down(s)


def _delete_test_topics(bootstrap: str, tags: list[str]) -> None:
    """Delete the topics of these deployments (names carry their tag), so a long-lived broker
    (``KAFKA_BOOTSTRAP_SERVERS``, ``STREAM_KEEP_TEST_BROKER``) does not pile up thousands of them
    (a broker with ~10k leftover topics took minutes to start). Best effort."""
    if not tags:
        return
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        names = [t for t in admin.list_topics(timeout=10).topics if any(tag in t for tag in tags)]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                try:
                    fut.result(60)
                except Exception:  # noqa: BLE001 - e.g. already deleted
                    pass
    except Exception as exc:  # noqa: BLE001 - cleanup must not fail a test
        print(f"note: could not delete test topics on {bootstrap}: {exc}", file=sys.stderr)
    tags.clear()


def log_end(consumer, tp, timeout: float = 30.0) -> int:
    """The log-end offset (high watermark) of ``tp``, asked of the broker again while it answers
    with a retriable error: right after a topic is created, or while the broker is busy, a
    watermark request can meet NOT_LEADER_FOR_PARTITION (once in a CI run) though the single
    broker leads every partition a moment later."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    transient = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                 KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT,
                 KafkaError._TRANSPORT}
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)[1]
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retriable = isinstance(err, KafkaError) and (err.retriable() or err.code() in transient)
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class StreamEnv:
    """An isolated deployment on the shared broker: own app id (consumer group) and topic names."""

    tags: list[str] = []  # every deployment's tag, for the topic cleanup at the end of the session

    def __init__(self, bootstrap: str, tmp: Path, **extra: str):
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        StreamEnv.tags.append(tag)
        self.tmp = tmp
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STREAM_")},
            "STREAM_BOOTSTRAP_SERVERS": bootstrap,
            "STREAM_APP_ID": f"test-{tag}",
            "STREAM_TOPIC_METRICS": f"metrics-{tag}",
            "STREAM_TOPIC_ALERTS": f"alerts-{tag}",
            "STREAM_TOPIC_DEADLETTER": f"deadletter-{tag}",
            "STREAM_TOPIC_INFERENCES": f"inferences-{tag}",
            "STREAM_TOPIC_FEEDBACK": f"feedback-{tag}",
            "STREAM_TOPIC_PARTITIONS": "4",
            "STREAM_WEB_PORT": str(_free_port()),
            "STREAM_STATE_DIR": str(tmp / "state"),
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
        self.procs: list[subprocess.Popen] = []
        self.ports: list[tuple[str, str]] = []  # (worker name, web port) of each of procs

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 120, check: bool = True):
        res = subprocess.run([sys.executable, "-m", "stream.cli", *args], env=self.env, input=input,
                             capture_output=True, timeout=timeout, cwd=ROOT)
        if check and res.returncode != 0:
            raise AssertionError(f"stream {' '.join(args)} exited {res.returncode}:\n{res.stderr.decode()[-3000:]}")
        return res

    def start_worker(self, name: str = "worker", **extra_env: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        env = {**self.env, **extra_env}
        p = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", "--loglevel", "info"], env=env,
                             stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(p)
        self.ports.append((name, env["STREAM_WEB_PORT"]))
        return p

    def diagnostics(self, tail: int = 4000) -> str:
        """For a failure message: each live worker's /debug/consumer page (per-partition consumer
        and recovery state) and the end of every worker log."""
        import json
        import urllib.request

        out = []
        for (name, port), p in zip(self.ports, self.procs):
            if p.poll() is not None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/consumer", timeout=5) as r:
                    page = json.loads(r.read())
                rows = [row for row in page.pop("partitions", [])
                        if row.get("changelog") or row.get("highwater") != row.get("committed_offset")]
                out.append(f"== {name} /debug/consumer: {json.dumps(page)}\n"
                           + "\n".join(json.dumps(row) for row in rows))
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                out.append(f"== {name} /debug/consumer: {exc}")
        for log in sorted(self.tmp.glob("*.log")):
            out.append(f"== {log.name}\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def worker_log(self, name: str = "worker") -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def consume(self, topic: str, *, until, timeout: float, raw: bool = False, **config: str) -> list:
        """Read a topic from the beginning until ``until(records)`` is true or the timeout passes.

        Records are JSON-decoded (``raw``: the values' bytes, e.g. the binary internal messages).
        ``config``: extra consumer settings, dots as underscores (``isolation_level="read_uncommitted"``);
        librdkafka's default isolation level is read_committed."""
        import orjson
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": self.env["STREAM_BOOTSTRAP_SERVERS"], "group.id": f"t-{uuid.uuid4().hex}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      **{k.replace("_", "."): v for k, v in config.items()}})
        c.subscribe([topic])
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not until(out):
                msg = c.poll(0.5)
                if msg is None or msg.error():
                    continue
                if raw:
                    out.append(msg.value())
                    continue
                rec = orjson.loads(msg.value())
                if isinstance(rec, dict):
                    rec["_partition"], rec["_offset"] = msg.partition(), msg.offset()
                out.append(rec)
        finally:
            c.close()
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def web(env_or_port, page: str) -> tuple[int, bytes]:
    """GET a worker's page (``page`` without the leading slash): (status, body); (0, b"") if down."""
    import urllib.error
    import urllib.request

    port = env_or_port if isinstance(env_or_port, (int, str)) else env_or_port.env["STREAM_WEB_PORT"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stream_env(kafka_bootstrap, tmp_path):
    env = StreamEnv(kafka_bootstrap, tmp_path)
    env.cli("topics", "apply")
    yield env
    env.stop()
