# cython: language_level=3
"""Compiled Half-Space Trees kernels (river-exact), wrapped by :mod:`stream.detect.hst`.

Layout
------
Every tree is a complete binary tree of ``height`` splits stored in heap order: node ``i`` has
children ``2i+1`` (left, ``value < threshold``) and ``2i+2`` (right). A tree has
``n_internal = 2**height - 1`` split nodes and ``n_nodes = 2**(height+1) - 1`` nodes.

* :class:`Structure` — one 16-byte record ``{threshold: float64, feature: int32}`` per split
  node, for all trees. Immutable and shared by every model with the same (n_trees, height, seed,
  features, limits).
* :class:`HSTCore` — the per-model state: one mass array ``(n_trees, 2**height, 2)`` of
  unsigned integer counts (uint8 when ``window_size <= 255``, else uint16 / uint32; a mass never
  exceeds ``window_size`` so this is exact), the window counter and the first-window flag.

Masses are stored *compactly*: every learn walks from the root to a leaf, so a node's mass is
always the sum of its children's, and a tree's masses are fully described by its root's mass
(entry 0) and, for each split node ``i``, its left child's mass (entry ``1 + i``); a right
child's mass is its parent's minus its sibling's, computed on the way down. That is ``2**height``
entries per slot instead of ``2**(height+1) - 1`` (5,120 bytes instead of 10,220 per model at
river's defaults), with the same O(1) work per node visited; learning adds 1 to the root and to
every left child on the path. Each entry's two masses sit side by side; slot ``ri`` is the
reference mass ``r`` and slot ``1 - ri`` the latest mass ``l``. A window pivot flips ``ri`` and
zeroes the new ``l`` slots (river copies ``l`` into ``r`` then zeroes ``l``: same result).
:meth:`HSTCore._masses` rebuilds river's per-node masses for tests and inspection.

A node's split record and its masses each take one load, the trees are walked level by level
in blocks so that their independent root-to-leaf chains of loads overlap, and deep nodes (cache
misses in big trees) are prefetched one level ahead. Scores are
accumulated in double in river's exact order (per tree ``0.0 + r*2**depth ...``, then over
trees), so results are bit-identical to ``river.anomaly.HalfSpaceTrees``.
"""
import sys

import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free
from cpython.object cimport PyObject
from cpython.dict cimport PyDict_CheckExact, PyDict_GetItemWithError
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE, PyFloat_AsDouble

from stream.detect._standardize cimport Baseline, Layout, x_of

