# cython: language_level=3
"""Compiled fast paths of the ingest agent: validate the samples of one input message and fold
them into the internal messages of their entities' partitions, in one pass.

Wrapped by :meth:`stream.routing.Router.add_message`, the only caller, which tries
:func:`scan_route` (the message's bytes, for the shape exporters send) first and
:func:`route_items` (orjson's objects) for every message the scanner leaves. route_items accepts a sample
only when the Python path would accept it *and* the sample's series is already known valid
(``cache``: ``tuple(label items)`` -> ``{metric: targets}``, filled by the Python
path after its full check); anything else — first sight of a series, a wrong type, a non-finite
number, an extra field, a future timestamp — goes to ``slow(index, item)``, the Python path,
which validates it fully and routes or rejects it. The slow item is handled in place, so the
order of an entity's samples is the order of the batch. ``tests/unit/test_routing.py`` holds
this function to ``decode_metrics`` + :meth:`Router.group` (the reference) on generated
batches, good and bad mixed.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport isfinite
from libc.stdint cimport int32_t, int64_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy
from libc.stdlib cimport strtod
from cpython.unicode cimport PyUnicode_DecodeASCII
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject

import sys

import orjson

from stream.detect._window cimport Rows

cdef double _MAX_EXACT_INT = 9007199254740992.0  # 2 ** 53


cdef inline bint _num(object v, bint ts):
    # a float, or an int small enough to be exact as a float (ts: non-negative); bools are ints
    # of type bool, so `type(v) is int` excludes them, as the Python path does
    cdef double d
    if type(v) is float:
        return True
    if type(v) is int:
        try:
            d = v
        except OverflowError:
            return False
        if ts:
            return 0.0 <= d < _MAX_EXACT_INT
        return -_MAX_EXACT_INT < d < _MAX_EXACT_INT
    return False


def route_items(list items, int src_p, long long src_o, double max_ts, dict cache, Outbox out, object slow):
    """Route the samples of one message (``items``: its decoded sample objects) into ``out``
    (shared by the messages of one batch). Returns the number of samples routed here; ``slow``
    is called for every other item.
    """
    cdef Py_ssize_t i, n = len(items), n_fast = 0
    cdef object prev_labels = None, by_metric = None
    cdef object item, labels, metric, value, ts, hit
    cdef tuple target
    cdef double v, t
    cdef Py_ssize_t size
    for i in range(n):
        item = items[i]
        if type(item) is not dict:
            slow(i, item)
            continue
        size = len(<dict>item)
        labels = (<dict>item).get("labels")
        if labels is None:
            if size != 3 or "labels" in <dict>item:  # an explicit null is the Python path's to name
                slow(i, item)
                continue
            labels = {}
        elif size != 4 or type(labels) is not dict:
            slow(i, item)
            continue
        metric = (<dict>item).get("metric")
        value = (<dict>item).get("value")
        ts = (<dict>item).get("ts")
        if type(metric) is not str or not _num(value, False) or not _num(ts, True):
            slow(i, item)
            continue
        # the cache is two-level, label set -> metric -> hit, and a sample whose labels equal the
        # previous sample's (an exporter's batch lists a target's metrics together) skips the
        # label-set lookup: hashing a fresh tuple of the labels' fresh strings was ~0.5 us of
        # this function's ~1.5 us per sample. Equal label dicts (in any order) are one series.
        if prev_labels is None or not (labels == prev_labels):
            try:
                by_metric = cache.get(tuple((<dict>labels).items()))
            except TypeError:  # an unhashable label value: the full check names it
                by_metric = None
            if by_metric is None:
                prev_labels = None
                slow(i, item)
                continue
            prev_labels = labels
        hit = (<dict>by_metric).get(metric)
        if hit is None:
            slow(i, item)
            continue
        v = value
        t = ts
        if not (isfinite(v) and isfinite(t) and t >= 0.0 and t <= max_ts):
            slow(i, item)
            continue
        for target in <list>hit:  # (entity id, entity labels, partition, labels as JSON)
            out.add(<int>target[2], target[0], target[3], metric, src_p, src_o, t, v)
        n_fast += 1
    return n_fast


# ------------------------------------------------------------------ the byte scanner (fast path)
# route_items works on what orjson.loads built: a dict per sample, a dict per label set, a string
# per key and value, all freed again right after; parsing and freeing were about as costly as the
# routing itself. scan_route reads the message's bytes directly, for the shape exporters send, and
# makes no object per sample but the metric's name. It accepts a message only when every sample
# would take route_items' fast path (the same checks: numbers finite and exact, ts >= 0 and not
# beyond max_ts, a series already known valid) and the text is in the subset below; otherwise it
# returns -1 and adds nothing, and the caller takes the orjson path for the whole message.
#
# The subset: ``{"samples": [...]}`` (JSON whitespace anywhere between tokens) whose items are
# objects with the keys "metric", "value", "ts" and optionally "labels", each at most once, in any
# order; strings printable ASCII without escapes; labels an object of such strings; numbers in
# JSON's grammar, integers of at most 15 digits (exact as doubles; larger ones, escapes, UTF-8,
# nulls, nesting, duplicate keys and anything else go to the orjson path).

cdef struct _Pend:
    PyObject* hit     # the series' targets (borrowed from the cache; nothing mutates it meanwhile)
    PyObject* metric  # the metric's name (owned by the call's list ``keep``)
    double ts
    double value


cdef inline Py_ssize_t _ws(const unsigned char* b, Py_ssize_t i, Py_ssize_t n) noexcept:
    while i < n and (b[i] == 32 or b[i] == 10 or b[i] == 13 or b[i] == 9):
        i += 1
    return i


cdef inline Py_ssize_t _str_end(const unsigned char* b, Py_ssize_t i, Py_ssize_t n) noexcept:
    """``b[i]`` is the opening quote: the index of the closing one, or -1 (not in the subset)."""
    cdef unsigned char c
    i += 1
    while i < n:
        c = b[i]
        if c == 34:
            return i
        if c < 32 or c > 126 or c == 92:  # control, non-ASCII, escape (the text would differ
            return -1                          # from the string: orjson decodes it)
        i += 1
    return -1


# 10 ** k, exact in a double for k <= 22
cdef double _POW10[23]
for _k in range(23):
    _POW10[_k] = 10.0 ** _k


cdef Py_ssize_t _number(const unsigned char* b, Py_ssize_t i, Py_ssize_t n, double* out) noexcept:
    """A JSON number at ``b[i]``: its end, the value in ``*out``; -1 when not in the subset.

    A decimal without exponent of at most 15 digits in all (``1700000000.0``, ``0.25``) is
    ``digits / 10 ** k`` (k fraction digits): both are exact doubles and one IEEE division rounds
    correctly (Clinger's fast path), the same double strtod and orjson give; longer ones and
    exponents go to strtod."""
    cdef Py_ssize_t start = i, digits = 0, fdigits = 0
    cdef bint neg = False, frac = False, expo = False
    cdef long long v = 0
    cdef char buf[64]
    cdef char* end
    if i < n and b[i] == 45:  # '-'
        neg = True
        i += 1
    if i >= n or not (48 <= b[i] <= 57):
        return -1
    if b[i] == 48:  # a leading 0 stands alone
        i += 1
        digits = 1
    else:
        while i < n and 48 <= b[i] <= 57:
            if digits < 15:
                v = v * 10 + (b[i] - 48)
            digits += 1
            i += 1
    if i < n and b[i] == 46:  # '.'
        frac = True
        i += 1
        if i >= n or not (48 <= b[i] <= 57):
            return -1
        while i < n and 48 <= b[i] <= 57:
            if digits + fdigits < 15:
                v = v * 10 + (b[i] - 48)
            fdigits += 1
            i += 1
    if i < n and (b[i] == 101 or b[i] == 69):  # 'e' / 'E'
        frac = expo = True
        i += 1
        if i < n and (b[i] == 43 or b[i] == 45):
            i += 1
        if i >= n or not (48 <= b[i] <= 57):
            return -1
        while i < n and 48 <= b[i] <= 57:
            i += 1
    if not frac:  # an integer: exact below 10 ** 15 (a Python int, then a float, on the other path)
        if digits > 15:
            return -1
        out[0] = <double> (-v if neg else v)
        return i
    if not expo and digits + fdigits <= 15:  # (so fdigits <= 14: 10 ** fdigits is exact)
        out[0] = (-<double> v if neg else <double> v) / _POW10[fdigits]
        return i
    if i - start >= 64:
        return -1
    memcpy(buf, b + start, i - start)
    buf[i - start] = 0
    out[0] = strtod(buf, &end)  # correctly rounded, as orjson's
    if end != buf + (i - start):  # (not all read: a C locale with another decimal point)
        return -1
    return i


cdef inline Py_ssize_t _string_ws(const unsigned char* b, Py_ssize_t i, Py_ssize_t n) noexcept:
    """A string in the subset at ``b[i]``: the index of the first non-space byte after it, or -1."""
    if i >= n or b[i] != 34:
        return -1
    i = _str_end(b, i, n)
    return -1 if i < 0 else _ws(b, i + 1, n)


cdef Py_ssize_t _labels_end(const unsigned char* b, Py_ssize_t i, Py_ssize_t n) noexcept:
    """``b[i]`` is '{': the index just past the labels object's '}', or -1."""
    i = _ws(b, i + 1, n)
    if i < n and b[i] == 125:
        return i + 1
    while True:
        i = _string_ws(b, i, n)  # the name
        if i < 0 or i >= n or b[i] != 58:  # ':'
            return -1
        i = _string_ws(b, _ws(b, i + 1, n), n)  # the value
        if i < 0 or i >= n:
            return -1
        if b[i] == 125:  # '}'
            return i + 1
        if b[i] != 44:  # ','
            return -1
        i = _ws(b, i + 1, n)


