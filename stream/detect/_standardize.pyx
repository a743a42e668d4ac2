# cython: language_level=3
"""An entity's feature baseline in flat arrays, and the per-window vector pass over it (compiled).

Every closed window of an entity becomes a feature vector (``"metric:feature" -> value``), is
standardized against the entity's baseline — an EWMA of the mean and variance of each feature
over its normal windows — and, when normal, updates that baseline. These were Python loops over
~50 features per window and dicts of boxed floats, the engine's largest cost. :class:`Baseline`
keeps the mean and variance in C arrays (one position per feature key, assigned once per entity)
and runs the three passes in C with **the same floating-point operations in the same order**, so
every number is bit-identical to the Python rule (held to a pure-Python reference by
``tests/unit/test_standardize.py``). Its dict views (:meth:`Baseline.mean_dict`,
:meth:`Baseline.var_dict`) list the features in the order they entered the baseline, the order
of the engine's serialized state. The positions themselves (the keys, their index: a
:class:`Layout`) are shared by every baseline with the same keys in the same order, copied
before one of them adds a key, so a worker's entities of the same metrics hold one copy.

>>> from stream.detect._standardize import Baseline
>>> keys = {}                                   # metric -> its "metric:feature" keys (shared)
>>> base = Baseline()
>>> obs, bad = base.features({"cpu": {"count": 3, "mean": 2.0, "max": float("nan")}},
...                          {"cpu": 4.0}, ("count", "mean", "max", "availability"), keys)
>>> obs, bad                                    # NaN left out (and counted)
({'cpu:count': 3.0, 'cpu:mean': 2.0, 'cpu:availability': 0.75}, 1)
>>> base.standardize(("count", "availability"))  # no baseline yet: z 0, x 0.5
({'cpu:count': 0.5, 'cpu:mean': 0.5, 'cpu:availability': 0.5}, 0.0, 0.0, None, 0)
>>> base.learn(1.0)                             # a feature seen first starts at its value
>>> _ = base.features({"cpu": {"count": 4, "mean": 4.0, "max": 9.0}}, {"cpu": 4.0},
...                   ("count", "mean", "max", "availability"), keys)
>>> base.learn(0.5)                             # m + a (v - m), (1 - a)(var + a (v - m)^2)
>>> base.mean_dict()
{'cpu:count': 3.5, 'cpu:mean': 3.0, 'cpu:availability': 0.875, 'cpu:max': 9.0}
>>> base.var_dict()["cpu:mean"]
1.0
>>> other = Baseline()                          # the same keys in the same order: one Layout
>>> _ = other.features({"cpu": {"count": 1, "mean": 1.0, "max": 1.0}}, {},
...                    ("count", "mean", "max", "availability"), keys)
>>> other.layout is base.layout, other.layout.keys
(True, ['cpu:count', 'cpu:mean', 'cpu:max', 'cpu:availability'])
>>> _ = base.features({"cpu": {"count": 4, "mean": 5.0, "max": 9.0}}, {"cpu": 4.0},
...                   ("mean",), {})            # (a key cache holds the keys of one feature tuple)
>>> x, d2, zmax, zfeat, n_z = base.standardize(("count", "availability"))
>>> base.z_dict(), x, d2, zmax, zfeat, n_z
({'cpu:mean': 2.0}, {'cpu:mean': 0.75}, 4.0, 2.0, 'cpu:mean', 1)
>>> from array import array
>>> count_below(array("d", [0.1, 0.5, 0.9]), 0.5), count_below(array("f", [0.1, 0.5, 0.9]), 0.5)
(1, 1)
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from libc.math cimport sqrt, isfinite
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.float cimport PyFloat_AsDouble
from cpython.object cimport PyObject, Py_SIZE
from cpython cimport array as carray
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE

from stream.detect._window cimport Summary
from stream.detect._window import _FIELD_INDEX

import weakref


cdef double _availability(object s, const double* sv, dict expected, object metric) except? -1.0:
    """The window's sample count over the metric's expected count, capped at 1 (1 without an
    expectation, or a zero one), as Python divides ``s["count"] / expected`` (int / float or int
    / int); ``sv``: the Summary's fields when ``s`` is one (its count is ``sv[0]``)."""
    cdef PyObject* e = PyDict_GetItem(expected, metric)
    cdef double v, d
    if e == NULL:
        return 1.0
    if sv != NULL and PyFloat_CheckExact(<object> e):
        d = PyFloat_AS_DOUBLE(<object> e)
        if d == 0.0:
            return 1.0
        v = sv[0] / d
    else:
        exp_o = <object> e
        if not exp_o:
            return 1.0
        v = PyFloat_AsDouble(s["count"] / exp_o)
    return v if v < 1.0 else 1.0  # (min(1.0, v); a NaN gives 1.0, as before)


