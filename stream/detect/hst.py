"""River-exact Half-Space Trees on flat arrays, compiled (:mod:`stream.detect._hst`).

The trees are the ones ``river.anomaly.HalfSpaceTrees`` builds for the same parameters and seed
(same ``random.Random`` call sequence as river's ``make_padded_tree``), stored in heap order in
numpy arrays shared by every model of the same (n_trees, height, seed, features, limits). Only
the masses are per model. Scores are bit-identical to river's; see ``tests/unit/test_hst.py``.
"""
from __future__ import annotations

import collections
import json
import math
import random
import struct
import weakref
from collections.abc import Iterable, Mapping

import numpy as np
import orjson

from stream.detect import _hst
from stream.detect._hst import Structure, compact_consistent, compact_masses, mass_dtype

__all__ = ["HalfSpaceTrees", "Structure", "build_structure", "FORMAT_VERSION"]

# 2: compact masses (root, then each split node's left child: 2**height per slot and tree);
# 1: river's per-node masses (2**(height+1) - 1 per slot and tree), still read
FORMAT_VERSION = 2
_READABLE = (1, 2)
_PADDING = 0.15  # river's make_padded_tree(padding=0.15)
_DEFAULT_LIMITS = (0.0, 1.0)  # river: defaultdict(functools.partial(tuple, (0.0, 1.0)))

# version, flags, mass itemsize, reserved, n_trees, height, window_size, counter, meta length
_HEAD = struct.Struct("<BBBBIIIII")
_F_FIRST_WINDOW = 1
_F_MASSES = 2
_F_EMBEDDED_STRUCTURE = 4

# Structures live as long as a model uses them; the last few built stay alive even when no
# model does, so that dropping and reloading models does not rebuild their trees.
_structures: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_recent: collections.deque = collections.deque(maxlen=8)


def _feature_limits(names: tuple, limits: Mapping | None) -> tuple:
    """Per-feature (lo, hi) for ``names`` exactly as river passes them to make_padded_tree."""
    limits = limits or {}
    return tuple(tuple(limits[n]) if n in limits else _DEFAULT_LIMITS for n in names)


def _arrays_replica(names: tuple, flimits: tuple, n_trees: int, height: int, seed):
    """Replay river's tree construction straight into heap-ordered arrays.

    Same code as ``river.tree.padded.make_padded_tree`` (pre-order: pick a feature weighted by
    its limit width with ``rng.choices``, a threshold with ``rng.uniform`` inside the padded
    range, recurse left with the upper limit lowered, then right with the lower limit raised),
    with the same ``random.Random(seed)`` instance shared across trees, but without building
    ~2**height Python node objects per tree.
    """
    rng = random.Random(seed)
    n_int = (1 << height) - 1
    index = {n: i for i, n in enumerate(names)}
    feat = [0] * (n_trees * n_int)
    thr = [0.0] * (n_trees * n_int)
    choices, uniform = rng.choices, rng.uniform
    padding = _PADDING

    def grow(limits: dict, node: int, base: int, h: int) -> None:
        if h == 0:
            return
        on = choices(population=list(limits.keys()),
                     weights=[limits[i][1] - limits[i][0] for i in limits])[0]
        a = limits[on][0]
        b = limits[on][1]
        at = uniform(a + padding * (b - a), b - padding * (b - a))
        feat[base + node] = index[on]
        thr[base + node] = at
        tmp = limits[on]
        limits[on] = (tmp[0], at)
        grow(limits, 2 * node + 1, base, h - 1)
        limits[on] = tmp
        tmp = limits[on]
        limits[on] = (at, tmp[1])
        grow(limits, 2 * node + 2, base, h - 1)
        limits[on] = tmp

    for t in range(n_trees):
        grow(dict(zip(names, flimits)), 0, t * n_int, height)
    return (np.array(feat, dtype=np.int32).reshape(n_trees, n_int),
            np.array(thr, dtype=np.float64).reshape(n_trees, n_int))


