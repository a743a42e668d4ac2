"""From validated samples to the internal topic and back (pure: no Faust, no network).

The worker's ``ingest`` agent reads input messages whose samples belong to many entities (an
exporter's batch); every entity's state must live on one partition of the internal topic
``<app_id>-entity-samples`` (and of the state table's changelog, which Faust co-partitions with
it). :class:`Router` groups the samples of one input message **per destination partition**: one
internal message per partition that message touches, holding every entity's samples for that
partition, rather than one message per entity. With exporters batching a few hundred series per
message this divides the number of internal messages (each a produce, a fetch, a Faust event and
an agent iteration) by the number of entities per partition.

The ingest agent routes a *batch* of input messages at a time (``STREAM_INGEST_BATCH_MESSAGES``):
one internal message per destination partition per batch, so a partition's internal messages
are few and large whatever the size of the exporters' batches — each internal message is a
produce, a fetch, a Faust event and an agent iteration, the worker's main cost per message.

Format of an internal message (version 4; binary, built by :class:`stream._route.Outbox`)::

    0x04 | u32 n | n x (u32 length, UTF-8 bytes)        the strings: entity ids, labels, metrics
         | u32 m | m x (u32 id, u32 labels)              the entities (string indices; labels: JSON)
         | u32 k | padding to 8 | k x record             one 40-byte record per routed sample:
      (u32 entity, u32 metric, i32 source partition, 4 bytes padding, i64 source offset, f64 ts, f64 value)

in native little-endian order (a deployment's workers run on one architecture). Decoded
(:func:`decode_payload`) it is what version 3 held as JSON::

    {entity id: (entity labels, [[source partition, source offset, [(metric, ts, value), ...]], ...])}

Each entity's samples are grouped by the input message (source partition and offset) they came
from, in arrival order, so the entity's cursor of source offsets
(:meth:`stream.detect.engine.Detector.seen`) still makes replays effectively-once: a chunk the
entity's state already holds is skipped. Version 4 replaced the JSON of version 3 because
building, formatting and freeing a list and a tuple per sample cost more of the ingest agent's
time than reading the input (see ``benchmarks/bench_worker_path.py``). Versions 3
(``{"v": 3, "e": {eid: [labels, chunks]}}``), 2 (one source message per internal message:
``{"v": 2, "src": [partition, offset], "e": {eid: [labels, rows]}}``) and 1 (one message per
entity, keyed by entity id, a list of ``[metric, labels, ts, value, partition, offset]``) are
still read, for a rolling upgrade; a worker older than version 4 cannot read version 4
(upgrade every worker of a deployment before the new one writes; roll forward only).

>>> from stream.detect.engine import Detector
>>> from stream.detect.spec import DetectorSpec
>>> from stream.events import decode_metrics
>>> det = Detector(DetectorSpec(name="hosts", group_by=("host",)))
>>> r = Router({"hosts": det}, partitions=4)
>>> good, _ = decode_metrics(b'{"samples": [{"metric": "cpu", "labels": {"host": "a"}, "value": 1, "ts": 60},'
...                          b'{"metric": "mem", "labels": {"host": "a"}, "value": 2, "ts": 60}]}',
...                          max_bytes=10_000, max_batch=10)
>>> [(p, decode_payload(raw, None)) for p, raw in r.route([(0, 17, good)]).items()]
[(0, {'hosts/host=a': ({'host': 'a'}, [[0, 17, [('cpu', 60.0, 1.0), ('mem', 60.0, 2.0)]]])})]
"""
from __future__ import annotations

import math
import sys
from typing import Any, Iterable

import orjson
from aiokafka.partitioner import murmur2  # Kafka's murmur2 (pure Python); no client involved

from stream._route import Outbox, decode_v4, route_items, scan_route
from stream.events import Rejection, Sample, _check_sample, _future, metric_items, sample_rejection

