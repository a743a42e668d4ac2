"""Faust agents for model monitoring: thin adapters around :mod:`stream.detect.monitor`.

One agent, ``monitor``, consumes both the inferences and the feedback topic. Both are keyed by
model and have the same partition count, so a model's inferences, its feedback and its state
(the join store included) sit on one partition of one worker. Per message the agent calls
:meth:`MonitorProcessor.process` (pure: no Faust, so ``benchmarks/bench_drift.py`` times exactly
this code) and sends what it returns: dead-letter records for bad events (reason, original bytes,
source and time) and the core's alerts.

Each model's monitor state is kept in the changelog-backed table ``model-monitor-state`` (key =
model), one blob per model: the serialized :class:`~stream.detect.monitor.ModelMonitor` and the
input offsets it reflects (``topic/partition`` -> last offset folded in). After a restart or a
rebalance the state is recovered from the table, and messages it already holds are skipped.

When the state is written depends on the processing guarantee:

* **at-least-once** (the default): lazily. A message that changes a model marks it dirty; right
  before every offset commit (the worker's ``app.before_commit`` hook, installed on the
  consumer's ``force_commit``) each dirty model is serialized once and written to the table and
  its changelog, on the model's partition (the table is co-partitioned with the input topics).
  A partition being revoked has its dirty models written the same way, and its models are then
  dropped from memory (reloaded from the table if the partition comes back). Faust flushes the
  producer before it commits, so **invariant: every message below a committed input offset is
  reflected in the changelog** - a model's stored state holds everything processed up to the
  committed offsets, possibly more (messages processed after the commit began); after a crash
  the input is replayed from the committed offsets and the stored offsets skip what the state
  already holds. A model costs one serialization per commit interval, whatever its message rate.
* **exactly_once** (Kafka transactions): a changelog write must belong to the transaction of the
  event that caused it, which Faust only arranges for writes made while processing an event; so
  the state is written inside the agent, every ``SNAPSHOT_EVERY`` messages of a model. Up to
  ``SNAPSHOT_EVERY - 1`` messages of a model between its last snapshot and the committed offset
  are then not in the recovered state (a known gap of that mode).

A version's frozen baseline (most of its state: 430 kB of 710 kB with 50 numeric features) never
changes, so it is stored once, apart, under its own key (``BASELINE_PREFIX``, the model, the
baseline's content digest) on the model's partition, written before the first state that names
it and deleted after the first state that no longer does; the model's record names its baselines
(``_refs``) and a snapshot serializes only what changes. A record of an earlier build (baselines
inside) is still read.

Idle models are forgotten (``STREAM_MODEL_TTL_SECONDS``): a model version that has sent nothing for
that long in event time (the partition's newest event) is dropped from memory and from the stored
state, and a model left without versions loses its table key.

Prometheus: ``stream_entities_active{detector=<monitor spec>}`` counts monitored model versions,
``stream_state_bytes{detector="models"}`` the bytes of the last snapshots; events, dead letters
and alerts are counted like the metrics agents' (topic = the inferences / feedback topic).
"""
from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson

from stream import metrics as m
from stream.detect.monitor import Monitors
from stream.detect.monitor_spec import load_monitor_specs
from stream.events import deadletter_record
from stream.inference_events import decode_feedback, decode_inferences
from stream.rebalance import StaleInput, flush_before_rejoin
from stream.settings import Settings

log = logging.getLogger("stream.models_worker")

#: exactly_once only: messages of one model between two snapshots of its state
SNAPSHOT_EVERY = 100


def _pack(offsets: dict, state: bytes) -> bytes:
    head = orjson.dumps(offsets)
    return struct.pack(">I", len(head)) + head + state