cdef int _key(const unsigned char* b, Py_ssize_t i, Py_ssize_t j) noexcept:
    """Which sample key ``b[i:j]`` is: 1 metric, 2 labels, 4 value, 8 ts; 0 another."""
    cdef Py_ssize_t ln = j - i
    if ln == 6 and memcmp(b + i, b"metric", 6) == 0:
        return 1
    if ln == 6 and memcmp(b + i, b"labels", 6) == 0:
        return 2
    if ln == 5 and memcmp(b + i, b"value", 5) == 0:
        return 4
    if ln == 2 and memcmp(b + i, b"ts", 2) == 0:
        return 8
    return 0


def scan_route(bytes raw not None, int src_p, long long src_o, double max_ts, Py_ssize_t max_batch,
               dict raw_cache, dict cache, Outbox out):
    """Route the samples of one input message (its bytes) into ``out``: the number of samples,
    or -1 (nothing added) when the message is outside the subset this scanner reads or a sample
    would not take :func:`route_items`' fast path; then the caller decodes it with orjson.

    ``raw_cache``: the labels' bytes -> ``{metric: targets}``, filled here from ``cache`` (the
    fast path's label items -> ``{metric: targets}``) the first time a label text is seen.
    ``tests/unit/test_routing.py`` holds :meth:`stream.routing.Router.add_message`, which calls
    this first, to ``decode_metrics`` + :meth:`~stream.routing.Router.group` on generated texts.
    """
    cdef const unsigned char* b = <const unsigned char*> PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = len(raw), i, j, k, cnt = 0, cap = 0, lab_i = 0, lab_j = 0, met_i = 0, met_j = 0
    cdef Py_ssize_t prev_i = -1, prev_j = -1
    cdef Py_ssize_t mt_at[16]  # the metric names met in this message: text offset, length, str
    cdef Py_ssize_t mt_len[16]
    cdef PyObject* mt_obj[16]  # (borrowed: keep holds them)
    cdef int n_mt = 0
    cdef int seen, which
    cdef double value = 0.0, ts = 0.0
    cdef _Pend* pend = NULL
    cdef _Pend* grown
    cdef object by_metric = None, hit, metric, labels, key
    cdef list keep = []
    cdef tuple target
    cdef PyObject* p
    i = _ws(b, 0, n)
    if i >= n or b[i] != 123:  # '{'
        return -1
    i = _ws(b, i + 1, n)
    if i + 9 > n or memcmp(b + i, b'"samples"', 9) != 0:
        return -1
    i = _ws(b, i + 9, n)
    if i >= n or b[i] != 58:
        return -1
    i = _ws(b, i + 1, n)
    if i >= n or b[i] != 91:  # '['
        return -1
    i = _ws(b, i + 1, n)
    try:
        while True:  # one sample object per turn
            if i >= n or b[i] != 123:
                return -1
            if cnt >= max_batch:
                return -1
            seen = 0
            i = _ws(b, i + 1, n)
            while True:  # one key per turn
                if i >= n or b[i] != 34:
                    return -1
                j = _str_end(b, i, n)
                if j < 0:
                    return -1
                which = _key(b, i + 1, j)
                if which == 0 or seen & which:  # (a duplicate key: orjson keeps the last; left to it)
                    return -1
                seen |= which
                i = _ws(b, j + 1, n)
                if i >= n or b[i] != 58:
                    return -1
                i = _ws(b, i + 1, n)
                if i >= n:
                    return -1
                if which == 1:
                    if b[i] != 34:
                        return -1
                    j = _str_end(b, i, n)
                    if j < 0:
                        return -1
                    met_i, met_j = i + 1, j
                    i = j + 1
                elif which == 2:
                    if b[i] != 123:
                        return -1
                    j = _labels_end(b, i, n)
                    if j < 0:
                        return -1
                    lab_i, lab_j = i, j
                    i = j
                elif which == 4:
                    i = _number(b, i, n, &value)
                    if i < 0:
                        return -1
                else:
                    i = _number(b, i, n, &ts)
                    if i < 0:
                        return -1
                i = _ws(b, i, n)
                if i < n and b[i] == 44:
                    i = _ws(b, i + 1, n)
                    continue
                if i < n and b[i] == 125:
                    break
                return -1
            if (seen & 13) != 13:  # metric, value and ts are required
                return -1
            if not (isfinite(value) and isfinite(ts) and ts >= 0.0 and ts <= max_ts):
                return -1
            # the series' targets: label set (by its text; the previous sample's, most often),
            # then metric
            if not seen & 2:
                lab_i, lab_j = -1, -1
            if prev_i < 0 or lab_j - lab_i != prev_j - prev_i or (
                    lab_i >= 0 and memcmp(b + lab_i, b + prev_i, lab_j - lab_i) != 0):
                key = PyBytes_FromStringAndSize(<const char*> b + lab_i, lab_j - lab_i) if lab_i >= 0 else b"{}"
                p = PyDict_GetItem(raw_cache, key)
                if p == NULL:
                    try:  # (the text was checked above; a failure here only sends it the orjson way)
                        labels = orjson.loads(key)
                    except orjson.JSONDecodeError:
                        return -1
                    if type(labels) is not dict:
                        return -1
                    by_metric = cache.get(tuple((<dict> labels).items()))
                    if by_metric is None:
                        return -1
                    raw_cache[key] = by_metric
                else:
                    by_metric = <object> p
                if lab_i >= 0:
                    prev_i, prev_j = lab_i, lab_j
                else:  # no labels: looked up again (by b"{}") for the next sample
                    prev_i = prev_j = -1
            # the metric's name: the str of an earlier sample of this message with the same text
            # (an exporter's batch repeats a few names), else a new one
            for k in range(n_mt):
                if mt_len[k] == met_j - met_i and memcmp(b + mt_at[k], b + met_i, met_j - met_i) == 0:
                    metric = <object> mt_obj[k]
                    break
            else:
                metric = PyUnicode_DecodeASCII(<const char*> b + met_i, met_j - met_i, NULL)
                keep.append(metric)
                if n_mt < 16:
                    mt_at[n_mt], mt_len[n_mt], mt_obj[n_mt] = met_i, met_j - met_i, <PyObject*> metric
                    n_mt += 1
            hit = (<dict> by_metric).get(metric)
            if hit is None:
                return -1
            if cnt == cap:
                cap = 64 if cap == 0 else 2 * cap
                grown = <_Pend*> realloc(pend, cap * sizeof(_Pend))
                if grown == NULL:
                    raise MemoryError()
                pend = grown
            pend[cnt].hit = <PyObject*> hit
            pend[cnt].metric = <PyObject*> metric
            pend[cnt].ts = ts
            pend[cnt].value = value
            cnt += 1
            i = _ws(b, i + 1, n)  # past the sample's '}'
            if i < n and b[i] == 44:
                i = _ws(b, i + 1, n)
                continue
            if i < n and b[i] == 93:  # ']'
                break
            return -1
        i = _ws(b, i + 1, n)
        if i >= n or b[i] != 125:
            return -1
        if _ws(b, i + 1, n) != n:
            return -1
        for k in range(cnt):  # the whole message is in the subset: add its samples
            for target in <list> pend[k].hit:  # (entity id, entity labels, partition, labels as JSON)
                out.add(<int> target[2], target[0], target[3], <object> pend[k].metric, src_p, src_o,
                        pend[k].ts, pend[k].value)
        return cnt
    finally:
        free(pend)


