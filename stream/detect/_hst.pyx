# cython: language_level=3
"""Compiled Half-Space Trees kernels (river-exact), wrapped by :mod:`stream.detect.hst`.

Layout
------
Every tree is a complete binary tree of ``height`` splits stored in heap order: node ``i`` has
children ``2i+1`` (left, ``value < threshold``) and ``2i+2`` (right). A tree has
``n_internal = 2**height - 1`` split nodes and ``n_nodes = 2**(height+1) - 1`` nodes.

* :class:`Structure` — split feature (int32) and threshold (float64) per internal node, for all
  trees. Immutable and shared by every model with the same (n_trees, height, seed, features,
  limits).
* :class:`HSTCore` — the per-model state: one mass array ``(2, n_trees, n_nodes)`` of unsigned
  integer counts (uint8 when ``window_size <= 255``, else uint16 / uint32; masses never exceed
  ``window_size`` so this is exact), the window counter and the first-window flag. One half of the
  mass array is the reference mass ``r``, the other the latest mass ``l``; a window pivot swaps
  the roles of the halves and zeroes the new ``l`` (river copies ``l`` into ``r`` then zeroes
  ``l``: same result, one memset instead of a copy plus a memset).

Scores are accumulated in double in river's exact order (per tree ``0.0 + r*2**depth ...``, then
over trees), so results are bit-identical to ``river.anomaly.HalfSpaceTrees``.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t
from libc.string cimport memset
from libc.stdlib cimport malloc, free
from cpython.object cimport PyObject
from cpython.dict cimport PyDict_CheckExact, PyDict_GetItemWithError
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE, PyFloat_AsDouble

cnp.import_array()

DEF STACK_FEATURES = 64

ctypedef fused mass_t:
    uint8_t
    uint16_t
    uint32_t


# --------------------------------------------------------------------------------------------
# nogil kernels
# --------------------------------------------------------------------------------------------

cdef inline double _score_row(const int32_t* feat, const double* thr,
                              const mass_t* rm, const mass_t* lm,
                              Py_ssize_t n_trees, Py_ssize_t n_int, Py_ssize_t n_nodes,
                              int height, double size_limit,
                              const double* x, const uint8_t* miss) noexcept nogil:
    """Sum over trees of river's ``_walk_score`` (un-normalised), in river's float order."""
    cdef double total = 0.0, s
    cdef Py_ssize_t t, node, c
    cdef int d
    cdef int64_t pw, r
    cdef int32_t f
    cdef const int32_t* tf
    cdef const double* tt
    cdef const mass_t* tr
    cdef const mass_t* tl
    for t in range(n_trees):
        tf = feat + t * n_int
        tt = thr + t * n_int
        tr = rm + t * n_nodes
        tl = lm + t * n_nodes
        node = 0
        pw = 1
        s = 0.0
        for d in range(height):
            r = tr[node]
            s += <double>(r * pw)
            if <double>r < size_limit:
                break
            f = tf[node]
            c = 2 * node + 1
            if miss != NULL and miss[f]:
                # missing feature: follow the child with the larger latest mass (left on ties)
                if tl[c] < tl[c + 1]:
                    node = c + 1
                else:
                    node = c
            elif x[f] < tt[node]:
                node = c
            else:
                node = c + 1
            pw <<= 1
        else:
            s += <double>(<int64_t>tr[node] * pw)
        total += s
    return total


cdef inline void _learn_row(const int32_t* feat, const double* thr, mass_t* lm,
                            Py_ssize_t n_trees, Py_ssize_t n_int, Py_ssize_t n_nodes,
                            int height, const double* x, const uint8_t* miss) noexcept nogil:
    """river's ``_walk_learn`` on every tree: +1 latest mass on the root-to-leaf path."""
    cdef Py_ssize_t t, node, c
    cdef int d
    cdef int32_t f
    cdef const int32_t* tf
    cdef const double* tt
    cdef mass_t* tl
    for t in range(n_trees):
        tf = feat + t * n_int
        tt = thr + t * n_int
        tl = lm + t * n_nodes
        node = 0
        for d in range(height):
            tl[node] += 1
            f = tf[node]
            c = 2 * node + 1
            if miss != NULL and miss[f]:
                if tl[c] < tl[c + 1]:
                    node = c + 1
                else:
                    node = c
            elif x[f] < tt[node]:
                node = c
            else:
                node = c + 1
        tl[node] += 1


