# cython: language_level=3
"""Compiled hot paths of drift monitoring: binning, sliding-window counters, KS and PSI/JS.

Wrapped by :mod:`stream.detect.baseline` (``SlidingWindow``, ``compare``) and
:mod:`stream.detect.drift_stats` (``ks_2samp``); held to numpy/scipy references by
``tests/unit/test_drift_stats.py``.

Layout conventions (all C-contiguous):

* a batch is ``rows x features``;
* per-feature tables are padded to the widest feature, with the real width in a separate
  ``int32`` vector (``n_inner``, ``n_uniq``, ``n_bins``);
* a numeric value's **bin** is the number of interior edges ``< value`` (``np.searchsorted(
  inner, v, side="left")``), so bins are right-closed, ``(e_i, e_{i+1}]``, with ``-inf``/``+inf``
  outer edges (the pairing that balances bins cut at ``inverted_cdf`` quantiles);
* a numeric value's **KS cell** locates it against the distinct reference-sample points
  ``u_0 < ... < u_{m-1}``: cell ``2k`` is strictly between ``u_{k-1}`` and ``u_k`` (cell 0 is
  below ``u_0``, cell ``2m`` above ``u_{m-1}``), cell ``2k+1`` is equal to ``u_k``. Counting the
  window per cell is enough to get the exact two-sample KS statistic against the reference
  sample without sorting the window;
* NaN is a null: bin and cell ``-1``, counted in ``null_counts`` only.
"""
import numpy as np
cimport numpy as cnp
from libc.math cimport log, sqrt, fabs, NAN, INFINITY, isnan

cnp.import_array()

ctypedef cnp.int32_t i32
ctypedef cnp.int64_t i64


cdef inline Py_ssize_t _lower(const double* a, Py_ssize_t n, double v) noexcept nogil:
    """Number of a[i] < v (a sorted ascending, v not NaN): a branch-free lower bound."""
    cdef const double* base = a
    cdef Py_ssize_t half
    if n <= 0:
        return 0
    while n > 1:
        half = n >> 1
        if base[half - 1] < v:  # compiled to a conditional move
            base = base + half
        n -= half
    return (base - a) + (base[0] < v)


def bin_values(const double[:, ::1] X, const double[:, ::1] inner, const i32[::1] n_inner,
               i32[:, ::1] out):
    """Bin each column of ``X`` into its feature's interior edges (``-1`` for NaN)."""
    cdef Py_ssize_t r, f, R = X.shape[0], F = X.shape[1]
    cdef double v
    with nogil:
        for r in range(R):
            for f in range(F):
                v = X[r, f]
                if isnan(v):
                    out[r, f] = -1
                else:
                    out[r, f] = <i32>_lower(&inner[f, 0], n_inner[f], v)


def cell_values(const double[:, ::1] X, const double[:, ::1] uniq, const i32[::1] n_uniq,
                i32[:, ::1] out):
    """KS cell of each value of ``X`` against its feature's distinct reference points."""
    cdef Py_ssize_t r, f, k, m, R = X.shape[0], F = X.shape[1]
    cdef double v
    with nogil:
        for r in range(R):
            for f in range(F):
                v = X[r, f]
                if isnan(v):
                    out[r, f] = -1
                else:
                    m = n_uniq[f]
                    k = _lower(&uniq[f, 0], m, v)
                    if k < m and uniq[f, k] == v:
                        out[r, f] = <i32>(2 * k + 1)
                    else:
                        out[r, f] = <i32>(2 * k)


DEF LANES = 8


cdef inline void _lower_lanes(const double* a, Py_ssize_t n, const double* v,
                              Py_ssize_t* out) noexcept nogil:
    """``_lower`` for LANES values at once: independent search chains the CPU overlaps."""
    cdef Py_ssize_t j, half
    for j in range(LANES):
        out[j] = 0
    if n <= 0:
        return
    while n > 1:
        half = n >> 1
        for j in range(LANES):
            out[j] += half * (a[out[j] + half - 1] < v[j])
        n -= half
    for j in range(LANES):
        out[j] += (a[out[j]] < v[j])