PAYLOAD_VERSION = 4


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (``toPositive(murmur2) % n``).

    The same mapping as Faust's (aiokafka's) default partitioner for a keyed send, so entities
    keep their partitions across the upgrade from one internal message per entity.

    >>> partition_for(b"hosts/host=a", 4), partition_for(b"hosts/host=b", 4)
    (0, 3)
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Router:
    """Routes samples to ``(partition, entity)`` for every detector that selects them.

    ``detectors``: name -> :class:`stream.detect.engine.Detector` (only their specs are used).
    Routing decisions are cached per series (a sample's metric and labels); the cache is bounded.
    """

    CACHE_MAX = 1_000_000  # series (STREAM_ROUTE_CACHE_SERIES in the worker)

    def __init__(self, detectors: dict[str, Any], partitions: int, cache_max: int | None = None):
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.specs = [d.spec for d in detectors.values()]
        self.partitions = partitions
        self.cache_max = self.CACHE_MAX if cache_max is None else max(1, int(cache_max))
        self._cache: dict[str, list[tuple[str, dict[str, str], int, bytes]]] = {}  # series -> targets (group())
        # One targets list per entity (per tuple of entities: one per selecting detector), shared by
        # all its series, and one (entity id, entity labels, partition, labels as JSON) tuple per
        # entity: a list, a tuple, a labels dict and an id string per *series* cost ~1.7 KB per
        # 5-metric entity
        self._hit: dict[str, tuple[str, dict[str, str], int, bytes]] = {}
        self._hits: dict[tuple, list[tuple[str, dict[str, str], int]]] = {}
        # label items -> {metric: targets} of series found valid: the compiled fast path's
        self._fast: dict[tuple, dict[str, list]] = {}
        self._fast_n = 0  # series in _fast
        # the label sets' JSON text -> the same {metric: targets}: the byte scanner's
        # (stream._route.scan_route), one entry per label text seen (~110 bytes each)
        self._fast_raw: dict[bytes, dict[str, list]] = {}
        self.scanned = 0  # input messages the byte scanner routed (the rest took the orjson path)

    def resolve(self, metric: str, labels: dict[str, str]) -> list[tuple[str, dict[str, str], int, bytes]]:
        """``[(entity id, entity labels, partition, entity labels as JSON)]`` of one series (one per
        selecting detector), the list shared by every series of the same entities."""
        hit_of = self._hit
        hits = []
        for spec in self.specs:
            hit = spec.entity_of(metric, labels)
            if hit is not None:
                eid = hit[0]
                h = hit_of.get(eid)
                if h is None:
                    eid = sys.intern(eid)
                    # (a copy: orjson's bytes keep the 4 KB buffer they were written into, 400 MB
                    # of RSS at 100,000 cached entities; the copy is its exact size)
                    h = hit_of[eid] = (eid, hit[1], partition_for(eid.encode(), self.partitions),
                                       bytes(memoryview(orjson.dumps(hit[1]))))
                hits.append(h)
        key = tuple(h[0] for h in hits)
        shared = self._hits.get(key)
        if shared is None:
            shared = self._hits[key] = hits
        return shared

    def targets(self, metric: str, labels: dict[str, str], series: str) -> list[tuple[str, dict[str, str], int, bytes]]:
        """:meth:`resolve`, cached per series (``series``: the sample's series id)."""
        hits = self._cache.get(series)
        if hits is None:
            hits = self.resolve(metric, labels)
            if len(self._cache) >= self.cache_max:
                self._cache.clear()
                self._clear_fast()
            self._cache[series] = hits
        return hits

    def group(self, batch: Iterable[tuple[int, int, Iterable[Any]]]) -> dict[int, dict[str, list]]:
        """partition -> {entity id: [entity labels, [[source partition, source offset, rows], ...]]}

        ``batch``: ``(source partition, source offset, samples)`` per input message, in arrival order.
        The reference the worker's path (:meth:`add_message` into an :class:`Outbox`, then
        :meth:`encode` and :func:`decode_payload`) is held to by ``tests/unit/test_routing.py``.
        """
        out: dict[int, dict[str, list]] = {}
        targets = self.targets
        for src_p, src_o, samples in batch:
            for s in samples:
                _fold(out, targets(s.metric, s.labels, s.series), (s.metric, s.ts, s.value), src_p, src_o)
        return out

    @staticmethod
    def outbox() -> Outbox:
        """An empty batch of internal messages, for :meth:`add_message`."""
        return Outbox()

    def add_message(self, raw: bytes | None, src_p: int, src_o: int, out: Outbox, *,
                    max_bytes: int, max_batch: int, max_ts: float = math.inf) -> tuple[int, list[Rejection]]:
        """Decode one input message and add its valid samples to ``out`` (an :meth:`outbox`,
        shared by the messages of a batch); returns ``(valid samples, rejections)``.

        The same result as :func:`stream.events.decode_metrics` followed by :meth:`group`, in
        one pass. A message in the shape exporters send whose series are all known valid is
        routed from its bytes by :func:`stream._route.scan_route` (no orjson objects); any other
        is parsed by orjson, its samples of series already seen valid are checked and routed by
        the compiled :func:`stream._route.route_items`, and the rest take the Python path in
        place (order kept).

        >>> from stream.detect.engine import Detector
        >>> from stream.detect.spec import DetectorSpec
        >>> r = Router({"hosts": Detector(DetectorSpec(name="hosts", group_by=("host",)))}, partitions=4)
        >>> out = r.outbox()
        >>> r.add_message(b'{"samples": [{"metric": "cpu", "labels": {"host": "a"}, "value": 1, "ts": 60},'
        ...               b'{"metric": "cpu", "labels": {"host": "a"}, "value": "x", "ts": 61}]}', 0, 17, out,
        ...               max_bytes=10_000, max_batch=10)[0], nested(out)
        (1, {0: {'hosts/host=a': [{'host': 'a'}, [[0, 17, [('cpu', 60.0, 1.0)]]]]}})
        """
        if type(raw) is bytes and len(raw) <= max_bytes:
            # the byte scanner first: a message of the shape exporters send whose series are all
            # known valid is routed from its bytes, without orjson's objects; anything else
            # (nothing added then) takes the path below
            if len(self._fast_raw) >= self.cache_max:
                self._fast_raw.clear()
            n = scan_route(raw, src_p, src_o, max_ts, max_batch, self._fast_raw, self._fast, out)
            if n >= 0:
                self.scanned += 1
                return n, []
        items, rej, single = metric_items(raw, max_bytes=max_bytes, max_batch=max_batch)
        if rej is not None:
            return 0, [rej]
        bad: list[Rejection] = []
        n_slow = 0

        def slow(i: int, item: Any) -> None:
            nonlocal n_slow
            res = _check_sample(item)
            if type(res) is Sample:
                if res.ts <= max_ts:
                    self._add_slow(res, src_p, src_o, out)
                    n_slow += 1
                    return
                res = _future(res.ts, max_ts)
            bad.append(sample_rejection(res, i, item, raw, single))

        n_fast = route_items(items, src_p, src_o, max_ts, self._fast, out, slow)
        return n_fast + n_slow, bad

    def _clear_fast(self) -> None:
        self._fast.clear()
        self._fast_raw.clear()
        self._fast_n = 0
        self._hit.clear()
        self._hits.clear()

    def _add_slow(self, s: Sample, src_p: int, src_o: int, out: Outbox) -> None:
        if self._fast_n >= self.cache_max:  # a label-cardinality explosion must not grow it without bound
            self._clear_fast()
        hits = self.resolve(s.metric, s.labels)
        by_metric = self._fast.setdefault(tuple(s.labels.items()), {})
        if s.metric not in by_metric:
            self._fast_n += 1
        by_metric[sys.intern(s.metric)] = hits
        for eid, _labels, p, ljson in hits:
            out.append(p, eid, ljson, s.metric, src_p, src_o, s.ts, s.value)

    @staticmethod
    def encode(out: Outbox) -> dict[int, bytes]:
        """partition -> the internal message (version 4) for it, from :meth:`add_message`'s ``out``."""
        return out.encode()

    def route(self, batch: Iterable[tuple[int, int, Iterable[Any]]]) -> dict[int, bytes]:
        """partition -> the internal message (version 4) for it, from ``(source partition, source
        offset, samples)`` per input message."""
        out = Outbox()
        targets = self.targets
        for src_p, src_o, samples in batch:
            for s in samples:
                for eid, _labels, p, ljson in targets(s.metric, s.labels, s.series):
                    out.append(p, eid, ljson, s.metric, src_p, src_o, s.ts, s.value)
        return out.encode()


