"""Detect offsets the consumer skipped, so an agent can read them again (pure; no Faust).

faust-streaming can fail to deliver a record to an agent around a rebalance: a worker restarted
mid-stream was seen receiving offsets 1242 and 1244 of a partition but never 1243 (4 of ~15
restarts in the model-monitoring restart test). The record is in the topic; Faust simply never
hands it over. Its commit logic then either commits past a one-record hole (the record is lost)
or never commits past a longer one (the partition's committed offset stalls while later records
are processed) — the "post-restart stall" of the metrics restart test.

:class:`GapGuard` watches the offsets an agent receives per partition. When one jumps ahead, it
returns the first missing offset so the agent can seek back and receive the hole again; what is
received twice is skipped downstream (each entity's and model's stored source offsets make
processing effectively-once). A hole that is still there after one re-read is accepted: offsets
that hold no record (transaction markers, compacted records) look the same.

The hole arrives after records that follow it. Where those records already advanced an entity's
cursor of source offsets past the hole, that entity skips the hole's samples (they were lost
before too); every other entity gets them, and the partition's commits move on instead of
stalling behind a record that was never acknowledged.

>>> g = GapGuard()
>>> [g.observe(("t", 0), o) for o in (5, 6, 8)]
[None, None, 7]
>>> [g.observe(("t", 0), o) for o in (7, 8)]   # after the seek: the hole is filled
[None, None]
>>> [g.observe(("t", 0), o) for o in (9, 11, 12, 9, 11, 12)]  # 10 holds nothing: one seek, then accepted
[None, 10, None, None, None, None]
"""
from __future__ import annotations

from typing import Hashable


class GapGuard:
    def __init__(self) -> None:
        self._last: dict[Hashable, int] = {}
        # tp -> start of the last hole re-read: at most one seek per hole, even while records
        # fetched before the seek are still arriving (they would show the same hole again)
        self._retried: dict[Hashable, int] = {}

    def observe(self, tp: Hashable, offset: int) -> int | None:
        """Record a received offset; the offset to seek back to when records were skipped."""
        last = self._last.get(tp)
        self._last[tp] = offset if last is None or offset > last else last
        if last is None or offset <= last + 1:
            return None
        if self._retried.get(tp) == last + 1:
            return None  # already re-read once and still a hole: offsets without records
        self._retried[tp] = last + 1
        self._last[tp] = last  # the re-read starts at the hole
        return last + 1

    def reset(self) -> None:
        """After a rebalance (the consumer seeks to committed offsets): start over everywhere."""
        self._last.clear()
        self._retried.clear()

    def forget(self, tps) -> None:
        """Partitions revoked (or seeked by the consumer): start over for them."""
        for tp in tps:
            self._last.pop(tp, None)
            self._retried.pop(tp, None)


class StallWatch:
    """Notice a partition whose offset commits stopped although records beyond them were read.

    Called periodically with each assigned partition's consumer bookkeeping: ``committed`` (the
    offset committed, i.e. the next one to read), the lowest acked offset not yet committed, the
    offset last handed to the agents (``read``), the log end (``highwater``) and whether a record of
    the partition is still being processed (``busy``). A partition is stuck when nothing of that
    changed for ``patience`` checks in a row, nothing is being processed, and either the lowest
    acked offset lies beyond the committed one (a hole: offsets never acked) or nothing is acked
    although the consumer read beyond the committed offset and the log holds records there (the
    hole is at the tail). :meth:`check` then returns the committed offset to seek back to, once
    per committed offset: if a re-read did not fill the hole, those offsets hold no record
    (transaction markers, aborted records) and the partition is left alone, so nothing seeks in
    a loop. An idle partition (committed at the log end, or at the last record read with one
    transaction marker after it under exactly_once) is never stuck.

    >>> w = StallWatch(patience=2)
    >>> [w.check("p", committed=931, acked_min=941, read=1799, highwater=1800) for _ in range(3)]
    [None, 931, None]
    >>> [w.check("p", committed=1800, acked_min=None, read=1799, highwater=1800) for _ in range(3)]  # idle
    [None, None, None]
    >>> [w.check("q", committed=900, acked_min=None, read=950, highwater=1000) for _ in range(2)]  # tail
    [None, 900]
    >>> [w.check("e", committed=101, acked_min=None, read=100, highwater=102) for _ in range(3)]  # marker
    [None, None, None]
    """

    def __init__(self, patience: int = 3) -> None:
        self.patience = patience
        self._seen: dict[Hashable, tuple] = {}  # tp -> (state, checks in a row with that state)
        self._reread_at: dict[Hashable, int] = {}  # tp -> committed offset a re-read started from

    def check(self, tp: Hashable, *, committed: int | None, acked_min: int | None, read: int | None,
              highwater: int | None, busy: bool = False) -> int | None:
        """The offset to seek ``tp`` back to, or None."""
        if committed is None or busy:
            self._seen.pop(tp, None)
            return None
        hole = acked_min is not None and acked_min > committed
        # (right after a seek ``read`` is the offset seeked to: nothing read yet)
        tail = (acked_min is None and read is not None and read > committed
                and highwater is not None and highwater > committed)
        if not (hole or tail):
            self._seen.pop(tp, None)
            return None
        state = (committed, acked_min, read)
        prev = self._seen.get(tp)
        n = prev[1] + 1 if prev is not None and prev[0] == state else 1
        self._seen[tp] = (state, n)
        if n < self.patience or self._reread_at.get(tp) == committed:
            return None
        self._reread_at[tp] = committed
        self._seen.pop(tp, None)
        return committed

    def forget(self, tps) -> None:
        """Partitions revoked: start over for them."""
        for tp in tps:
            self._seen.pop(tp, None)
            self._reread_at.pop(tp, None)