cdef void _run_many(const int32_t* feat, const double* thr, mass_t* base,
                    Py_ssize_t n_trees, Py_ssize_t n_int, Py_ssize_t n_nodes, int height,
                    double size_limit, double max_score, long window_size,
                    const double* X, const uint8_t* M, Py_ssize_t n_rows, Py_ssize_t n_cols,
                    double* out, int* ri, long* counter, bint* first_window) noexcept nogil:
    """Score then learn every row in order (the batch path), pivoting windows as river does."""
    cdef Py_ssize_t i, half = n_trees * n_nodes
    cdef const uint8_t* miss
    cdef int r_i = ri[0]
    cdef long cnt = counter[0]
    cdef bint fw = first_window[0]
    cdef mass_t* rm = base + r_i * half
    cdef mass_t* lm = base + (1 - r_i) * half
    cdef mass_t* tmp
    for i in range(n_rows):
        miss = NULL
        if M != NULL:
            miss = M + i * n_cols
        if fw:
            out[i] = 0.0
        else:
            out[i] = 1.0 - _score_row(feat, thr, rm, lm, n_trees, n_int, n_nodes, height,
                                      size_limit, X + i * n_cols, miss) / max_score
        _learn_row(feat, thr, lm, n_trees, n_int, n_nodes, height, X + i * n_cols, miss)
        cnt += 1
        if cnt == window_size:
            tmp = rm
            rm = lm
            lm = tmp
            r_i = 1 - r_i
            memset(lm, 0, half * sizeof(mass_t))
            fw = False
            cnt = 0
    ri[0] = r_i
    counter[0] = cnt
    first_window[0] = fw


# --------------------------------------------------------------------------------------------
# shared structure
# --------------------------------------------------------------------------------------------