def nested(out: Outbox) -> dict[int, dict[str, list]]:
    """An :class:`Outbox`'s messages decoded, in :meth:`Router.group`'s shape (for tests and examples)."""
    return {p: {eid: [labels, chunks] for eid, (labels, chunks) in decode_payload(raw, None).items()}
            for p, raw in sorted(out.encode().items())}


Chunks = list  # [[source partition, source offset, rows], ...]


def _fold(out: dict[int, dict[str, list]], hits: list, row: tuple, src_p: int, src_o: int) -> None:
    """Append one sample's row to each target entity's chunk for its source message in ``out``
    (a new chunk when the entity's last one came from another message): :meth:`Router.group`,
    the reference of the compiled :func:`stream._route.route_items` into an :class:`Outbox`."""
    for eid, elabels, p, _ljson in hits:
        ents = out.get(p)
        if ents is None:
            ents = out[p] = {}
        ent = ents.get(eid)
        if ent is None:
            ents[eid] = [elabels, [[src_p, src_o, [row]]]]
            continue
        last = ent[1][-1]
        if last[1] == src_o and last[0] == src_p:
            last[2].append(row)
        else:
            ent[1].append([src_p, src_o, [row]])


def decode_payload(raw: bytes, key: bytes | None, columns: bool = False) -> dict[str, tuple[dict[str, str] | None, Chunks]]:
    """``{entity id: (entity labels or None, [[source partition, source offset, rows], ...])}``.

    Rows are ``[metric, ts, value]``; version-1 payloads (a list, keyed by entity id) come back
    with labels ``None`` and their rows as sent, ``[metric, labels, ts, value, partition, offset]``
    (the entity is resolved from each sample's labels). Rows of version 4 are tuples, of
    versions 2 and 3 lists; with ``columns`` (the worker's path) each chunk's rows of version 4
    are one :class:`stream.detect._window.Rows`, a sequence of those tuples held as columns, and
    the entity labels their JSON bytes (``Detector.ingest_chunks`` takes either).
    """
    if raw[:1] == b"\x04":
        return decode_v4(raw, columns)
    obj = orjson.loads(raw)
    if isinstance(obj, list):  # version 1: one entity per message
        return {key.decode(): (None, [[obj[0][4], obj[0][5], obj]])}
    v = obj.get("v")
    if v == 3:
        return {eid: (e[0], e[1]) for eid, e in obj["e"].items()}
    if v == 2:  # one source message per internal message
        src_p, src_o = obj["src"]
        return {eid: (e[0], [[src_p, src_o, e[1]]]) for eid, e in obj["e"].items()}
    raise ValueError(f"unsupported internal payload version {v!r}")