# ------------------------------------------------------------------ internal message, version 4
# One record per (sample, target entity), in arrival order: 40 bytes, native little-endian (the
# workers of one deployment run on one architecture; x86-64 and arm64 are both little-endian).
cdef struct Rec:
    uint32_t ent      # index into the message's entity table
    uint32_t metric   # index into its string table
    int32_t src_p     # source (input) partition
    int32_t _pad
    int64_t src_o     # source offset
    double ts
    double value

VERSION_TAG = b"\x04"  # first byte of a version-4 message (JSON ones start with '{' or '[')


cdef class _Part:
    """The records for one destination partition and its string and entity tables."""
    cdef Rec* recs
    cdef Py_ssize_t n, cap
    cdef dict str_idx   # str or bytes -> index
    cdef list strs
    cdef dict ent_idx   # entity id -> index
    cdef list ents      # (entity id's string index, labels' string index)
    cdef object last_eid  # the previous record's entity id (the same object) and its index
    cdef uint32_t last_e

    def __cinit__(self):
        self.last_eid = None
        self.last_e = 0
        self.recs = NULL
        self.n = self.cap = 0
        self.str_idx = {}
        self.strs = []
        self.ent_idx = {}
        self.ents = []

    def __dealloc__(self):
        free(self.recs)

    cdef uint32_t _str(self, object s) except? 0xFFFFFFFF:
        cdef object i = self.str_idx.get(s)
        if i is None:
            i = len(self.strs)
            self.strs.append(s)
            self.str_idx[s] = i
        return <uint32_t>i

    cdef int add(self, object eid, object ljson, object metric, int32_t src_p, int64_t src_o,
                 double ts, double value) except -1:
        cdef object e
        cdef Rec* r
        cdef Py_ssize_t cap
        if eid is not self.last_eid:  # (an entity's samples mostly come together)
            e = self.ent_idx.get(eid)
            if e is None:
                e = len(self.ents)
                self.ents.append((self._str(eid), self._str(ljson)))
                self.ent_idx[eid] = e
            self.last_eid = eid
            self.last_e = <uint32_t> e
        if self.n == self.cap:
            cap = 64 if self.cap == 0 else self.cap * 2
            r = <Rec*>realloc(self.recs, cap * sizeof(Rec))
            if r == NULL:
                raise MemoryError()
            self.recs, self.cap = r, cap
        r = &self.recs[self.n]
        r.ent = self.last_e
        r.metric = self._str(metric)
        r.src_p = src_p
        r._pad = 0
        r.src_o = src_o
        r.ts = ts
        r.value = value
        self.n += 1
        return 0

    cdef bytes encode(self):
        # tag | u32 n_strings | (u32 len, bytes)* | u32 n_entities | (u32 id, u32 labels)* |
        # u32 n_records | 4 bytes padding to 8 | Rec*
        cdef list raw = []
        cdef Py_ssize_t size = 1 + 4, ln, pos
        cdef const char* p
        cdef object s
        for s in self.strs:
            if type(s) is str:
                s = (<str>s).encode("utf-8")
            raw.append(s)
            size += 4 + len(<bytes>s)
        size += 4 + 8 * len(self.ents) + 4
        pos = size
        size += (8 - size % 8) % 8 + self.n * sizeof(Rec)  # (C division: no negative modulo)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
        cdef char* buf = PyBytes_AS_STRING(out)
        cdef uint32_t u
        cdef Py_ssize_t at = 0
        buf[0] = 4
        at = 1
        u = len(raw)
        memcpy(buf + at, &u, 4); at += 4
        for s in raw:
            ln = len(<bytes>s)
            u = <uint32_t>ln
            memcpy(buf + at, &u, 4); at += 4
            memcpy(buf + at, PyBytes_AS_STRING(<bytes>s), ln); at += ln
        u = len(self.ents)
        memcpy(buf + at, &u, 4); at += 4
        cdef tuple et
        for et in self.ents:
            u = <uint32_t>et[0]
            memcpy(buf + at, &u, 4); at += 4
            u = <uint32_t>et[1]
            memcpy(buf + at, &u, 4); at += 4
        u = <uint32_t>self.n
        memcpy(buf + at, &u, 4); at += 4
        while at % 8:
            buf[at] = 0
            at += 1
        memcpy(buf + at, self.recs, self.n * sizeof(Rec))
        return out