def feature_keys(dict cache, object metric, tuple feats):
    """The ``"metric:feature"`` keys of a metric in ``feats`` order, built once and kept in ``cache``
    (one cache per ``feats`` tuple)."""
    cdef PyObject* p = PyDict_GetItem(cache, metric)
    if p != NULL:
        return <tuple> <object> p
    keys = tuple([f"{metric}:{f}" for f in feats])
    cache[metric] = keys
    return keys


cdef class Layout:
    """The positions of a baseline's feature keys: ``keys`` (position -> key), ``index`` (key ->
    position) and, for one feature tuple ``mfeats``, ``mpos`` (metric -> the positions of its keys
    in feature order).

    Baselines whose keys are the same sequence (and that use the same feature tuple) share one
    Layout, the canonical one of ``(mfeats, tuple(keys))`` in ``_layouts`` (weak values: freed
    with its last Baseline). A shared layout's ``keys``, ``index`` and ``mfeats`` never change (but
    for ``mfeats`` taking an equal tuple): a Baseline that must add a key or use another feature
    tuple first copies it into a private layout, and at the end of that call moves to the
    canonical layout of its new keys (its private one becomes it if there is none). Positions only
    ever get appended, so the Baseline's arrays stay valid. ``mpos`` is a cache of what ``index``
    and ``mfeats`` determine, so a shared layout's ``mpos`` may gain a metric whose keys it
    already has: every sharer would build the same tuple.

    The registry key includes ``mfeats`` because ``mpos`` depends on it: two baselines with the
    same keys and different feature tuples (or a baseline just loaded, without one yet) would
    otherwise copy the layout on every window.
    """

    # (attributes: _standardize.pxd)

    def __cinit__(self):
        self.keys = []
        self.index = {}
        self.mpos = {}
        self.mfeats = None
        self.shared = False

    cdef Layout copy(self, bint with_mpos):
        """A private copy (``mpos`` left empty unless ``with_mpos``)."""
        cdef Layout c = Layout.__new__(Layout)
        c.keys = list(self.keys)
        c.index = dict(self.index)
        if with_mpos:
            c.mpos = dict(self.mpos)
        c.mfeats = self.mfeats
        return c

    cdef const int* columns(self, tuple names) except NULL:
        """The layout position of each of ``names`` (-1: not one of its keys), as int32s kept
        until another tuple is asked for or keys are appended (the engine's entities on one
        layout have the same model names, mostly the same tuple object)."""
        cdef Py_ssize_t j, n = len(names)
        cdef int* m
        cdef PyObject* p
        if self.cmap is None or self.cn != len(self.keys) or not (names is self.cnames or names == self.cnames):
            buf = PyBytes_FromStringAndSize(NULL, (n if n else 1) * sizeof(int))
            m = <int*> PyBytes_AS_STRING(buf)
            for j in range(n):
                p = PyDict_GetItem(self.index, names[j])
                m[j] = -1 if p == NULL else <int> (<Py_ssize_t> (<object> p))
            self.cmap = buf
            self.cnames = names
            self.cn = len(self.keys)
        return <const int*> PyBytes_AS_STRING(self.cmap)

    def __len__(self):
        return len(self.keys)

    def __repr__(self):
        return f"<Layout of {len(self.keys)} keys{' (shared)' if self.shared else ''}>"