def window_update_numeric(const double[:, ::1] X,
                          const double[:, ::1] inner, const i32[::1] n_inner,
                          const double[:, ::1] uniq, const i32[::1] n_uniq,
                          double[:, ::1] ring_vals, i32[:, ::1] ring_bins, i32[:, ::1] ring_cells,
                          i64[:, ::1] bin_counts, i64[:, ::1] cell_counts, i64[::1] null_counts,
                          Py_ssize_t pos, Py_ssize_t filled):
    """Push the rows of ``X`` into a count-based ring of ``ring_vals.shape[0]`` rows.

    Evicted rows are subtracted from the bin/cell/null counters before the new row is added.
    Features are independent, so the batch is processed feature by feature (one feature's
    edges and reference points stay in cache), and the binary searches of ``LANES`` rows are
    interleaved. Returns the new ``(pos, filled)``.
    """
    cdef Py_ssize_t W = ring_vals.shape[0], F = X.shape[1], R = X.shape[0]
    cdef Py_ssize_t r, r0, j, blk, f, b, c, k, m, ni, p, fl
    cdef double v
    cdef double vals[LANES]
    cdef Py_ssize_t bins[LANES]
    cdef Py_ssize_t ks[LANES]
    cdef const double* edges
    cdef const double* pts
    if F != ring_vals.shape[1]:
        raise ValueError(f"batch has {F} numeric columns, window has {ring_vals.shape[1]}")
    with nogil:
        for f in range(F):
            edges = &inner[f, 0]
            ni = n_inner[f]
            pts = &uniq[f, 0]
            m = n_uniq[f]
            p = pos
            fl = filled
            for r0 in range(0, R, LANES):
                blk = R - r0
                if blk > LANES:
                    blk = LANES
                for j in range(LANES):
                    vals[j] = X[r0 + j, f] if j < blk else 0.0
                _lower_lanes(edges, ni, vals, bins)
                _lower_lanes(pts, m, vals, ks)
                for j in range(blk):
                    if fl == W:
                        b = ring_bins[p, f]
                        if b < 0:
                            null_counts[f] -= 1
                        else:
                            bin_counts[f, b] -= 1
                            cell_counts[f, ring_cells[p, f]] -= 1
                    v = vals[j]
                    ring_vals[p, f] = v
                    if isnan(v):
                        ring_bins[p, f] = -1
                        ring_cells[p, f] = -1
                        null_counts[f] += 1
                    else:
                        b = bins[j]
                        k = ks[j]
                        c = 2 * k + (k < m and pts[k] == v)
                        ring_bins[p, f] = <i32>b
                        ring_cells[p, f] = <i32>c
                        bin_counts[f, b] += 1
                        cell_counts[f, c] += 1
                    p += 1
                    if p == W:
                        p = 0
                    if fl < W:
                        fl += 1
        for r in range(R):
            pos += 1
            if pos == W:
                pos = 0
            if filled < W:
                filled += 1
    return pos, filled


def window_update_codes(const i32[:, ::1] codes, i32[:, ::1] ring, i64[:, ::1] counts,
                        i64[::1] null_counts, Py_ssize_t pos, Py_ssize_t filled):
    """Same ring update for already-encoded categorical codes (``-1`` = null)."""
    cdef Py_ssize_t W = ring.shape[0], F = codes.shape[1], R = codes.shape[0]
    cdef Py_ssize_t r, f
    cdef i32 c
    if F != ring.shape[1]:
        raise ValueError(f"batch has {F} categorical columns, window has {ring.shape[1]}")
    with nogil:
        for r in range(R):
            if filled == W:
                for f in range(F):
                    c = ring[pos, f]
                    if c < 0:
                        null_counts[f] -= 1
                    else:
                        counts[f, c] -= 1
            for f in range(F):
                c = codes[r, f]
                ring[pos, f] = c
                if c < 0:
                    null_counts[f] += 1
                else:
                    counts[f, c] += 1
            pos += 1
            if pos == W:
                pos = 0
            if filled < W:
                filled += 1
    return pos, filled