cdef class Outbox:
    """The internal messages of one ingest batch being built: per destination partition, every
    routed sample as a fixed-size record (version 4 of the internal message; see
    :mod:`stream.routing`). Appending a sample copies two doubles and two table indices; no
    Python object is made per sample, and :meth:`encode` copies the records out in one piece
    (the version-3 JSON built a list and a tuple per sample and formatted every float)."""
    cdef dict parts
    cdef public Py_ssize_t samples
    cdef int last_p  # the previous sample's partition and its _Part
    cdef object last_part

    def __cinit__(self):
        self.parts = {}
        self.samples = 0
        self.last_p = -1
        self.last_part = None

    def __len__(self):
        return len(self.parts)

    cdef int add(self, int p, object eid, object ljson, object metric, int32_t src_p, int64_t src_o,
                 double ts, double value) except -1:
        cdef object part = self.last_part
        if p != self.last_p or part is None:
            part = self.parts.get(p)
            if part is None:
                part = self.parts[p] = _Part()
            self.last_p, self.last_part = p, part
        (<_Part>part).add(eid, ljson, metric, src_p, src_o, ts, value)
        self.samples += 1
        return 0

    def append(self, int p, str eid, bytes ljson, str metric, int src_p, long long src_o, double ts, double value):
        """Add one sample for the entity ``eid`` (labels ``ljson``, its labels as JSON) on partition ``p``."""
        self.add(p, eid, ljson, metric, src_p, src_o, ts, value)

    def encode(self):
        """partition -> the internal message (version 4) for it."""
        return {p: (<_Part>part).encode() for p, part in self.parts.items()}

    def columns(self):
        """Every partition's entities in one dict, as :func:`decode_v4` with ``columns`` gives
        them from the encoded messages (entity ids are on one partition each), without encoding
        and decoding: ``{entity id: (labels JSON bytes, [[source partition, source offset,
        Rows], ...])}``. The co-partitioned worker's path (the batch never leaves the process)."""
        cdef dict out = {}
        cdef _Part part
        cdef list ents, names
        cdef tuple et
        cdef Py_ssize_t i
        for obj in self.parts.values():
            part = <_Part>obj
            ents = [[part.strs[<Py_ssize_t>et[1]], []] for et in part.ents]
            # (metric names and entity ids are held as str already; labels as bytes)
            names = [x if type(x) is str else None for x in part.strs]
            _columns(part.recs, <uint32_t>part.n, <uint32_t>len(part.ents), <uint32_t>len(part.strs), part.strs,
                     names, ents)
            for i in range(len(part.ents)):
                et = <tuple>part.ents[i]
                out[part.strs[<Py_ssize_t>et[0]]] = (ents[i][0], ents[i][1])
        return out