def _arrays_river(names: tuple, flimits: tuple, n_trees: int, height: int, seed):
    """Let river build its trees, then read them into heap-ordered arrays (slow, reference)."""
    from river.anomaly import HalfSpaceTrees as RiverHST

    ref = RiverHST(n_trees=n_trees, height=height, window_size=1,
                   limits=dict(zip(names, flimits)), seed=seed)
    ref.learn_one(dict.fromkeys(names, 0.0))  # builds the trees from sorted(x) == names
    n_int = (1 << height) - 1
    index = {n: i for i, n in enumerate(names)}
    feat = np.zeros((n_trees, n_int), dtype=np.int32)
    thr = np.zeros((n_trees, n_int), dtype=np.float64)
    for t, root in enumerate(ref.trees):
        stack = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i >= n_int:
                continue
            feat[t, i] = index[node.feature]
            thr[t, i] = node.threshold
            left, right = node.children
            stack.append((left, 2 * i + 1))
            stack.append((right, 2 * i + 2))
    return feat, thr


def build_structure(feature_names: Iterable, n_trees: int = 10, height: int = 8,
                    limits: Mapping | None = None, seed=None, builder: str = "replica",
                    cache: bool = True) -> Structure:
    """The shared tree structure river builds for these parameters (cached per parameters).

    ``builder="river"`` lets river construct its node objects and reads them back (slow and
    memory-hungry at large heights: ~13 s and ~370 MB for 25 trees of height 15);
    ``"replica"`` (default) replays the same random draws directly into arrays. Both give
    identical arrays (checked by the tests). A ``seed`` of None draws fresh random trees, which
    are never shared.
    """
    names = tuple(sorted(feature_names))
    flimits = _feature_limits(names, limits)
    key = None
    if seed is not None and cache:
        key = (n_trees, height, type(seed).__name__, seed, names, flimits)
        st = _structures.get(key)
        if st is not None:
            return st
    make = {"replica": _arrays_replica, "river": _arrays_river}[builder]
    feat, thr = make(names, flimits, n_trees, height, seed)
    st = Structure(names, n_trees, height, feat, thr, key)
    if key is not None:
        _structures[key] = st
        _recent.append(st)
    return st


_STR_ONLY = frozenset((str,))


def _check_json_key(v, what):
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise TypeError(f"to_bytes supports str/int/float {what}, got {v!r}")
    return v


def _number(v):
    """A limit as JSON keeps it: ints stay ints (river's arithmetic sees the same values)."""
    return int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else float(v)


