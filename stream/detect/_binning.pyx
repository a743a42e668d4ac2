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
from libc.math cimport log, sqrt, fabs, NAN, isnan

cnp.import_array()

ctypedef cnp.int32_t i32
ctypedef cnp.int64_t i64


cdef inline Py_ssize_t _lower(const double* a, Py_ssize_t n, double v) noexcept nogil:
    """Number of a[i] < v (a sorted ascending)."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


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


def window_update_numeric(const double[:, ::1] X,
                          const double[:, ::1] inner, const i32[::1] n_inner,
                          const double[:, ::1] uniq, const i32[::1] n_uniq,
                          double[:, ::1] ring_vals, i32[:, ::1] ring_bins, i32[:, ::1] ring_cells,
                          i64[:, ::1] bin_counts, i64[:, ::1] cell_counts, i64[::1] null_counts,
                          Py_ssize_t pos, Py_ssize_t filled):
    """Push the rows of ``X`` into a count-based ring of ``ring_vals.shape[0]`` rows.

    Evicted rows are subtracted from the bin/cell/null counters before the new row is added.
    Returns the new ``(pos, filled)``.
    """
    cdef Py_ssize_t W = ring_vals.shape[0], F = X.shape[1], R = X.shape[0]
    cdef Py_ssize_t r, f, b, c, k, m
    cdef double v
    if F != ring_vals.shape[1]:
        raise ValueError(f"batch has {F} numeric columns, window has {ring_vals.shape[1]}")
    with nogil:
        for r in range(R):
            if filled == W:
                for f in range(F):
                    b = ring_bins[pos, f]
                    if b < 0:
                        null_counts[f] -= 1
                    else:
                        bin_counts[f, b] -= 1
                        cell_counts[f, ring_cells[pos, f]] -= 1
            for f in range(F):
                v = X[r, f]
                ring_vals[pos, f] = v
                if isnan(v):
                    ring_bins[pos, f] = -1
                    ring_cells[pos, f] = -1
                    null_counts[f] += 1
                else:
                    b = _lower(&inner[f, 0], n_inner[f], v)
                    m = n_uniq[f]
                    k = _lower(&uniq[f, 0], m, v)
                    if k < m and uniq[f, k] == v:
                        c = 2 * k + 1
                    else:
                        c = 2 * k
                    ring_bins[pos, f] = <i32>b
                    ring_cells[pos, f] = <i32>c
                    bin_counts[f, b] += 1
                    cell_counts[f, c] += 1
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
    evaluated exactly where ``scipy.stats.ks_2samp`` evaluates it (at every data point, as
    ``count_ref/n_ref - count_cur/n_cur``), so the maximum is the same float. NaN where either
    side is empty.
    """
    cdef Py_ssize_t f, k, m, F = cell_counts.shape[0]
    cdef i64 c, prev, cnt
    cdef double n1, n2, d, x
    with nogil:
        for f in range(F):
            if n_ref[f] <= 0 or n_cur[f] <= 0:
                out[f] = NAN
                continue
            n1 = <double>n_ref[f]
            n2 = <double>n_cur[f]
            m = n_uniq[f]
            c = 0
            prev = 0
            d = 0.0
            for k in range(m):
                cnt = cell_counts[f, 2 * k]
                if cnt > 0:  # window points strictly between u_{k-1} and u_k
                    c += cnt
                    x = fabs(prev / n1 - c / n2)
                    if x > d:
                        d = x
                c += cell_counts[f, 2 * k + 1]
                prev = ucum[f, k]
                x = fabs(prev / n1 - c / n2)
                if x > d:
                    d = x
            out[f] = d


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