cdef inline uint32_t _u32(const char* buf, Py_ssize_t at, Py_ssize_t size) except? 0xFFFFFFFF:
    cdef uint32_t u
    if at + 4 > size:
        raise ValueError("truncated internal message")
    memcpy(&u, buf + at, 4)
    return u


def decode_v4(bytes raw, bint columns=False):
    """``{entity id: (entity labels, [[source partition, source offset, rows], ...])}`` of a
    version-4 internal message; rows ``(metric, ts, value)``, an entity's in arrival order and
    grouped by source message as version 3 had them: a list of tuples, or with ``columns`` a
    :class:`stream.detect._window.Rows` (the worker's path: no object per sample) and the entity
    labels as their JSON bytes (parsed by the engine only for an entity it does not hold)."""
    cdef const char* buf = PyBytes_AS_STRING(raw)
    cdef Py_ssize_t size = len(raw), at = 1, i, ln
    cdef uint32_t n_str, n_ent, n_rec, ei, li
    if size < 1 or buf[0] != 4:
        raise ValueError("not a version-4 internal message")
    n_str = _u32(buf, at, size); at += 4
    cdef list strs = []
    for i in range(n_str):
        ln = _u32(buf, at, size); at += 4
        if at + ln > size:
            raise ValueError("truncated internal message")
        strs.append(raw[at:at + ln])
        at += ln
    n_ent = _u32(buf, at, size); at += 4
    cdef list ents = []       # per entity index: [labels, chunks]
    cdef list ids = []
    cdef dict out = {}
    cdef object eid, ent, metric
    cdef list names = [None] * n_str   # decoded strings (metrics, entity ids), on first use
    for i in range(n_ent):
        ei = _u32(buf, at, size); at += 4
        li = _u32(buf, at, size); at += 4
        if ei >= n_str or li >= n_str:
            raise ValueError("bad string index in internal message")
        eid = sys.intern((<bytes>strs[ei]).decode("utf-8"))
        # with columns, the labels stay JSON bytes: the engine parses them only for an entity
        # it does not hold yet (Detector._new_entity), not for every entity of every message
        ent = [strs[li] if columns else orjson.loads(strs[li]), []]
        ids.append(eid)
        ents.append(ent)
    n_rec = _u32(buf, at, size); at += 4
    at += (8 - at % 8) % 8
    if at + <Py_ssize_t>n_rec * <Py_ssize_t>sizeof(Rec) != size:
        raise ValueError("internal message size does not match its record count")
    cdef const Rec* recs = <const Rec*>(buf + at)
    cdef const Rec* r
    cdef list chunks, last
    if columns:
        _columns(recs, n_rec, n_ent, n_str, strs, names, ents)
        for i in range(n_ent):
            ent = ents[i]
            out[ids[i]] = (ent[0], ent[1])
        return out
    for i in range(n_rec):
        r = &recs[i]
        if r.ent >= n_ent or r.metric >= n_str:
            raise ValueError("bad index in internal message record")
        metric = names[r.metric]
        if metric is None:
            metric = names[r.metric] = sys.intern((<bytes>strs[r.metric]).decode("utf-8"))
        chunks = (<list>ents[r.ent])[1]
        if chunks:
            last = chunks[len(chunks) - 1]
            if last[1] == r.src_o and last[0] == r.src_p:
                (<list>last[2]).append((metric, r.ts, r.value))
                continue
        chunks.append([r.src_p, r.src_o, [(metric, r.ts, r.value)]])
    for i in range(n_ent):
        ent = ents[i]
        out[ids[i]] = (ent[0], ent[1])
    return out