class HalfSpaceTrees(_hst.HSTCore):
    """Half-Space Trees, bit-identical to ``river.anomaly.HalfSpaceTrees``, compiled.

    Same parameters and semantics as river: the trees are built at the first ``learn_one`` over
    ``sorted(x)`` with thresholds drawn inside ``limits`` (``(0, 1)`` for features without
    limits; values outside the limits simply fall on one side of every split), masses pivot
    (``r <- l``, ``l <- 0``) every ``window_size`` learns, scores are 0 during the first window,
    and a feature missing from ``x`` follows the child with the larger latest mass. Features of
    ``x`` unknown to the trees are ignored.

    Parameters
    ----------
    n_trees, height, window_size, limits, seed
        As in river. ``window_size`` must be >= 1 (river never pivots with 0).
    feature_names
        Optionally fix the features up front (otherwise ``sorted`` keys of the first learned
        dict, or ``0..d-1`` for a first ``score_learn_many`` without names).

    Examples
    --------
    river's own example, side by side with river:

    >>> from river import anomaly
    >>> from stream.detect.hst import HalfSpaceTrees

    >>> X = [0.5, 0.45, 0.43, 0.44, 0.445, 0.45, 0.0]
    >>> hst = HalfSpaceTrees(n_trees=5, height=3, window_size=3, seed=42)
    >>> ref = anomaly.HalfSpaceTrees(n_trees=5, height=3, window_size=3, seed=42)

    >>> for x in X[:3]:
    ...     hst.learn_one({'x': x})  # Warming up
    ...     ref.learn_one({'x': x})

    >>> for x in X:
    ...     features = {'x': x}
    ...     hst.learn_one(features)
    ...     ref.learn_one(features)
    ...     score = hst.score_one(features)
    ...     assert score == ref.score_one(features)
    ...     print(f'Anomaly score for x={x:.3f}: {score:.3f}')
    Anomaly score for x=0.500: 0.107
    Anomaly score for x=0.450: 0.071
    Anomaly score for x=0.430: 0.107
    Anomaly score for x=0.440: 0.107
    Anomaly score for x=0.445: 0.107
    Anomaly score for x=0.450: 0.071
    Anomaly score for x=0.000: 0.853

    The batch path scores then learns each row (columns in sorted feature-name order) and
    gives the same numbers as the per-event path:

    >>> import numpy as np
    >>> rows = np.array([[0.2, 0.9], [0.25, 0.8], [0.3, 0.85], [0.95, 0.05]])
    >>> batch = HalfSpaceTrees(n_trees=5, height=3, window_size=2, seed=7)
    >>> batch.score_learn_many(rows, feature_names=['a', 'b']).round(3).tolist()
    [0.0, 0.0, 0.32, 0.933]
    >>> one = HalfSpaceTrees(n_trees=5, height=3, window_size=2, seed=7)
    >>> per_event = []
    >>> for a, b in rows:
    ...     per_event.append(one.score_one({'a': a, 'b': b}))
    ...     one.learn_one({'a': a, 'b': b})
    >>> fresh = HalfSpaceTrees(n_trees=5, height=3, window_size=2, seed=7)
    >>> per_event == fresh.score_learn_many(rows, feature_names=['a', 'b']).tolist()
    True

    Durable state: masses only (the structure is rebuilt from the seed and shared):

    >>> blob = batch.to_bytes()
    >>> blob[0], len(blob) < 2 * 5 * 8 + 200
    (2, True)
    >>> again = HalfSpaceTrees.from_bytes(blob)
    >>> again.score_one({'a': 0.9, 'b': 0.1}) == batch.score_one({'a': 0.9, 'b': 0.1})
    True
    >>> again.structure is batch.structure
    True
    """

    __slots__ = ()

    def __init__(self, n_trees: int = 10, height: int = 8, window_size: int = 250,
                 limits: Mapping | None = None, seed=None, feature_names: Iterable | None = None):
        super().__init__(n_trees, height, window_size, limits, seed)
        if feature_names is not None:
            self._fix_names(tuple(sorted(feature_names)))

    # called once by the compiled core at the first learn
    def _make_structure(self, feature_names: tuple) -> Structure:
        return build_structure(feature_names, self.n_trees, self.height, self.limits, self.seed)

    def score_learn_many(self, X, feature_names: Iterable | None = None, missing=None):
        """Score then learn each row of ``X`` in order; returns the scores (float64, 1-D).

        ``X`` is 2-D float64 with one column per feature, in sorted feature-name order
        (``self.feature_names``). ``feature_names`` fixes the names if they are not fixed yet
        (must then be given already sorted); without any names the features are ``0..d-1``.
        ``missing`` (optional bool array shaped like ``X``) marks features absent from an event
        (river's missing-feature rule); NaN is a value, not a missing feature, as in river.
        The GIL is released during the loop: do not use one model from several threads.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError("X must be 2-D (n_events, n_features)")
        if feature_names is not None:
            names = tuple(feature_names)
            if names != tuple(sorted(names)):
                raise ValueError("feature_names must be sorted (columns are in sorted order)")
            self._fix_names(names)
        elif self.feature_names is None:
            self._fix_names(tuple(range(X.shape[1])))
        if self.structure is None:
            self._attach(self._make_structure(self.feature_names))
        return self._score_learn_many(X, missing)

    # -- memory ---------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Per-model memory in bytes: object, mass array, own limits (shared structure excluded).

        Masses are ``2 * n_trees * 2**height`` counts of 1 byte (window_size <= 255), 2 bytes
        (<= 65535) or 4 bytes: 5,120 bytes at river's defaults (river's per-node layout would
        take ``2 * n_trees * (2**(height+1) - 1)``, 10,220 bytes; see :mod:`stream.detect._hst`).
        """
        return self._sizeof()

    # -- serialization ----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact versioned state: header, JSON params, compact masses (r then l), little-endian.

        With a seed, the tree structure is not stored (rebuilt and shared at load time); with
        ``seed=None`` it is embedded (the trees cannot be re-drawn).
        """
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, str))):
            raise TypeError("to_bytes supports int, str or None seeds")
        names = self.feature_names
        limits = [[_check_json_key(k, "feature names"), _number(v[0]), _number(v[1])]
                  for k, v in self.limits.items()]
        # (all str: the common case; the check in C, set(map(type, ...)): 1.7-2.0 us for the load
        # test's 51 names against 2.3-3.1 us for a generator; this runs for every entity at every commit)
        if names is not None and not set(map(type, names)) <= _STR_ONLY:
            names = [_check_json_key(n, "feature names") for n in names]
        meta = {"seed": seed, "limits": limits, "names": None if names is None else list(names)}
        if all(math.isfinite(lo) and math.isfinite(hi) for _, lo, hi in limits):
            # orjson: ~1.5 us where json.dumps took ~26 us for 50 names (this runs for every entity
            # at every commit); both write compact JSON that json.loads reads back the same
            mb = orjson.dumps(meta)
        else:  # infinite limits: JSON has no infinity; json writes Infinity, which json.loads reads
            mb = json.dumps(meta, separators=(",", ":")).encode()
        flags = _F_FIRST_WINDOW if self.first_window else 0
        parts = []
        masses = self._compact_masses()
        if masses is not None:
            flags |= _F_MASSES
            r, l = masses
            le = r.dtype.newbyteorder("<")
            parts += [r.astype(le, copy=False).tobytes(), l.astype(le, copy=False).tobytes()]
            if self.structure.key is None:
                flags |= _F_EMBEDDED_STRUCTURE
                parts += [self.structure.feature.astype("<i4", copy=False).tobytes(),
                          self.structure.threshold.astype("<f8", copy=False).tobytes()]
        head = _HEAD.pack(FORMAT_VERSION, flags, mass_dtype(self.window_size).itemsize, 0,
                          self.n_trees, self.height, self.window_size, self.counter, len(mb))
        return b"".join([head, mb, *parts])

    @classmethod
    def from_bytes(cls, b: bytes) -> HalfSpaceTrees:
        """Rebuild a model from :meth:`to_bytes` (sharing the structure when seeded)."""
        b = memoryview(b)
        if len(b) < _HEAD.size or b[0] not in _READABLE:
            raise ValueError(f"not a HalfSpaceTrees v{FORMAT_VERSION} state "
                             f"(version byte {b[0] if len(b) else None!r})")
        version, flags, item, _, n_trees, height, window_size, counter, mlen = _HEAD.unpack_from(b)
        off = _HEAD.size
        meta = json.loads(bytes(b[off:off + mlen]))
        off += mlen
        limits = {k: (lo, hi) for k, lo, hi in meta["limits"]} or None
        names = meta["names"]
        model = cls(n_trees, height, window_size, limits, meta["seed"], names)
        if item != mass_dtype(window_size).itemsize:
            raise ValueError("mass dtype does not match window_size")
        if flags & _F_MASSES:
            n_int = (1 << height) - 1
            per = (1 << (height + 1)) - 1 if version == 1 else n_int + 1
            count = 2 * n_trees * per
            mass = np.frombuffer(b, dtype=f"<u{item}", count=count, offset=off)
            off += count * item
            mass = mass.reshape(2, n_trees, per)
            if version == 1:  # river's per-node masses: keep the root and the left children
                mass = np.stack([compact_masses(mass[0], height), compact_masses(mass[1], height)])
            elif not all(compact_consistent(c, height) for c in mass):
                raise ValueError("inconsistent masses in HalfSpaceTrees state (a left child "
                                 "heavier than its parent)")
            names = tuple(names)
            if flags & _F_EMBEDDED_STRUCTURE:
                feat = np.frombuffer(b, dtype="<i4", count=n_trees * n_int, offset=off)
                off += feat.nbytes
                thr = np.frombuffer(b, dtype="<f8", count=n_trees * n_int, offset=off)
                off += thr.nbytes
                st = Structure(names, n_trees, height, feat, thr, None)
            else:
                st = build_structure(names, n_trees, height, limits, meta["seed"])
            model._attach(st, mass[0], mass[1])  # copied into a native-order array
        if off != len(b):
            raise ValueError("trailing bytes in HalfSpaceTrees state")
        model._set_state(counter, bool(flags & _F_FIRST_WINDOW))
        return model

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))

    def __repr__(self):
        return (f"HalfSpaceTrees(n_trees={self.n_trees}, height={self.height}, "
                f"window_size={self.window_size}, seed={self.seed!r}, "
                f"features={self.feature_names!r})")
