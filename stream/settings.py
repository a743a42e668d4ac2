"""One settings object for every process.

Values come, in increasing priority, from the defaults below, an optional settings file
(YAML or JSON; ``STREAM_CONFIG_FILE`` or ``stream --config FILE``) whose keys are the field
names, and environment variables ``STREAM_<FIELD>`` (upper case). The README's settings table
lists every field; ``tests/unit/test_settings.py`` keeps the two in step.

A bad value fails at start and names where it came from: the variable, or the file and field.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

PREFIX = "STREAM_"
SECRET_FIELDS = {"sasl_password", "ssl_key_password"}


class SettingsError(ValueError):
    """A setting could not be read; the message names the variable or the file and field."""


def _f(default: Any, doc: str, *, choices: tuple | None = None, minimum: float | None = None,
       maximum: float | None = None):
    return field(default=default, metadata={"doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum})


@dataclass(frozen=True)
class Settings:
    # --- Kafka connection ---------------------------------------------------------------
    bootstrap_servers: str = _f("127.0.0.1:9092", "Kafka bootstrap servers (host:port,...)")
    security_protocol: str = _f(
        "PLAINTEXT", "Kafka security protocol",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    sasl_mechanism: str = _f(
        "PLAIN", "SASL mechanism", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    )
    sasl_username: str = _f("", "SASL user name")
    sasl_password: str = _f("", "SASL password (never logged or shown; masked in `stream doctor`)")
    ssl_cafile: str = _f("", "CA bundle for SSL / SASL_SSL")
    ssl_certfile: str = _f("", "client certificate for SSL (mutual TLS)")
    ssl_keyfile: str = _f("", "client key for SSL (mutual TLS)")
    ssl_key_password: str = _f("", "password of the client key")
    # --- application ---------------------------------------------------------------------
    app_id: str = _f("stream-anomaly", "Faust app id = consumer group of the workers")
    topic_metrics: str = _f("metrics", "input topic of metric samples")
    topic_alerts: str = _f("alerts", "output topic of alert events")
    topic_deadletter: str = _f("deadletter", "output topic of rejected input")
    topic_inferences: str = _f("inferences", "input topic of model-inference events")
    topic_feedback: str = _f("feedback", "input topic of ground-truth labels")
    topic_partitions: int = _f(8, "partitions of the input topics and of internal topics", minimum=1)
    topic_replication: int = _f(1, "replication factor of the topics", minimum=1)
    specs_dir: str = _f("", "directory of detector / monitor spec YAML files ('' = built-in default)")
    window_seconds: float = _f(60.0, "default tumbling window size in event-time seconds", minimum=0.001)
    allowed_lateness_seconds: float = _f(
        0.0, "how long after a window's end its late events still count", minimum=0.0
    )
    max_message_bytes: int = _f(1_048_576, "largest accepted input message; larger ones are dead-lettered", minimum=1)
    max_batch_samples: int = _f(10_000, "largest accepted batch (samples per message)", minimum=1)
    route_cache_series: int = _f(
        1_000_000, "series whose routing the ingest agent caches (~0.3 KB each); a label-cardinality "
        "explosion beyond it clears the cache instead of growing it (the fleet's series should fit: "
        "past it every sample takes the slow path)", minimum=1000
    )
    max_future_seconds: float = _f(
        3600.0, "samples stamped further than this ahead of the worker's clock are dead-lettered "
        "(future_timestamp): one wrong clock must not make a series' later samples late", minimum=0.0
    )
    entity_ttl_seconds: float = _f(
        7 * 86400.0, "an entity idle this long (event time) is expired from state", minimum=1.0
    )
    model_ttl_seconds: float = _f(
        7 * 86400.0, "a model version that sent nothing for this long (event time of its partition) is "
        "forgotten; a model left without versions loses its stored state", minimum=1.0
    )
    idle_close_seconds: float = _f(
        120.0, "wall seconds without samples after which an entity's open windows may be closed by "
        "its lane's event time (an entity that went quiet)", minimum=0.0
    )
    ingest_batch_messages: int = _f(
        200, "input messages the ingest agent routes together: one internal message per destination "
        "partition per batch (fewer, larger internal messages; see stream.routing)", minimum=1
    )
    ingest_linger_seconds: float = _f(
        0.02, "how long the ingest agent waits for a batch to fill before routing what it has "
        "(added alert latency at low rates)", minimum=0.001
    )
    fetch_wait_seconds: float = _f(
        0.1, "longest a worker's fetch waits at the broker for new records. One fetch is in flight per "
        "broker, so records arriving on a partition outside it wait for it to return: Faust fixes "
        "1.5 s, which added up to 1.5 s per hop (input, internal topic) to alert latency", minimum=0.001
    )
    commit_interval_seconds: float = _f(
        2.8, "how often the worker commits its input offsets, writing changed state first (Faust's "
        "broker_commit_interval): shorter means less to replay after a crash and more state writes", minimum=0.05
    )
    producer_batch_bytes: int = _f(
        524_288, "largest record batch the worker's producer builds per partition (aiokafka "
        "max_batch_size). A send to a partition whose batch is full waits for that batch to go out: "
        "at aiokafka's 16 KB default a commit writing 1,000 entity states (~4 KB each) waited for a "
        "produce round trip every ~4 records, 0.67 s per commit with the detect agent held. At most "
        "1 MB, the broker's default message.max.bytes for the internal topics", minimum=16_384,
        maximum=1_000_000,
    )
    agent_buffer_events: int = _f(
        256, "events an agent's stream may hold fetched and not yet processed (Faust's "
        "stream_buffer_maxsize, whose default is 4,096). While the detect agent is behind, its buffer "
        "fills with internal messages of up to ~100 KB each: held memory that grows with the backlog, "
        "not with the entities. Keep it at or above STREAM_INGEST_BATCH_MESSAGES, or ingest batches "
        "get smaller", minimum=16,
    )
    state_write_direct: bool = _f(
        True, "write changed entity state to the changelog at each commit straight through the Kafka "
        "producer (false: through Faust's table buffer, which holds input back while it drains: 0.4-1.6 s "
        "per commit at 1,000 entities)"
    )
    copartitioned_input: bool = _f(
        False, "every entity's samples always arrive on one partition of the metrics topic (producers key "
        "messages by entity, or by a collector whose set of entities does not change). The worker then "
        "detects where it reads, without the re-partitioning hop through the internal topic (a third of "
        "its CPU per sample in the load test), and keeps each entity's state on its input partition. Needs the metrics topic to "
        "have STREAM_TOPIC_PARTITIONS partitions and at_least_once; an entity seen on a second partition "
        "is counted (stream_copartition_violations_total) and logged"
    )
    gc_threshold: int = _f(
        100_000, "allocations (net, of container objects) between the worker's young-generation garbage "
        "collections (Python's gc threshold 0; its default is 700; the older generations keep "
        "Python's 10 and 10). The worker's garbage is freed by reference counting; at 700 the cyclic collector ran "
        "~7,800 times in a 40 s load-test phase, rescanning the heap 65 times (45 ms each), ~13 % of the "
        "worker's CPU, to find ~700 objects", minimum=700,
    )
    processing_guarantee: str = _f(
        "at_least_once", "Faust processing guarantee", choices=("at_least_once", "exactly_once")
    )
    worker_log_level: str = _f("warning", "worker log level", choices=("debug", "info", "warning", "error"))
    # --- web / metrics -------------------------------------------------------------------
    web_bind: str = _f("127.0.0.1", "bind address of the worker's web server (/metrics, /health, /ready, /debug/consumer)")
    web_port: int = _f(6066, "port of the worker's web server", minimum=0)
    # --- local broker (stream kafka up) -------------------------------------------------
    kafka_home: str = _f("", "an unpacked Apache Kafka distribution to use instead of Maven Central jars")
    kafka_version: str = _f("4.1.1", "Apache Kafka version resolved from Maven Central")
    kafka_port: int = _f(9092, "local broker's client port", minimum=1)
    kafka_controller_port: int = _f(9093, "local broker's KRaft controller port", minimum=1)
    kafka_heap: str = _f("512m", "local broker's JVM heap (-Xmx)")
    state_dir: str = _f(".var", "project-local folder for broker data, logs, pids and jars (git-ignored)")

    # ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, file: str | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}
        file = file or environ.get(PREFIX + "CONFIG_FILE") or None
        if file:
            for key, raw in _read_file(file).items():
                if key not in known:
                    raise SettingsError(f"{file}: unknown field '{key}' (known: {', '.join(known)})")
                values[key] = _coerce(known[key], raw, f"{file}: field '{key}'")
        for name, f in known.items():
            var = PREFIX + name.upper()
            if var in environ:
                values[name] = _coerce(f, environ[var], f"environment variable {var}")
        unknown = [
            k for k in environ
            if k.startswith(PREFIX) and k[len(PREFIX):].lower() not in known and k != PREFIX + "CONFIG_FILE"
        ]
        if unknown:
            raise SettingsError(
                f"unknown environment variable(s) {', '.join(sorted(unknown))}; see the README's settings table"
            )
        out = cls(**values)
        if out.copartitioned_input and out.processing_guarantee == "exactly_once":
            where = f" ({file})" if file else ""
            raise SettingsError(f"{PREFIX}COPARTITIONED_INPUT=true needs {PREFIX}PROCESSING_GUARANTEE=at_least_once"
                                f"{where}: under exactly_once a state write must belong to its input record's "
                                "transaction, which Faust arranges only per event, not for a batch of input")
        return out

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) connection settings, security included."""
        cfg = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            cfg.update({
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.sasl_username,
                "sasl.password": self.sasl_password,
            })
        if self.security_protocol.endswith("SSL"):
            for key, val in (("ssl.ca.location", self.ssl_cafile), ("ssl.certificate.location", self.ssl_certfile),
                             ("ssl.key.location", self.ssl_keyfile), ("ssl.key.password", self.ssl_key_password)):
                if val:
                    cfg[key] = val
        return cfg

    def masked(self) -> dict[str, Any]:
        """All settings, secrets replaced by '***' (for `stream doctor` and logs)."""
        out = dataclasses.asdict(self)
        for k in SECRET_FIELDS:
            if out.get(k):
                out[k] = "***"
        return out

    def copartition_mismatch(self, metrics_partitions: int) -> str | None:
        """With STREAM_COPARTITIONED_INPUT an entity's state lives on its metrics partition's number
        in the changelog, so the metrics topic needs the changelog's partition count: the problem
        with a metrics topic of ``metrics_partitions`` partitions, or None (the worker refuses to
        start on it, ``stream doctor`` reports it)."""
        if not self.copartitioned_input or metrics_partitions == self.topic_partitions:
            return None
        return (f"STREAM_COPARTITIONED_INPUT=true needs the metrics topic {self.topic_metrics!r} to have "
                f"STREAM_TOPIC_PARTITIONS={self.topic_partitions} partitions, the state changelog's count; "
                f"it has {metrics_partitions}")

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).resolve()


