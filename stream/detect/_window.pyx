# cython: language_level=3
"""Compiled per-sample window aggregation (the hot path of every metric sample).

Each slot is one open event-time window of one (entity, metric). Samples are folded in with
Welford's updates (mean, variance, and the time/value co-moment for the slope), min/max,
first/last, source offsets, and a bounded value buffer for median and IQR (exact up to
``buffer_size`` samples per window, a deterministic reservoir beyond; see WindowAccumulators for
its two tiers). Wrapped by :class:`stream.detect.window.WindowStore`; held to numpy by
``tests/unit/test_core.py`` (median and quartiles) and to a Python reservoir by
``tests/unit/test_window_store.py``.
"""
import heapq
import math

import numpy as np
cimport numpy as cnp
from libc.math cimport sqrt, floor, isfinite, NAN
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject

cnp.import_array()

# column layout of the accumulator array
DEF C_N = 0
DEF C_MEAN = 1
DEF C_M2 = 2
DEF C_MIN = 3
DEF C_MAX = 4
DEF C_FIRST_T = 5
DEF C_FIRST_V = 6
DEF C_LAST_T = 7
DEF C_LAST_V = 8
DEF C_MEAN_T = 9
DEF C_M2_T = 10
DEF C_C_TV = 11
DEF C_FIRST_OFF = 12
DEF C_LAST_OFF = 13
DEF C_PART = 14
DEF NCOL = 15

NCOLS = NCOL
_FIELDS = ("count", "mean", "std", "min", "max", "median", "iqr", "delta", "slope",
           "first_ts", "last_ts", "first_offset", "last_offset", "partition")  # window.SUMMARY_FIELDS


_FIELD_INDEX = {f: i for i, f in enumerate(_FIELDS)}


cdef inline object _field(const double* v, Py_ssize_t i):
    if i == 0 or i >= 11:  # count, first_offset, last_offset, partition: ints, as before
        return int(v[i])
    return v[i]


cdef class Summary:
    """One metric's summary of one closed window: a read-only mapping keyed by ``SUMMARY_FIELDS``.

    What :meth:`WindowAccumulators.take_summary` returns: the values of ``dict(zip(SUMMARY_FIELDS,
    summary(slot)))`` (``count``, ``first_offset``, ``last_offset`` and ``partition`` as ints, the
    rest as floats), held as 14 unboxed doubles. A window close built a dict of 14 boxed numbers
    per metric (4.5 us of a 5-metric window's ~24 us); the feature pass reads these doubles
    directly (:meth:`stream.detect._standardize.Baseline.features`), and everything else reads
    it like the dict it replaces (``s["count"]``, ``s.get``, ``s.items()``, ``dict(s)``, ``==``
    against a dict). Held to that dict by ``tests/unit/test_standardize.py``.

    >>> from stream.detect._window import WindowAccumulators
    >>> acc = WindowAccumulators(4)
    >>> slot = acc.alloc()
    >>> for t, v in ((0.0, 1.0), (1.0, 3.0)):
    ...     acc.add(slot, t, v, 7, 0)
    >>> s = acc.take_summary(slot)
    >>> s["count"], s["mean"], s["max"], s["last_offset"]
    (2, 2.0, 3.0, 7)
    >>> s == dict(zip(SUMMARY_FIELDS, (2, 2.0, 1.0, 1.0, 3.0, 2.0, 1.0, 2.0, 2.0, 0.0, 1.0, 7, 7, 0)))
    True
    """

    def __getitem__(self, key):
        cdef object i = _FIELD_INDEX.get(key)
        if i is None:
            raise KeyError(key)
        return _field(self.v, <Py_ssize_t> i)

    def get(self, key, default=None):
        cdef object i = _FIELD_INDEX.get(key)
        return default if i is None else _field(self.v, <Py_ssize_t> i)

    def __contains__(self, key):
        return key in _FIELD_INDEX

    def __len__(self):
        return len(_FIELDS)

    def __iter__(self):
        return iter(_FIELDS)

    def keys(self):
        return _FIELD_INDEX.keys()

    def values(self):
        return [_field(self.v, i) for i in range(len(_FIELDS))]

    def items(self):
        return [(f, _field(self.v, i)) for i, f in enumerate(_FIELDS)]

    def to_dict(self):
        """The plain dict (what ``take_summary`` returned before)."""
        return {f: _field(self.v, i) for i, f in enumerate(_FIELDS)}

    def __eq__(self, other):
        if isinstance(other, Summary):
            return self.to_dict() == (<Summary> other).to_dict()
        if isinstance(other, dict):
            return self.to_dict() == other
        return NotImplemented

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None

    def __repr__(self):
        return repr(self.to_dict())

    def __reduce__(self):
        return (_summary_from, (self.values(),))