# The canonical (shared) Layout of every (feature tuple, key sequence) some Baseline has. Weak
# values: a layout no Baseline uses any more (its entities evicted) leaves the registry.
_layouts = weakref.WeakValueDictionary()


cdef Layout _shared_empty():
    """The canonical layout without keys (every new Baseline starts on it)."""
    cdef Layout lay = _layouts.get((None, ()))
    if lay is None:
        lay = Layout()
        lay.shared = True
        _layouts[(None, ())] = lay
    return lay


cdef class Baseline:
    """One entity's per-feature EWMA mean and variance, and the scratch of its last window.

    Positions: every feature key the entity ever had gets one, for good (``keys[pos]``, held by
    its :class:`Layout`, shared with the baselines that have the same keys in the same order);
    the baseline holds a subset of them (``present``), listed in the order they entered it
    (``order``). ``features`` then ``standardize`` then (for a normal window) ``learn`` work on the
    vector of the last ``features`` call.
    """

    # (attributes: _standardize.pxd)

    def __cinit__(self):
        self.lay = _shared_empty()
        self.mean = self.var = NULL
        self.present = NULL
        self.order = NULL
        self.cap = self.norder = 0
        self.opos = NULL
        self.oval = self.oz = NULL
        self.on = self.ocap = self.zn = 0

    def __dealloc__(self):
        free(self.mean)  # (the block of var, order, present too)
        free(self.oval)  # (the block of oz, opos too)

    @property
    def layout(self):
        """The :class:`Layout` (shared by the baselines with the same key sequence)."""
        return self.lay

    @property
    def keys(self):
        """Position -> ``"metric:feature"`` key, every key the entity ever had (a copy)."""
        return list(self.lay.keys)

    @property
    def index(self):
        """Key -> position (a copy)."""
        return dict(self.lay.index)

    # -- positions --------------------------------------------------------------------------
    cdef int _resize(self, Py_ssize_t cap) except -1:
        """Positions ``[0, cap)``: one block of mean, var (doubles), order (ints), present (chars);
        the first ``min(cap, self.cap)`` of each kept, new ones zeroed."""
        cdef Py_ssize_t i, k = min(cap, self.cap)
        cdef char* blk = <char*> malloc(cap * (2 * sizeof(double) + sizeof(int) + 1)) if cap else NULL
        if cap and blk == NULL:
            raise MemoryError()
        cdef double* m = <double*> blk
        cdef double* v = m + cap
        cdef int* o = <int*> (v + cap)
        cdef unsigned char* p = <unsigned char*> (o + cap)
        if k:
            memcpy(m, self.mean, k * sizeof(double))
            memcpy(v, self.var, k * sizeof(double))
            memcpy(o, self.order, k * sizeof(int))
            memcpy(p, self.present, k)
        for i in range(k, cap):
            p[i] = 0
            m[i] = 0.0
            v[i] = 0.0
        free(self.mean)
        self.mean, self.var, self.order, self.present = m, v, o, p
        self.cap = cap
        return 0

    cdef int _grow(self, Py_ssize_t need) except -1:
        if need > self.cap:
            self._resize(max(need, 2 * self.cap, 8))
        return 0

    cdef int _ogrow(self, Py_ssize_t need) except -1:
        """Room for a vector of ``need`` features (exactly: grows only when a window has more)."""
        cdef Py_ssize_t cap = self.ocap, n = self.on
        if need <= cap:
            return 0
        cdef char* blk = <char*> malloc(need * (2 * sizeof(double) + sizeof(int)))
        if blk == NULL:
            raise MemoryError()
        cdef double* val = <double*> blk
        cdef double* z = val + need
        cdef int* pos = <int*> (z + need)
        if n:  # (the last vector stays readable)
            memcpy(val, self.oval, n * sizeof(double))
            memcpy(z, self.oz, n * sizeof(double))
            memcpy(pos, self.opos, n * sizeof(int))
        free(self.oval)
        self.oval, self.oz, self.opos = val, z, pos
        self.ocap = need
        return 0

    cdef Py_ssize_t _pos(self, object key) except -1:
        cdef Layout lay = self.lay
        cdef PyObject* p = PyDict_GetItem(lay.index, key)
        cdef Py_ssize_t pos
        if p != NULL:
            return <Py_ssize_t> (<object> p)
        if lay.shared:  # copy on write
            lay = self.lay = lay.copy(True)
        pos = len(lay.keys)
        self._grow(pos + 1)
        lay.keys.append(key)
        lay.index[key] = pos
        return pos

    cdef tuple _mpos(self, object metric, tuple keys):
        cdef PyObject* p = PyDict_GetItem(self.lay.mpos, metric)
        if p != NULL:
            return <tuple> <object> p
        t = tuple([self._pos(k) for k in keys])
        # self.lay: a copy if a key was added; else the same layout, whose every sharer would
        # build the same tuple (same index, same mfeats)
        self.lay.mpos[metric] = t
        return t

    cdef int _settle(self) except -1:
        """After keys were added or the layout copied: move to the canonical layout of the keys."""
        cdef Layout lay = self.lay, canon
        if self.cap > len(lay.keys):  # (grown by doubling while keys were added)
            self._resize(len(lay.keys))
        if lay.shared:
            return 0
        seq = (lay.mfeats, tuple(lay.keys))
        canon = _layouts.get(seq)
        if canon is None:
            lay.shared = True
            _layouts[seq] = lay
            return 0
        for metric, t in lay.mpos.items():  # same index and feature tuple: the same tuples
            if metric not in canon.mpos:
                canon.mpos[metric] = t
        self.lay = canon
        return 0

    # -- the per-window passes ----------------------------------------------------------------
    def features(self, dict summary, dict expected, tuple feats, dict cache, bint build=True):
        """``({"metric:feature": value}, number of non-finite values left out)`` of one window.

        Metrics in sorted order, features in ``feats`` order; ``availability`` is the window's
        count over the metric's expected count, capped at 1 (1 without an expectation). A NaN or
        infinite value never reaches a model: it is left out (treated as missing) and counted.
        The vector is also kept for :meth:`standardize` and :meth:`learn`; with ``build=False``
        the dict is not built (``None``; :meth:`obs_dict` builds it later).
        """
        cdef dict obs = {} if build else None
        cdef Py_ssize_t n_bad = 0, j, nf = len(feats), n = 0
        cdef tuple keys, pos
        cdef object s
        cdef PyObject* e
        cdef double v
        cdef int fidx[64]  # a Summary's field index of each feature (-2: availability, -1: unknown)
        cdef const double* sv
        cdef bint fast = nf <= 64
        if fast:
            for j in range(nf):
                f = feats[j]
                e = PyDict_GetItem(_FIELD_INDEX, f)
                fidx[j] = -2 if f == "availability" else (-1 if e == NULL else <int> (<object> e))
        cdef Layout lay0 = self.lay
        cdef Py_ssize_t n0 = len(lay0.keys)
        if feats is not lay0.mfeats:
            if lay0.mfeats is None or feats != lay0.mfeats:  # mpos is for another tuple (or none)
                if lay0.shared:
                    self.lay = lay0.copy(False)  # copy on write
                else:
                    self.lay.mpos = {}
            self.lay.mfeats = feats  # (or feats == mfeats: the same layout, the same mpos)
        try:
            self._ogrow(len(summary) * nf)
            for metric in sorted(summary):
                s = summary[metric]
                keys = feature_keys(cache, metric, feats)
                pos = self._mpos(metric, keys)
                # the engine's windows are Summary objects: unboxed doubles, read by field index
                sv = (<Summary> s).v if (fast and type(s) is Summary) else NULL
                for j in range(nf):
                    if sv != NULL and fidx[j] >= 0:
                        v = sv[fidx[j]]
                    elif (fidx[j] == -2) if fast else (feats[j] == "availability"):
                        v = _availability(s, sv, expected, metric)
                    else:
                        v = PyFloat_AsDouble(s[feats[j]])  # (a missing feature raises KeyError)
                    if not isfinite(v):
                        n_bad += 1
                        continue
                    if build:
                        PyDict_SetItem(obs, keys[j], v)
                    self.opos[n] = <int> (<Py_ssize_t> pos[j])
                    self.oval[n] = v
                    n += 1
        finally:
            if self.lay is not lay0 or len(self.lay.keys) != n0:
                self._settle()
        self.on = n
        self.zn = 0
        return obs, n_bad

    def standardize(self, tuple presence, double inv_scale=0.125, bint build=True, int young=0):
        """z of every feature of the last vector against the baseline, and the window's tests.

        Returns ``(x, d2, zmax, zfeat, n_z)``: x the z squashed into [0, 1] for the trees (a dict
        in vector order; a feature without a baseline gets z 0 and x 0.5); d2 the sum of squared
        z; n_z the number of non-degenerate features (std above a floor relative to the mean);
        zmax / zfeat the largest |z| among those whose key does not end with one of ``presence``
        (0.0 / None if none). ``x = clip(0.5 + z * inv_scale, 0, 1)`` (the engine: 1 / 8, z in
        [-4, 4] onto [0, 1]). The z values: :meth:`z_dict`. With ``build=False`` x is not built
        (``None``): the engine's trees read it from the z (``HSTCore.score_base``), and
        :meth:`x_dict` builds the same dict later.

        A feature learned from fewer than ``young`` windows (one that joined a settled baseline:
        a metric that appeared later, see :meth:`learn`) is treated as one without a baseline,
        z 0, until its variance means something: seeded from one or two windows it is a fraction
        of the real one, and the feature's z would be huge for ever (an anomalous window is not
        learned). The engine passes ``min(warmup_windows, 255)`` once the entity is warm, else 0;
        features that joined during the entity's warm-up count as settled and are never young.
        """
        cdef dict x = {} if build else None
        cdef Py_ssize_t i, p, n_z = 0
        cdef double v, m, sd, am, floor, zk, t, a, d2 = 0.0, zmax = 0.0
        cdef list keys = self.lay.keys
        zfeat = None
        for i in range(self.on):
            p = self.opos[i]
            k = keys[p]
            if self.present[p] == 0 or self.present[p] < young:
                self.oz[i] = 0.0
                if build:
                    PyDict_SetItem(x, k, 0.5)
                continue
            m = self.mean[p]
            v = self.oval[i]
            sd = sqrt(self.var[p])
            am = m if m >= 0.0 else -m
            floor = 1e-3 * (am if am > 1e-9 else 1e-9) + 1e-9  # a constant feature still gets a finite z
            zk = (v - m) / (sd if sd > floor else floor)
            self.oz[i] = zk
            d2 += zk * zk
            if build:
                PyDict_SetItem(x, k, x_of(zk, inv_scale))
            if sd > floor:  # n_z (the Bonferroni count) includes non-degenerate presence features
                n_z += 1
                a = zk if zk >= 0.0 else -zk
                if a > zmax and not k.endswith(presence):
                    zmax = a
                    zfeat = k
        self.zn = self.on
        return x, d2, zmax, zfeat, n_z

    @property
    def n_obs(self):
        """The number of features in the last vector."""
        return self.on

    def x_dict(self, double inv_scale=0.125):
        """The x of the last :meth:`standardize` (what it returns with ``build=True``)."""
        cdef dict x = {}
        cdef list keys = self.lay.keys
        cdef Py_ssize_t i
        for i in range(self.zn):
            PyDict_SetItem(x, keys[self.opos[i]], x_of(self.oz[i], inv_scale))
        return x

    def obs_dict(self):
        """``{key: value}`` of the last vector (what :meth:`features` returned), in vector order."""
        cdef dict out = {}
        cdef list keys = self.lay.keys
        cdef Py_ssize_t i
        for i in range(self.on):
            PyDict_SetItem(out, keys[self.opos[i]], self.oval[i])
        return out

    def z_dict(self):
        """``{key: z}`` of the last :meth:`standardize`, in vector order."""
        cdef dict z = {}
        cdef list keys = self.lay.keys
        cdef Py_ssize_t i
        for i in range(self.zn):
            PyDict_SetItem(z, keys[self.opos[i]], self.oz[i])
        return z

    def learn(self, double a, int settle=0):
        """Fold the last vector into the baseline with weight ``a``.

        mean <- m + a (v - m), var <- (1 - a)(var + a (v - m)^2); a feature new to the baseline
        starts at its value with variance 0 (and is listed after the others).

        ``settle`` > 0 (the engine passes ``min(warmup_windows, 255)`` once the entity is warm):
        a feature new to the baseline joins *late*, with a count of 1 learned window, and while
        its count n < ``settle`` it takes weight 1 / (n + 1) instead of ``a`` (a running mean and
        variance, as the entity's own warm-up): its own warm-up, instead of a variance the EWMA
        would take ~1 / a windows to grow. ``settle`` 0 (the entity's warm-up): a new feature
        counts as settled (255), and every feature learns with ``a``, the rule before counts.
        The count of a late feature goes up by one per window learned, up to 255.
        """
        cdef double b = 1.0 - a, v, m, d, w, c
        cdef Py_ssize_t i, p
        cdef unsigned char n
        for i in range(self.on):
            p = self.opos[i]
            v = self.oval[i]
            n = self.present[p]
            if n == 0:
                self.present[p] = 1 if settle > 0 else 255
                self.mean[p] = v
                self.var[p] = 0.0
                self.order[self.norder] = <int> p
                self.norder += 1
                continue
            if n < 255:
                self.present[p] = n + 1
            m = self.mean[p]
            d = v - m
            if n < settle:
                w = 1.0 / (n + 1)
                c = 1.0 - w
                self.mean[p] = m + w * d
                self.var[p] = c * (self.var[p] + w * d * d)
            else:
                self.mean[p] = m + a * d
                self.var[p] = b * (self.var[p] + a * d * d)

    # -- dict views (alerts, durable state) -------------------------------------------------
    def get(self, key, default=None):
        """The baseline mean of ``key`` (``default`` if the baseline has no such feature)."""
        cdef PyObject* p = PyDict_GetItem(self.lay.index, key)
        if p == NULL or not self.present[<Py_ssize_t> (<object> p)]:
            return default
        return self.mean[<Py_ssize_t> (<object> p)]

    def get_var(self, key, default=None):
        """The baseline variance of ``key`` (``default`` if the baseline has no such feature)."""
        cdef PyObject* p = PyDict_GetItem(self.lay.index, key)
        if p == NULL or not self.present[<Py_ssize_t> (<object> p)]:
            return default
        return self.var[<Py_ssize_t> (<object> p)]

    def __contains__(self, key):
        cdef PyObject* p = PyDict_GetItem(self.lay.index, key)
        return p != NULL and self.present[<Py_ssize_t> (<object> p)] != 0

    def __len__(self):
        return self.norder

    cdef dict _in_order(self, double* values):
        # {key: values[position]} in the order the features entered the baseline
        cdef dict out = {}
        cdef list keys = self.lay.keys
        cdef Py_ssize_t i, p
        for i in range(self.norder):
            p = self.order[i]
            PyDict_SetItem(out, keys[p], values[p])
        return out

    def mean_dict(self):
        """``{key: mean}`` in the order the features entered the baseline."""
        return self._in_order(self.mean)

    def var_dict(self):
        """``{key: variance}`` in the order the features entered the baseline."""
        return self._in_order(self.var)

    def state(self):
        """``(keys, values)``: the features in baseline order, and their means then variances as
        float64 bytes (native order) followed by the number of windows each was learned from
        (one byte each, capped at 255): the compact form of ``mean_dict()``, ``var_dict()`` and
        ``counts()`` in an entity's serialized state (formatting ~90 floats as JSON took more
        time than the rest of the export)."""
        cdef list keys = self.lay.keys
        cdef list out = []
        cdef Py_ssize_t i, p, n = self.norder
        cdef bytes b = PyBytes_FromStringAndSize(NULL, 2 * n * sizeof(double) + n)
        cdef double* d = <double*> PyBytes_AS_STRING(b)
        cdef unsigned char* c = <unsigned char*> (d + 2 * n)
        for i in range(n):
            p = self.order[i]
            out.append(keys[p])
            d[i] = self.mean[p]
            d[n + i] = self.var[p]
            c[i] = self.present[p]
        return out, b

    def load_state(self, list keys, bytes values):
        """Inverse of :meth:`state`. A state written before the counts were kept (means and
        variances only) loads every feature as settled (count 255), as it was used then."""
        cdef Py_ssize_t i, n = len(keys)
        cdef bint counted = len(values) == 2 * n * sizeof(double) + n
        if not counted and len(values) != 2 * n * sizeof(double):
            raise ValueError(f"baseline state: {len(values)} bytes for {n} features")
        cdef const double* d = <const double*> PyBytes_AS_STRING(values)
        cdef const unsigned char* c = <const unsigned char*> (d + 2 * n)
        mean = {}
        var = {}
        for i in range(n):
            mean[keys[i]] = d[i]
            var[keys[i]] = d[n + i]
        self.load(mean, var)
        if counted:
            for i in range(n):
                if c[i] == 0:
                    raise ValueError(f"baseline state: feature {keys[i]!r} has count 0")
                self.present[self.order[i]] = c[i]

    def counts(self):
        """``{key: windows learned (capped at 255)}`` in the order the features entered the baseline."""
        cdef dict out = {}
        cdef list keys = self.lay.keys
        cdef Py_ssize_t i, p
        for i in range(self.norder):
            p = self.order[i]
            PyDict_SetItem(out, keys[p], self.present[p])
        return out

    def clear(self):
        """Forget every feature (positions are kept; features re-enter in their new order).

        The last window's vector and z stay readable (an alert of that window may follow).
        """
        cdef Py_ssize_t i
        for i in range(self.cap):
            self.present[i] = 0
        self.norder = 0

    def load(self, dict mean, dict var):
        """Replace the baseline with ``mean`` / ``var`` dicts (same keys, in baseline order); each
        feature counts as settled (255 windows learned)."""
        cdef Py_ssize_t p
        cdef Layout lay0 = self.lay
        cdef Py_ssize_t n0 = len(lay0.keys)
        if list(mean) != list(var):
            raise ValueError("baseline mean and var must have the same keys in the same order")
        self.clear()
        try:
            for k, m in mean.items():
                p = self._pos(k)
                self.mean[p] = PyFloat_AsDouble(m)
                self.var[p] = PyFloat_AsDouble(var[k])
                self.present[p] = 255
                self.order[self.norder] = <int> p
                self.norder += 1
        finally:
            if self.lay is not lay0 or len(self.lay.keys) != n0:
                self._settle()


ctypedef fused score_t:
    float
    double


cdef Py_ssize_t _below(const score_t* scores, Py_ssize_t n, score_t s) noexcept nogil:
    cdef Py_ssize_t i, c = 0
    for i in range(n):
        if s > scores[i]:
            c += 1
    return c


def _count_below_view(score_t[::1] scores, double score):
    return _below(&scores[0], scores.shape[0], <score_t> score) if scores.shape[0] else 0


def count_below(scores, double score):
    """How many of ``scores`` are strictly below ``score`` (the grade's numerator).

    A float32 history (``array("f")``: see ``stream.detect.engine.score_typecode``) is compared
    with ``score`` rounded to float32, as its entries were when appended, so equal scores stay
    equal. An ``array.array`` (the engine's histories) is read in place; any other contiguous
    float32 / float64 buffer through a memoryview.
    """
    cdef carray.array a
    cdef char tc
    if type(scores) is carray.array:
        a = <carray.array> scores
        tc = a.ob_descr.typecode
        if tc == b"f":
            return _below(a.data.as_floats, Py_SIZE(a), <float> score)
        if tc == b"d":
            return _below(a.data.as_doubles, Py_SIZE(a), score)
    return _count_below_view(scores, score)