cdef class Structure:
    """Split features and thresholds of ``n_trees`` heap-ordered trees (shared, read-only)."""

    cdef readonly int n_trees
    cdef readonly int height
    cdef readonly Py_ssize_t n_internal
    cdef readonly Py_ssize_t n_nodes
    cdef readonly tuple feature_names
    cdef readonly object feature     # int32 [n_trees, n_internal], index into feature_names
    cdef readonly object threshold   # float64 [n_trees, n_internal]
    cdef readonly object key         # cache key (or None when not shareable)
    cdef const int32_t* _feat
    cdef const double* _thr
    cdef object __weakref__

    def __init__(self, tuple feature_names, int n_trees, int height, feature, threshold,
                 key=None):
        if height < 0 or height > 30:
            raise ValueError("height must be in [0, 30]")
        self.n_trees = n_trees
        self.height = height
        self.n_internal = (1 << height) - 1
        self.n_nodes = (1 << (height + 1)) - 1
        self.feature_names = feature_names
        f = np.ascontiguousarray(feature, dtype=np.int32).reshape(n_trees, self.n_internal)
        t = np.ascontiguousarray(threshold, dtype=np.float64).reshape(n_trees, self.n_internal)
        if f.size and (f.min() < 0 or f.max() >= len(feature_names)):
            raise ValueError("feature index out of range")
        f.setflags(write=False)
        t.setflags(write=False)
        self.feature = f
        self.threshold = t
        self.key = key
        self._feat = <const int32_t*> cnp.PyArray_DATA(<cnp.ndarray> f)
        self._thr = <const double*> cnp.PyArray_DATA(<cnp.ndarray> t)

    @property
    def nbytes(self):
        return self.feature.nbytes + self.threshold.nbytes

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
    cdef object _limits            # dict name -> (lo, hi) as given (river defaults to (0, 1))
    cdef readonly Structure structure
    cdef object _mass              # ndarray [2, n_trees, n_nodes] of uint8/16/32
    cdef void* _base
    cdef int _kind                 # 0 uint8, 1 uint16, 2 uint32
    cdef int _ri                   # which half of _mass is the reference mass r
    cdef readonly long counter
    cdef bint _first_window
    cdef double _size_limit
    cdef double _max_score
    cdef tuple _names              # feature names fixed before the structure exists (or None)

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
        self._limits = {} if limits is None else {k: tuple(v) for k, v in limits.items()}
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

    def _attach(self, Structure st, mass=None):
        """Attach a structure and allocate (or adopt) the mass array."""
        if st.n_trees != self.n_trees or st.height != self.height:
            raise ValueError("structure does not match n_trees/height")
        dt = mass_dtype(self.window_size)
        shape = (2, st.n_trees, st.n_nodes)
        if mass is None:
            m = np.zeros(shape, dtype=dt)
        else:
            m = np.ascontiguousarray(mass, dtype=dt).reshape(shape)
            if not m.flags.writeable or m.base is not None:
                m = m.copy()
        self.structure = st
        self._names = st.feature_names
        self._mass = m
        self._base = cnp.PyArray_DATA(<cnp.ndarray> m)
        return None

    @property
    def feature_names(self):
        """Feature names in column order (sorted), fixed at the first learn; None before."""
        return self._names

    @property
    def limits(self):
        return dict(self._limits)

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
        cdef tuple names = self.structure.feature_names
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

    cdef inline void _pivot(self) noexcept:
        cdef Py_ssize_t half = self.n_trees * self.structure.n_nodes
        cdef size_t item = (<size_t> 1) << self._kind
        self._ri = 1 - self._ri
        # the old reference half becomes the new (zeroed) latest half
        memset(<char*> self._base + (1 - self._ri) * half * item, 0, half * item)
        self._first_window = False
        self.counter = 0

    cdef double _score_buf(self, const double* xs, const uint8_t* miss) noexcept:
        cdef Structure st = self.structure
        cdef Py_ssize_t half = self.n_trees * st.n_nodes
        cdef Py_ssize_t ro = self._ri * half, lo = (1 - self._ri) * half
        cdef double s
        if self._kind == 0:
            s = _score_row(st._feat, st._thr, <uint8_t*> self._base + ro,
                           <uint8_t*> self._base + lo, self.n_trees, st.n_internal, st.n_nodes,
                           self.height, self._size_limit, xs, miss)
        elif self._kind == 1:
            s = _score_row(st._feat, st._thr, <uint16_t*> self._base + ro,
                           <uint16_t*> self._base + lo, self.n_trees, st.n_internal, st.n_nodes,
                           self.height, self._size_limit, xs, miss)
        else:
            s = _score_row(st._feat, st._thr, <uint32_t*> self._base + ro,
                           <uint32_t*> self._base + lo, self.n_trees, st.n_internal, st.n_nodes,
                           self.height, self._size_limit, xs, miss)
        return 1.0 - s / self._max_score

    cdef void _learn_buf(self, const double* xs, const uint8_t* miss) noexcept:
        cdef Structure st = self.structure
        cdef Py_ssize_t lo = (1 - self._ri) * self.n_trees * st.n_nodes
        if self._kind == 0:
            _learn_row(st._feat, st._thr, <uint8_t*> self._base + lo, self.n_trees,
                       st.n_internal, st.n_nodes, self.height, xs, miss)
        elif self._kind == 1:
            _learn_row(st._feat, st._thr, <uint16_t*> self._base + lo, self.n_trees,
                       st.n_internal, st.n_nodes, self.height, xs, miss)
        else:
            _learn_row(st._feat, st._thr, <uint32_t*> self._base + lo, self.n_trees,
                       st.n_internal, st.n_nodes, self.height, xs, miss)
        self.counter += 1
        if self.counter == self.window_size:
            self._pivot()

    # -- per-event path -----------------------------------------------------------------------

    def score_one(self, x):
        """Anomaly score of ``x`` in [0, 1] (high = anomalous); 0 during the first window."""
        cdef double sbuf[STACK_FEATURES]
        cdef uint8_t mbuf[STACK_FEATURES]
        cdef double* xs = sbuf
        cdef uint8_t* miss = mbuf
        cdef Py_ssize_t n, n_miss
        cdef double out
        if self._first_window:
            return 0.0
        n = len(self.structure.feature_names)
        if n > STACK_FEATURES:
            xs = <double*> malloc(n * sizeof(double))
            miss = <uint8_t*> malloc(n)
            if xs == NULL or miss == NULL:
                free(xs)
                free(miss)
                raise MemoryError()
        try:
            n_miss = self._load(x, xs, miss)
            out = self._score_buf(xs, miss if n_miss else NULL)
        finally:
            if n > STACK_FEATURES:
                free(xs)
                free(miss)
        return out

    def learn_one(self, x):
        """Update the latest masses with ``x``; pivot the window every ``window_size`` calls."""
        cdef double sbuf[STACK_FEATURES]
        cdef uint8_t mbuf[STACK_FEATURES]
        cdef double* xs = sbuf
        cdef uint8_t* miss = mbuf
        cdef Py_ssize_t n, n_miss
        self._ensure(x)
        n = len(self.structure.feature_names)
        if n > STACK_FEATURES:
            xs = <double*> malloc(n * sizeof(double))
            miss = <uint8_t*> malloc(n)
            if xs == NULL or miss == NULL:
                free(xs)
                free(miss)
                raise MemoryError()
        try:
            n_miss = self._load(x, xs, miss)
            self._learn_buf(xs, miss if n_miss else NULL)
        finally:
            if n > STACK_FEATURES:
                free(xs)
                free(miss)

    def score_learn_one(self, x):
        """``score_one(x)`` then ``learn_one(x)`` with a single dict conversion."""
        cdef double sbuf[STACK_FEATURES]
        cdef uint8_t mbuf[STACK_FEATURES]
        cdef double* xs = sbuf
        cdef uint8_t* miss = mbuf
        cdef Py_ssize_t n, n_miss
        cdef double out = 0.0
        self._ensure(x)
        n = len(self.structure.feature_names)
        if n > STACK_FEATURES:
            xs = <double*> malloc(n * sizeof(double))
            miss = <uint8_t*> malloc(n)
            if xs == NULL or miss == NULL:
                free(xs)
                free(miss)
                raise MemoryError()
        try:
            n_miss = self._load(x, xs, miss)
            if not self._first_window:
                out = self._score_buf(xs, miss if n_miss else NULL)
            self._learn_buf(xs, miss if n_miss else NULL)
        finally:
            if n > STACK_FEATURES:
                free(xs)
                free(miss)
        return out

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
                _run_many(st._feat, st._thr, <uint8_t*> base, n_trees, st.n_internal,
                          st.n_nodes, height, size_limit, max_score, ws, xp, mp, n_rows, n_cols,
                          op, &ri, &counter, &fw)
            elif kind == 1:
                _run_many(st._feat, st._thr, <uint16_t*> base, n_trees, st.n_internal,
                          st.n_nodes, height, size_limit, max_score, ws, xp, mp, n_rows, n_cols,
                          op, &ri, &counter, &fw)
            else:
                _run_many(st._feat, st._thr, <uint32_t*> base, n_trees, st.n_internal,
                          st.n_nodes, height, size_limit, max_score, ws, xp, mp, n_rows, n_cols,
                          op, &ri, &counter, &fw)
        self._ri = ri
        self.counter = counter
        self._first_window = fw
        return out

    # -- state access (serialization, tests) --------------------------------------------------

    def _masses(self):
        """(r, l) views of shape (n_trees, n_nodes), heap order; None before the first learn."""
        if self._mass is None:
            return None
        return self._mass[self._ri], self._mass[1 - self._ri]

    def _set_state(self, long counter, bint first_window, r=None, l=None):
        if counter < 0 or counter >= self.window_size:
            raise ValueError("counter out of range")
        self.counter = counter
        self._first_window = first_window
        if r is not None:
            self._mass[0] = r
            self._mass[1] = l
            self._ri = 0

    def _fix_names(self, tuple names):
        if self.structure is not None and names != self.structure.feature_names:
            raise ValueError("feature names are already fixed to "
                             f"{self.structure.feature_names!r}")
        self._names = names

    def _mass_sizeof(self):
        import sys
        return 0 if self._mass is None else sys.getsizeof(self._mass)
