# cython: language_level=3
"""Compiled ADWIN (river-exact), documented (and doctested) in :mod:`stream.detect.adwin`.

A port of river's ``AdaptiveWindowing`` (the Rust helper of ``river.drift.ADWIN`` in river
0.22+, itself a line port of ``river/drift/adwin_c.pyx``): the same exponential histogram, the
same cut test, **the same floating-point operations in the same order**, so every result is
bit-identical to river's (held to river by ``tests/unit/test_adwin.py``).

Layout
------
river keeps a list of buckets, one per level ``i`` (rows of ``2**i`` values), each a pair of
``Vec<f64>`` of ``max_buckets + 1`` slots. Here the rows of all levels sit in one growable
``PyMem`` block, **in window order** (the oldest row first: the top level's rows, oldest first,
then the next level's, ..., level 0's newest last)::

    totals[cap] | variances[vcap] | counts[lcap] (uint16, rows per level)

so that the three operations of the algorithm touch the block as river touches its lists:

* a new value is appended at the end (a level-0 row). Level-0 rows have no variance slot (river
  stores 0.0 for them and reads that 0.0 back): the variances are those of the rows of levels
  1 and up, the first ``n - counts[0]`` rows, so they share the row index;
* merging the two oldest rows of level ``i`` into the newest row of level ``i + 1``: those are
  adjacent, at the start of level ``i``'s rows, right after level ``i + 1``'s, so the merged row
  takes the first one's place and the rows after the second move down by one;
* a cut drops the oldest row of the top level: the first row of the block.

The cut test walks the rows from the first, as river walks its levels from the top, oldest row
first. Capacity grows by one row at a time (1/8 past 32 rows: memory per instance is the point,
and the number of rows reaches a new high only a few times per level); nothing is allocated
before the first value, and a reset (the update after a detection) frees the block.
"""
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.math cimport log, sqrt, fabs, isfinite

from stream.detect._window cimport Summary
from libc.stdint cimport uint8_t, uint16_t, int32_t, uint32_t, uint64_t
from libc.string cimport memmove, memcpy, memset

import struct

#: leading byte of :meth:`AdwinCore.to_bytes`
FORMAT_VERSION = 1
# version, flags, delta, clock, max_buckets, min_window_length, grace_period,
# total, variance, width, tick, n_detections, n_levels, n_rows
_HEAD = struct.Struct("<BBdiiiidddiiII")
_F_DRIFT = 1

DEF LEVEL_STEP = 4   # counts grow by 4 levels (8 bytes) at a time
DEF MAX_BUCKETS = 65534  # a level's count (at most max_buckets + 1) is a uint16
DEF MAX_LEVELS = 64  # 2**63 values in one row: never reached


