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
import math
from dataclasses import dataclass, field

import numpy as np

from stream.detect import _window

SUMMARY_FIELDS = ("count", "mean", "std", "min", "max", "median", "iqr", "delta", "slope",
                  "first_ts", "last_ts", "first_offset", "last_offset", "partition")


@dataclass(slots=True)
class ClosedWindow:
    entity: str
    start: float
    end: float
    summary: dict[str, dict[str, float]]  # metric -> summary fields
    late: int = 0


@dataclass(slots=True)
class _Open:
    slots: dict[str, int] = field(default_factory=dict)


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
        self.open: dict[tuple[str, float], _Open] = {}
        self.closed_until: dict[str, float] = {}  # entity -> end of its last closed window
        self.late = 0
        # one heap of (window start, entity) per lane (a Kafka partition, or 0 offline), so that
        # closing is O(closed windows), not O(open windows), whatever the number of entities
        self.heaps: dict[int, list[tuple[float, str]]] = {}
        self.starts: dict[str, list[float]] = {}  # entity -> its open window starts, ascending

    def window_start(self, ts: float) -> float:
        return math.floor(ts / self.size) * self.size

    def add(self, entity: str, metric: str, ts: float, value: float, offset: int = -1, partition: int = -1,
            lane: int = 0) -> bool:
        start = self.window_start(ts)
        if start < self.closed_until.get(entity, -math.inf):
            self.late += 1
            return False
        w = self.open.get((entity, start))
        if w is None:
            w = self.open[(entity, start)] = _Open()
            heapq.heappush(self.heaps.setdefault(lane, []), (start, entity))
            lst = self.starts.setdefault(entity, [])
            lst.append(start)
            if len(lst) > 1 and lst[-2] > start:
                lst.sort()
        slot = w.slots.get(metric)
        if slot is None:
            slot = w.slots[metric] = self.acc.alloc()
        self.acc.add(slot, ts, value, offset, partition)
        return True

    def close_entity(self, entity: str, event_time: float) -> list[ClosedWindow]:
        """Close the entity's windows that its own event time has passed (end + lateness <= event_time)."""
        lst = self.starts.get(entity)
        out = []
        limit = event_time - self.size - self.lateness
        while lst and lst[0] <= limit:
            out.append(self._close((entity, lst[0])))
        return out

    def close_until(self, watermark: float, lane: int = 0, may_close=None) -> list[ClosedWindow]:
        """Close (and return, oldest first) the lane's open windows whose end + lateness <= watermark.

        ``may_close(entity)``, when given, vetoes closing an entity's windows (they stay indexed).
        """
        out = []
        kept = []
        heap = self.heaps.get(lane)
        limit = watermark - self.size - self.lateness
        while heap and heap[0][0] <= limit:
            start, entity = heapq.heappop(heap)
            if (entity, start) in self.open:
                if may_close is not None and not may_close(entity):
                    kept.append((start, entity))
                    continue
                out.append(self._close((entity, start)))
        for item in kept:
            heapq.heappush(heap, item)
        return out

    def _close(self, key: tuple[str, float]) -> ClosedWindow:
        entity, start = key
        w = self.open.pop(key)
        lst = self.starts[entity]
        lst.remove(start)
        if not lst:
            del self.starts[entity]
        summary = {}
        for metric, slot in w.slots.items():
            summary[metric] = dict(zip(SUMMARY_FIELDS, self.acc.summary(slot)))
            self.acc.release(slot)
        end = start + self.size
        self.closed_until[entity] = max(self.closed_until.get(entity, -math.inf), end)
        return ClosedWindow(entity, start, end, summary)

    # --- durable state ----------------------------------------------------------------
    def export_entity(self, entity: str) -> list:
        """Open windows of one entity as plain data (for the entity's serialized state)."""
        out = []
        for (e, start), w in self.open.items():
            if e == entity:
                out.append([start, {m: self.acc.get_state(s).tolist() for m, s in w.slots.items()}])
        return [self.closed_until.get(entity), out]

    def import_entity(self, entity: str, data: list, lane: int = 0) -> None:
        closed_until, wins = data
        if closed_until is not None:
            self.closed_until[entity] = closed_until
        for start, metrics in wins:
            w = self.open.get((entity, start))
            if w is None:
                w = self.open[(entity, start)] = _Open()
                heapq.heappush(self.heaps.setdefault(lane, []), (start, entity))
                self.starts.setdefault(entity, []).append(start)
                self.starts[entity].sort()
            for m, state in metrics.items():
                slot = w.slots[m] = self.acc.alloc()
                self.acc.set_state(slot, np.asarray(state, dtype=np.float64))

    def drop_entity(self, entity: str) -> None:
        self.starts.pop(entity, None)
        for key in [k for k in self.open if k[0] == entity]:
            for slot in self.open.pop(key).slots.values():
                self.acc.release(slot)
        self.closed_until.pop(entity, None)