def _summary_from(values):
    """A :class:`Summary` from its 14 values in ``SUMMARY_FIELDS`` order (pickling)."""
    cdef Summary s = Summary.__new__(Summary)
    cdef Py_ssize_t i
    if len(values) != 14:
        raise ValueError("a summary has 14 values")
    for i in range(14):
        s.v[i] = float(values[i])
    return s


SUMMARY_FIELDS = _FIELDS


cdef inline unsigned long long _mix(unsigned long long x) nogil:
    # splitmix64: a deterministic reservoir index from the sample count (restart-safe)
    x += 0x9E3779B97F4A7C15ULL
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


DEF INLINE = 8  # values held in the slot itself; more spill into an overflow row of buffer_size


cdef class WindowAccumulators:
    """A growable pool of window accumulators addressed by integer slot.

    A slot's value buffer (for median and IQR) is two-tier: its first ``INLINE`` (8) values sit
    in the slot's own row of ``inl``; the 9th moves them to a row of ``buffer_size`` values in the
    overflow pool ``ovf``, returned to that pool when the slot is released. Most windows hold a
    few samples (a 60 s window of a metric scraped every 15-30 s: 2-4), and a full-size buffer
    per slot (256 bytes at the default 32) was two thirds of the slot (376 bytes; the pool holds
    0.5-1M slots at 100,000 5-metric entities); now a slot is 188 bytes plus an overflow row only
    while its window holds more than 8 values. The values, and so every summary, are the same.
    """

    cdef public cnp.ndarray acc      # float64 [capacity, NCOL]
    cdef public cnp.ndarray inl      # float64 [capacity, ninl]: the first values of each slot
    cdef public cnp.ndarray ovf_of   # int32 [capacity]: the slot's overflow row, or -1
    cdef public cnp.ndarray ovf      # float64 [overflow capacity, buffer_size]
    cdef public int buffer_size
    cdef public int ninl             # min(INLINE, buffer_size)
    cdef list _free
    cdef list _ovf_free
    cdef public int used

    def __init__(self, int buffer_size=32, int capacity=256):
        if not 1 <= buffer_size <= 256:
            raise ValueError("buffer_size must be between 1 and 256")
        self.buffer_size = buffer_size
        self.ninl = min(INLINE, buffer_size)
        self.acc = np.zeros((capacity, NCOL), dtype=np.float64)
        self.inl = np.zeros((capacity, self.ninl), dtype=np.float64)
        self.ovf_of = np.full(capacity, -1, dtype=np.int32)
        self.ovf = np.zeros((0, buffer_size), dtype=np.float64)
        self._free = list(range(capacity - 1, -1, -1))
        self._ovf_free = []
        self.used = 0

    cpdef long alloc(self) except -1:
        """A fresh, empty slot (cpdef: the compiled sample loop calls it in C)."""
        cdef int cap, slot, new, j
        cdef double* row
        if not self._free:
            # grow by a quarter, in place: ndarray.resize reallocates (for a pool this large an
            # mremap, no copy), where concatenating held the old and the doubled pool at once
            # and left up to half of it unused. No view of the pool outlives a call (callers
            # take its data pointer after alloc), so refcheck is not needed.
            cap = self.acc.shape[0]
            new = cap + max(cap // 4, 256)
            self.acc.resize((new, NCOL), refcheck=False)
            self.inl.resize((new, self.ninl), refcheck=False)
            self.ovf_of.resize(new, refcheck=False)
            self.ovf_of[cap:] = -1
            self._free = list(range(new - 1, cap - 1, -1))
        slot = self._free.pop()
        row = <double*> cnp.PyArray_DATA(self.acc) + <Py_ssize_t> slot * NCOL
        for j in range(NCOL):  # (was self.acc[slot, :] = 0.0: a third of the sample loop's time)
            row[j] = 0.0
        self.used += 1
        return slot

    def release(self, int slot):
        self._unspill(slot)
        self._free.append(slot)
        self.used -= 1

    @property
    def overflow_rows(self):
        """Overflow rows in use (slots whose window holds more than 8 values)."""
        return self.ovf.shape[0] - len(self._ovf_free)

    cdef inline void _unspill(self, long slot):
        cdef int* of = <int*> cnp.PyArray_DATA(self.ovf_of)
        if of[slot] >= 0:
            self._ovf_free.append(of[slot])
            of[slot] = -1

    cdef int _spill(self, long slot) except -1:
        """Move the slot's inline values to an overflow row."""
        cdef int o, cap, new
        if not self._ovf_free:
            cap = self.ovf.shape[0]
            new = cap + max(cap // 4, 64)
            self.ovf.resize((new, self.buffer_size), refcheck=False)
            self._ovf_free = list(range(new - 1, cap - 1, -1))
        o = self._ovf_free.pop()
        cdef double* row = <double*> cnp.PyArray_DATA(self.ovf) + <Py_ssize_t> o * self.buffer_size
        cdef double* inl = <double*> cnp.PyArray_DATA(self.inl) + slot * self.ninl
        cdef int i
        for i in range(self.ninl):
            row[i] = inl[i]
        (<int*> cnp.PyArray_DATA(self.ovf_of))[slot] = o
        return 0

    cdef inline double* _values(self, long slot) noexcept:
        """The slot's value buffer (inline or its overflow row)."""
        cdef int o = (<int*> cnp.PyArray_DATA(self.ovf_of))[slot]
        if o < 0:
            return <double*> cnp.PyArray_DATA(self.inl) + slot * self.ninl
        return <double*> cnp.PyArray_DATA(self.ovf) + <Py_ssize_t> o * self.buffer_size

    cdef int _add(self, long s, double t, double v, long offset, long partition) except -1:
        cdef double* a = <double*> cnp.PyArray_DATA(self.acc) + s * NCOL
        cdef double n = _fold(a, t, v, offset, partition)
        cdef long k
        cdef unsigned long long j
        if n <= self.buffer_size:
            k = <long> n - 1
            if k >= self.ninl and (<int*> cnp.PyArray_DATA(self.ovf_of))[s] < 0:
                self._spill(s)
            self._values(s)[k] = v
        else:  # a deterministic reservoir (restart-safe: the index depends on the count only)
            j = _mix(<unsigned long long>n) % <unsigned long long>n
            if j < <unsigned long long>self.buffer_size:
                self._values(s)[j] = v
        return 0

    def update(self, long[::1] slots, double[::1] ts, double[::1] vals, long[::1] offsets, long[::1] partitions):
        """Fold a batch of samples into their slots, in order."""
        cdef Py_ssize_t i, n = slots.shape[0]
        if ts.shape[0] != n or vals.shape[0] != n or offsets.shape[0] != n or partitions.shape[0] != n:
            raise ValueError("slots, ts, vals, offsets and partitions must have the same length")
        for i in range(n):
            self._add(slots[i], ts[i], vals[i], offsets[i], partitions[i])

    def add(self, long slot, double t, double v, long offset=-1, long partition=-1):
        """Fold one sample (the per-event path)."""
        self._add(slot, t, v, offset, partition)

    cdef void _quartiles(self, long slot, double n, double* q) noexcept:
        """q[0..2] = first quartile, median, third quartile of the slot's buffered values."""
        cdef double tmp[256]
        cdef int i, k = <int>min(n, self.buffer_size)
        cdef double* b = self._values(slot)
        k = min(k, 256)
        for i in range(k):
            tmp[i] = b[i]
        _insertion_sort(tmp, k)
        q[0] = _quantile_sorted(tmp, k, 0.25)
        q[1] = _quantile_sorted(tmp, k, 0.5)
        q[2] = _quantile_sorted(tmp, k, 0.75)

    cdef void _fill_summary(self, long slot, double* v) noexcept:
        """v[0..13] = the slot's summary in ``SUMMARY_FIELDS`` order (count, first_offset,
        last_offset and partition as whole numbers: ``_field`` gives them as ints)."""
        cdef double* a = <double*> cnp.PyArray_DATA(self.acc) + slot * NCOL
        cdef double n = a[C_N]
        cdef double q[3]
        cdef int i
        if n == 0:
            v[0] = 0.0
            for i in range(1, 11):
                v[i] = NAN
            v[11] = v[12] = v[13] = -1.0
            return
        self._quartiles(slot, n, q)
        v[0] = n
        v[1] = a[C_MEAN]
        v[2] = sqrt(a[C_M2] / n)
        v[3] = a[C_MIN]
        v[4] = a[C_MAX]
        v[5] = q[1]
        v[6] = q[2] - q[0]
        v[7] = a[C_LAST_V] - a[C_FIRST_V]
        v[8] = a[C_C_TV] / a[C_M2_T] if a[C_M2_T] > 0 else 0.0
        v[9] = a[C_FIRST_T]
        v[10] = a[C_LAST_T]
        v[11] = <double> <long long> a[C_FIRST_OFF]  # (int() truncates the same way)
        v[12] = <double> <long long> a[C_LAST_OFF]
        v[13] = <double> <long long> a[C_PART]

    def summary(self, long slot):
        """(count, mean, std, min, max, median, iqr, delta, slope, first_ts, last_ts, first_offset, last_offset, partition)."""
        cdef double v[14]
        self._fill_summary(slot, v)
        return tuple([_field(v, i) for i in range(14)])

    def take_summary(self, long slot):
        """:meth:`summary` as a :class:`Summary` (a read-only mapping keyed by
        ``window.SUMMARY_FIELDS``), then release the slot: one object of 14 unboxed doubles
        instead of a dict of 14 boxed numbers (once per metric of every closed window)."""
        return self._take(slot)

    cdef Summary _take(self, long slot):
        cdef Summary out = Summary.__new__(Summary)
        self._fill_summary(slot, out.v)
        self.release(slot)
        return out

    def get_state(self, long slot):
        """The slot's accumulator row and buffer as one float64 array (for durable state)."""
        cdef double[:, ::1] a = self.acc
        cdef Py_ssize_t j, k = <Py_ssize_t> min(a[slot, C_N], <double> self.buffer_size)
        cdef double* b = self._values(slot)
        vals = np.empty(k, dtype=np.float64)
        for j in range(k):
            vals[j] = b[j]
        return np.concatenate([self.acc[slot], vals])

    def get_state_list(self, long slot):
        """:meth:`get_state` as a list of floats, built without the arrays (the serialized state
        stores lists: ``get_state(slot).tolist()`` took 2.0-2.5 us per metric window at every commit,
        this 0.8 us)."""
        cdef double[:, ::1] a = self.acc
        cdef double* b = self._values(slot)
        cdef Py_ssize_t j, k = <Py_ssize_t> min(a[slot, C_N], <double> self.buffer_size)
        cdef list out = [a[slot, j] for j in range(NCOL)]
        for j in range(k):
            out.append(b[j])
        return out

    def set_state(self, long slot, double[::1] state):
        cdef Py_ssize_t j, k = state.shape[0] - NCOL
        if k > self.buffer_size:
            raise ValueError(f"window state holds {k} values, more than buffer_size {self.buffer_size}")
        self.acc[slot, :] = state[:NCOL]
        self._unspill(slot)
        if k > self.ninl:
            self._spill(slot)
        cdef double* b = self._values(slot)
        for j in range(k):
            b[j] = state[NCOL + j]


cdef inline void _insertion_sort(double* x, int n) noexcept nogil:
    # the buffer holds at most a few dozen values: insertion sort beats any call into numpy
    cdef int i, j
    cdef double v
    for i in range(1, n):
        v = x[i]
        j = i - 1
        while j >= 0 and x[j] > v:
            x[j + 1] = x[j]
            j -= 1
        x[j + 1] = v


cdef inline double _quantile_sorted(double* x, int n, double q) noexcept nogil:
    # numpy's default ('linear') method, including its lerp formula
    cdef double h = (n - 1) * q
    cdef int lo = <int>h
    cdef double t = h - lo
    cdef double a, b
    if lo >= n - 1:
        return x[n - 1]
    a = x[lo]
    b = x[lo + 1]
    if t >= 0.5:
        return b - (b - a) * (1.0 - t)
    return a + (b - a) * t


cdef inline double _fold(double* a, double t, double v, long offset, long partition) noexcept nogil:
    # one sample into one accumulator row (a: the slot's NCOL values); returns the new count
    cdef double n = a[C_N] + 1.0
    cdef double d, dt
    a[C_N] = n
    if n == 1.0:
        a[C_MEAN] = v
        a[C_M2] = 0.0
        a[C_MIN] = v
        a[C_MAX] = v
        a[C_FIRST_T] = t
        a[C_FIRST_V] = v
        a[C_LAST_T] = t
        a[C_LAST_V] = v
        a[C_MEAN_T] = t
        a[C_M2_T] = 0.0
        a[C_C_TV] = 0.0
        a[C_FIRST_OFF] = offset
        a[C_LAST_OFF] = offset
        a[C_PART] = partition
        return n
    d = v - a[C_MEAN]
    dt = t - a[C_MEAN_T]
    a[C_MEAN] += d / n
    a[C_MEAN_T] += dt / n
    a[C_M2] += d * (v - a[C_MEAN])
    a[C_M2_T] += dt * (t - a[C_MEAN_T])
    a[C_C_TV] += dt * (v - a[C_MEAN])
    if v < a[C_MIN]:
        a[C_MIN] = v
    if v > a[C_MAX]:
        a[C_MAX] = v
    # first/last by event time (late or out-of-order samples keep the order right)
    if t < a[C_FIRST_T]:
        a[C_FIRST_T] = t
        a[C_FIRST_V] = v
    if t >= a[C_LAST_T]:
        a[C_LAST_T] = t
        a[C_LAST_V] = v
    if offset >= 0:
        if a[C_FIRST_OFF] < 0 or offset < a[C_FIRST_OFF]:
            a[C_FIRST_OFF] = offset
        if offset > a[C_LAST_OFF]:
            a[C_LAST_OFF] = offset
    return n


cdef class EntityWindows:
    """One entity's open windows ({start: {metric: slot}}, in creation order), their starts in
    ascending order, the end of its last closed window (None before the first), and the key of
    its one live entry in its lane's heap (``queued``: a start no later than its earliest open
    window, or None when it has none)."""

    cdef public dict wins
    cdef public list starts
    cdef public object closed_until
    cdef public object queued

    def __init__(self):
        self.wins = {}
        self.starts = []
        self.closed_until = None
        self.queued = None


cpdef queue_window(dict heaps, lane, EntityWindows rec, start, entity):
    """Give the entity a heap entry at ``start`` (a window it just opened) unless its live entry
    is already no later: one live entry per entity, ``rec.queued`` its key
    (``WindowStore.close_until`` moves it forward when it pops it)."""
    queued = rec.queued
    if queued is None or <double> start < <double> queued:
        heap = heaps.get(lane)
        if heap is None:
            heap = heaps[lane] = []
        heapq.heappush(heap, (start, entity))
        rec.queued = start


def take_window(WindowAccumulators acc, EntityWindows rec, start, double size):
    """Close the entity's open window at ``start``: ``({metric: Summary}, end)``, its slots
    released, the window removed from ``rec`` and ``rec.closed_until`` moved to its end
    (``WindowStore._close``, compiled: a dict comprehension and four calls per closed window).
    """
    cdef dict slots = rec.wins.pop(start)
    cdef dict summary = {}
    rec.starts.remove(start)
    for metric, slot in slots.items():
        summary[metric] = acc._take(<long> slot)  # (take_summary)
    end = <double> start + size
    cu = rec.closed_until
    if cu is None or <double> end > <double> cu:
        rec.closed_until = end
    return summary, end


def add_sample(WindowAccumulators acc, dict entities, dict heaps, double size, entity, metric,
               double ts, double value, long offset, long partition, lane):
    """Fold one sample into its entity's window (``WindowStore.add_sample``, compiled).

    Returns the entity's open window starts (ascending), or None for a late sample (its window
    closed already; not folded in, the caller counts it).
    """
    return _add_sample(acc, entities, heaps, size, entity, metric, ts, value, offset, partition, lane)


cdef inline double _window_start(double ts, double size) except? -1:
    """``math.floor(ts / size) * size``, raising as that does for a NaN / infinite quotient."""
    cdef double q = ts / size
    if not isfinite(q):
        math.floor(q)  # raises as the Python rule did (NaN / inf event time)
    return floor(q) * size


cdef dict _open_window(dict entities, dict heaps, entity, double start_d, lane, PyObject** rec_out):
    """The entity's window at ``start_d`` (``{metric: slot}``), opened (and queued) if new, with
    ``*rec_out`` its :class:`EntityWindows` (a borrowed reference: ``entities`` holds it); None
    when that window is closed already (a late sample)."""
    cdef EntityWindows rec
    cdef PyObject* p = PyDict_GetItem(entities, entity)
    cdef dict slots
    if p == NULL:
        rec = EntityWindows()
        entities[entity] = rec
    else:
        rec = <EntityWindows> <object> p
        cu = rec.closed_until
        if cu is not None and start_d < <double> cu:
            rec_out[0] = <PyObject*> rec
            return None
    rec_out[0] = <PyObject*> rec
    start = start_d
    p = PyDict_GetItem(rec.wins, start)
    if p != NULL:
        return <dict> <object> p
    slots = {}
    rec.wins[start] = slots
    queue_window(heaps, lane, rec, start, entity)
    lst = rec.starts
    lst.append(start)
    if len(lst) > 1 and lst[len(lst) - 2] > start:  # (compiled with wraparound=False)
        lst.sort()
    return slots


cdef inline int _add_to(WindowAccumulators acc, dict slots, metric, double ts, double value, long offset,
                        long partition) except -1:
    """Fold one sample into its metric's slot of an open window (allocated on its first sample)."""
    cdef PyObject* p = PyDict_GetItem(slots, metric)
    cdef long slot
    if p == NULL:
        slot = acc.alloc()
        slots[metric] = slot
    else:
        slot = <object> p
    return acc._add(slot, ts, value, offset, partition)


cdef object _add_sample(WindowAccumulators acc, dict entities, dict heaps, double size, entity, metric,
                        double ts, double value, long offset, long partition, lane):
    cdef PyObject* rec = NULL
    cdef dict slots = _open_window(entities, heaps, entity, _window_start(ts, size), lane, &rec)
    if slots is None:
        return None
    _add_to(acc, slots, metric, ts, value, offset, partition)
    return (<EntityWindows> rec).starts


cdef class Rows:
    """A read-only sequence of ``(metric, ts, value)`` rows held as columns: the samples of one
    entity from one source message, as the worker decodes them from an internal message
    (``stream.routing.decode_payload(..., columns=True)``). :func:`fold_rows` reads the columns
    directly; indexing and iteration give tuples, as a list of rows would."""

    def __len__(self):
        return self.n

    def __getitem__(self, Py_ssize_t i):
        if i < 0:
            i += self.n
        if i < 0 or i >= self.n:
            raise IndexError("row index out of range")
        i += self.start
        return (self.metrics[i], self.ts[i], self.value[i])

    def __iter__(self):
        cdef Py_ssize_t i
        for i in range(self.start, self.start + self.n):
            yield (self.metrics[i], self.ts[i], self.value[i])

    def __eq__(self, other):
        try:
            return len(other) == self.n and all(tuple(a) == tuple(b) for a, b in zip(self, other))
        except TypeError:
            return NotImplemented

    def __repr__(self):
        return f"Rows({list(self)!r})"


def fold_rows(WindowAccumulators acc, dict entities, dict heaps, double size, double lateness,
              double gap_span, entity, dict mlast, double last_seen, bint gap_open, rows,
              Py_ssize_t i, long offset, long partition, lane):
    """The engine's per-sample loop (``Detector.ingest_rows``) over ``rows[i:]``, compiled, for
    the samples that need nothing but bookkeeping: the metric's latest time (``mlast``), the
    entity's latest time and its window accumulators.

    Stops early, returning ``(next index, last_seen, late samples, why)``:

    - ``why == 1``: ``rows[next]`` (untouched) returns after a gap of more than ``gap_span``, or
      an incident is open (``gap_open``): the engine's Python path takes that sample;
    - ``why == 2``: the sample before ``next`` let the entity's event time pass the end (plus
      lateness) of its earliest open window: the engine closes windows, then calls again;
    - ``why == 0``: every row is folded in.

    ``tests/unit/test_core.py`` holds it to the Python loop (``Detector._fold_py``): the same
    alerts and state on streams with gaps, late samples and anomalies.
    """
    cdef Py_ssize_t late = 0
    cdef double seen = last_seen
    cdef int why = _fold_rows(acc, entities, heaps, size, lateness, gap_span, entity, mlast, &seen,
                              gap_open, rows, &i, offset, partition, lane, &late)
    return i, seen, late, why


cdef int _fold_rows(WindowAccumulators acc, dict entities, dict heaps, double size, double lateness,
                    double gap_span, entity, dict mlast, double* seen, bint gap_open, rows,
                    Py_ssize_t* at, long offset, long partition, lane, Py_ssize_t* n_late) except -1:
    """:func:`fold_rows` in C: ``*at`` (the row), ``*seen`` (last_seen) and ``*n_late`` updated in
    place; returns ``why``."""
    cdef Py_ssize_t n = len(rows), late = 0, i = at[0]
    cdef object row, metric, ts_o, starts
    cdef PyObject* p
    cdef double ts, prev, value, start_d, last_seen = seen[0]
    cdef EntityWindows rec
    cdef Rows cols = rows if type(rows) is Rows else None
    cdef list lst = rows if type(rows) is list else None
    cdef int why = 0
    # the previous sample's window within this call (an entity's samples of one scrape share
    # their timestamp): its start, its slots (None: closed, the sample was late) and the entity's
    # EntityWindows. Nothing closes a window or drops the entity until this call returns.
    cdef double w_start = NAN, w_ts = NAN
    cdef dict w_slots = None
    cdef PyObject* w_rec = NULL
    cdef object ts_box = None  # the last boxed timestamp written to mlast (shared by equal ones)
    if cols is None and lst is None:
        raise TypeError("rows must be a list or Rows")
    while i < n:
        if cols is not None:
            metric = cols.metrics[cols.start + i]
            ts = cols.ts[cols.start + i]
            value = cols.value[cols.start + i]
            ts_o = None
        else:
            row = lst[i]
            metric = row[0]
            ts_o = row[1]
            ts = ts_o
            value = row[2]
        if ts_o is None:
            if ts_box is None or ts != w_ts:
                ts_box = ts
                w_ts = ts
            ts_o = ts_box
        p = PyDict_GetItem(mlast, metric)
        if p == NULL:
            mlast[metric] = ts_o
        else:
            prev = <double> <object> p
            if ts > prev:
                if gap_open or ts - prev > gap_span:
                    why = 1
                    break
                mlast[metric] = ts_o
        if ts > last_seen:
            last_seen = ts
        start_d = _window_start(ts, size)
        if w_rec == NULL or start_d != w_start:
            w_slots = _open_window(entities, heaps, entity, start_d, lane, &w_rec)
            w_start = start_d
        if w_slots is None:
            late += 1
        else:
            _add_to(acc, w_slots, metric, ts, value, offset, partition)
        starts = (<EntityWindows> w_rec).starts
        i += 1
        if starts and <double> (<list> starts)[0] <= last_seen - size - lateness:
            why = 2
            break
    at[0] = i
    seen[0] = last_seen
    n_late[0] += late
    return why


def fold_chunks(WindowAccumulators acc, dict entities, dict heaps, double size, double lateness,
                double gap_span, entity, dict mlast, double last_seen, bint gap_open, list chunks,
                Py_ssize_t ci, Py_ssize_t i, dict cursor, bint take_first, Py_ssize_t unchecked, lane):
    """:func:`fold_rows` over an entity's chunks ``(source partition, source offset, rows)`` of
    one internal message (``Detector.ingest_chunks``), from ``chunks[ci]``'s row ``i`` on, with
    the cursor of source offsets: a chunk whose offset is at or below ``cursor[partition]`` is
    skipped (already folded in before a restart) unless it is chunk ``unchecked`` (the chunk
    that created the entity), a chunk fully folded in moves ``cursor[partition]`` up to its
    offset. ``take_first``: the entity needs the Python path for its next sample (it is not
    watched for silence yet), so stop at it.

    Returns ``(ci, i, last_seen, late samples, why, folded)``, ``why`` as :func:`fold_rows`
    (0: every chunk done; 1: ``chunks[ci]``'s row ``i`` is the Python path's; 2: close windows,
    then call again) and ``folded`` whether some chunk was (or is being) folded in. A chunk
    resumed part way (``i > 0``) is not checked against the cursor again.
    """
    cdef Py_ssize_t nc = len(chunks), late = 0, n
    cdef bint folded = False
    cdef object sp, so, r
    cdef PyObject* p
    cdef int why
    cdef double seen = last_seen
    while ci < nc:
        sp, so, r = chunks[ci]
        if i == 0 and ci != unchecked:
            p = PyDict_GetItem(cursor, sp)
            if p != NULL and so <= <object> p:
                ci += 1
                continue
        folded = True
        n = len(r)
        if i < n:
            if take_first:
                return ci, i, seen, late, 1, folded
            why = _fold_rows(acc, entities, heaps, size, lateness, gap_span, entity, mlast, &seen,
                             gap_open, r, &i, so, sp, lane, &late)
            if why != 0:
                return ci, i, seen, late, why, folded
        p = PyDict_GetItem(cursor, sp)  # the chunk is done
        if p == NULL or so > <object> p:
            cursor[sp] = so
        ci += 1
        i = 0
    return ci, i, seen, late, 0, folded