def _read_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"{path}: settings file not found")
    text = p.read_text()
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001 - report any parse error with the file name
        raise SettingsError(f"{path}: cannot parse settings file: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: settings file must be a mapping of field: value")
    return data


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _bool(raw: Any) -> bool:
    """A boolean setting: true/false, yes/no, on/off, 1/0 (any case); anything else is an error,
    so a typo (``flase``) fails at start instead of silently reading as false."""
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(word)


def _coerce(f: dataclasses.Field, raw: Any, where: str) -> Any:
    typ = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float, "bool": bool}[f.type]
    try:
        if typ is bool:
            value = _bool(raw)
        elif typ is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            value = int(raw)
        elif typ is float:
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
        else:
            value = str(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: expected {typ.__name__}, got {raw!r}") from None
    choices, minimum = f.metadata.get("choices"), f.metadata.get("minimum")
    if choices and value not in choices:
        raise SettingsError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    if minimum is not None and value < minimum:
        raise SettingsError(f"{where}: {value!r} is below the minimum {minimum}")
    maximum = f.metadata.get("maximum")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{where}: {value!r} is above the maximum {maximum}")
    return value


def settings_table() -> str:
    """The README's settings table, generated from the dataclass."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        extra = f" (one of {', '.join(f.metadata['choices'])})" if f.metadata.get("choices") else ""
        rows.append(f"| `{PREFIX}{f.name.upper()}` | `{f.default}` | {f.metadata['doc']}{extra} |")
    return "\n".join(rows)


_cached: Settings | None = None


def get_settings(reload: bool = False) -> Settings:
    global _cached
    if _cached is None or reload:
        _cached = Settings.load()
    return _cached