def ks_from_cells(const i64[:, ::1] cell_counts, const i64[:, ::1] ucum, const i32[::1] n_uniq,
                  const i64[::1] n_ref, const i64[::1] n_cur, double[::1] out):
    """Two-sample KS statistic of each feature's window against its reference sample.

    ``ucum[f, k]`` is the number of reference-sample values ``<= u_k``. The ECDF difference is
    evaluated where ``scipy.stats.ks_2samp`` evaluates it (at every data point): the scan
    compares ``|count_ref * n_cur - count_cur * n_ref|`` in exact integer arithmetic and the
    result is ``|count_ref / n_ref - count_cur / n_cur|`` in floating point at the maximum, as
    scipy computes it. NaN where either side is empty.
    """
    cdef Py_ssize_t f, k, m, F = cell_counts.shape[0]
    cdef i64 c, prev, cnt, n1, n2, t, best, bp, bc
    with nogil:
        for f in range(F):
            if n_ref[f] <= 0 or n_cur[f] <= 0:
                out[f] = NAN
                continue
            n1 = n_ref[f]
            n2 = n_cur[f]
            m = n_uniq[f]
            c = 0
            prev = 0
            best = 0
            bp = 0
            bc = 0
            for k in range(m):
                cnt = cell_counts[f, 2 * k]
                if cnt > 0:  # window points strictly between u_{k-1} and u_k
                    c += cnt
                    t = prev * n2 - c * n1
                    if t < 0:
                        t = -t
                    if t > best:
                        best = t
                        bp = prev
                        bc = c
                c += cell_counts[f, 2 * k + 1]
                prev = ucum[f, k]
                t = prev * n2 - c * n1
                if t < 0:
                    t = -t
                if t > best:
                    best = t
                    bp = prev
                    bc = c
            out[f] = fabs(bp / <double>n1 - bc / <double>n2)


def ks_stat_sorted(const double[::1] a, const double[::1] b):
    """Two-sample KS statistic of two sorted, NaN-free arrays by a single merge pass."""
    cdef Py_ssize_t i = 0, j = 0, n1 = a.shape[0], n2 = b.shape[0]
    cdef double x, d = 0.0, t, fn1 = <double>n1, fn2 = <double>n2
    if n1 == 0 or n2 == 0:
        return NAN
    with nogil:
        while i < n1 and j < n2:
            x = a[i] if a[i] <= b[j] else b[j]
            while i < n1 and a[i] == x:
                i += 1
            while j < n2 and b[j] == x:
                j += 1
            t = fabs(i / fn1 - j / fn2)
            if t > d:
                d = t
    return d


def psi_js(const i64[:, ::1] ref, const i64[:, ::1] cur, const i32[::1] n_bins, double eps,
           double[::1] psi_out, double[::1] js_out):
    """PSI (with the smoothing of ``drift_stats.psi``) and JS distance (base 2) per row.

    NaN where either side has no counts.
    """
    cdef Py_ssize_t f, i, k, F = ref.shape[0]
    cdef double E, A, p, q, denom, s, js, m, ln2 = log(2.0)
    with nogil:
        for f in range(F):
            k = n_bins[f]
            E = 0.0
            A = 0.0
            for i in range(k):
                E += ref[f, i]
                A += cur[f, i]
            if E <= 0.0 or A <= 0.0:
                psi_out[f] = NAN
                js_out[f] = NAN
                continue
            denom = 1.0 + k * eps
            s = 0.0
            js = 0.0
            for i in range(k):
                p = (ref[f, i] / E + eps) / denom
                q = (cur[f, i] / A + eps) / denom
                s += (q - p) * log(q / p)
                p = ref[f, i] / E
                q = cur[f, i] / A
                m = 0.5 * (p + q)
                if p > 0.0:
                    js += 0.5 * p * log(p / m)
                if q > 0.0:
                    js += 0.5 * q * log(q / m)
            psi_out[f] = s
            js = js / ln2
            if js < 0.0:
                js = 0.0
            elif js > 1.0:
                js = 1.0
            js_out[f] = sqrt(js)


