"""Consumer lag of Kafka consumer groups, in messages and in seconds.

:class:`LagMonitor` asks the broker, every few seconds and never on a worker's hot path, for

* the **committed offsets** of one or more consumer groups (``AdminClient.list_consumer_group_offsets``),
* the **log-end offsets** (high watermarks) and log-start offsets of those partitions
  (``AdminClient.list_offsets``),

and sets two gauges per ``(group, topic, partition)``:

``stream_consumer_lag_messages``
    log-end offset − committed offset (a partition without a committed offset counts from its
    log-start offset: the group starts from the earliest record).
``stream_consumer_lag_seconds``
    0 when the partition is caught up; otherwise now − the record timestamp (producer create time
    or broker append time) of the **oldest record not yet processed**, i.e. the record at the
    committed offset. It is read once per (partition, committed offset) and cached, so a stalled
    group costs no further fetches. (The timestamp of the *last processed* record would report an
    hour of lag for a topic that was quiet for an hour and just received one record; the oldest
    waiting record does not.)

A third gauge, ``stream_consumer_lag_up``, is 1 when the last poll of a group succeeded and 0 when
the broker could not be asked (the lag gauges then keep their last values).

The worker runs one monitor for its own group and its input topics in a daemon thread
(:func:`start_in_thread`), reporting only the partitions assigned to it so that several workers'
series add up; ``stream lag-exporter`` runs one for any groups, over every partition they have
offsets for.

**Isolation.** librdkafka's AdminClient can abort the whole process on an internal assertion
when the broker restarts under it (``rd_kafka_enq_once_del_source_return``,
confluentinc/librdkafka#4605, seen in 3 of 6 broker-restart runs). A monitor built with
``isolated=True`` (the worker's and the exporter's) therefore makes its broker calls from a
small child process (:class:`_ProbeProcess`): an abort kills only the child, the poll reports
the broker as unreachable (``stream_consumer_lag_up`` 0) and the next poll starts a new child.
"""
from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge

from stream.settings import Settings

log = logging.getLogger("stream.lag")
# librdkafka's own connection errors would repeat every few ms; LagError names the address instead
_rdkafka_log = logging.getLogger("stream.lag.librdkafka")
_rdkafka_log.setLevel(logging.CRITICAL)

LAG_MESSAGES = "stream_consumer_lag_messages"
LAG_SECONDS = "stream_consumer_lag_seconds"
LAG_UP = "stream_consumer_lag_up"
LABELS = ("group", "topic", "partition")


def _faust_internal(topic: str) -> bool:
    return topic.endswith("-changelog") or topic.endswith("__assignor-__leader")


class LagError(RuntimeError):
    """The broker could not be asked; the message names the address and what to check."""


def make_gauges(registry: CollectorRegistry) -> tuple[Gauge, Gauge, Gauge]:
    """The lag gauges, registered in ``registry`` (the worker's, or the exporter's own)."""
    msgs = Gauge(LAG_MESSAGES, "Consumer lag in records: log-end offset minus the group's committed offset",
                 LABELS, registry=registry)
    secs = Gauge(LAG_SECONDS, "Consumer lag in seconds: age of the oldest record not yet processed "
                 "(0 when caught up)", LABELS, registry=registry)
    up = Gauge(LAG_UP, "1 when the last poll of the group's offsets succeeded, 0 when the broker "
               "could not be asked", ["group"], registry=registry)
    return msgs, secs, up


@dataclass
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int  # -1 when the group has no committed offset for the partition
    log_start: int
    log_end: int
    messages: int
    seconds: float