# ---------------------------------------------------------------------- class
cdef class ADWIN:
    """Adaptive windowing drift detector: river's ``ADWIN`` (same parameters, same results).

    Parameters
    ----------
    delta
        Significance value.
    clock
        How often (in updates) the window is checked for a change.
    max_buckets
        Rows of each size kept before the two oldest are merged.
    min_window_length
        The smallest sub-window a cut may leave on either side.
    grace_period
        No change is looked for before the window holds more values than this.

    :meth:`update` returns whether a change was detected (river's returns nothing; its
    ``drift_detected`` is :attr:`drift_detected` here too). ``width`` is a float and ``variance``
    the window's sum of squared deviations, as river's. Pickles to :meth:`to_bytes`.
    """
    # 96 bytes with the object header: no vtable (the algorithm is in module functions), no
    # Python object fields (so no GC header and no GC tracking)
    cdef double _total, _variance, _width, _delta
    cdef double *_buf
    cdef int32_t _clock, _tick, _ndet, _max_buckets, _mwl, _grace
    cdef uint32_t _n, _cap, _vcap
    cdef uint8_t _nlev, _lcap, _drift

    def __cinit__(self, double delta=0.002, int clock=32, int max_buckets=5, int min_window_length=5,
                  int grace_period=10):
        if clock < 1:
            raise ValueError("clock must be at least 1")  # river: a panic (modulo by zero) at the first update
        if not 1 <= max_buckets <= MAX_BUCKETS:
            # river: 0 panics at the first update; the bound keeps a level's count in 16 bits
            raise ValueError(f"max_buckets must be between 1 and {MAX_BUCKETS}")
        self._delta = delta
        self._clock = clock
        self._max_buckets = max_buckets
        self._mwl = min_window_length
        self._grace = grace_period
        self._buf = NULL
        _clear(self)

    def __dealloc__(self):
        PyMem_Free(self._buf)

    # ------------------------------------------------------------------ API
    def update(self, double x):
        """Add ``x``; True if a change was detected (river's ``ADWIN.update`` then ``drift_detected``).

        As river's ``ADWIN``, the update after a detection first starts over (window, counters).
        """
        if self._drift:
            _clear(self)
        _insert(self, x)
        self._drift = _detect(self)
        return <bint>self._drift

    def step(self, double x):
        """``(estimation before, update(x))`` in one call (the engine's per-window step)."""
        cdef double before = 0.0 if self._width == 0.0 else self._total / self._width
        if self._drift:
            _clear(self)
        _insert(self, x)
        self._drift = _detect(self)
        return before, <bint>self._drift

    @property
    def drift_detected(self):
        """Whether the last update detected a change."""
        return <bint>self._drift

    @property
    def width(self):
        """Window size (a float, as river's)."""
        return self._width

    @property
    def total(self):
        """The sum of the values in the window."""
        return self._total

    @property
    def variance(self):
        """river's ``ADWIN.variance``: the window's sum of squared deviations from its mean."""
        return self._variance

    @property
    def estimation(self):
        """The window's mean (0.0 when empty)."""
        return 0.0 if self._width == 0.0 else self._total / self._width

    @property
    def n_detections(self):
        """Changes detected since the last reset (as river's, at most 1: a detection resets)."""
        return self._ndet

    @property
    def delta(self):
        return self._delta

    @property
    def clock(self):
        return self._clock

    @property
    def max_buckets(self):
        return self._max_buckets

    @property
    def min_window_length(self):
        return self._mwl

    @property
    def grace_period(self):
        return self._grace

    @property
    def n_rows(self):
        """Rows (buckets) held."""
        return self._n

    @property
    def n_levels(self):
        return self._nlev

    def rows(self):
        """``[(level, total, variance), ...]`` in window order (the oldest first), for tests."""
        cdef list out = []
        cdef uint32_t pos = 0, k
        cdef int idx
        if self._buf == NULL:
            return out
        cdef uint16_t *cnt = _counts(self)
        for idx in range(self._nlev - 1, -1, -1):
            for k in range(cnt[idx]):
                out.append((idx, self._buf[pos], self._buf[self._cap + pos] if idx else 0.0))
                pos += 1
        return out

    def nbytes(self):
        """Bytes of the row block (the instance itself is ``sys.getsizeof``)."""
        return 0 if self._buf == NULL else 8 * (<size_t>self._cap + self._vcap) + 2 * <size_t>self._lcap

    def __repr__(self):
        return (f"ADWIN(delta={self._delta!r}, clock={self._clock}, max_buckets={self._max_buckets}, "
                f"min_window_length={self._mwl}, grace_period={self._grace})")

    def __reduce__(self):
        return (_restore, (self.to_bytes(),))

    def __copy__(self):
        return type(self).from_bytes(self.to_bytes())

    def __deepcopy__(self, memo):
        return type(self).from_bytes(self.to_bytes())

    def to_bytes(self):
        """The whole state: a version byte, the parameters, the counters, the rows (level-0 rows
        without their variance, always 0.0)."""
        cdef uint32_t i, n0 = 0
        cdef uint16_t *cnt
        head = _HEAD.pack(FORMAT_VERSION, _F_DRIFT if self._drift else 0, self._delta, self._clock,
                          self._max_buckets, self._mwl, self._grace, self._total, self._variance,
                          self._width, self._tick, self._ndet, self._nlev, self._n)
        if self._buf == NULL:
            return head + bytes(2)  # one empty level
        cnt = _counts(self)
        n0 = cnt[0]
        counts = struct.pack(f"<{self._nlev}H", *[cnt[i] for i in range(self._nlev)])
        rows = (<char*>self._buf)[:8 * self._n]
        var = (<char*>(self._buf + self._cap))[:8 * (self._n - n0)]
        return head + counts + rows + var

    @classmethod
    def from_bytes(cls, data):
        """The instance :meth:`to_bytes` wrote (exactly)."""
        cdef ADWIN self
        cdef const unsigned char[:] mv = data
        cdef uint32_t i, nlev, n, n0, total_rows = 0
        cdef size_t off
        cdef uint16_t *cnt
        if len(data) < _HEAD.size or data[0] != FORMAT_VERSION:
            raise ValueError(f"unsupported ADWIN state version {bytes(data[:1])!r}")
        (_, flags, delta, clock, max_buckets, mwl, grace, total, variance, width, tick, ndet, nlev,
         n) = _HEAD.unpack_from(data)
        if not 1 <= nlev <= MAX_LEVELS or (n == 0 and nlev != 1):
            raise ValueError("corrupt ADWIN state (levels)")
        counts = struct.unpack_from(f"<{nlev}H", data, _HEAD.size)
        n0 = counts[0]
        if sum(counts) != n or n0 > n or not 1 <= max_buckets <= MAX_BUCKETS or any(c > max_buckets for c in counts):
            raise ValueError("corrupt ADWIN state (rows)")
        off = _HEAD.size + 2 * nlev
        if len(data) != off + 8 * n + 8 * (n - n0):
            raise ValueError("corrupt ADWIN state (length)")
        self = cls.__new__(cls, delta, clock, max_buckets, mwl, grace)
        self._total, self._variance, self._width = total, variance, width
        self._tick, self._ndet = tick, ndet
        self._drift = 1 if flags & _F_DRIFT else 0
        if n:
            _resize(self, n, n - n0, <uint8_t>(((nlev + LEVEL_STEP - 1) // LEVEL_STEP) * LEVEL_STEP))
            cnt = _counts(self)
            for i in range(nlev):
                cnt[i] = counts[i]
            self._nlev = nlev
            self._n = n
            memcpy(self._buf, &mv[off], 8 * <size_t>n)
            if n > n0:
                memcpy(self._buf + self._cap, &mv[off + 8 * n], 8 * <size_t>(n - n0))
        return self


def _restore(data):
    """Unpickling: the :class:`ADWIN` that :meth:`ADWIN.to_bytes` wrote."""
    return ADWIN.from_bytes(data)


# ---------------------------------------------------------------------- algorithm
cdef inline void _clear(ADWIN self) noexcept:
    """river's ``ADWIN._reset``: a new, empty helper (one empty level), 0 detections."""
    PyMem_Free(self._buf)
    self._buf = NULL
    self._n = self._cap = self._vcap = 0
    self._nlev = 1  # (its count is 0: counts are read only once the block exists)
    self._lcap = 0
    self._total = self._variance = self._width = 0.0
    self._tick = self._ndet = 0
    self._drift = 0


cdef inline uint16_t* _counts(ADWIN self) noexcept:
    return <uint16_t*>(self._buf + (<size_t>self._cap + self._vcap))


cdef int _resize(ADWIN self, uint32_t cap, uint32_t vcap, uint8_t lcap) except -1:
    """Grow the block to ``cap`` totals, ``vcap`` variances and ``lcap`` level counts (each >=
    the current one)."""
    cdef size_t old_cap = self._cap, old_vcap = self._vcap, old_lcap = self._lcap
    cdef char *p = <char*>PyMem_Realloc(self._buf, 8 * (<size_t>cap + vcap) + 2 * <size_t>lcap)
    if p == NULL:
        raise MemoryError()
    if self._buf == NULL:
        old_cap = old_vcap = old_lcap = 0
    # the counts first (they move furthest), then the variances into the space they left
    memmove(p + 8 * (<size_t>cap + vcap), p + 8 * (old_cap + old_vcap), 2 * old_lcap)
    memset(p + 8 * (<size_t>cap + vcap) + 2 * old_lcap, 0, 2 * (<size_t>lcap - old_lcap))
    memmove(p + 8 * <size_t>cap, p + 8 * old_cap, 8 * old_vcap)
    self._buf = <double*>p
    self._cap = cap
    self._vcap = vcap
    self._lcap = lcap
    return 0


cdef inline uint32_t _grow(uint32_t cap) noexcept:
    # a row at a time (the number of rows reaches a new high only a few times per level)
    return cap + (1 if cap < 32 else cap >> 3)


cdef int _insert(ADWIN self, double value) except -1:
    """river's ``insert_element(value, 0.0)`` then ``compress_buckets``."""
    cdef double inc, dv
    if self._buf == NULL:
        _resize(self, 1, 0, LEVEL_STEP)
    elif self._n == self._cap:
        _resize(self, _grow(self._cap), self._vcap, self._lcap)
    self._buf[self._n] = value  # a level-0 row: its variance, 0.0, is not stored
    self._n += 1
    _counts(self)[0] += 1
    self._width += 1.0
    inc = 0.0
    if self._width > 1.0:
        dv = value - self._total / (self._width - 1.0)
        inc = (self._width - 1.0) * dv * dv / self._width
    self._variance += inc
    self._total += value
    if _counts(self)[0] == <uint32_t>self._max_buckets + 1:
        _compress(self)
    return 0


cdef int _compress(ADWIN self) except -1:
    cdef uint32_t idx = 0, s, tail = 0, nv, M1 = <uint32_t>self._max_buckets + 1
    cdef uint16_t *cnt = _counts(self)
    cdef double *tot
    cdef double *var
    cdef double n1, t0, t1, v0, v1, mu1, mu2, total12, temp, v12
    while cnt[idx] == M1:
        tail += cnt[idx]
        s = self._n - tail  # level idx's first (oldest) row
        nv = self._n - cnt[0]  # rows with a variance slot (levels >= 1)
        if idx + 1 >= self._nlev and self._nlev >= self._lcap:
            if self._nlev >= MAX_LEVELS:
                raise OverflowError("ADWIN window too long")
            _resize(self, self._cap, self._vcap, self._lcap + LEVEL_STEP)
        if idx == 0 and s + 1 > self._vcap:  # the merged row is a new level-1 row: a variance slot
            _resize(self, self._cap, _grow(self._vcap) if _grow(self._vcap) > s + 1 else s + 1, self._lcap)
        cnt = _counts(self)
        tot = self._buf
        var = self._buf + self._cap
        n1 = <double>(<uint64_t>1 << idx)
        t0 = tot[s]
        t1 = tot[s + 1]
        if idx == 0:
            v0 = 0.0
            v1 = 0.0
        else:
            v0 = var[s]
            v1 = var[s + 1]
        mu1 = t0 / n1
        mu2 = t1 / n1
        total12 = t0 + t1
        temp = n1 * 0.5 * (mu1 - mu2) * (mu1 - mu2)
        v12 = v0 + v1 + temp
        if idx + 1 >= self._nlev:
            cnt[self._nlev] = 0
            self._nlev += 1
        # the merged row becomes level idx+1's newest, in the place of the first of the two
        tot[s] = total12
        var[s] = v12
        memmove(tot + s + 1, tot + s + 2, 8 * <size_t>(self._n - s - 2))
        if idx > 0:
            memmove(var + s + 1, var + s + 2, 8 * <size_t>(nv - s - 2))
        self._n -= 1
        tail -= 2
        cnt[idx] -= 2
        cnt[idx + 1] += 1
        idx += 1
    return 0


cdef void _delete_oldest(ADWIN self) noexcept:
    """river's ``delete_element``: drop the oldest row (the top level's first)."""
    cdef uint32_t last = self._nlev - 1
    cdef uint16_t *cnt = _counts(self)
    cdef uint32_t nv = self._n - cnt[0]
    cdef double *tot = self._buf
    cdef double *var = self._buf + self._cap
    cdef double n = <double>(<uint64_t>1 << last)
    cdef double u = tot[0], v = var[0] if last > 0 else 0.0, mu, mu_window, inc
    mu = u / n
    self._width -= n
    self._total -= u
    mu_window = self._total / self._width
    inc = v + n * self._width * (mu - mu_window) * (mu - mu_window) / (n + self._width)
    self._variance -= inc
    self._n -= 1
    memmove(tot, tot + 1, 8 * <size_t>self._n)
    if last > 0:
        memmove(var, var + 1, 8 * <size_t>(nv - 1))
    cnt[last] -= 1
    # river pops the top level when it empties. (With max_buckets=1 the level below can be
    # empty too; river then reads a row that is not there and panics, see test_adwin.py; here
    # the empty levels go too, and the next cut drops the oldest row.)
    while self._nlev > 1 and cnt[self._nlev - 1] == 0:
        self._nlev -= 1

cdef inline bint _cut(ADWIN self, double n0, double n1, double delta_mean) noexcept:
    cdef double delta_prime = log(2.0 * log(self._width) / self._delta)
    cdef double m_recip = 1.0 / (n0 - <double>self._mwl + 1.0) + 1.0 / (n1 - <double>self._mwl + 1.0)
    cdef double epsilon = (sqrt(2.0 * m_recip * (self._variance / self._width) * delta_prime)
                           + 2.0 / 3.0 * delta_prime * m_recip)
    return fabs(delta_mean) > epsilon

cdef bint _detect(ADWIN self) noexcept:
    cdef bint change = False, reduce_width, cut
    cdef double n0, n1, u0, u1, bucket_size, t, delta_mean
    cdef uint32_t pos, c, k
    cdef int idx
    cdef uint16_t *cnt
    cdef double *tot
    self._tick = <int32_t>(<uint32_t>self._tick + 1u)  # (river's i32 wraps)
    if self._tick % self._clock == 0 and self._width > <double>self._grace:
        reduce_width = True
        while reduce_width:
            reduce_width = False
            cut = False
            n0 = 0.0
            n1 = self._width
            u0 = 0.0
            u1 = self._total
            cnt = _counts(self)
            tot = self._buf
            pos = 0
            idx = self._nlev - 1
            while idx >= 0 and not cut:
                bucket_size = <double>(<uint64_t>1 << idx)
                c = cnt[idx]
                for k in range(c):
                    n0 += bucket_size
                    n1 -= bucket_size
                    t = tot[pos + k]
                    u0 += t
                    u1 -= t
                    if idx == 0 and k == c - 1:
                        break  # (the last row: river's exit_flag)
                    delta_mean = (u0 / n0) - (u1 / n1)
                    if n1 >= <double>self._mwl and n0 >= <double>self._mwl and _cut(self, n0, n1, delta_mean):
                        reduce_width = True
                        change = True
                        if self._width > 0.0:
                            _delete_oldest(self)
                            cut = True
                            break
                pos += c
                idx -= 1
    if change:
        self._ndet += 1
    return change



def step_means(dict adwins, dict summary, factory, double delta, fallback):
    """The engine's drift pass over one closed window: each metric's window mean (``"mean"`` of
    its summary; non-finite means skipped), metrics in sorted order, into its ADWIN (created as
    ``factory(delta)`` for a metric seen first), as ``fallback(ad, mean) -> (before, detected)``
    does for any ADWIN but this module's own, which is stepped here. Returns
    ``[(metric, estimation before, the ADWIN)]`` of the metrics whose ADWIN detected a change
    (usually empty). One call per window instead of a Python loop of five calls (held to the
    loop by tests/unit/test_engine_adwin.py, the engine's windows either way).
    """
    cdef list hits = []
    cdef double v, before
    cdef bint detected
    cdef ADWIN c
    for metric in sorted(summary):
        s = summary[metric]
        if type(s) is Summary:
            v = (<Summary> s).v[1]
        else:
            v = float(s["mean"])
        if not isfinite(v):
            continue
        ad = adwins.get(metric)
        if ad is None:
            ad = adwins[metric] = factory(delta)
        if type(ad) is ADWIN:
            c = <ADWIN> ad
            before = 0.0 if c._width == 0.0 else c._total / c._width
            if c._drift:
                _clear(c)
            _insert(c, v)
            c._drift = _detect(c)
            detected = c._drift
        else:
            before, detected = fallback(ad, v)
        if detected:
            hits.append((metric, before, ad))
    return hits