# ------------------------------------------------------------------ per-event record scans
# Contract type codes of a JSON value (``stream.detect.monitor.type_of``): null, number, string, bool.
cdef enum:
    T_NULL = 0
    T_NUMBER = 1
    T_STRING = 2
    T_BOOL = 3

from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_GET_LENGTH


cdef inline int _type_code(object v):
    if v is None:
        return T_NULL
    if type(v) is float or type(v) is int:
        return T_NUMBER
    if type(v) is bool:
        return T_BOOL
    if isinstance(v, bool):
        return T_BOOL
    if isinstance(v, (int, float)):
        return T_NUMBER
    return T_STRING


def features_ok(dict feats, Py_ssize_t max_name, Py_ssize_t max_string):
    """True if every feature of a decoded inference is valid (the decoder's fast path).

    Valid: a name of 1 to ``max_name`` characters and a value that is null, a bool, an integer
    or float of finite double value, or a string of at most ``max_string`` characters. False
    sends the caller to its Python check, which names the problem.
    """
    cdef Py_ssize_t pos = 0, n
    cdef PyObject* kp
    cdef PyObject* vp
    cdef object k, v
    cdef double x
    while PyDict_Next(feats, &pos, &kp, &vp):
        k = <object>kp
        v = <object>vp
        if type(k) is not str:
            return False
        n = PyUnicode_GET_LENGTH(k)
        if n < 1 or n > max_name:
            return False
        if v is None or type(v) is bool:
            continue
        if type(v) is float:
            x = v
            if isnan(x) or x == INFINITY or x == -INFINITY:
                return False
            continue
        if type(v) is int:
            try:
                x = v  # PyLong_AsDouble: OverflowError beyond the double range
            except OverflowError:
                return False
            continue
        if type(v) is str:
            if PyUnicode_GET_LENGTH(v) > max_string:
                return False
            continue
        return False
    return True


def scan_records(list records, tuple names, const i32[::1] expected, const i32[::1] numcol,
                 double[:, ::1] X, i64[:, ::1] tally, object to_float):
    """One pass over a batch of feature mappings: schema tallies and the numeric matrix.

    For row ``r`` and contract field ``f`` (``names[f]``, expected type code ``expected[f]``):
    ``tally[f, 0]`` counts rows without the field, ``tally[f, 1 + t]`` rows whose value has type
    code ``t`` (null, number, string, bool). If ``numcol[f] >= 0`` the value goes to
    ``X[r, numcol[f]]`` as a float (numbers directly; null / absent -> NaN; anything else
    through ``to_float``). Returns the indices of the rows holding fields outside ``names``.
    """
    cdef Py_ssize_t R = len(records), F = len(names), r, f, present, c
    cdef PyObject* vp
    cdef object d, v, name
    cdef int t
    cdef list extra = []
    if X.shape[0] < R or tally.shape[0] < F or tally.shape[1] < 5:
        raise ValueError("output arrays too small")
    for r in range(R):
        d = records[r]
        if type(d) is not dict:
            d = dict(d)
        present = 0
        for f in range(F):
            name = names[f]
            vp = PyDict_GetItem(d, name)
            c = numcol[f]
            if vp == NULL:
                tally[f, 0] += 1
                if c >= 0:
                    X[r, c] = NAN
                continue
            present += 1
            v = <object>vp
            t = _type_code(v)
            tally[f, 1 + t] += 1
            if c >= 0:
                if t == T_NULL:
                    X[r, c] = NAN
                elif t == T_NUMBER and type(v) is float:
                    X[r, c] = <double>v
                elif t == T_NUMBER and type(v) is int:
                    try:
                        X[r, c] = <double>v
                    except OverflowError:
                        X[r, c] = <double>to_float(v)
                else:
                    X[r, c] = <double>to_float(v)
        if len(d) > present:
            extra.append(r)
    return extra


