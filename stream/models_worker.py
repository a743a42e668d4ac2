"""Faust agents for model monitoring: thin adapters around :mod:`stream.detect.monitor`.

One agent, ``monitor``, consumes both the inferences and the feedback topic. Both are keyed by
model and have the same partition count, so a model's inferences, its feedback and its state
(the join store included) sit on one partition of one worker. Per message: decode (bad events go
to the dead-letter topic with their reason, original bytes, source and time), hand the good ones
to the core, publish its alerts.

Each model's monitor state is snapshotted into the changelog-backed table ``model-monitor-state``
(key = model) every ``SNAPSHOT_EVERY`` messages of that model, with the input offsets it reflects;
after a restart the state is recovered from the table and messages it already holds are skipped.
Messages between the last snapshot and the committed offset (at most ``SNAPSHOT_EVERY`` per
model) are not replayed into the recovered state.

Prometheus: ``stream_entities_active{detector=<monitor spec>}`` counts monitored model versions,
``stream_state_bytes{detector="models"}`` the bytes of the last snapshots; events, dead letters
and alerts are counted like the metrics agents' (topic = the inferences / feedback topic).
"""
from __future__ import annotations

import logging
import struct
import time
from typing import Any

import faust
import orjson

from stream import metrics as m
from stream.detect.monitor import Monitors
from stream.detect.monitor_spec import load_monitor_specs
from stream.events import deadletter_record
from stream.inference_events import decode_feedback, decode_inferences
from stream.settings import Settings

log = logging.getLogger("stream.models_worker")

#: messages of one model between two snapshots of its state
SNAPSHOT_EVERY = 100


def _pack(offsets: dict, state: bytes) -> bytes:
    head = orjson.dumps(offsets)
    return struct.pack(">I", len(head)) + head + state


def _unpack(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from(">I", blob, 0)
    return orjson.loads(blob[4:4 + n]), blob[4 + n:]


def register_model_agents(app: faust.App, s: Settings, alerts_topic: Any, deadletter_topic: Any) -> Monitors:
    """Add the model-monitoring agent and its state table to ``app``; returns the core."""
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
    offsets: dict[str, dict] = {}  # model -> {"topic/partition": last offset reflected}
    since: dict[str, int] = {}  # model -> messages since its last snapshot
    sizes: dict[str, int] = {}  # model -> bytes of its last snapshot
    counters = {t: (m.EVENTS.labels(t, "processed"), m.EVENTS.labels(t, "deadlettered"))
                for t in (s.topic_inferences, s.topic_feedback)}

    def recover(model: str) -> None:
        if model in mons.models:
            return
        blob = table.get(model.encode())
        if blob is None:
            return
        try:
            offs, state = _unpack(blob)
            mons.import_state(model, state)
            offsets[model] = offs
        except Exception as exc:  # noqa: BLE001 - a state this build cannot read starts afresh
            log.warning("model %s: cannot restore its monitor state (%s); starting afresh", model, exc)

    def seen(model: str, where: str, offset: int) -> bool:
        return offsets.get(model, {}).get(where, -1) >= offset

    @app.agent(inputs)
    async def monitor(stream):
        async for event in stream.events():
            t0 = time.perf_counter()
            msg = event.message
            fb_topic = msg.topic == s.topic_feedback
            if fb_topic:
                good, bad = decode_feedback(event.value, max_bytes=s.max_message_bytes)
            else:
                good, bad = decode_inferences(event.value, max_bytes=s.max_message_bytes,
                                              max_batch=s.max_batch_samples)
            processed, deadlettered = counters.get(msg.topic, counters[s.topic_inferences])
            if bad:
                deadlettered.inc(len(bad))
            for rej in bad:
                m.DEADLETTER.labels(rej.reason).inc()
                rec = deadletter_record(rej, topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                        key=event.key)
                await deadletter_topic.send(key=f"{msg.topic}/{msg.partition}/{msg.offset}".encode(),
                                            value=orjson.dumps(rec))
            if not good:
                continue
            processed.inc(len(good))
            where = f"{msg.topic}/{msg.partition}"
            alerts: list[dict] = []
            touched = set()
            for item in good:
                recover(item.model)
                if seen(item.model, where, msg.offset):
                    continue  # already in the recovered state (replay after a restart)
                if fb_topic:
                    alerts += mons.feedback(item, msg.partition, msg.offset)
                else:
                    alerts += mons.observe(item, msg.partition, msg.offset)
                touched.add(item.model)
            for a in alerts:
                await alerts_topic.send(key=a["series"]["id"].encode(), value=orjson.dumps(a))
                m.ALERTS.labels(a["kind"], a["severity"], a["detector"]).inc()
            for model in touched:
                offsets.setdefault(model, {})[where] = msg.offset
                since[model] = since.get(model, 0) + 1
                if since[model] >= SNAPSHOT_EVERY and model in mons.models:
                    since[model] = 0
                    blob = _pack(offsets[model], mons.export_state(model))
                    table[model.encode()] = blob
                    sizes[model] = len(blob)
                    m.STATE_BYTES.labels("models").set(sum(sizes.values()))
                    spec = mons.models[model].spec.name
                    m.ENTITIES.labels(spec).set(sum(len(mm.versions) for mm in mons.models.values()
                                                    if mm.spec.name == spec))
            m.PROCESSING.observe(time.perf_counter() - t0)

    return mons
