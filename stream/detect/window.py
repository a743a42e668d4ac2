"""Event-time tumbling windows over the compiled accumulators.

>>> store = WindowStore(size=60.0)
>>> store.add("host=a", "latency", ts=5.0, value=1.0)
True
>>> store.add("host=a", "latency", ts=65.0, value=3.0)   # opens the next window
True
>>> [(w.start, w.end, w.summary["latency"]["count"]) for w in store.close_until(60.0)]
[(0.0, 60.0, 1)]
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from math import floor as _floor

import numpy as np

from stream.detect import _window
from stream.detect._window import add_sample as _add_sample
from stream.detect._window import queue_window as _queue_window
from stream.detect._window import take_window as _take_window

SUMMARY_FIELDS = ("count", "mean", "std", "min", "max", "median", "iqr", "delta", "slope",
                  "first_ts", "last_ts", "first_offset", "last_offset", "partition")


@dataclass(slots=True)
class ClosedWindow:
    entity: str
    start: float
    end: float
    summary: dict[str, dict[str, float]]  # metric -> summary fields
    late: int = 0


# One entity's open windows ({start: {metric: slot}}, in creation order), their starts in
# ascending order (.starts) and the end of its last closed window (.closed_until, None before the first)
_Windows = _window.EntityWindows


class WindowStore:
    """Open windows of many entities, each a set of metrics, closed by a watermark.

    A sample whose window already closed (event time before the watermark minus the allowed
    lateness) is *late*: it is counted, never fatal, and not folded in.
    """

    def __init__(self, size: float, lateness: float = 0.0, buffer_size: int = 32):
        if not size > 0:
            raise ValueError("window size must be positive")
        self.size = float(size)
        self.lateness = float(lateness)
        self.acc = _window.WindowAccumulators(buffer_size=buffer_size)
        # entity -> its windows; every per-entity operation (add, close, export, drop) is O(its
        # own windows), whatever the number of entities
        self.entities: dict[str, _Windows] = {}
        self.late = 0
        # one heap of (window start, entity) per lane (a Kafka partition, or 0 offline), so that
        # closing is O(closed windows), not O(open windows), whatever the number of entities. One
        # live entry per entity (its .queued key, no later than its earliest open window), moved
        # forward when popped: an entry per window stayed in the heap after the entity's own
        # samples closed the window, ~10 per entity in the worker (880 bytes of the ~21 KB of a
        # 5-metric entity)
        self.heaps: dict[int, list[tuple[float, str]]] = {}

    def window_start(self, ts: float) -> float:
        return _floor(ts / self.size) * self.size

    def add(self, entity: str, metric: str, ts: float, value: float, offset: int = -1, partition: int = -1,
            lane: int = 0) -> bool:
        """Fold one sample into its window (opened if need be); False for a late sample."""
        return self.add_sample(entity, metric, ts, value, offset, partition, lane) is not None

    def add_sample(self, entity: str, metric: str, ts: float, value: float, offset: int, partition: int,
                   lane: int) -> list[float] | None:
        """:meth:`add`, returning the entity's open window starts (ascending), or None if late.

        Compiled (:func:`stream.detect._window.add_sample`): the window start is
        ``math.floor(ts / size) * size``; a sample before the end of the entity's last closed
        window is late.
        """
        starts = _add_sample(self.acc, self.entities, self.heaps, self.size, entity, metric, ts, value,
                             offset, partition, lane)
        if starts is None:
            self.late += 1
        return starts

    def has_open(self, entity: str) -> bool:
        """Whether the entity has open windows."""
        rec = self.entities.get(entity)
        return rec is not None and bool(rec.starts)

    def close_entity(self, entity: str, event_time: float) -> list[ClosedWindow]:
        """Close the entity's windows that its own event time has passed (end + lateness <= event_time)."""
        rec = self.entities.get(entity)
        out = []
        if rec is None:
            return out
        lst = rec.starts
        limit = event_time - self.size - self.lateness
        while lst and lst[0] <= limit:
            out.append(self._close(entity, rec, lst[0]))
        return out

    def close_until(self, watermark: float, lane: int = 0, may_close=None) -> list[ClosedWindow]:
        """Close (and return, oldest first) the lane's open windows whose end + lateness <= watermark.

        ``may_close(entity)``, when given, vetoes closing an entity's windows (they stay indexed).
        """
        out = []
        kept = []
        heap = self.heaps.get(lane)
        limit = watermark - self.size - self.lateness
        ents = self.entities
        close = self._close
        while heap and heap[0][0] <= limit:
            item = heapq.heappop(heap)
            start, entity = item
            rec = ents.get(entity)
            if rec is None or rec.queued != start:
                continue  # stale: the entity was dropped, or an earlier window replaced the entry
            if may_close is not None and not may_close(entity):
                kept.append(item)  # (still its live entry)
                continue
            lst = rec.starts
            while lst and lst[0] <= limit:
                out.append(close(entity, rec, lst[0]))
            rec.queued = None
            if lst:  # (its new entry is after limit: not popped again in this call)
                _queue_window(self.heaps, lane, rec, lst[0], entity)
        for item in kept:
            heapq.heappush(heap, item)
        if len(out) > 1:
            out.sort(key=lambda w: (w.start, w.entity))  # oldest first, as one entry per window gave
        return out

    def _close(self, entity: str, rec: _Windows, start: float) -> ClosedWindow:
        # {metric: acc.take_summary(slot)} (slots released), the window removed from rec and
        # rec.closed_until moved to its end: one compiled call (its Python rule is held to it in
        # tests/unit/test_window_store.py)
        summary, end = _take_window(self.acc, rec, start, self.size)
        return ClosedWindow(entity, start, end, summary)

    # --- durable state ----------------------------------------------------------------
    def export_entity(self, entity: str) -> list:
        """Open windows of one entity as plain data (for the entity's serialized state)."""
        rec = self.entities.get(entity)
        if rec is None:
            return [None, []]
        get = self.acc.get_state_list  # (get_state(s).tolist(), without the arrays)
        return [rec.closed_until,
                [[start, {m: get(s) for m, s in slots.items()}] for start, slots in rec.wins.items()]]

    def import_entity(self, entity: str, data: list, lane: int = 0) -> None:
        closed_until, wins = data
        rec = self.entities.get(entity)
        if rec is None:
            rec = self.entities[entity] = _Windows()
        if closed_until is not None:
            rec.closed_until = closed_until
        for start, metrics in wins:
            slots = rec.wins.get(start)
            if slots is None:
                slots = rec.wins[start] = {}
                _queue_window(self.heaps, lane, rec, start, entity)
                rec.starts.append(start)
                rec.starts.sort()
            for m, state in metrics.items():
                slot = slots[m] = self.acc.alloc()
                self.acc.set_state(slot, np.asarray(state, dtype=np.float64))

    def drop_entity(self, entity: str) -> None:
        """Forget the entity's windows (O(its own windows); its heap entries go stale and are skipped)."""
        rec = self.entities.pop(entity, None)
        if rec is not None:
            release = self.acc.release
            for slots in rec.wins.values():
                for slot in slots.values():
                    release(slot)