cdef inline bint _name_ok(object v, Py_ssize_t max_name):
    return type(v) is str and 0 < PyUnicode_GET_LENGTH(v) <= max_name


cdef inline bint _finite_number(object v, double* out):
    """``v`` is a float or (non-bool) int of finite double value; its value in ``out``."""
    cdef double x
    if type(v) is float:
        x = v
    elif type(v) is int:
        try:
            x = v
        except OverflowError:
            return False
    else:
        return False
    if isnan(x) or x == INFINITY or x == -INFINITY:
        return False
    out[0] = x
    return True


def inference_fast(object obj, object cls, frozenset keys, dict model_cache, object model_re,
                   Py_ssize_t max_name, Py_ssize_t max_string, Py_ssize_t max_features,
                   Py_ssize_t max_labels):
    """The decoder's fast path for one inference: ``cls(...)`` if it is plainly valid, else None.

    Accepts only what ``stream.inference_events._check_inference`` accepts, built the same way;
    None sends the item to that check, which names the problem (or accepts an unusual form).
    ``model_cache`` remembers model names that matched ``model_re`` (bounded by the caller).
    """
    cdef Py_ssize_t pos = 0, n
    cdef PyObject* kp
    cdef PyObject* vp
    cdef double x, ts
    cdef object model, version, rid, feats, pred, score, labels, k, v
    if type(obj) is not dict:
        return None
    while PyDict_Next(obj, &pos, &kp, &vp):
        if <object>kp not in keys:
            return None
    vp = PyDict_GetItem(obj, "model")
    if vp == NULL:
        return None
    model = <object>vp
    if not _name_ok(model, max_name):
        return None
    if model not in model_cache:
        if model_re.match(model) is None:
            return None
        if len(model_cache) < 10000:
            model_cache[model] = True
    vp = PyDict_GetItem(obj, "version")
    if vp == NULL or not _name_ok(<object>vp, max_name):
        return None
    version = <object>vp
    vp = PyDict_GetItem(obj, "request_id")
    if vp == NULL or not _name_ok(<object>vp, max_name):
        return None
    rid = <object>vp
    vp = PyDict_GetItem(obj, "ts")
    if vp == NULL or not _finite_number(<object>vp, &ts) or ts < 0:
        return None
    vp = PyDict_GetItem(obj, "features")
    if vp == NULL or type(<object>vp) is not dict:
        return None
    feats = <object>vp
    if len(feats) > max_features or not features_ok(feats, max_name, max_string):
        return None
    vp = PyDict_GetItem(obj, "prediction")
    if vp == NULL:
        return None
    pred = <object>vp
    if type(pred) is str:
        if PyUnicode_GET_LENGTH(pred) > max_string:
            return None
    elif not _finite_number(pred, &x):
        return None
    score = None
    vp = PyDict_GetItem(obj, "score")
    if vp != NULL and <object>vp is not None:
        if not _finite_number(<object>vp, &x):
            return None
        score = x
    labels = None
    vp = PyDict_GetItem(obj, "labels")
    if vp != NULL and <object>vp is not None:
        labels = <object>vp
        if type(labels) is not dict or len(labels) > max_labels:
            return None
        pos = 0
        while PyDict_Next(labels, &pos, &kp, &vp):
            k = <object>kp
            v = <object>vp
            if type(v) is not str or PyUnicode_GET_LENGTH(v) > 500:
                return None
            if type(k) is not str or not 0 < PyUnicode_GET_LENGTH(k) <= 100:
                return None
        if not labels:
            labels = None
    return cls(model, version, rid, ts, feats, pred, score, labels)