cnp.import_array()

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define HST_PREFETCH(p) __builtin_prefetch((const void*)(p))
    #else
    #define HST_PREFETCH(p) ((void)(p))
    #endif
    """
    void HST_PREFETCH(const void* p) noexcept nogil


DEF STACK_FEATURES = 64
DEF BLOCK = 32
DEF PREFETCH_DEPTH = 8  # prefetch nodes from this depth on (shallower ones stay cached)

ctypedef fused mass_t:
    uint8_t
    uint16_t
    uint32_t

ctypedef struct node_t:
    double threshold
    int32_t feature
    int32_t _pad

NODE_DTYPE = np.dtype([("threshold", "<f8"), ("feature", "<i4"), ("_pad", "<i4")])


# --------------------------------------------------------------------------------------------
# nogil kernels
# --------------------------------------------------------------------------------------------

cdef inline int _go_right(const double* x, const uint8_t* miss, const node_t* nd,
                          int64_t left_l, int64_t node_l) noexcept nogil:
    """1 if the walk leaves split ``nd`` to the right (branch-free on values), else 0.

    ``value < threshold`` goes left, anything else (including NaN) right, as in river. A
    missing feature follows the child with the larger latest mass, left on ties: ``left_l`` is
    the left child's latest mass, ``node_l`` the split node's (the right child's is the
    difference), both before the current event touched them.
    """
    cdef int32_t f = nd.feature
    if miss != NULL and miss[f]:
        return left_l < node_l - left_l
    return not (x[f] < nd.threshold)


cdef inline double _score_row(const node_t* nodes, const mass_t* m, int ri,
                              Py_ssize_t n_trees, Py_ssize_t n_int, Py_ssize_t n_e,
                              int height, double size_limit,
                              const double* x, const uint8_t* miss) noexcept nogil:
    """Sum over trees of river's ``_walk_score`` (un-normalised), in river's float order."""
    cdef double total = 0.0
    cdef double s[BLOCK]
    cdef Py_ssize_t node[BLOCK]
    cdef int64_t rm[BLOCK]  # the current node's reference mass
    cdef int64_t lm[BLOCK]  # ... and its latest mass (for the missing-feature rule)
    cdef bint scoring[BLOCK]
    cdef Py_ssize_t t0, t, k, nb, nd
    cdef int d, li = 1 - ri
    cdef int64_t pw, r, er, el, g
    cdef bint any_left
    cdef const mass_t* tm
    cdef const mass_t* e
    for t0 in range(0, n_trees, BLOCK):
        nb = min(BLOCK, n_trees - t0)
        for k in range(nb):
            tm = m + 2 * (t0 + k) * n_e
            node[k] = 0
            s[k] = 0.0
            scoring[k] = True
            rm[k] = tm[ri]
            lm[k] = tm[li]
        pw = 1
        any_left = True
        for d in range(height):
            any_left = False
            for k in range(nb):
                if scoring[k]:
                    r = rm[k]
                    s[k] += <double>(r * pw)
                    if <double>r < size_limit:
                        scoring[k] = False
                    else:
                        any_left = True
                        t = t0 + k
                        nd = node[k]
                        e = m + 2 * (t * n_e + 1 + nd)  # the left child's masses
                        el = e[li]
                        g = _go_right(x, miss, nodes + t * n_int + nd, el, lm[k])
                        er = e[ri]
                        # branch-free (the side taken is data, unpredictable): right child =
                        # parent - left
                        rm[k] = er + g * (r - 2 * er)
                        lm[k] = el + g * (lm[k] - 2 * el)
                        node[k] = 2 * nd + 1 + g
            if not any_left:
                break
            pw <<= 1
        for k in range(nb):
            if any_left and scoring[k]:
                s[k] += <double>(rm[k] * pw)
            total += s[k]
    return total


cdef inline double _score_learn_impl(const node_t* nodes, mass_t* m, int ri,
                                     Py_ssize_t n_trees, Py_ssize_t n_int, Py_ssize_t n_e,
                                     int height, double size_limit, bint do_score,
                                     const double* x, const uint8_t* miss,
                                     bint has_miss) noexcept nogil:
    """Score (if ``do_score``) then learn in one walk per tree; returns the raw score.

    The score and learn walks follow the same path: both compare the same value with the same
    threshold, and for a missing feature both compare the children's latest masses before this
    event touches them (river increments a node before choosing among its children, and a
    child only after). The score stops accumulating where river's ``_walk_score`` returns;
    learning goes on to the leaf (river's ``_walk_learn``: +1 latest mass on every node of the
    root-to-leaf path, which in the compact layout is +1 on the root and on each left child
    taken).
    """
    cdef double total = 0.0
    cdef double s[BLOCK]
    cdef Py_ssize_t node[BLOCK]
    cdef int64_t rm[BLOCK]
    cdef int64_t lm[BLOCK]
    cdef int64_t scoring[BLOCK]  # 1 while river's _walk_score would still be walking
    cdef Py_ssize_t t0, t, k, nb, nd
    cdef int d, li = 1 - ri
    cdef int64_t pw, r, er, el, g
    cdef mass_t* tm
    cdef mass_t* e
    for t0 in range(0, n_trees, BLOCK):
        nb = min(BLOCK, n_trees - t0)
        for k in range(nb):
            tm = m + 2 * (t0 + k) * n_e
            node[k] = 0
            s[k] = 0.0
            scoring[k] = do_score
            rm[k] = tm[ri]
            if has_miss:
                lm[k] = tm[li]
            tm[li] += 1  # the root's latest mass
        pw = 1
        for d in range(height):
            for k in range(nb):
                t = t0 + k
                nd = node[k]
                # branch-free: once a tree's score has stopped (river returns), add zeros
                r = rm[k]
                s[k] += <double>(r * pw * scoring[k])
                scoring[k] &= <double>r >= size_limit
                e = m + 2 * (t * n_e + 1 + nd)  # the left child's masses
                er = e[ri]
                el = e[li]
                if has_miss:
                    g = _go_right(x, miss, nodes + t * n_int + nd, el, lm[k])
                else:
                    g = _go_right(x, NULL, nodes + t * n_int + nd, 0, 0)
                # branch-free (the side taken is data, unpredictable): right child = parent - left
                rm[k] = er + g * (r - 2 * er)
                if has_miss:
                    lm[k] = el + g * (lm[k] - 2 * el)
                e[li] = <mass_t>(el + 1 - g)  # the left child's latest mass, when taken
                nd = 2 * nd + 1 + g
                node[k] = nd
                if d + 1 >= PREFETCH_DEPTH and nd < n_int:
                    # deep nodes are cache misses: start loading them while the other trees
                    # of the block are walked
                    HST_PREFETCH(m + 2 * (t * n_e + 1 + nd))
                    HST_PREFETCH(nodes + t * n_int + nd)
            pw <<= 1
        for k in range(nb):
            s[k] += <double>(rm[k] * pw * scoring[k])
            total += s[k]
    return total


cdef inline double _score_learn_row(const node_t* nodes, mass_t* m, int ri,
                                    Py_ssize_t n_trees, Py_ssize_t n_int, Py_ssize_t n_e,
                                    int height, double size_limit, bint do_score,
                                    const double* x, const uint8_t* miss) noexcept nogil:
    """:func:`_score_learn_impl`, specialised for events without missing features (the
    common case: no latest masses to track for the missing-feature rule)."""
    if miss == NULL:
        return _score_learn_impl(nodes, m, ri, n_trees, n_int, n_e, height, size_limit,
                                 do_score, x, NULL, False)
    return _score_learn_impl(nodes, m, ri, n_trees, n_int, n_e, height, size_limit,
                             do_score, x, miss, True)


cdef inline int _pivot_masses(mass_t* m, Py_ssize_t n, int ri) noexcept nogil:
    """Pivot the window: the latest slot becomes the reference; zero the new latest slot.

    Each node's (slot 0, slot 1) pair is handled as one twice-as-wide word ANDed with a mask
    that keeps the reference slot (a contiguous, vectorisable loop; memcpy keeps it free of
    type punning and endianness assumptions).
    """
    cdef Py_ssize_t i
    cdef mass_t pair[2]
    cdef uint16_t w16, k16
    cdef uint32_t w32, k32
    cdef uint64_t w64, k64
    cdef char* p = <char*> m
    ri = 1 - ri
    pair[ri] = <mass_t> -1
    pair[1 - ri] = 0
    if mass_t is uint8_t:
        memcpy(&k16, pair, 2)
        for i in range(n):
            memcpy(&w16, p + 2 * i, 2)
            w16 &= k16
            memcpy(p + 2 * i, &w16, 2)
    elif mass_t is uint16_t:
        memcpy(&k32, pair, 4)
        for i in range(n):
            memcpy(&w32, p + 4 * i, 4)
            w32 &= k32
            memcpy(p + 4 * i, &w32, 4)
    else:
        memcpy(&k64, pair, 8)
        for i in range(n):
            memcpy(&w64, p + 8 * i, 8)
            w64 &= k64
            memcpy(p + 8 * i, &w64, 8)
    return ri


cdef void _run_many(const node_t* nodes, mass_t* m, Py_ssize_t n_trees, Py_ssize_t n_int,
                    Py_ssize_t n_e, int height, double size_limit, double max_score,
                    long window_size, const double* X, const uint8_t* M, Py_ssize_t n_rows,
                    Py_ssize_t n_cols, double* out, int* ri, long* counter,
                    bint* first_window) noexcept nogil:
    """Score then learn every row in order (the batch path), pivoting windows as river does."""
    cdef Py_ssize_t i
    cdef const uint8_t* miss
    cdef int r_i = ri[0]
    cdef long cnt = counter[0]
    cdef bint fw = first_window[0]
    cdef double s
    for i in range(n_rows):
        miss = NULL
        if M != NULL:
            miss = M + i * n_cols
        s = _score_learn_row(nodes, m, r_i, n_trees, n_int, n_e, height, size_limit,
                             not fw, X + i * n_cols, miss)
        out[i] = 0.0 if fw else 1.0 - s / max_score
        cnt += 1
        if cnt == window_size:
            r_i = _pivot_masses(m, n_trees * n_e, r_i)
            fw = False
            cnt = 0
    ri[0] = r_i
    counter[0] = cnt
    first_window[0] = fw


# --------------------------------------------------------------------------------------------
# shared structure
# --------------------------------------------------------------------------------------------

def expand_masses(compact, int height):
    """Per-node masses ``(n_trees, 2**(height+1) - 1)`` in heap order from compact masses
    ``(n_trees, 2**height)`` (root, then each split node's left child); same dtype."""
    c = np.asarray(compact)
    n_trees = c.shape[0]
    full = np.zeros((n_trees, (1 << (height + 1)) - 1), dtype=c.dtype)
    full[:, 0] = c[:, 0]
    cdef Py_ssize_t d, lo, hi
    for d in range(height):
        lo = (1 << d) - 1
        hi = (1 << (d + 1)) - 1
        left = c[:, 1 + lo:1 + hi]
        full[:, 2 * lo + 1:2 * hi + 1:2] = left
        full[:, 2 * lo + 2:2 * hi + 2:2] = full[:, lo:hi] - left
    return full


def compact_consistent(compact, int height):
    """True when no node's left child is heavier than the node (every right child's mass,
    parent minus left, is then >= 0). Compiled: this runs for every model loaded."""
    cdef const int64_t[:, ::1] a = np.ascontiguousarray(compact, dtype=np.int64)
    cdef Py_ssize_t n_int = (1 << height) - 1, t, i
    if a.shape[1] != n_int + 1:
        raise ValueError("compact masses must be (n_trees, 2**height)")
    cdef int64_t* mass = <int64_t*> malloc((2 * n_int + 1) * sizeof(int64_t))
    cdef bint ok = True
    if mass == NULL:
        raise MemoryError()
    with nogil:
        for t in range(a.shape[0]):
            mass[0] = a[t, 0]
            if mass[0] < 0:
                ok = False
            for i in range(n_int):
                if not ok:
                    break
                mass[2 * i + 1] = a[t, 1 + i]
                mass[2 * i + 2] = mass[i] - a[t, 1 + i]
                if mass[2 * i + 2] < 0 or mass[2 * i + 1] < 0:
                    ok = False
            if not ok:
                break
    free(mass)
    return ok


def compact_masses(full, int height):
    """The inverse of :func:`expand_masses`: ``(n_trees, 2**height)`` from per-node masses.

    Raises ValueError unless every split node's mass is the sum of its children's (true of
    any masses river or this module produced: every learn walks from the root to a leaf).
    """
    f = np.asarray(full)
    n_int = (1 << height) - 1
    if f.ndim != 2 or f.shape[1] != 2 * n_int + 1:
        raise ValueError("masses must be (n_trees, 2**(height+1) - 1)")
    w = f.astype(np.int64)
    if not np.array_equal(w[:, :n_int], w[:, 1::2] + w[:, 2::2]):
        raise ValueError("inconsistent masses: a node's mass is not the sum of its children's")
    c = np.empty((f.shape[0], n_int + 1), dtype=f.dtype)
    c[:, 0] = f[:, 0]
    c[:, 1:] = f[:, 1::2]
    return c


cdef class Structure:
    """Split features and thresholds of ``n_trees`` heap-ordered trees (shared, read-only)."""

    cdef readonly int n_trees
    cdef readonly int height
    cdef readonly Py_ssize_t n_internal
    cdef readonly Py_ssize_t n_nodes
    cdef readonly Py_ssize_t n_entries  # compact masses per slot and tree: 2**height
    cdef readonly tuple feature_names
    cdef readonly object nodes       # NODE_DTYPE [n_trees, n_internal]
    cdef readonly object key         # cache key (or None when not shareable)
    cdef const node_t* _nodes
    cdef object __weakref__

    def __init__(self, tuple feature_names, int n_trees, int height, feature, threshold,
                 key=None):
        if height < 0 or height > 30:
            raise ValueError("height must be in [0, 30]")
        self.n_trees = n_trees
        self.height = height
        self.n_internal = (1 << height) - 1
        self.n_nodes = (1 << (height + 1)) - 1
        self.n_entries = 1 << height
        self.feature_names = feature_names
        shape = (n_trees, self.n_internal)
        f = np.asarray(feature, dtype=np.int32).reshape(shape)
        if f.size and (f.min() < 0 or f.max() >= len(feature_names)):
            raise ValueError("feature index out of range")
        a = np.zeros(shape, dtype=NODE_DTYPE)
        a["feature"] = f
        a["threshold"] = np.asarray(threshold, dtype=np.float64).reshape(shape)
        a.setflags(write=False)
        self.nodes = a
        self.key = key
        self._nodes = <const node_t*> cnp.PyArray_DATA(<cnp.ndarray> a)

    @property
    def feature(self):
        """Split feature index (into ``feature_names``) per node, [n_trees, n_internal]."""
        return self.nodes["feature"]

    @property
    def threshold(self):
        """Split threshold per node (left if value < threshold), [n_trees, n_internal]."""
        return self.nodes["threshold"]

    @property
    def nbytes(self):
        return self.nodes.nbytes

    def __repr__(self):
        return (f"Structure(n_trees={self.n_trees}, height={self.height}, "
                f"features={len(self.feature_names)})")


def mass_dtype(long window_size):
    """Smallest unsigned dtype that holds a mass (a count ``<= window_size``) exactly."""
    if window_size <= 0xFF:
        return np.dtype(np.uint8)
    if window_size <= 0xFFFF:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


# --------------------------------------------------------------------------------------------
# per-model state
# --------------------------------------------------------------------------------------------

cdef class HSTCore:
    """Per-model Half-Space Trees state and the compiled score/learn paths.

    Subclasses must implement ``_make_structure(self, feature_names)`` returning a
    :class:`Structure` for the model's parameters (called once, at the first learn).
    """

    cdef readonly int n_trees
    cdef readonly int height
    cdef readonly long window_size
    cdef readonly object seed
    cdef object _limits            # None or dict name -> (lo, hi) (river defaults to (0, 1))
    cdef readonly Structure structure
    cdef object _mass              # ndarray [n_trees, 2**height, 2] of uint8/16/32 (compact)
    cdef void* _base
    cdef int _kind                 # 0 uint8, 1 uint16, 2 uint32
    cdef int _ri                   # which slot of _mass holds the reference mass r
    cdef readonly long counter
    cdef bint _first_window
    cdef double _size_limit
    cdef double _max_score
    cdef tuple _names              # feature names (fixed before or at the first learn)

    def __init__(self, n_trees=10, height=8, window_size=250, limits=None, seed=None):
        if n_trees < 1:
            raise ValueError("n_trees must be >= 1")
        if height < 0 or height > 30:
            raise ValueError("height must be in [0, 30]")
        if window_size < 1 or window_size > 0xFFFFFFFF:
            raise ValueError("window_size must be in [1, 2**32 - 1]")
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self._limits = {k: tuple(v) for k, v in limits.items()} if limits else None
        self.structure = None
        self._mass = None
        self._base = NULL
        self._kind = {1: 0, 2: 1, 4: 2}[mass_dtype(window_size).itemsize]
        self._ri = 0
        self.counter = 0
        self._first_window = True
        # identical to river: size_limit = 0.1 * window_size; _max_score is a Python int and
        # ``float / int`` converts it with correct rounding, exactly as float() does here
        self._size_limit = 0.1 * window_size
        self._max_score = float(n_trees * window_size * (2 ** (height + 1) - 1))
        self._names = None

    # -- structure ----------------------------------------------------------------------------

    cdef int _ensure(self, object x) except -1:
        if self.structure is None:
            names = self._names if self._names is not None else tuple(sorted(x))
            self._attach(self._make_structure(names))
        return 0

    def _attach(self, Structure st, r=None, l=None):
        """Attach a structure and allocate the masses (zero, or copies of ``r`` and ``l``).

        ``r`` and ``l`` are compact masses, each ``(n_trees, 2**height)``: the root's mass,
        then each split node's left child's (see the module docstring).
        """
        if st.n_trees != self.n_trees or st.height != self.height:
            raise ValueError("structure does not match n_trees/height")
        if self._names is not None and self._names != st.feature_names:
            raise ValueError(f"structure features {st.feature_names!r} != {self._names!r}")
        n_e = st.n_entries
        m = np.zeros((st.n_trees, n_e, 2), dtype=mass_dtype(self.window_size))
        if r is not None:
            m[:, :, 0] = np.reshape(r, (st.n_trees, n_e))
            m[:, :, 1] = np.reshape(l, (st.n_trees, n_e))
        self.structure = st
        self._names = st.feature_names
        self._mass = m
        self._base = cnp.PyArray_DATA(<cnp.ndarray> m)
        self._ri = 0

    @property
    def feature_names(self):
        """Feature names in column order (sorted), fixed at the first learn; None before."""
        return self._names

    @property
    def limits(self):
        return dict(self._limits) if self._limits else {}

    @property
    def size_limit(self):
        return 0.1 * self.window_size

    @property
    def first_window(self):
        """True until the first ``window_size`` learns have happened (scores are 0 until then)."""
        return bool(self._first_window)

    # -- dict -> buffer -----------------------------------------------------------------------

    cdef Py_ssize_t _load(self, object x, double* xs, uint8_t* miss) except -1:
        """Fill xs/miss from a mapping in feature-name order; return the number missing."""
        cdef tuple names = self._names
        cdef Py_ssize_t j, n = len(names), n_miss = 0
        cdef PyObject* v
        cdef bint exact = PyDict_CheckExact(x)
        for j in range(n):
            name = names[j]
            if exact:
                v = PyDict_GetItemWithError(x, name)
                if v == NULL:
                    miss[j] = 1
                    n_miss += 1
                    continue
                if PyFloat_CheckExact(<object> v):
                    xs[j] = PyFloat_AS_DOUBLE(<object> v)
                else:
                    xs[j] = PyFloat_AsDouble(<object> v)
            else:
                try:
                    value = x[name]
                except KeyError:
                    miss[j] = 1
                    n_miss += 1
                    continue
                xs[j] = PyFloat_AsDouble(value)
            miss[j] = 0
        return n_miss

    cdef inline void _after_learn(self) noexcept:
        cdef Py_ssize_t n = self.n_trees * self.structure.n_entries
        self.counter += 1
        if self.counter == self.window_size:
            if self._kind == 0:
                self._ri = _pivot_masses(<uint8_t*> self._base, n, self._ri)
            elif self._kind == 1:
                self._ri = _pivot_masses(<uint16_t*> self._base, n, self._ri)
            else:
                self._ri = _pivot_masses(<uint32_t*> self._base, n, self._ri)
            self._first_window = False
            self.counter = 0

    cdef double _score_buf(self, const double* xs, const uint8_t* miss) noexcept:
        cdef Structure st = self.structure
        cdef double s
        if self._kind == 0:
            s = _score_row(st._nodes, <uint8_t*> self._base, self._ri, self.n_trees,
                           st.n_internal, st.n_entries, self.height, self._size_limit, xs, miss)
        elif self._kind == 1:
            s = _score_row(st._nodes, <uint16_t*> self._base, self._ri, self.n_trees,
                           st.n_internal, st.n_entries, self.height, self._size_limit, xs, miss)
        else:
            s = _score_row(st._nodes, <uint32_t*> self._base, self._ri, self.n_trees,
                           st.n_internal, st.n_entries, self.height, self._size_limit, xs, miss)
        return 1.0 - s / self._max_score

    cdef double _score_learn_buf(self, const double* xs, const uint8_t* miss,
                                 bint do_score) noexcept:
        cdef Structure st = self.structure
        cdef bint score = do_score and not self._first_window
        cdef double s
        if self._kind == 0:
            s = _score_learn_row(st._nodes, <uint8_t*> self._base, self._ri, self.n_trees,
                                 st.n_internal, st.n_entries, self.height, self._size_limit,
                                 score, xs, miss)
        elif self._kind == 1:
            s = _score_learn_row(st._nodes, <uint16_t*> self._base, self._ri, self.n_trees,
                                 st.n_internal, st.n_entries, self.height, self._size_limit,
                                 score, xs, miss)
        else:
            s = _score_learn_row(st._nodes, <uint32_t*> self._base, self._ri, self.n_trees,
                                 st.n_internal, st.n_entries, self.height, self._size_limit,
                                 score, xs, miss)
        self._after_learn()
        return 1.0 - s / self._max_score if score else 0.0

    # -- per-event path -----------------------------------------------------------------------

    cdef double _one(self, object x, int mode) except? -2.0:
        """mode 0: score, 1: learn, 2: score then learn (one conversion, one walk)."""
        cdef double sbuf[STACK_FEATURES]
        cdef uint8_t mbuf[STACK_FEATURES]
        cdef double* xs = sbuf
        cdef uint8_t* miss = mbuf
        cdef Py_ssize_t n = len(self._names), n_miss
        cdef double out
        if n > STACK_FEATURES:
            xs = <double*> malloc(n * sizeof(double))
            miss = <uint8_t*> malloc(n)
            if xs == NULL or miss == NULL:
                free(xs)
                free(miss)
                raise MemoryError()
        try:
            n_miss = self._load(x, xs, miss)
            if mode == 0:
                out = self._score_buf(xs, miss if n_miss else NULL)
            else:
                out = self._score_learn_buf(xs, miss if n_miss else NULL, mode == 2)
        finally:
            if n > STACK_FEATURES:
                free(xs)
                free(miss)
        return out

    cdef double _base_one(self, Baseline b, double inv_scale, int mode) except? -2.0:
        """:meth:`_one` for the x of ``b``'s last ``standardize``, read from its z (no dict).

        The dict path maps each of this model's feature names to the x of that key, missing
        when the key is not in the window's vector; here the layout maps each name to its
        position (:meth:`Layout.columns`) and the vector's positions give the values, the same
        ``x_of(z)`` the dict held.
        """
        cdef double sbuf[STACK_FEATURES]
        cdef uint8_t mbuf[STACK_FEATURES]
        cdef double dbuf[STACK_FEATURES]
        cdef uint8_t hbuf[STACK_FEATURES]
        cdef double* xs = sbuf
        cdef uint8_t* miss = mbuf
        cdef double* dense = dbuf   # x by layout position
        cdef uint8_t* has = hbuf    # ... and whether the vector has that position
        cdef Layout lay = b.lay
        cdef tuple names = self._names
        cdef Py_ssize_t n = len(names), nl = len(lay.keys), i, j, n_miss = 0
        cdef const int* col = lay.columns(names)
        cdef int p
        cdef double out
        if n > STACK_FEATURES or nl > STACK_FEATURES:
            xs = <double*> malloc((n if n else 1) * sizeof(double))
            miss = <uint8_t*> malloc(n if n else 1)
            dense = <double*> malloc((nl if nl else 1) * sizeof(double))
            has = <uint8_t*> malloc(nl if nl else 1)
            if xs == NULL or miss == NULL or dense == NULL or has == NULL:
                free(xs); free(miss); free(dense); free(has)
                raise MemoryError()
        try:
            for i in range(nl):
                has[i] = 0
            for i in range(b.zn):
                p = b.opos[i]
                dense[p] = x_of(b.oz[i], inv_scale)
                has[p] = 1
            for j in range(n):
                p = col[j]
                if p < 0 or not has[p]:
                    miss[j] = 1
                    n_miss += 1
                else:
                    xs[j] = dense[p]
                    miss[j] = 0
            if mode == 0:
                out = self._score_buf(xs, miss if n_miss else NULL)
            else:
                out = self._score_learn_buf(xs, miss if n_miss else NULL, mode == 2)
        finally:
            if n > STACK_FEATURES or nl > STACK_FEATURES:
                free(xs); free(miss); free(dense); free(has)
        return out

    def score_base(self, Baseline b, double inv_scale):
        """``score_one(b.x_dict(inv_scale))`` without the dict: the engine's path (the vector of
        the entity's last ``standardize``; held to ``score_one`` by tests/unit/test_hst.py)."""
        if self._first_window:
            return 0.0
        return self._base_one(b, inv_scale, 0)

    def learn_base(self, Baseline b, double inv_scale):
        """``learn_one(b.x_dict(inv_scale))`` without the dict (the first learn, which fixes the
        feature names, goes through the dict)."""
        if self.structure is None:
            self.learn_one(b.x_dict(inv_scale))
            return
        self._base_one(b, inv_scale, 1)

    def score_one(self, x):
        """Anomaly score of ``x`` in [0, 1] (high = anomalous); 0 during the first window."""
        if self._first_window:
            return 0.0
        return self._one(x, 0)

    def learn_one(self, x):
        """Update the latest masses with ``x``; pivot the window every ``window_size`` calls."""
        self._ensure(x)
        self._one(x, 1)

    def score_learn_one(self, x):
        """``score_one(x)`` then ``learn_one(x)`` with a single dict conversion and tree walk."""
        self._ensure(x)
        return self._one(x, 2)

    # -- batch path ---------------------------------------------------------------------------

    def _score_learn_many(self, X, missing=None):
        """Score then learn each row of ``X`` (float64, columns = ``feature_names``)."""
        cdef cnp.ndarray Xa = np.ascontiguousarray(X, dtype=np.float64)
        cdef cnp.ndarray Ma = None
        cdef Structure st = self.structure
        if Xa.ndim != 2 or Xa.shape[1] != len(st.feature_names):
            raise ValueError(f"X must be 2-D with {len(st.feature_names)} columns "
                             f"{st.feature_names!r}")
        if missing is not None:
            Ma = np.ascontiguousarray(missing, dtype=np.bool_).view(np.uint8)
            if Ma.ndim != 2 or Ma.shape[0] != Xa.shape[0] or Ma.shape[1] != Xa.shape[1]:
                raise ValueError("missing must have the shape of X")
        cdef Py_ssize_t n_rows = Xa.shape[0], n_cols = Xa.shape[1]
        cdef cnp.ndarray out = np.empty(n_rows, dtype=np.float64)
        cdef const double* xp = <const double*> cnp.PyArray_DATA(Xa)
        cdef const uint8_t* mp = NULL
        if Ma is not None:
            mp = <const uint8_t*> cnp.PyArray_DATA(Ma)
        cdef double* op = <double*> cnp.PyArray_DATA(out)
        cdef int ri = self._ri
        cdef long counter = self.counter
        cdef bint fw = self._first_window
        cdef int kind = self._kind
        cdef void* base = self._base
        cdef long ws = self.window_size
        cdef int height = self.height
        cdef Py_ssize_t n_trees = self.n_trees
        cdef double size_limit = self._size_limit, max_score = self._max_score
        with nogil:
            if kind == 0:
                _run_many(st._nodes, <uint8_t*> base, n_trees, st.n_internal, st.n_entries,
                          height, size_limit, max_score, ws, xp, mp, n_rows, n_cols, op, &ri,
                          &counter, &fw)
            elif kind == 1:
                _run_many(st._nodes, <uint16_t*> base, n_trees, st.n_internal, st.n_entries,
                          height, size_limit, max_score, ws, xp, mp, n_rows, n_cols, op, &ri,
                          &counter, &fw)
            else:
                _run_many(st._nodes, <uint32_t*> base, n_trees, st.n_internal, st.n_entries,
                          height, size_limit, max_score, ws, xp, mp, n_rows, n_cols, op, &ri,
                          &counter, &fw)
        self._ri = ri
        self.counter = counter
        self._first_window = fw
        return out

    # -- state access (serialization, tests) --------------------------------------------------

    def _compact_masses(self):
        """(r, l) compact views of shape (n_trees, 2**height); None before the first learn."""
        if self._mass is None:
            return None
        return self._mass[:, :, self._ri], self._mass[:, :, 1 - self._ri]

    def _masses(self):
        """(r, l) per-node masses of shape (n_trees, n_nodes), heap order, as river holds them
        (rebuilt from the compact layout; copies); None before the first learn."""
        c = self._compact_masses()
        if c is None:
            return None
        return tuple(expand_masses(a, self.height) for a in c)

    def _set_state(self, long counter, bint first_window):
        if counter < 0 or counter >= self.window_size:
            raise ValueError("counter out of range")
        if self.structure is None and (counter or not first_window):
            raise ValueError("a model that has learned needs its masses")
        self.counter = counter
        self._first_window = first_window

    def _fix_names(self, tuple names):
        if self._names is not None and names != self._names:
            raise ValueError(f"feature names are already fixed to {self._names!r}")
        self._names = names

    def _sizeof(self):
        """Bytes held by this model alone: object, mass array, limits (not the structure)."""
        n = sys.getsizeof(self)
        if self._mass is not None:
            n += sys.getsizeof(self._mass)
        if self._limits:
            n += sys.getsizeof(self._limits) + sum(sys.getsizeof(v)
                                                    for v in self._limits.values())
        return n