def _unpack(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from(">I", blob, 0)
    return orjson.loads(blob[4:4 + n]), blob[4 + n:]


#: table keys of frozen baselines stored apart start with this (never a model name's first byte)
BASELINE_PREFIX = b"\x00baseline\x00"


def _baseline_key(model: str, digest: str) -> bytes:
    return BASELINE_PREFIX + model.encode() + b"\x00" + digest.encode()


class MonitorProcessor:
    """What the ``monitor`` agent does with one message, minus the sending.

    ``table`` is the model-state table (a Faust table in the worker, a dict in tests and the
    benchmark). :meth:`process` returns ``(dead letters as (key, value) bytes, alerts)``.

    ``lazy`` (at-least-once): :meth:`process` only marks the models it changes dirty;
    :meth:`flush` (called right before every offset commit) writes each dirty model once, with
    ``write(key, partition, blob)`` (default: ``table[key] = blob``; in the worker, the table's
    data and its changelog on the model's partition), and :meth:`revoke` writes then forgets the
    models of revoked partitions. Not lazy (exactly_once): a model is written inside
    :meth:`process` every ``SNAPSHOT_EVERY`` of its messages.
    """

    def __init__(self, s: Settings, mons: Monitors, table: MutableMapping, *, lazy: bool = False,
                 write: Callable[[bytes, int | None, bytes], None] | None = None):
        self.s = s
        self.mons = mons
        self.table = table
        self.lazy = lazy
        self.write = write or self._write_table
        self.dirty: set[str] = set()  # lazy: models changed since they were last written
        # model -> {digest: bytes} of the frozen baselines stored apart under _baseline_key (a
        # baseline never changes once frozen: written once, not with every snapshot)
        self.stored_refs: dict[str, dict[str, int]] = {}
        self.offsets: dict[str, dict] = {}  # model -> {"topic/partition": last offset reflected}
        self.since: dict[str, int] = {}  # model -> messages since its last snapshot
        self.sizes: dict[str, int] = {}  # model -> bytes of its last snapshot
        self.lane_of: dict[str, int] = {}  # model -> partition it arrives on
        self.lane_now: dict[int, float] = {}  # partition -> newest event time seen on it
        self.lane_checked: dict[int, float] = {}  # partition -> event time of its last TTL check
        self.ttl = s.model_ttl_seconds
        self.ttl_check_every = max(1.0, min(self.ttl / 10.0, 600.0))
        self.counters = {t: (m.EVENTS.labels(t, "processed"), m.EVENTS.labels(t, "deadlettered"))
                         for t in (s.topic_inferences, s.topic_feedback)}

    def _write_table(self, key: bytes, partition: int | None, blob: bytes | None) -> None:
        if blob is None:
            self.table.pop(key, None)
        else:
            self.table[key] = blob

    def recover(self, model: str, partition: int | None = None) -> None:
        if model in self.mons.models:
            return
        blob = self.table.get(model.encode())
        if blob is None:
            return
        try:
            offs, state = _unpack(blob)
            self.mons.import_state(model, state,
                                   frozen_lookup=lambda d: self.table.get(_baseline_key(model, d)))
            self.offsets[model] = {k: v for k, v in offs.items() if not k.startswith("_")}
            self.stored_refs[model] = dict(offs.get("_refs") or {})
        except Exception as exc:  # noqa: BLE001 - a state this build cannot read starts afresh
            log.warning("model %s: cannot restore its monitor state (%s); starting afresh", model, exc)
            return
        if partition is not None:
            self.lane_of[model] = partition

    def snapshot(self, model: str) -> None:
        """Serialize one model (with its offsets) and write it to the table."""
        self.since[model] = 0
        self.dirty.discard(model)
        mm = self.mons.models[model]
        head = dict(self.offsets.get(model, {}))
        # for the TTL sweep of models not in memory (after a restart): their partition and clock
        head["_lane"] = self.lane_of.get(model)
        head["_now"] = max([mm.now, *(max(vm.last_ts, vm.last_pair_ts) for vm in mm.versions.values())])
        if not math.isfinite(head["_now"]):
            head["_now"] = None
        lane = self.lane_of.get(model)
        # frozen baselines: stored once each, apart, before the state that names them
        parts = mm.frozen_parts()
        old = self.stored_refs.get(model, {})
        refs = {}
        for digest, fz in parts.items():
            if digest in old:
                refs[digest] = old[digest]
            else:
                raw = fz.to_bytes()
                self.write(_baseline_key(model, digest), lane, raw)
                refs[digest] = len(raw)
        head["_refs"] = refs
        blob = _pack(head, self.mons.export_state(model, frozen_apart=True))
        self.write(model.encode(), lane, blob)
        for digest in old.keys() - refs.keys():  # baselines of versions gone since: after the state
            self.write(_baseline_key(model, digest), lane, None)
        self.stored_refs[model] = refs
        self.sizes[model] = len(blob) + sum(refs.values())
        m.STATE_BYTES.labels("models").set(sum(self.sizes.values()))
        spec = self.mons.models[model].spec.name
        m.ENTITIES.labels(spec).set(sum(len(mm.versions) for mm in self.mons.models.values()
                                        if mm.spec.name == spec))

    def forget(self, model: str) -> None:
        """Drop everything kept for a model that expired (its table key included)."""
        self.table.pop(model.encode(), None)
        for digest in self.stored_refs.get(model, {}):
            self.table.pop(_baseline_key(model, digest), None)
        self._drop(model)

    def _drop(self, model: str) -> None:
        for d in (self.offsets, self.since, self.sizes, self.lane_of, self.stored_refs):
            d.pop(model, None)
        self.dirty.discard(model)
        m.STATE_BYTES.labels("models").set(sum(self.sizes.values()))

    def flush(self, lanes: set[int] | None = None) -> int:
        """Write every dirty model (of partitions ``lanes``, or all) once; how many were written.

        Called right before every offset commit: afterwards the table's changelog (once the
        producer is flushed, which Faust does before committing) holds each model's state with
        everything processed so far, so all below the offsets about to be committed."""
        if not self.dirty:
            return 0
        n = 0
        for model in list(self.dirty):
            if model not in self.mons.models:
                self.dirty.discard(model)
                continue
            if lanes is not None and self.lane_of.get(model) not in lanes:
                continue
            self.snapshot(model)
            n += 1
        return n

    def revoke(self, lanes: set[int], flush: bool = True) -> list[str]:
        """Partitions ``lanes`` were taken away: write their dirty models (``flush``), then forget
        their models, which are reloaded from the table if a partition comes back."""
        if flush:
            self.flush(lanes)
        gone = [mod for mod in self.mons.models if self.lane_of.get(mod) in lanes]
        for mod in gone:
            del self.mons.models[mod]
            self._drop(mod)
        for lane in lanes:
            self.lane_now.pop(lane, None)
            self.lane_checked.pop(lane, None)
        return gone

    def expire(self, partition: int) -> tuple[list[str], list[str]]:
        """Forget the idle models and versions of one partition (``STREAM_MODEL_TTL_SECONDS``)."""
        now = self.lane_now.get(partition, -math.inf)
        if now - self.lane_checked.get(partition, -math.inf) < self.ttl_check_every:
            return [], []
        self.lane_checked[partition] = now
        lane = [mod for mod, p in self.lane_of.items() if p == partition]
        dropped, changed = self.mons.expire(now, self.ttl, lane)
        for mod in dropped:
            self.forget(mod)
        for mod in changed:
            if self.lazy:
                self.dirty.add(mod)
            else:
                self.snapshot(mod)
        dropped += self.sweep_stored(partition, now - self.ttl)
        return dropped, changed

    def sweep_stored(self, partition: int, horizon: float) -> list[str]:
        """Delete the stored state of this partition's models that are not in memory (not seen
        since a restart) and whose newest event is older than ``horizon``."""
        gone = []
        for key in list(self.table.keys()):
            if isinstance(key, bytes) and key.startswith(BASELINE_PREFIX):
                continue
            model = key.decode() if isinstance(key, bytes) else str(key)
            if model in self.mons.models:
                continue
            blob = self.table.get(key)
            if blob is None:
                continue
            try:
                head = _unpack(blob)[0]
            except Exception:  # noqa: BLE001 - unreadable: left for recover() to report
                continue
            last = head.get("_now")
            if head.get("_lane") == partition and last is not None and last < horizon:
                self.stored_refs[model] = dict(head.get("_refs") or {})
                self.forget(model)
                gone.append(model)
        return gone

    def process(self, topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None) -> tuple[list[tuple[bytes, bytes]], list[dict]]:
        s = self.s
        fb_topic = topic == s.topic_feedback
        if fb_topic:
            good, bad = decode_feedback(value, max_bytes=s.max_message_bytes)
        else:
            good, bad = decode_inferences(value, max_bytes=s.max_message_bytes,
                                          max_batch=s.max_batch_samples)
        processed, deadlettered = self.counters.get(topic, self.counters[s.topic_inferences])
        dead: list[tuple[bytes, bytes]] = []
        if bad:
            deadlettered.inc(len(bad))
            for rej in bad:
                m.DEADLETTER.labels(rej.reason).inc()
                rec = deadletter_record(rej, topic=topic, partition=partition, offset=offset, key=key)
                dead.append((f"{topic}/{partition}/{offset}".encode(), orjson.dumps(rec)))
        if not good:
            return dead, []
        processed.inc(len(good))
        where = f"{topic}/{partition}"
        alerts: list[dict] = []
        touched: set[str] = set()
        mons = self.mons
        offsets = self.offsets
        lane_now = self.lane_now.get(partition, -math.inf)
        i, n = 0, len(good)
        while i < n:  # runs of consecutive items of one model (a batch is mostly one model)
            model = good[i].model
            j = i + 1
            while j < n and good[j].model == model:
                j += 1
            run = good[i:j] if (i or j < n) else good
            i = j
            self.recover(model, partition)
            if offsets.get(model, {}).get(where, -1) >= offset:
                continue  # already in the recovered state (replay after a restart)
            if fb_topic:
                for item in run:
                    alerts += mons.feedback(item, partition, offset)
            else:
                alerts += mons.observe_many(run, partition, offset)
            ts = max(item.ts for item in run)
            if ts > lane_now:
                lane_now = ts
            touched.add(model)
        self.lane_now[partition] = lane_now
        lazy = self.lazy
        for model in touched:
            offsets.setdefault(model, {})[where] = offset
            self.lane_of[model] = partition
            if model not in mons.models:
                continue  # not monitored (no spec matches it): nothing to store
            if lazy:
                self.dirty.add(model)
            else:
                n = self.since[model] = self.since.get(model, 0) + 1
                if n >= SNAPSHOT_EVERY:
                    self.snapshot(model)
        self.expire(partition)
        return dead, alerts


def register_model_agents(app, s: Settings, alerts_topic: Any, deadletter_topic: Any, stale: StaleInput) -> Monitors:
    """Add the model-monitoring agent and its state table to ``app``; returns the core.

    ``stale``: the worker's :class:`stream.rebalance.StaleInput` (input from before a rebalance is
    set aside for the partition's owner; the revocation handler below marks it first)."""
    mons = Monitors(load_monitor_specs(s.specs_dir or None), source_topic=s.topic_inferences,
                    feedback_topic=s.topic_feedback)
    app.monitors = mons  # type: ignore[attr-defined]
    inputs = app.topic(s.topic_inferences, s.topic_feedback, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    # key_type/value_type bytes: the raw codec for the changelog and for its recovery alike
    table = app.Table("model-monitor-state", default=None, partitions=s.topic_partitions,
                      key_type=bytes, value_type=bytes,
                      help="serialized per-model monitor state (stream.detect.monitor.ModelMonitor) "
                           "and the input offsets it reflects")
    # at-least-once: lazy writes before every offset commit (the worker's commit hook); under
    # exactly_once the worker installs no hook (app.before_commit stays empty) and the state is
    # written inside the agent, where Faust puts the write in the event's transaction
    before_commit = getattr(app, "before_commit", None)
    lazy = before_commit is not None and s.processing_guarantee != "exactly_once"

    def write_changelog(key: bytes, partition: int | None, blob: bytes | None) -> None:
        # outside an event Faust cannot pick the changelog partition: it is the model's partition
        # of the input topics, co-partitioned with the table; None deletes (a tombstone)
        if blob is None:
            table.data.pop(key, None)
        else:
            table.data[key] = blob
        table.send_changelog(partition, key, blob)

    proc = MonitorProcessor(s, mons, table, lazy=lazy, write=write_changelog if lazy else None)
    app.monitor_processor = proc  # type: ignore[attr-defined]
    if lazy:
        before_commit.append(proc.flush)
    input_topics = {s.topic_inferences, s.topic_feedback}

    @app.on_partitions_revoked.connect
    async def on_models_revoked(sender, revoked, **kwargs) -> None:
        stale.revoke(revoked)
        lanes = {tp.partition for tp in revoked if tp.topic in input_topics}
        if lanes:
            gone = proc.revoke(lanes, flush=lazy)
            if gone:
                log.info("partitions %s revoked: %d model(s) written and unloaded", sorted(lanes), len(gone))
                if lazy:
                    await flush_before_rejoin(app)

    @app.agent(inputs)
    async def monitor(stream):
        async for event in stream.events():
            t0 = time.perf_counter()
            msg = event.message
            if stale.set_aside_if_stale((event,)):
                continue
            dead, alerts = proc.process(msg.topic, msg.partition, msg.offset, event.key, event.value)
            for k, v in dead:
                await deadletter_topic.send(key=k, value=v)
            for a in alerts:
                await alerts_topic.send(key=a["series"]["id"].encode(), value=orjson.dumps(a))
                m.ALERTS.labels(a["kind"], a["severity"], a["detector"]).inc()
            m.PROCESSING.observe(time.perf_counter() - t0)

    return mons