class LagMonitor:
    """Polls committed offsets and watermarks of consumer groups and sets the lag gauges.

    ``topics``: only these topics (default: every topic the group has committed offsets for).
    ``partitions``: a callable returning the ``(topic, partition)`` pairs to report (the worker's
    assignment); ``None`` = all.
    """

    def __init__(self, settings: Settings, groups: Iterable[str], *, gauges: tuple[Gauge, Gauge, Gauge],
                 topics: Iterable[str] | None = None,
                 partitions: Callable[[], set[tuple[str, int]]] | None = None,
                 timeout: float = 10.0, clock: Callable[[], float] = time.time, isolated: bool = False):
        self.settings = settings
        self.groups = list(groups)
        self.topics = set(topics) if topics is not None else None
        self.partitions = partitions
        self.timeout = timeout
        self.clock = clock
        self.g_messages, self.g_seconds, self.g_up = gauges
        self._admin = None
        self._consumer = None
        self._ts_cache: dict[tuple[str, int, int], float] = {}  # (topic, partition, offset) -> record ts
        self._reported: dict[str, set[tuple[str, str]]] = {g: set() for g in self.groups}
        self._probe = _ProbeProcess(settings, timeout, self.topics) if isolated else None

    def _call(self, method: str, *args):
        """A broker call, made here or (isolated) in the probe process."""
        if self._probe is not None:
            return self._probe.call(method, *args)
        return getattr(self, method)(*args)

    # -- clients ---------------------------------------------------------------------------
    def _admin_client(self):
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient({**self.settings.kafka_client_config(), "socket.timeout.ms": 10000},
                                      logger=_rdkafka_log)
        return self._admin

    def _fetch_consumer(self):
        if self._consumer is None:
            from confluent_kafka import Consumer

            # never subscribes nor commits: the group id is only required by the client
            self._consumer = Consumer({**self.settings.kafka_client_config(),
                                       "group.id": f"stream-lag-probe-{uuid.uuid4().hex[:8]}",
                                       "enable.auto.commit": False, "enable.partition.eof": False,
                                       "fetch.max.bytes": 1_048_576, "max.partition.fetch.bytes": 65_536},
                                      logger=_rdkafka_log)
        return self._consumer

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _unreachable(self, exc: Exception) -> LagError:
        from stream.kafka.errors import describe

        return LagError(describe(self.settings, exc))

    # -- one poll --------------------------------------------------------------------------
    def committed(self, group: str) -> dict[tuple[str, int], int]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        admin = self._admin_client()
        try:
            fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                    request_timeout=self.timeout)[group]
            res = fut.result(timeout=self.timeout + 5)
        except Exception as exc:  # noqa: BLE001 - KafkaException, timeouts
            raise self._unreachable(exc) from None
        out = {}
        for tp in res.topic_partitions or []:
            if self.topics is not None and tp.topic not in self.topics:
                continue
            out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else -1
        return out

    def assigned(self, group: str) -> set[tuple[str, int]]:
        """Partitions assigned to the group's current members (empty when the group has none)."""
        admin = self._admin_client()
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=self.timeout)[group].result(
                timeout=self.timeout + 5)
        except Exception as exc:  # noqa: BLE001
            raise self._unreachable(exc) from None
        out = set()
        for member in desc.members or []:
            for tp in (member.assignment.topic_partitions if member.assignment else None) or []:
                if self.topics is None or tp.topic in self.topics:
                    out.add((tp.topic, tp.partition))
        return out

    def watermarks(self, tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        tps = list(tps)
        if not tps:
            return {}
        admin = self._admin_client()
        out: dict[tuple[str, int], list[int]] = {tp: [0, 0] for tp in tps}
        for i, spec in ((0, OffsetSpec.earliest()), (1, OffsetSpec.latest())):
            try:
                futs = admin.list_offsets({TopicPartition(t, p): spec for t, p in tps}, request_timeout=self.timeout)
                for tp, fut in futs.items():
                    out[(tp.topic, tp.partition)][i] = fut.result(timeout=self.timeout + 5).offset
            except Exception as exc:  # noqa: BLE001
                raise self._unreachable(exc) from None
        return {k: (v[0], v[1]) for k, v in out.items()}

    def _record_times(self, wanted: dict[tuple[str, int], int]) -> dict[tuple[str, int], float]:
        """Timestamp (seconds) of the record at each given offset (or the next one that exists)."""
        from confluent_kafka import TopicPartition

        out: dict[tuple[str, int], float] = {}
        missing = {}
        for (t, p), off in wanted.items():
            ts = self._ts_cache.get((t, p, off))
            if ts is not None:
                out[(t, p)] = ts
            else:
                missing[(t, p)] = off
        if missing:
            c = self._fetch_consumer()
            c.assign([TopicPartition(t, p, off) for (t, p), off in missing.items()])
            deadline = time.monotonic() + min(self.timeout, 5.0)
            while missing and time.monotonic() < deadline:
                for msg in c.consume(num_messages=len(missing) * 50, timeout=0.5):
                    if msg.error():
                        continue
                    key = (msg.topic(), msg.partition())
                    if key in missing and msg.offset() >= missing[key]:
                        kind, ts_ms = msg.timestamp()
                        if ts_ms is not None and ts_ms > 0:
                            out[key] = ts_ms / 1000.0
                            self._ts_cache[(key[0], key[1], missing[key])] = ts_ms / 1000.0
                        del missing[key]
            c.unassign()
            if len(self._ts_cache) > 10_000:
                self._ts_cache.clear()
        return out

    def poll(self) -> list[PartitionLag]:
        """Ask the broker once, set the gauges, return the rows. Raises :class:`LagError`."""
        rows: list[PartitionLag] = []
        failed: list[LagError] = []
        for group in self.groups:
            try:
                rows += self._poll_group(group)
                self.g_up.labels(group).set(1)
            except LagError as exc:
                self.g_up.labels(group).set(0)
                failed.append(exc)
        if failed:
            raise failed[0]
        return rows

    def _poll_group(self, group: str) -> list[PartitionLag]:
        committed = self._call("committed", group)
        if self.partitions is None:
            # partitions assigned to the group's members but never committed yet count too, except
            # Faust's own: table changelogs (read for recovery, never committed) and the assignor topic
            for tp in self._call("assigned", group):
                if not _faust_internal(tp[0]):
                    committed.setdefault(tp, -1)
        else:
            mine = self.partitions()
            committed = {tp: committed.get(tp, -1) for tp in mine
                         if self.topics is None or tp[0] in self.topics}
        marks = self._call("watermarks", list(committed))
        now = self.clock()
        lagging: dict[tuple[str, int], int] = {}
        rows = []
        for tp, off in committed.items():
            start, end = marks[tp]
            pos = off if off >= 0 else start
            lag = max(0, end - max(pos, start))
            if lag > 0:
                lagging[tp] = max(pos, start)
            rows.append(PartitionLag(group, tp[0], tp[1], off, start, end, lag, 0.0))
        try:
            times = self._call("_record_times", lagging) if lagging else {}
        except Exception as exc:  # noqa: BLE001 - lag in messages is still worth reporting
            log.warning("consumer lag: cannot read record timestamps: %s", exc)
            times = {}
        seen = set()
        for r in rows:
            if r.messages > 0:
                ts = times.get((r.topic, r.partition))
                r.seconds = max(0.0, now - ts) if ts is not None else 0.0
            key = (r.topic, str(r.partition))
            seen.add(key)
            self.g_messages.labels(group, *key).set(r.messages)
            self.g_seconds.labels(group, *key).set(r.seconds)
        for key in self._reported[group] - seen:  # partitions no longer ours (rebalance) or deleted
            for g in (self.g_messages, self.g_seconds):
                try:
                    g.remove(group, *key)
                except KeyError:
                    pass
        self._reported[group] = seen
        return rows

    # -- background loop -------------------------------------------------------------------
    def run_forever(self, interval: float, stop: threading.Event, on_error: Callable[[Exception], None] | None = None,
                    on_ok: Callable[[list[PartitionLag]], None] | None = None) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; errors are reported, never raised."""
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                rows = self.poll()
                if on_ok:
                    on_ok(rows)
            except Exception as exc:  # noqa: BLE001 - a monitor never takes its process down
                if on_error:
                    on_error(exc)
                else:
                    log.warning("consumer lag: %s", exc)
            stop.wait(max(0.1, interval - (time.monotonic() - t0)))
        self.close()


def start_in_thread(monitor: LagMonitor, interval: float = 5.0) -> tuple[threading.Thread, threading.Event]:
    """Run ``monitor`` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    last: dict[str, str] = {}

    def on_error(exc: Exception) -> None:
        msg = str(exc)
        if last.get("err") != msg:  # log a failure once, not every few seconds
            log.warning("consumer lag: %s (retrying every %.0f s)", msg, interval)
            last["err"] = msg

    def on_ok(rows) -> None:
        if last.pop("err", None):
            log.warning("consumer lag: broker reachable again")

    th = threading.Thread(target=monitor.run_forever, args=(interval, stop, on_error, on_ok),
                          name="stream-lag-monitor", daemon=True)
    th.start()
    return th, stop


class _ProbeProcess:
    """Runs a :class:`LagMonitor`'s broker calls in a child process, started (again) on demand.

    The child is spawned, not forked (the parent runs threads and an event loop), and is a daemon:
    it dies with the parent. A call that finds the child dead, or whose child dies during the call,
    raises :class:`LagError` with the child's exit code; the next call starts a new child.
    """

    def __init__(self, settings: Settings, timeout: float, topics: set[str] | None):
        self.settings = settings
        self.timeout = timeout
        self.topics = topics
        self.proc = None
        self.conn = None
        self.restarts = 0
        self._lock = threading.Lock()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_probe_main, args=(child, self.settings, self.timeout, self.topics),
                                name="stream-lag-probe", daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def _reap(self) -> int | None:
        proc, self.proc = self.proc, None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if proc is None:
            return None
        proc.join(timeout=1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=1.0)
        return proc.exitcode

    def call(self, method: str, *args):
        with self._lock:
            if self.proc is None or not self.proc.is_alive():
                if self.proc is not None:
                    code = self._reap()
                    self.restarts += 1
                    log.warning("consumer lag: probe process had exited (code %s); starting a new one", code)
                self._start()
            try:
                self.conn.send((method, args))
                # the child's own calls time out after ~2x timeout (request + result); leave room for its start
                if not self.conn.poll(4 * self.timeout + 30):
                    code = self._reap()
                    raise LagError(f"lag probe did not answer {method} in time (killed, exit code {code})")
                ok, value = self.conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                code = self._reap()
                self.restarts += 1
                why = ("; librdkafka aborted it, as it can on a broker restart (confluentinc/librdkafka#4605)"
                       if code == -6 else "")
                raise LagError(f"lag probe process died during {method} (exit code {code}{why}); a new one "
                               "starts at the next poll") from None
            if ok:
                return value
            raise LagError(value)

    def close(self) -> None:
        with self._lock:
            if self.conn is not None:
                try:
                    self.conn.send(None)
                except (OSError, BrokenPipeError):
                    pass
            self._reap()


def _probe_main(conn, settings: Settings, timeout: float, topics: set[str] | None) -> None:
    """The probe process: answers (method, args) requests with (ok, result or error text)."""
    from prometheus_client import CollectorRegistry

    mon = LagMonitor(settings, [], gauges=make_gauges(CollectorRegistry()), timeout=timeout, topics=topics)
    try:
        while True:
            try:
                req = conn.recv()
            except (EOFError, OSError):
                return
            if req is None:
                return
            method, args = req
            try:
                conn.send((True, getattr(mon, method)(*args)))
            except LagError as exc:
                conn.send((False, str(exc)))
            except Exception as exc:  # noqa: BLE001 - reported to the parent as a failed poll
                conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        mon.close()