cdef int _columns(const Rec* recs, uint32_t n_rec, uint32_t n_ent, uint32_t n_str, list strs, list names,
                  list ents) except -1:
    """Fill each entity's chunks (``ents[e][1]``) with :class:`Rows` over columns sorted by entity
    (a stable counting sort: an entity's rows stay in arrival order)."""
    cdef Py_ssize_t i, e, pos
    cdef const Rec* r
    cdef Py_ssize_t* offs = <Py_ssize_t*> malloc((n_ent + 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* ends = <Py_ssize_t*> malloc((n_ent + 1) * sizeof(Py_ssize_t))
    cdef int32_t* last_p = <int32_t*> malloc((n_ent + 1) * sizeof(int32_t))
    cdef int64_t* last_o = <int64_t*> malloc((n_ent + 1) * sizeof(int64_t))
    cdef bytes owner
    cdef double* ts
    cdef double* val
    cdef list metrics, chunks, c
    cdef object metric
    cdef Rows rows
    if offs == NULL or ends == NULL or last_p == NULL or last_o == NULL:
        free(offs); free(ends); free(last_p); free(last_o)
        raise MemoryError()
    try:
        for e in range(n_ent):
            offs[e] = 0
        for i in range(n_rec):
            r = &recs[i]
            if r.ent >= n_ent or r.metric >= n_str:
                raise ValueError("bad index in internal message record")
            offs[r.ent] += 1
        pos = 0
        for e in range(n_ent):  # counts -> start of each entity's rows
            pos, offs[e] = pos + offs[e], pos
            ends[e] = pos
        owner = PyBytes_FromStringAndSize(NULL, 2 * n_rec * sizeof(double) + 8)  # (filled here, then read-only)
        ts = <double*> PyBytes_AS_STRING(owner)
        val = ts + n_rec
        metrics = [None] * n_rec
        for i in range(n_rec):
            r = &recs[i]
            e = r.ent
            pos = offs[e]
            offs[e] = pos + 1
            metric = names[r.metric]
            if metric is None:
                metric = names[r.metric] = sys.intern((<bytes>strs[r.metric]).decode("utf-8"))
            metrics[pos] = metric
            ts[pos] = r.ts
            val[pos] = r.value
            chunks = (<list>ents[e])[1]
            if not chunks or last_p[e] != r.src_p or last_o[e] != r.src_o:
                chunks.append([r.src_p, r.src_o, pos])  # (the start; a Rows below)
                last_p[e] = r.src_p
                last_o[e] = r.src_o
        for e in range(n_ent):
            chunks = (<list>ents[e])[1]
            for i in range(len(chunks)):
                c = chunks[i]
                pos = c[2]
                rows = Rows.__new__(Rows)
                rows.owner = owner
                rows.metrics = metrics
                rows.ts = ts
                rows.value = val
                rows.start = pos
                rows.n = (<Py_ssize_t>(<list>chunks[i + 1])[2] if i + 1 < len(chunks) else ends[e]) - pos
                c[2] = rows
    finally:
        free(offs); free(ends); free(last_p); free(last_o)
    return 0
