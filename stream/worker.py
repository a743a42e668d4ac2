"""The Faust worker: thin adapters around the pure core.

Two agents:

``ingest`` (on the metrics topic)
    decode → dead-letter what is invalid → route each valid sample to its detectors' entities
    and forward them to the internal topic ``<app_id>-entity-samples``: input messages are taken
    in batches, and each batch becomes one internal message per destination partition, the
    partition Kafka's default partitioner gives the entity id
    (:mod:`stream.routing`). Entities may span series (``group_by``), and series of one entity
    may sit on different input partitions: re-partitioning puts each entity's samples, its state
    table and its changelog on one partition.

``detect`` (on the internal topic)
    hand each entity's samples to :class:`stream.detect.engine.Detector`, publish its alerts,
    and keep the entity's serialized state in the changelog-backed table ``entity-state``
    together with the source offsets it reflects (a replay after a crash skips what the state
    already holds). State is written lazily, before every offset commit (see ``flush_state``).

With ``STREAM_COPARTITIONED_INPUT`` (input keyed so that every entity stays on one metrics
partition) ``ingest`` does the detection itself (``detect_at_ingest``): each input partition's
samples go straight to the detectors, the entity's state lives on its input partition's number
in the changelog, and the internal topic is not written. Both paths share ``detect_entities``.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
import zlib
from typing import Any

import cramjam
import faust
import orjson

from stream import metrics as m
from stream.detect.engine import Detector
from stream.detect.spec import load_specs
from stream.events import deadletter_record
from stream.gaps import GapGuard
from stream.rebalance import StaleInput, flush_before_rejoin
from stream.routing import Router, decode_payload
from stream.settings import Settings, SettingsError, get_settings

log = logging.getLogger("stream.worker")

# input bytes routed into one round of internal messages at most (or STREAM_MAX_MESSAGE_BYTES if
# larger): each internal message stays far below the broker's default 1 MB message limit
INTERNAL_BATCH_BYTES = 512 * 1024


def faust_broker_kwargs(s: Settings) -> dict[str, Any]:
    """Faust (aiokafka) connection settings, security included."""
    kw: dict[str, Any] = {"broker": ";".join(f"kafka://{b.strip()}" for b in s.bootstrap_servers.split(","))}
    proto = s.security_protocol
    if proto.startswith("SASL"):
        kw["broker_credentials"] = faust.SASLCredentials(
            username=s.sasl_username, password=s.sasl_password, mechanism=s.sasl_mechanism,
            ssl_context=ssl_context(s) if proto == "SASL_SSL" else None,
        )
    elif proto == "SSL":
        kw["broker_credentials"] = faust.SSLCredentials(ssl_context(s))
    return kw


def ssl_context(s: Settings):
    """The TLS context of SSL and SASL_SSL: the CA to trust, and a client certificate (mutual TLS)
    when STREAM_SSL_CERTFILE is set — with SASL_SSL too, as librdkafka does with the same settings."""
    import ssl

    ctx = ssl.create_default_context(cafile=s.ssl_cafile or None)
    if s.ssl_certfile:
        ctx.load_cert_chain(s.ssl_certfile, s.ssl_keyfile or None, s.ssl_key_password or None)
    return ctx


def window_key(key: bytes, slot: int) -> bytes:
    """The table key of slot 0 or 1 of the part of an entity's state that only closed windows
    change (model, baseline, score history, ...; ``Detector.export_parts``): a NUL byte, the
    slot's digit, then the entity's key (no entity id starts with NUL: it starts with its
    detector's name)."""
    return b"\x00" + b"01"[slot:slot + 1] + key


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# first two bytes of a state packed by pack_state: an LZ4 block with its size stored after them.
# No other stored form starts with 0xB4: engine versions start with 1-4 (whole states) or 0x21 /
# 0x22 / 0x23 (parts), zlib with 0x78, zstd with 0x28.
_LZ4_TAG = b"\xb4\x01"


def pack_state(blob: bytes) -> bytes:
    """An entity's state as stored in the table: an LZ4 block (a 2-byte tag, the size, the block)
    over the engine's versioned bytes.

    Every entity a commit interval changed is written once per commit (its sample part, and its
    window part when a window closed), so the codec's CPU is paid by every entity once per
    commit: at the load test's max rate ~2,000 records per commit. LZ4 against zstd level 1
    (cramjam; the codec before), side by side on load-test states (``benchmarks/bench_state_codec.py``):
    3.2 vs 15.0 µs for a 1.5 KB sample part, 10.9 vs 36.9 µs for a 9.9 KB window part, for an
    output ~25 % larger (5.6 vs 4.5 KB per entity): ≈ 38 µs per entity and commit saved; the
    changelog's bytes matter less here than the worker's CPU on 2 shared cores. (zlib
    level 1 before zstd cost ~3x zstd's time.) Read by :func:`unpack_state`, which reads the
    earlier codecs too."""
    return _LZ4_TAG + bytes(cramjam.lz4.compress_block(blob))


def unpack_state(stored: bytes) -> bytes:
    """Inverse of :func:`pack_state`. State written by earlier versions is read too: zstd frames
    (the codec until 2026-12-07), zlib streams (first byte 0x78) and uncompressed state (engine
    versions start with byte 1, 2 or 3)."""
    if stored[:2] == _LZ4_TAG:
        return bytes(cramjam.lz4.decompress_block(stored[2:]))
    if stored[:4] == _ZSTD_MAGIC:
        return bytes(cramjam.zstd.decompress(stored))
    return zlib.decompress(stored) if stored[:1] == b"\x78" else stored


class Pipeline:
    """The worker's detectors (one per spec), built from the settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        specs = load_specs(settings.specs_dir or None, window=settings.window_seconds,
                           lateness=settings.allowed_lateness_seconds)
        self.detectors = {s.name: Detector(s, source_topic=settings.topic_metrics) for s in specs}
        # (river.drift is no longer imported at start: the engine and monitors use the compact
        # ADWIN; only entity states written before it load river's, importing it then, once)


def _use_fetch_wait_setting() -> None:
    """Make Faust's worker consumer use ``app.fetch_wait_ms`` (STREAM_FETCH_WAIT_SECONDS) as its
    fetch's longest wait at the broker.

    faust-streaming creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting
    to change it. aiokafka keeps one fetch in flight per broker, holding the partitions that have
    nothing buffered; a partition whose records the agent just consumed can only be fetched again
    when that fetch returns — after up to 1.5 s when nothing else arrives. With the worker reading
    the input topic and its own internal topic from the same broker, that added ~1.5 s per hop to
    alert latency at moderate rates (measured: input produce -> internal produce p50 1.5 s at 57
    messages/s). aiokafka hands the consumer's value to its fetcher at start, so setting it right
    after creation is enough.
    """
    from faust.transport.drivers import aiokafka as drv

    create = drv.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "_stream_fetch_wait", False):
        return

    def create_worker_consumer(self, transport):
        consumer = create(self, transport)
        ms = getattr(self.app, "fetch_wait_ms", None)
        if ms is not None:
            consumer._fetch_max_wait_ms = ms
        return consumer

    create_worker_consumer._stream_fetch_wait = True  # type: ignore[attr-defined]
    drv.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer


def build_app(settings: Settings | None = None) -> faust.App:
    s = settings or get_settings()
    _use_fetch_wait_setting()
    datadir = s.state_path / "faust" / s.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        s.app_id,
        **faust_broker_kwargs(s),
        store="memory://",
        # Faust's data dir (table metadata) under STREAM_STATE_DIR, not `<app id>-data` in the cwd
        datadir=str(datadir),
        topic_partitions=s.topic_partitions,
        topic_replication_factor=s.topic_replication,
        processing_guarantee=s.processing_guarantee,
        broker_commit_interval=s.commit_interval_seconds,
        web_bind=s.web_bind,
        web_port=s.web_port,
        web_host=s.web_bind,
        producer_max_request_size=max(s.max_message_bytes * 2, 1_048_576),
        # no compression: aiokafka compresses in Python per batch, and lz4 there halved the load
        # test's throughput (7.1k -> 3.5k samples/s at 500 entities); the broker is local or near
        producer_compression_type=None,
        # Batches of up to STREAM_PRODUCER_BATCH_BYTES (aiokafka's default is 16 KB): a send to a
        # partition whose batch is full waits until that batch is sent, and the commit writes every
        # changed entity's state (~4 KB each) at once: with 16 KB batches, a round trip every ~4
        # records. Not set: producer_linger (0: a batch goes out as soon as the sender is free).
        # With 5 ms linger and 1 MB batches the survivor of a failover once stopped consuming after
        # taking over (2 of 2 runs, before the recovery watchdog in stream.consumer_fix); with this
        # batch size and no linger the failover test passed 4 of 4 local runs.
        producer_max_batch_size=s.producer_batch_bytes,
        consumer_max_fetch_size=max(s.max_message_bytes * 2, 4 * 1_048_576),
        stream_wait_empty=False,
        # prefetched events per agent stream (STREAM_AGENT_BUFFER_EVENTS): Faust's 4,096 let a
        # detect agent that is behind hold thousands of internal messages
        stream_buffer_maxsize=s.agent_buffer_events,
        table_cleanup_interval=60.0,
    )
    app.fetch_wait_ms = max(1, int(s.fetch_wait_seconds * 1000))  # type: ignore[attr-defined]
    # faust-streaming drops records fetched around a seek (after a rebalance): fixed consumer and a
    # watchdog for stalled commits (stream.consumer_fix); its re-reads count as input re-reads
    from stream.consumer_fix import install as install_consumer_fix
    install_consumer_fix(app, on_reread=lambda tp, offset, reason: m.REREADS.labels(tp.topic).inc(),
                         on_recovery_action=lambda tp, action: m.RECOVERY_UNSTUCK.labels(tp.topic, action).inc())
    pipe = Pipeline(s)
    app.pipeline = pipe  # type: ignore[attr-defined]

    metrics_topic = app.topic(s.topic_metrics, key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw")
    alerts_topic = app.topic(s.topic_alerts, key_serializer="raw", value_serializer="raw")
    deadletter_topic = app.topic(s.topic_deadletter, key_serializer="raw", value_serializer="raw")
    entity_topic = app.topic(f"{s.app_id}-entity-samples", key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw",
                             partitions=s.topic_partitions, internal=True)
    # key_type/value_type bytes make Faust use the raw codec for the changelog *and* for recovery
    # (a schema alone is not used when recovering, which then fails to decode the records)
    state = app.Table("entity-state", default=None, partitions=s.topic_partitions,
                      key_type=bytes, value_type=bytes,
                      help="serialized per-entity detector state, two records per entity (stream.detect.engine.Detector.export_parts)")

    state_sizes: dict[bytes, int] = {}

    @app.timer(interval=5.0)
    async def flow_control_watchdog():
        """Re-enable fetching for partitions Faust paused on stream-buffer pressure.

        Faust drops a partition from the fetcher when its stream buffer is under high pressure and
        relies on a pressure-drop callback to add it back. An intermittent stall after a restart
        (one input partition never consumed again, no error) may be that callback not firing;
        re-enabling is safe: if the buffer is still under pressure the next message pauses it again.
        """
        consumer = app.consumer
        stuck = list(getattr(consumer, "_buffered_partitions", ()))
        for tp in stuck:
            consumer.on_buffer_drop(tp)
        if stuck:
            log.warning("flow-control watchdog re-enabled %d partition(s): %s", len(stuck), stuck)

    @app.page("/metrics")
    async def metrics_page(web, request):
        for name, det in pipe.detectors.items():
            m.ENTITIES.labels(name).set(len(det.entities))
        m.STATE_BYTES.labels("all").set(sum(state_sizes.values()))
        m.STATE_STORED.set(len(state.data))
        body, ctype = m.exposition()
        return web.bytes(body, content_type=ctype.split(";")[0])

    @app.page("/health")
    async def health_page(web, request):
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready_page(web, request):
        assigned = app.consumer.assignment() if app.consumer else set()
        recovery = getattr(app.tables, "recovery", None)
        # Faust sets recovery.completed once and never clears it: a worker restoring the tables of
        # partitions a rebalance gave it (a failover) is in_recovery, and not ready
        recovered = recovery is not None and recovery.completed.is_set() and not recovery.in_recovery
        ready = bool(assigned) and recovered and not app.rebalancing
        return web.json({"ready": ready, "partitions": len(assigned), "tables_recovered": recovered},
                        status=200 if ready else 503)

    @app.page("/debug/consumer")
    async def debug_consumer_page(web, request):
        """Per-partition consumer and recovery state (stream.consumer_fix.consumer_state)."""
        from stream.consumer_fix import consumer_state

        return web.json(consumer_state(app))

    # records Faust skipped around a rebalance are read again (stream.gaps); not under exactly_once,
    # where transaction markers leave a hole after every transaction of the internal topic
    guard = GapGuard() if s.processing_guarantee != "exactly_once" else None
    # input taken before a rebalance that reaches an agent after it is set aside, unprocessed and
    # uncommitted, for the partition's owner to read again (stream.rebalance)
    stale = StaleInput(app)

    async def reread_skipped(event) -> None:
        msg = event.message
        back = guard.observe(msg.tp, msg.offset)
        if back is not None:
            log.warning("offsets %d..%d of %s/%d were not delivered (Faust skipped them); reading them again",
                        back, msg.offset - 1, msg.topic, msg.partition)
            m.REREADS.labels(msg.topic).inc()
            await app.consumer.seek(msg.tp, back)

    @app.on_rebalance_complete.connect
    async def on_rebalance(sender, **kwargs):
        m.REBALANCES.inc()
        if guard is not None:  # Faust seeks to committed offsets now: offsets go back legitimately
            guard.reset()

    @app.task
    async def consumer_lag() -> None:
        # stream_consumer_lag_* of this worker's assigned input partitions, polled in a daemon
        # thread (committed offsets and watermarks from the broker; nothing on the hot path)
        from stream.lag import LagMonitor, start_in_thread

        def assigned() -> set[tuple[str, int]]:
            return {(tp.topic, tp.partition) for tp in app.consumer.assignment()}

        inputs = {s.topic_metrics, s.topic_inferences, s.topic_feedback, entity_topic.get_topic_name()}
        start_in_thread(LagMonitor(s, [s.app_id], gauges=(m.LAG_MESSAGES, m.LAG_SECONDS, m.LAG_UP), isolated=True,
                                   topics=inputs, partitions=assigned), interval=5.0)

    # STREAM_COPARTITIONED_INPUT: the ingest agent detects itself (detect_at_ingest), no internal topic
    copart = s.copartitioned_input
    violations = m.COPARTITION_VIOLATIONS
    warned: set[str] = set()

    processing = m.PROCESSING
    processed = m.EVENTS.labels(s.topic_metrics, "processed")
    deadlettered = m.EVENTS.labels(s.topic_metrics, "deadlettered")

    router = Router(pipe.detectors, s.topic_partitions, cache_max=s.route_cache_series)

    batch_max = s.ingest_batch_messages
    batch_bytes = max(s.max_message_bytes, INTERNAL_BATCH_BYTES)

    async def deadletter(bad, event) -> None:
        msg = event.message
        deadlettered.inc(len(bad))
        for rej in bad:
            m.DEADLETTER.labels(rej.reason).inc()
            rec = deadletter_record(rej, topic=msg.topic, partition=msg.partition, offset=msg.offset, key=event.key)
            await deadletter_topic.send(key=f"{msg.topic}/{msg.partition}/{msg.offset}".encode(), value=orjson.dumps(rec))

    async def forward(out) -> None:
        # one internal message per destination partition for the whole batch (stream.routing)
        for part, payload in router.encode(out).items():
            await entity_topic.send(key=None, value=payload, partition=part)

    @app.agent(metrics_topic)
    async def ingest(stream):
        # Input messages are taken in batches (up to STREAM_INGEST_BATCH_MESSAGES, or what arrived
        # within STREAM_INGEST_LINGER_SECONDS): Faust acks a batch's events after this body has
        # handed its internal messages to the producer, and flushes the producer before committing.
        async for events in stream.take_events(batch_max, within=s.ingest_linger_seconds):
            if copart:
                await detect_at_ingest(events)
                continue
            t0 = time.perf_counter()
            out = router.outbox()
            size = 0
            max_ts = time.time() + s.max_future_seconds
            for event in events:
                if stale.set_aside_if_stale((event,)):
                    continue
                if guard is not None:
                    await reread_skipped(event)
                msg = event.message
                raw = event.value
                # decode, validate and route in one pass (compiled for series already seen valid)
                n_good, bad = router.add_message(raw, msg.partition, msg.offset, out, max_bytes=s.max_message_bytes,
                                                 max_batch=s.max_batch_samples, max_ts=max_ts)
                if bad:
                    await deadletter(bad, event)
                if not n_good:
                    continue
                processed.inc(n_good)
                size += len(raw)
                if size >= batch_bytes:  # internal messages stay well under the broker's size limit
                    await forward(out)
                    out, size = router.outbox(), 0
            if out:
                await forward(out)
            per_msg = (time.perf_counter() - t0) / max(1, len(events))
            for _ in events:  # one observation per input message, as before batching
                processing.observe(per_msg)

    async def detect_at_ingest(events) -> None:
        """STREAM_COPARTITIONED_INPUT: the batch's samples go straight to the detectors, each
        entity on its input partition (its lane), without the internal topic. Each input
        partition's messages are routed into their own outbox, whose rows go to the detectors as
        the detect agent's decoded internal messages do (``Outbox.columns``, no bytes in between):
        the same path from there on.

        A partition's rejected samples are dead-lettered, and its good ones counted, after its
        detection step, and only if its events were not set aside meanwhile (stream.rebalance):
        the new owner, which reads them again, does both."""
        if not state_gate.is_set():  # (a commit is writing state: entities must not change meanwhile)
            await state_gate.wait()
        t0 = time.perf_counter()
        outs: dict[int, Any] = {}
        taken: dict[int, list] = {}  # partition -> its events (set aside if it is revoked meanwhile)
        rejected: dict[int, list] = {}  # partition -> [(rejections, event)]
        good: dict[int, int] = {}  # partition -> good samples
        max_ts = time.time() + s.max_future_seconds
        for event in events:
            if stale.set_aside_if_stale((event,)):
                continue
            if guard is not None:
                await reread_skipped(event)
            msg = event.message
            part = msg.partition
            out = outs.get(part)
            if out is None:
                out = outs[part] = router.outbox()
                taken[part], rejected[part], good[part] = [], [], 0
            taken[part].append(event)
            n_good, bad = router.add_message(event.value, part, msg.offset, out, max_bytes=s.max_message_bytes,
                                             max_batch=s.max_batch_samples, max_ts=max_ts)
            if bad:
                rejected[part].append((bad, event))
            good[part] += n_good
        for lane, out in outs.items():
            mine = taken[lane]
            if out:  # (the rows as the detect agent decodes them, taken from the outbox without bytes)
                if not await detect_entities(lane, out.columns(), mine):
                    continue  # set aside
            elif stale.set_aside_if_stale(mine):  # (only rejected samples; an earlier lane's await let a revocation in)
                continue
            for bad, event in rejected[lane]:
                await deadletter(bad, event)
            if good[lane]:
                processed.inc(good[lane])
        per_msg = (time.perf_counter() - t0) / max(1, len(events))
        for _ in events:
            processing.observe(per_msg)

    lane_checked: dict[tuple[str, int], float] = {}
    last_wall: dict[str, float] = {}  # entity id -> wall time of its last sample

    async def publish(alerts: list[dict]) -> None:
        for a in alerts:
            await alerts_topic.send(key=a["series"]["id"].encode(), value=orjson.dumps(a))
            m.ALERTS.labels(a["kind"], a["severity"], a["detector"]).inc()

    # Entity state is written to the table lazily: an entity changed by a message is marked dirty,
    # and every dirty entity is serialized and written (changelog included) right before Faust
    # commits offsets (the commit hook below), and when its partition is revoked. Faust flushes the
    # producer before committing, so the changelog always holds every entity's state for all it
    # has folded in below the committed offsets; what comes after is replayed, and each entity's
    # cursor of source offsets (stored in the same blob) skips what its state already holds.
    # Writing on every message instead cost a ~12-20 KB serialization and changelog record per
    # entity per message: the worker's main cost in the load test.
    dirty: dict[bytes, tuple[Detector, str]] = {}
    # Exactly-once (Kafka transactions): a changelog write must belong to the transaction of the
    # event that caused it, which Faust only arranges for writes made while processing an event;
    # so with exactly_once, state is written eagerly, per message, inside the agent (slower).
    eos = s.processing_guarantee == "exactly_once"

    def export_dirty(lanes: set[int] | None = None):
        """Serialize the dirty entities (of ``lanes``, or all) and mark them clean: yields
        ``(lane, key, blob)``, one or two records per entity: the part of its state samples
        change (key: the entity id) and, when a window closed since it was last written, the
        part only closed windows change (key: ``window_key``; Detector.export_parts)."""
        for key, (det, eid) in list(dirty.items()):
            ent = det.entities.get(eid)
            if ent is None:
                dirty.pop(key, None)
                continue
            if lanes is not None and ent.lane not in lanes:
                continue
            fast, slow, slot = det.export_parts(eid)
            dirty.pop(key, None)  # (a revocation may have written it meanwhile: write_state_direct awaits)
            if slow is not None:  # (first, into the slot the last written sample part does not name)
                blob = pack_state(slow)
                wkey = window_key(key, slot)
                state_sizes[wkey] = len(blob)
                yield ent.lane, wkey, blob
            blob = pack_state(fast)
            state_sizes[key] = len(blob)
            yield ent.lane, key, blob

    # The table's local store keeps no copy of a live entity's state: the engine holds it, the
    # changelog is its durable copy, and the store is only read for an entity the engine does not
    # have (after a restart or a rebalance, Faust's recovery fills the store from the changelog).
    # Keeping the serialized state there as well cost ~5.7 KB per entity (570 MB at 100,000
    # entities, on top of the engine's 1.9 GB). So every write of an entity's state, and its first
    # load, drops the store's copy (locally: ``state.data`` is the store; no tombstone is sent).
    def drop_stored(key: bytes, default=None):
        return state.data.pop(key, default)

    def load_entity(det: Detector, eid: str) -> None:
        """Load an entity the engine does not hold from the table (recovered from the changelog
        after a restart or a rebalance), taking its records out of the store."""
        key = eid.encode()
        stored = drop_stored(key, None)  # (the engine holds it from now on)
        slots = [drop_stored(window_key(key, i), None) for i in (0, 1)]
        if stored is None:
            return
        data = unpack_state(stored)
        if not det.is_state_part(data):  # one record (written before the state was split)
            det.import_state(eid, data)
            return
        try:
            det.import_parts(eid, data, [unpack_state(w) if w is not None else None for w in slots])
        except ValueError as exc:  # (not expected: the slots keep the parts consistent)
            log.error("entity %s: %s; starting it afresh", eid, exc)

    def flush_state(lanes: set[int] | None = None, in_event: bool = False) -> int:
        """Write dirty entities (of ``lanes``, or all) to the table's changelog, through Faust's
        producer buffer (synchronous: nothing else runs meanwhile).

        ``in_event``: called while processing an event (exactly_once), where Faust writes the
        changelog record itself, in the event's transaction."""
        n = 0
        for lane, key, blob in export_dirty(lanes):
            if in_event:
                state[key] = blob  # (sets the store too: dropped again below)
            else:
                # outside an event Faust cannot pick the changelog partition itself: it is the
                # entity's lane (its partition of the internal topic, co-partitioned with the changelog)
                state.send_changelog(lane, key, blob)
            drop_stored(key, None)
            n += 1
        return n

    # open (set) except while write_state_direct runs: the detect agent waits for it between
    # messages, so the entities a commit writes are not changed again while they are being sent
    # (they were, and then written a second time, synchronously: twice the writes)
    state_gate = asyncio.Event()
    state_gate.set()

    def _write_failed(fut) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("writing an entity's state to the changelog failed: %r", fut.exception())

    async def write_state_direct() -> int:
        """Write every dirty entity to the changelog straight through the Kafka producer.

        Faust's table writes (``send_changelog``) go through its producer buffer, drained one
        record per event-loop turn, and while that buffer holds more than 100 records Faust stops
        handing input to the agents (``wait_until_producer_ebb``). A commit writing 1,000 entities
        stopped the pipeline for 0.4-1.6 s each time ("producer buffer full size 999" in the log):
        the load test's fixed-rate alert latency. Here the records go to aiokafka's accumulator
        directly, while the detect agent waits (``state_gate``). This awaits, so a message the
        detect agent was in the middle of may still change entities meanwhile: the commit hook
        then writes those synchronously (flush_state) before Faust computes the offsets to
        commit, so no committed offset is ahead of the state written for it. A send still waits
        while its partition's producer batch is full, so how long the detect agent is held depends
        on the batch size (STREAM_PRODUCER_BATCH_BYTES: at aiokafka's 16 KB, 0.67 s per commit of
        1,000 entities; at 1 MB, 0.23 s)."""
        topic = state.changelog_topic.get_topic_name()
        send = app.producer.send
        n = 0
        state_gate.clear()  # the detect agent starts no new message meanwhile (ingest goes on)
        try:
            # one entity at a time: a list of every blob first held them all at once (at 10,000
            # entities ~46 MB of compressed state, and the peak RSS keeps what the allocator took)
            for lane, key, blob in export_dirty():
                drop_stored(key, None)
                fut = await send(topic, key, blob, lane, None, None)  # the delivery's future
                fut.add_done_callback(_write_failed)
                n += 1
        finally:
            state_gate.set()
        return n

    # Callables run right before every offset commit (Faust flushes the producer, then commits):
    # lazily persisted state registers its flush here (the models agents may add theirs).
    before_commit: list = [] if eos else [flush_state]
    app.before_commit = before_commit  # type: ignore[attr-defined]

    @app.task
    async def install_commit_hook() -> None:
        if eos:
            return
        consumer = app.consumer
        original = consumer.force_commit

        lock = asyncio.Lock()  # one commit at a time, our writes included (Faust's commit()
        # serializes its own callers, but not direct force_commit calls)

        async def force_commit(*args, **kwargs):
            async with lock:
                t0 = time.perf_counter()
                n = await write_state_direct() if s.state_write_direct else 0  # may let input be
                for fn in before_commit:  # processed meanwhile: what that dirtied is written here,
                    n += fn() or 0  # synchronously, before Faust computes the offsets
                if n:
                    m.STATE_WRITE.observe(time.perf_counter() - t0)
                    m.STATE_WRITTEN.inc(n)
                return await original(*args, **kwargs)

        consumer.force_commit = force_commit

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        # marked, written and dropped in one step (no await before the drop): an agent that gets
        # to these partitions' input afterwards sets it aside (stream.rebalance)
        stale.revoke(revoked)
        if guard is not None:
            guard.forget(revoked)
        # (lanes are the internal topic's partitions, or with STREAM_COPARTITIONED_INPUT the metrics topic's)
        lane_topics = {entity_topic.get_topic_name()} | ({s.topic_metrics} if copart else set())
        lanes = {tp.partition for tp in revoked if tp.topic in lane_topics}
        if not lanes:
            return
        if not eos:
            flush_state(lanes)
        for det in pipe.detectors.values():
            gone = [eid for eid, ent in det.entities.items() if ent.lane in lanes]
            for eid in gone:  # reloaded from the table if the partition comes back
                det.drop(eid)
                last_wall.pop(eid, None)
        for key in [k for k, (d, e) in dirty.items() if e not in d.entities]:
            del dirty[key]
        if not eos:
            await flush_before_rejoin(app)

    async def detect_entities(lane: int, entities: dict, events: list) -> bool:
        """Hand each entity's samples (:func:`stream.routing.decode_payload`'s shape) to its
        detector, publish the alerts, mark the changed entities dirty and do the lane's
        housekeeping. ``lane``: the partition the entities' state lives on (the internal topic's,
        or with STREAM_COPARTITIONED_INPUT the metrics topic's, which the changelog shares);
        ``events``: the input events the samples came from, all of that partition.

        When the partition is revoked before or while this runs (an await gives the revocation
        handler its turn), the events are set aside (stream.rebalance): the entities the handler
        dropped are neither re-created nor written here, and the new owner reads the events again.
        Returns False then (True: processed)."""
        if stale.set_aside_if_stale(events):
            return False
        alerts: list[dict] = []
        changed: list[tuple[Detector, str]] = []
        evt_time: dict[str, float] = {}  # detector -> latest event time in this message
        late = 0
        for eid, (elabels, chunks) in entities.items():
            det = pipe.detectors.get(eid.split("/", 1)[0])
            if det is None:
                continue  # a detector removed since the sample was routed
            ent = det.entities.get(eid)
            if ent is None:  # recovered from the changelog after a restart/rebalance
                load_entity(det, eid)
            elif copart and ent.lane != lane:
                # the input is not co-partitioned for this entity: its state stays on its first
                # partition, which another worker may take in a rebalance (split state)
                violations.inc()
                if eid not in warned and len(warned) < 1000:
                    warned.add(eid)
                    log.warning("entity %s arrived on metrics partition %d, its state lives on partition %d: "
                                "the input is not co-partitioned by entity (STREAM_COPARTITIONED_INPUT)",
                                eid, lane, ent.lane)
            late0 = det.late
            if elabels is not None:  # the entity's chunks (rows of one source message each), in one call
                # (the cursor of source offsets skips what the state already holds: at-least-once
                # input, effectively-once state)
                out, folded = det.ingest_chunks(eid, elabels, chunks, lane)
                if out:
                    alerts += out
            else:  # version-1 payload
                folded = False
                for src_part, src_off, rows in chunks:
                    if det.seen(eid, src_part, src_off):
                        continue
                    folded = True
                    for metric, labels, ts, value, part, off in rows:
                        alerts += det.ingest(metric, labels, ts, value, offset=off, partition=part, lane=lane)
                    det.advance_cursor(eid, src_part, src_off)
            if not folded:
                continue
            late += det.late - late0
            ent = det.entities[eid]
            changed.append((det, ent.id))
            name = det.spec.name
            if ent.last_seen > evt_time.get(name, -float("inf")):
                evt_time[name] = ent.last_seen
        if late:
            m.EVENTS.labels(s.topic_metrics, "late").inc(late)
        await publish(alerts)
        if stale.set_aside_if_stale(events):  # revoked meanwhile: the handler dropped these entities unwritten
            return False
        wall = time.monotonic()
        for det, eid in changed:
            last_wall[eid] = wall
            dirty[eid.encode()] = (det, eid)
        # housekeeping for this lane (partition), once per window of event time: close the
        # windows of entities that went quiet (well behind this lane's event time) and forget
        # entities idle for longer than STREAM_ENTITY_TTL_SECONDS
        for name, now_evt in evt_time.items():
            det = pipe.detectors[name]
            ck = (name, lane)
            if now_evt - lane_checked.get(ck, -float("inf")) < det.spec.window:
                continue
            lane_checked[ck] = now_evt
            # an entity counts as quiet only if it is behind in event time AND has received
            # nothing for STREAM_IDLE_CLOSE_SECONDS of wall time: input partitions are consumed
            # unevenly during a replay, and another entity's event time must not close windows
            # that are still receiving samples (they would turn into late samples)
            idle_after = s.idle_close_seconds
            quiet, closed = det.advance_lane(
                now_evt - 10 * det.spec.window - det.spec.allowed_lateness, lane,
                may_close=lambda e: wall - last_wall.get(e, 0.0) >= idle_after,
                # silence (missing_data) is judged one window behind the lane, not ten: the
                # wall-clock veto above already keeps entities that still send out of it
                silence_watermark=now_evt - det.spec.window - det.spec.allowed_lateness)
            await publish(quiet)
            # revoked meanwhile (the handler wrote these entities): no closes or tombstones for a
            # partition another worker owns
            if stale.set_aside_if_stale(events):
                return False
            for other in closed:
                if other in det.entities:
                    dirty[other.encode()] = (det, det.entities[other].id)
            for gone in det.expire(now_evt, s.entity_ttl_seconds, lane):
                key = gone.encode()
                last_wall.pop(gone, None)
                dirty.pop(key, None)
                for k in (key, window_key(key, 0), window_key(key, 1)):
                    # a tombstone (the store holds no copy to delete: Table.pop would send none)
                    state.send_changelog(lane, k, None, value_serializer="raw")
                    drop_stored(k, None)
                    state_sizes.pop(k, None)
        if eos:
            flush_state(in_event=True)
        return True

    @app.agent(entity_topic)
    async def detect(stream):
        async for event in stream.events():
            if not state_gate.is_set():
                await state_gate.wait()
            if stale.set_aside_if_stale((event,)):
                continue
            if guard is not None:
                await reread_skipped(event)
            lane = event.message.partition
            try:
                entities = decode_payload(event.value, event.key, columns=True)
            except Exception as exc:  # noqa: BLE001 - only this service writes the internal topic
                log.error("skipping an unreadable internal message at %s/%d/%d: %s", event.message.topic,
                          lane, event.message.offset, exc)
                continue
            await detect_entities(lane, entities, [event])

    from stream.models_worker import register_model_agents
    register_model_agents(app, s, alerts_topic, deadletter_topic, stale)

    return app


class WebPortInUse(SettingsError):
    """STREAM_WEB_PORT is taken (a SettingsError: `stream` prints it and exits 2)."""


def _check_web_port(s: Settings) -> None:
    """Fail at start, naming the port and its setting, when the web server could not bind."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in s.web_bind else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: TIME_WAIT is no conflict
        try:
            sock.bind((s.web_bind, s.web_port))
        except OSError as exc:
            raise WebPortInUse(f"cannot listen on {s.web_bind}:{s.web_port} for /metrics, /health, /ready: "
                               f"{exc.strerror} (set STREAM_WEB_PORT or `stream worker --web-port` to a free "
                               f"port; STREAM_WEB_BIND for the address)") from None


def check_copartitioned(s: Settings, timeout: float = 30.0) -> None:
    """With STREAM_COPARTITIONED_INPUT, fail at start when the metrics topic is missing or its
    partition count is not the changelog's (:meth:`Settings.copartition_mismatch`, the rule
    `stream doctor` checks too)."""
    from stream.kafka.errors import describe, list_topics_failfast

    _, md, err = list_topics_failfast(s, timeout)
    if md is None:
        raise RuntimeError(describe(s, err)) from None
    topic = md.topics.get(s.topic_metrics)
    if topic is None or topic.error is not None:
        raise SettingsError(f"STREAM_COPARTITIONED_INPUT=true: the metrics topic {s.topic_metrics!r} does not exist "
                            "(create it first: `stream topics apply`)")
    problem = s.copartition_mismatch(len(topic.partitions))
    if problem:
        raise SettingsError(problem)


def run_worker(settings: Settings | None = None, loglevel: str | None = None) -> int:
    s = settings or get_settings()
    _check_web_port(s)
    from stream.topics import apply_topics

    # The internal topic must exist before the agents subscribe (a missing topic is ignored for good).
    apply_topics(s, declared=False, log=lambda line: log.info("topic %s", line))
    if s.copartitioned_input:
        check_copartitioned(s)
    app = build_app(s)
    from faust.worker import Worker

    worker = Worker(app, loglevel=(loglevel or s.worker_log_level).upper(), quiet=True)
    # Faust's terminal spinner sets the root logger to DEBUG (so it can spin on every record) when
    # the level is WARNING or above: every aiokafka/faust debug call then built a LogRecord on the
    # hot path (~6 % of the worker's CPU in the load test). No spinner: the level stays as asked.
    worker.spinner = None
    # Everything imported and built so far (Faust, aiokafka, scipy, river, numpy: ~130k tracked
    # objects) lives as long as the process; frozen, the cyclic garbage collector stops rescanning
    # it on every full collection (~140 ms each, measured on the busy 2-core machine). Suspected,
    # not proven, cause of the load test's alert-latency tail, which came in bursts ~10 s apart.
    gc.collect()
    gc.freeze()
    # and then the collector runs every STREAM_GC_THRESHOLD allocations, not every 700 (see the setting)
    m.tune_gc(s.gc_threshold)
    worker.execute_from_commandline()
    return 0
