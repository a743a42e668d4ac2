"""Bounded reference baselines and count-based sliding windows for streaming drift detection.

A :class:`Baseline` holds, per feature, what a drift comparison needs from the reference
data and nothing more, so its size is fixed whatever the stream length:

* :class:`NumericBaseline`: quantile bin edges (``bins`` bins from the reference quantiles,
  with ``-inf``/``+inf`` outer edges), the reference count in each bin, and an ordered
  subsample of at most ``sample_size`` reference values for the KS test;
* :class:`CategoricalBaseline`: the counts of the ``top_k`` most frequent categories plus an
  ``"__other__"`` bucket.

A :class:`SlidingWindow` keeps the last ``size`` rows (inferences) and maintains, incrementally
and in compiled code (:mod:`stream.detect._binning`), each feature's bin counts, category
counts and its counts against the reference sample's points, which give the exact two-sample
KS statistic without sorting the window. :func:`compare` turns a baseline and a window into a
:class:`DriftReport` (PSI, JS distance, KS / chi-square, severity per feature, drifted share).

Both serialise to compact versioned bytes (``to_bytes``/``from_bytes``, first byte the format
version) for Kafka changelog tables.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> base = Baseline.fit({"x": rng.normal(size=5000), "color": rng.choice(["r", "g"], 5000)})
>>> win = SlidingWindow(base, size=1000)
>>> win.update_columns({"x": rng.normal(loc=1.0, size=1000), "color": ["r"] * 1000})
>>> report = compare(base, win)
>>> [(f.feature, f.type, f.severity) for f in report.features]
[('x', 'numeric', 'drift'), ('color', 'categorical', 'drift')]
>>> Baseline.from_bytes(base.to_bytes()).names
('x', 'color')
"""
from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
import orjson

from stream.detect import _binning
from stream.detect.drift_stats import (
    DEFAULT_EPS,
    OTHER,
    PSI_DRIFT,
    PSI_WARN,
    _chi2_table,
    _norm_key,
    bucket_categories,
    ks_pvalues,
    severity,
)

__all__ = [
    "FORMAT_VERSION",
    "NumericBaseline",
    "CategoricalBaseline",
    "Baseline",
    "BaselineBuilder",
    "SlidingWindow",
    "FeatureDrift",
    "DriftReport",
    "compare",
    "compare_columns",
]

#: First byte of every serialised baseline / window.
FORMAT_VERSION = 1
DEFAULT_BINS = 10
DEFAULT_SAMPLE_SIZE = 2000
DEFAULT_TOP_K = 20
DEFAULT_WINDOW = 5000

_KIND_NUMERIC = b"N"
_KIND_CATEGORICAL = b"C"
_KIND_BASELINE = b"B"
_KIND_WINDOW = b"W"


# --------------------------------------------------------------------------------- serialise
def _dump(kind: bytes, meta: dict, arrays: Sequence[np.ndarray]) -> bytes:
    """``version | kind | u32 meta length | orjson meta | raw little-endian arrays``."""
    specs = []
    blobs = []
    for a in arrays:
        a = np.ascontiguousarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder not in ("<", "|") else a.dtype
        a = a.astype(dt, copy=False)
        specs.append([a.dtype.str, list(a.shape)])
        blobs.append(a.tobytes())
    meta = dict(meta, arrays=specs)
    m = orjson.dumps(meta)
    return b"".join([bytes([FORMAT_VERSION]), kind, struct.pack("<I", len(m)), m, *blobs])


def _load(data: bytes, kind: bytes) -> tuple[dict, list[np.ndarray]]:
    data = memoryview(bytes(data)) if not isinstance(data, (bytes, bytearray)) else data
    if len(data) < 6:
        raise ValueError("truncated drift state")
    if data[0] != FORMAT_VERSION:
        raise ValueError(f"unsupported drift state format version {data[0]} "
                         f"(this build reads version {FORMAT_VERSION})")
    if bytes(data[1:2]) != kind:
        raise ValueError(f"drift state is of kind {bytes(data[1:2])!r}, expected {kind!r}")
    (n,) = struct.unpack_from("<I", data, 2)
    meta = orjson.loads(bytes(data[6 : 6 + n]))
    off = 6 + n
    arrays = []
    for dtype, shape in meta.pop("arrays"):
        dt = np.dtype(dtype)
        size = dt.itemsize * int(np.prod(shape, dtype=np.int64))
        if off + size > len(data):
            raise ValueError("truncated drift state")
        a = np.frombuffer(bytes(data[off : off + size]), dtype=dt).reshape(shape)
        arrays.append(a.astype(dt.newbyteorder("="), copy=True))
        off += size
    if off != len(data):
        raise ValueError("trailing bytes after drift state")
    return meta, arrays


# --------------------------------------------------------------------------------- features
def _as_float(values) -> np.ndarray:
    """Numeric column to float64; None / non-numeric strings become NaN (null)."""
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        a = np.array([_to_float(v) for v in values], dtype=np.float64)
    return a.ravel()


def _records_matrix(records: Sequence[Mapping], names: Sequence[str]) -> np.ndarray:
    """``rows x names`` float64 from row mappings; missing / None / non-numeric -> NaN."""
    n, F = len(records), len(names)
    if F == 0:
        return np.empty((n, 0))
    try:  # fast path: every key present, values numbers (or None, which numpy makes NaN)
        getter = itemgetter(*names)
        return np.array([getter(r) for r in records], dtype=np.float64).reshape(n, F)
    except (KeyError, TypeError, ValueError):
        return np.array([[_to_float(r.get(k)) for k in names] for r in records],
                        dtype=np.float64).reshape(n, F)


def _to_float(v) -> float:
    if v is None or isinstance(v, bool):
        return math.nan if v is None else float(v)
    try:
        return float(v)
    except OverflowError:  # an integer beyond the double range
        return math.inf if v > 0 else -math.inf
    except (TypeError, ValueError):
        return math.nan


class NumericBaseline:
    """Reference of one numeric feature: quantile bin edges, bin counts, a bounded sample.

    ``edges`` are ``[-inf, q_1, ..., q_{b-1}, +inf]`` with the interior edges the distinct
    reference quantiles at ``i / bins`` (``np.quantile(..., method="inverted_cdf")``: actual
    reference values, so discrete data get no edges between its values); bins are right-closed,
    bin ``i`` is ``(edges[i], edges[i+1]]``, which makes them balanced on the reference.
    ``sample`` is sorted and holds all the reference values if there
    are at most ``sample_size``, else the ordered subsample at ranks ``(j + 0.5) n / s`` - a
    deterministic, evenly spread stand-in for the reference ECDF. NaN is null.

    >>> b = NumericBaseline.from_values([1.0, 2.0, 3.0, 4.0, float("nan")], name="x", bins=2)
    >>> b.edges.tolist(), b.counts.tolist(), b.n, b.n_null
    ([-inf, 2.0, inf], [2, 2], 4, 1)
    >>> NumericBaseline.from_bytes(b.to_bytes()) == b
    True
    """

    kind = "numeric"
    __slots__ = ("name", "edges", "counts", "sample", "n", "n_null", "uniq", "ucum")

    def __init__(self, name: str, edges, counts, sample, n_null: int = 0):
        edges = np.asarray(edges, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.int64)
        sample = np.sort(np.asarray(sample, dtype=np.float64))
        if edges.ndim != 1 or edges.size < 2 or edges[0] != -np.inf or edges[-1] != np.inf:
            raise ValueError("edges must start at -inf and end at +inf")
        if np.any(np.diff(edges) <= 0):
            raise ValueError("edges must be strictly increasing")
        if counts.shape != (edges.size - 1,) or np.any(counts < 0):
            raise ValueError("need one non-negative count per bin")
        if np.isnan(sample).any():
            raise ValueError("the reference sample must not hold NaN")
        self.name = str(name)
        self.edges = edges
        self.counts = counts
        self.sample = sample
        self.n = int(counts.sum())
        self.n_null = int(n_null)
        self.uniq, c = np.unique(sample, return_counts=True)
        self.ucum = np.cumsum(c, dtype=np.int64)

    @classmethod
    def from_values(cls, values, name: str = "value", bins: int = DEFAULT_BINS,
                    sample_size: int | None = DEFAULT_SAMPLE_SIZE) -> NumericBaseline:
        """Fit from reference values (NaN/None are nulls). ``sample_size=None`` keeps all."""
        if bins < 1:
            raise ValueError("bins must be >= 1")
        x = _as_float(values)
        nulls = np.isnan(x)
        x = np.sort(x[~nulls])
        finite = x[np.isfinite(x)]
        if finite.size and bins > 1:
            inner = np.unique(np.quantile(finite, np.arange(1, bins) / bins,
                                          method="inverted_cdf"))
        else:
            inner = np.empty(0)
        edges = np.concatenate([[-np.inf], inner, [np.inf]])
        counts = np.bincount(np.searchsorted(inner, x, side="left"), minlength=inner.size + 1)
        if sample_size is not None and x.size > sample_size:
            if sample_size < 1:
                raise ValueError("sample_size must be >= 1")
            idx = ((np.arange(sample_size) + 0.5) * (x.size / sample_size)).astype(np.int64)
            sample = x[np.minimum(idx, x.size - 1)]
        else:
            sample = x
        return cls(name, edges, counts, sample, n_null=int(nulls.sum()))

    @property
    def inner_edges(self) -> np.ndarray:
        return self.edges[1:-1]

    @property
    def n_bins(self) -> int:
        return self.counts.size

    def bin_counts(self, values) -> np.ndarray:
        """Counts of (non-null) ``values`` in this baseline's bins (numpy; not the hot path)."""
        x = _as_float(values)
        x = x[~np.isnan(x)]
        return np.bincount(np.searchsorted(self.inner_edges, x, side="left"),
                           minlength=self.n_bins).astype(np.int64)

    def to_bytes(self) -> bytes:
        return _dump(_KIND_NUMERIC, {"name": self.name, "n_null": self.n_null},
                     [self.inner_edges, self.counts, self.sample])

    @classmethod
    def from_bytes(cls, data: bytes) -> NumericBaseline:
        meta, (inner, counts, sample) = _load(data, _KIND_NUMERIC)
        return cls(meta["name"], np.concatenate([[-np.inf], inner, [np.inf]]), counts, sample,
                   n_null=meta["n_null"])

    def __eq__(self, other) -> bool:
        return (isinstance(other, NumericBaseline) and self.name == other.name
                and self.n_null == other.n_null and np.array_equal(self.edges, other.edges)
                and np.array_equal(self.counts, other.counts)
                and np.array_equal(self.sample, other.sample))

    def __repr__(self) -> str:
        return (f"NumericBaseline({self.name!r}, bins={self.n_bins}, n={self.n}, "
                f"n_null={self.n_null}, sample={self.sample.size})")


class CategoricalBaseline:
    """Reference of one categorical feature: top-K category counts plus an "other" bucket.

    Category labels are strings (``True`` -> ``"true"``, ``3`` -> ``"3"``); ``None`` and NaN are
    nulls. ``counts[i]`` is the count of ``categories[i]``, ``counts[-1]`` the ``other`` bucket.

    >>> c = CategoricalBaseline.from_values(["a", "b", "a", None, "c"], name="k", top_k=1)
    >>> c.categories, c.counts.tolist(), c.n_null
    (('a',), [2, 2], 1)
    >>> c.encode(["a", "zzz", None]).tolist()
    [0, 1, -1]
    """

    kind = "categorical"
    __slots__ = ("name", "categories", "counts", "n", "n_null", "other", "_index")

    def __init__(self, name: str, categories: Sequence[str], counts, n_null: int = 0,
                 other: str = OTHER):
        categories = tuple(str(c) for c in categories)
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (len(categories) + 1,) or np.any(counts < 0):
            raise ValueError("need one non-negative count per category plus the other bucket")
        if len(set(categories)) != len(categories) or other in categories:
            raise ValueError("categories must be distinct and differ from the other label")
        self.name = str(name)
        self.categories = categories
        self.counts = counts
        self.n = int(counts.sum())
        self.n_null = int(n_null)
        self.other = other
        self._index = {c: i for i, c in enumerate(categories)}

    @classmethod
    def from_counts(cls, counts: Mapping, name: str = "value", top_k: int | None = DEFAULT_TOP_K,
                    n_null: int = 0, other: str = OTHER) -> CategoricalBaseline:
        labels, e, _ = bucket_categories(counts, {}, top_k=top_k, other=other)
        return cls(name, labels[:-1], e.astype(np.int64), n_null=n_null, other=other)

    @classmethod
    def from_values(cls, values, name: str = "value", top_k: int | None = DEFAULT_TOP_K,
                    other: str = OTHER) -> CategoricalBaseline:
        """Fit from reference values; the ``top_k`` most frequent categories are kept."""
        counter = Counter(_norm_key(v) for v in values)
        n_null = counter.pop(None, 0)
        return cls.from_counts(counter, name=name, top_k=top_k, n_null=n_null, other=other)

    @property
    def n_bins(self) -> int:
        return self.counts.size

    def encode(self, values) -> np.ndarray:
        """Codes of ``values``: the category index, ``len(categories)`` for other, -1 for null."""
        get = self._index.get
        o = len(self.categories)
        out = [get(v, o) if v.__class__ is str else self._code(v) for v in values]
        return np.array(out, dtype=np.int32).reshape(-1)

    def _code(self, v) -> int:
        key = _norm_key(v)
        if key is None:
            return -1
        return self._index.get(key, len(self.categories))

    def counts_dict(self) -> dict[str, int]:
        d = {c: int(n) for c, n in zip(self.categories, self.counts[:-1])}
        d[self.other] = int(self.counts[-1])
        return d

    def to_bytes(self) -> bytes:
        return _dump(_KIND_CATEGORICAL, {"name": self.name, "n_null": self.n_null,
                                         "categories": list(self.categories),
                                         "other": self.other}, [self.counts])

    @classmethod
    def from_bytes(cls, data: bytes) -> CategoricalBaseline:
        meta, (counts,) = _load(data, _KIND_CATEGORICAL)
        return cls(meta["name"], meta["categories"], counts, n_null=meta["n_null"],
                   other=meta["other"])

    def __eq__(self, other) -> bool:
        return (isinstance(other, CategoricalBaseline) and self.name == other.name
                and self.categories == other.categories and self.other == other.other
                and self.n_null == other.n_null and np.array_equal(self.counts, other.counts))

    def __repr__(self) -> str:
        return (f"CategoricalBaseline({self.name!r}, categories={len(self.categories)}, "
                f"n={self.n}, n_null={self.n_null})")


FeatureBaseline = NumericBaseline | CategoricalBaseline


def _is_numeric_column(values) -> bool:
    a = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if a.dtype.kind in "iuf":
        return True
    if a.dtype.kind != "O":
        return False
    seen = False
    for v in a.ravel():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return False
        seen = True
    return seen


class _Packed:
    """Per-feature tables padded into 2-D arrays for the compiled kernels."""

    def __init__(self, numeric: Sequence[NumericBaseline],
                 categorical: Sequence[CategoricalBaseline]):
        F = len(numeric)
        max_inner = max((b.inner_edges.size for b in numeric), default=0)
        max_uniq = max((b.uniq.size for b in numeric), default=0)
        self.inner = np.full((F, max(1, max_inner)), np.inf)
        self.n_inner = np.zeros(F, dtype=np.int32)
        self.n_bins = np.zeros(F, dtype=np.int32)
        self.ref_counts = np.zeros((F, max_inner + 1), dtype=np.int64)
        self.uniq = np.full((F, max(1, max_uniq)), np.inf)
        self.n_uniq = np.zeros(F, dtype=np.int32)
        self.ucum = np.zeros((F, max(1, max_uniq)), dtype=np.int64)
        self.n_sample = np.zeros(F, dtype=np.int64)
        self.n_ref = np.zeros(F, dtype=np.int64)
        self.n_cells = 2 * max_uniq + 1
        for i, b in enumerate(numeric):
            k = b.inner_edges.size
            self.inner[i, :k] = b.inner_edges
            self.n_inner[i] = k
            self.n_bins[i] = k + 1
            self.ref_counts[i, : k + 1] = b.counts
            m = b.uniq.size
            self.uniq[i, :m] = b.uniq
            self.n_uniq[i] = m
            self.ucum[i, :m] = b.ucum
            self.n_sample[i] = b.sample.size
            self.n_ref[i] = b.n
        C = len(categorical)
        max_cat = max((b.n_bins for b in categorical), default=1)
        self.cat_bins = np.array([b.n_bins for b in categorical], dtype=np.int32)
        self.cat_ref_counts = np.zeros((C, max_cat), dtype=np.int64)
        for i, b in enumerate(categorical):
            self.cat_ref_counts[i, : b.n_bins] = b.counts
        self.cat_n_ref = np.array([b.n for b in categorical], dtype=np.int64)


class Baseline:
    """The baselines of a model's features, numeric and categorical, in a fixed order.

    The window's batches use :attr:`numeric_names` order for numeric columns and
    :attr:`categorical_names` order for categorical ones.
    """

    def __init__(self, features: Iterable[FeatureBaseline]):
        self.features: tuple[FeatureBaseline, ...] = tuple(features)
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be distinct")
        self.numeric: tuple[NumericBaseline, ...] = tuple(
            f for f in self.features if isinstance(f, NumericBaseline))
        self.categorical: tuple[CategoricalBaseline, ...] = tuple(
            f for f in self.features if isinstance(f, CategoricalBaseline))
        if len(self.numeric) + len(self.categorical) != len(self.features):
            raise TypeError("features must be NumericBaseline or CategoricalBaseline")
        self._by_name = {f.name: f for f in self.features}
        self._packed: _Packed | None = None

    @classmethod
    def fit(cls, data, *, names: Sequence[str] | None = None,
            numeric: Iterable[str] | None = None, categorical: Iterable[str] | None = None,
            bins: int = DEFAULT_BINS, sample_size: int | None = DEFAULT_SAMPLE_SIZE,
            top_k: int | None = DEFAULT_TOP_K) -> Baseline:
        """Fit from reference data.

        ``data`` is a mapping ``column -> values`` or a 2-D array ``rows x features`` (all
        numeric; columns named by ``names`` or ``x0, x1, ...``). Columns listed in
        ``categorical`` / ``numeric`` get that type; the others are numeric if every non-null
        value is a number (bools are categorical), else categorical.
        """
        if not isinstance(data, Mapping):
            X = np.asarray(data, dtype=np.float64)
            if X.ndim != 2:
                raise ValueError("array data must be 2-D (rows x features)")
            names = list(names) if names is not None else [f"x{i}" for i in range(X.shape[1])]
            if len(names) != X.shape[1]:
                raise ValueError("one name per column required")
            data = {n: X[:, i] for i, n in enumerate(names)}
        cat = set(categorical or ())
        num = set(numeric or ())
        if cat & num:
            raise ValueError(f"declared both numeric and categorical: {sorted(cat & num)}")
        feats: list[FeatureBaseline] = []
        for name, values in data.items():
            if name in cat or (name not in num and not _is_numeric_column(values)):
                feats.append(CategoricalBaseline.from_values(values, name=name, top_k=top_k))
            else:
                feats.append(NumericBaseline.from_values(values, name=name, bins=bins,
                                                         sample_size=sample_size))
        return cls(feats)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def numeric_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.numeric)

    @property
    def categorical_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.categorical)

    def __getitem__(self, name: str) -> FeatureBaseline:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.features)

    def __iter__(self):
        return iter(self.features)

    def select(self, names: Iterable[str]) -> Baseline:
        """The baseline of a subset of the features (e.g. one window per feature group)."""
        return Baseline(self._by_name[n] for n in names)

    def packed(self) -> _Packed:
        if self._packed is None:
            self._packed = _Packed(self.numeric, self.categorical)
        return self._packed

    def encode_categorical(self, columns: Mapping[str, Sequence], n_rows: int) -> np.ndarray:
        """``rows x categorical`` int32 codes from a column mapping (absent column -> null)."""
        codes = np.full((n_rows, len(self.categorical)), -1, dtype=np.int32)
        for j, b in enumerate(self.categorical):
            col = columns.get(b.name)
            if col is not None:
                codes[:, j] = b.encode(col)
        return codes

    def to_bytes(self) -> bytes:
        parts = [f.to_bytes() for f in self.features]
        return _dump(_KIND_BASELINE, {"features": [[p[1:2].decode(), len(p)] for p in parts]},
                     [np.frombuffer(b"".join(parts), dtype=np.uint8)])

    @classmethod
    def from_bytes(cls, data: bytes) -> Baseline:
        meta, (blob,) = _load(data, _KIND_BASELINE)
        raw = blob.tobytes()
        feats: list[FeatureBaseline] = []
        off = 0
        for kind, n in meta["features"]:
            part = raw[off : off + n]
            off += n
            feats.append(NumericBaseline.from_bytes(part) if kind == "N"
                         else CategoricalBaseline.from_bytes(part))
        return cls(feats)

    def __eq__(self, other) -> bool:
        return isinstance(other, Baseline) and self.features == other.features

    def __repr__(self) -> str:
        return (f"Baseline(numeric={list(self.numeric_names)}, "
                f"categorical={list(self.categorical_names)})")


class BaselineBuilder:
    """Collects the first ``n_rows`` rows of a stream, then fits a :class:`Baseline`.

    Memory is bounded by ``n_rows``; rows past it are ignored (``update`` returns True once
    the builder is full).

    >>> bb = BaselineBuilder(numeric=["x"], categorical=["c"], n_rows=3)
    >>> bb.update_records([{"x": 1.0, "c": "a"}, {"x": 2.0, "c": "b"}])
    False
    >>> bb.update_records([{"x": 3.0, "c": "a"}, {"x": 4.0, "c": "a"}])
    True
    >>> bb.build()["x"].n, bb.build()["c"].counts_dict()
    (3, {'a': 2, 'b': 1, '__other__': 0})
    """

    def __init__(self, numeric: Sequence[str] = (), categorical: Sequence[str] = (),
                 n_rows: int = 5000, **fit_kwargs):
        if n_rows < 1:
            raise ValueError("n_rows must be >= 1")
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.n_rows = int(n_rows)
        self.fit_kwargs = fit_kwargs
        self._num = np.full((self.n_rows, len(self.numeric)), np.nan)
        self._cat: list[list] = [[] for _ in self.categorical]
        self.filled = 0

    @property
    def ready(self) -> bool:
        return self.filled >= self.n_rows

    def update(self, numeric=None, categorical=None) -> bool:
        """Add a batch: ``numeric`` rows x numeric features, ``categorical`` rows x categorical."""
        if self.ready:
            return True
        rows = None
        if numeric is not None and self.numeric:
            X = np.asarray(numeric, dtype=np.float64).reshape(-1, len(self.numeric))
            rows = X.shape[0]
        if categorical is not None and self.categorical:
            C = list(categorical)
            if rows is not None and len(C) != rows:
                raise ValueError("numeric and categorical batches differ in rows")
            rows = len(C)
        if rows is None:
            return self.ready
        take = min(rows, self.n_rows - self.filled)
        if numeric is not None and self.numeric:
            self._num[self.filled : self.filled + take] = X[:take]
        for j in range(len(self.categorical)):
            col = self._cat[j]
            if categorical is not None:
                col.extend(row[j] for row in C[:take])
            else:
                col.extend([None] * take)
        self.filled += take
        return self.ready

    def update_records(self, records: Sequence[Mapping]) -> bool:
        records = list(records)
        X = _records_matrix(records, self.numeric)
        C = [[r.get(n) for n in self.categorical] for r in records]
        return self.update(X, C)

    def build(self) -> Baseline:
        if self.filled == 0:
            raise ValueError("no rows collected")
        data: dict[str, Sequence] = {n: self._num[: self.filled, i]
                                     for i, n in enumerate(self.numeric)}
        data.update({n: self._cat[j] for j, n in enumerate(self.categorical)})
        return Baseline.fit(data, numeric=self.numeric, categorical=self.categorical,
                            **self.fit_kwargs)


# --------------------------------------------------------------------------------- window
class SlidingWindow:
    """The last ``size`` rows of a stream, counted against a :class:`Baseline`'s bins.

    Each update adds a batch of rows and evicts the oldest beyond ``size`` (count-based), in
    compiled code: per numeric feature the bin counts and the counts against the reference
    sample's points (for an exact KS statistic without sorting), per categorical feature the
    category counts; NaN / None are nulls, counted apart. Memory: ``size x features`` values
    plus the count tables, whatever the stream length.

    >>> base = Baseline.fit({"x": [0.0, 1.0, 2.0, 3.0]}, bins=2)
    >>> w = SlidingWindow(base, size=3)
    >>> w.update([[0.5], [2.5], [3.5], [float("nan")]])
    >>> len(w), w.values("x").tolist(), w.counts("x").tolist(), w.n_seen
    (3, [2.5, 3.5], [0, 2], 4)
    """

    def __init__(self, baseline: Baseline, size: int = DEFAULT_WINDOW, *, ks_cells: bool = True):
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.baseline = baseline
        self.size = int(size)
        #: keep per-feature counts against the reference sample's points (KS statistic of every
        #: feature without sorting); False: ``compare`` sorts the window column of each feature
        #: it runs the KS test for (cheaper per event when few features need it)
        self.ks_cells = bool(ks_cells)
        P = baseline.packed()
        self._P = P
        Fn, Fc = len(baseline.numeric), len(baseline.categorical)
        self._vals = np.full((self.size, Fn), np.nan)
        self._bins = np.full((self.size, Fn), -1, dtype=np.int32)
        self._cells = np.full((self.size, Fn), -1, dtype=np.int32)
        self._bin_counts = np.zeros_like(P.ref_counts)
        self._n_uniq = P.n_uniq if self.ks_cells else np.zeros(Fn, dtype=np.int32)
        self._cell_counts = np.zeros((Fn, P.n_cells if self.ks_cells else 1), dtype=np.int64)
        self._null = np.zeros(Fn, dtype=np.int64)
        self._codes = np.full((self.size, Fc), -1, dtype=np.int32)
        self._cat_counts = np.zeros_like(P.cat_ref_counts)
        self._cat_null = np.zeros(Fc, dtype=np.int64)
        self._empty_num = np.empty((0, Fn))
        self._empty_codes = np.empty((0, Fc), dtype=np.int32)
        self.pos = 0
        self.filled = 0
        self.n_seen = 0

    def __len__(self) -> int:
        return self.filled

    def reset(self) -> None:
        self.__init__(self.baseline, self.size, ks_cells=self.ks_cells)

    def update(self, numeric=None, categorical=None, *, codes=None) -> None:
        """Add a batch of rows.

        ``numeric``: ``rows x len(baseline.numeric)`` floats (NaN = null), in
        :attr:`Baseline.numeric_names` order. ``categorical``: ``rows x
        len(baseline.categorical)`` raw values, or ``codes``: the same already encoded
        (:meth:`Baseline.encode_categorical`). A side not given is null for the batch's rows.
        """
        b = self.baseline
        Fn, Fc = len(b.numeric), len(b.categorical)
        X = C = None
        if numeric is not None and Fn:
            X = np.ascontiguousarray(numeric, dtype=np.float64)
            if X.ndim == 1:
                X = X.reshape(-1, Fn) if Fn > 1 else X.reshape(-1, 1)
            if X.shape[1] != Fn:
                raise ValueError(f"expected {Fn} numeric columns, got {X.shape[1]}")
        if codes is not None and Fc:
            C = np.ascontiguousarray(codes, dtype=np.int32).reshape(-1, Fc)
            if np.any(C >= self._P.cat_bins):
                raise ValueError("categorical code out of range")
        elif categorical is not None and Fc:
            rows = list(categorical)
            C = np.empty((len(rows), Fc), dtype=np.int32)
            for j, cb in enumerate(b.categorical):
                C[:, j] = cb.encode([r[j] for r in rows])
        n = X.shape[0] if X is not None else (C.shape[0] if C is not None else None)
        if n is None:
            return
        if X is not None and C is not None and X.shape[0] != C.shape[0]:
            raise ValueError("numeric and categorical batches differ in rows")
        if n == 0:
            return
        if X is None:
            X = np.full((n, Fn), np.nan)
        if C is None:
            C = np.full((n, Fc), -1, dtype=np.int32)
        P = self._P
        pos, filled = _binning.window_update_numeric(
            X, P.inner, P.n_inner, P.uniq, self._n_uniq, self._vals, self._bins, self._cells,
            self._bin_counts, self._cell_counts, self._null, self.pos, self.filled)
        _binning.window_update_codes(C, self._codes, self._cat_counts, self._cat_null,
                                     self.pos, self.filled)
        self.pos, self.filled = pos, filled
        self.n_seen += n

    def update_columns(self, columns: Mapping[str, Sequence]) -> None:
        """Add a batch given as ``column -> values`` (absent feature columns are null)."""
        b = self.baseline
        n = None
        for name in b.names:
            if name in columns:
                n = len(columns[name])
                break
        if n is None:
            return
        X = np.full((n, len(b.numeric)), np.nan)
        for i, nb in enumerate(b.numeric):
            if nb.name in columns:
                col = _as_float(columns[nb.name])
                if col.size != n:
                    raise ValueError("columns differ in length")
                X[:, i] = col
        self.update(X, codes=b.encode_categorical(columns, n))

    def update_records(self, records: Sequence[Mapping]) -> None:
        """Add a batch of row mappings (e.g. decoded inference events); missing keys are null."""
        b = self.baseline
        records = records if isinstance(records, list) else list(records)
        if not records:
            return
        X = _records_matrix(records, b.numeric_names)
        cols = {n: [r.get(n) for r in records] for n in b.categorical_names}
        self.update(X, codes=b.encode_categorical(cols, len(records)))

    def _order(self) -> np.ndarray:
        if self.filled < self.size:
            return np.arange(self.filled)
        return (np.arange(self.size) + self.pos) % self.size

    def values(self, name: str, include_null: bool = False):
        """The window's values of a feature, oldest first (nulls dropped unless asked).

        Categorical values come back as their bucket label (a top-K category or ``other``).
        """
        b = self.baseline[name]
        order = self._order()
        if isinstance(b, NumericBaseline):
            v = self._vals[order, self.baseline.numeric.index(b)]
            return v if include_null else v[~np.isnan(v)]
        j = self.baseline.categorical.index(b)
        labels = list(b.categories) + [b.other]
        codes = self._codes[order, j]
        return [None if c < 0 else labels[c] for c in codes
                if include_null or c >= 0]

    def counts(self, name: str):
        """Bin counts (numeric, array) or ``{category: count}`` (categorical) of the window."""
        b = self.baseline[name]
        if isinstance(b, NumericBaseline):
            i = self.baseline.numeric.index(b)
            return self._bin_counts[i, : b.n_bins].copy()
        j = self.baseline.categorical.index(b)
        c = self._cat_counts[j, : b.n_bins]
        d = {k: int(v) for k, v in zip(b.categories, c[:-1])}
        d[b.other] = int(c[-1])
        return d

    def n_null(self, name: str) -> int:
        b = self.baseline[name]
        if isinstance(b, NumericBaseline):
            return int(self._null[self.baseline.numeric.index(b)])
        return int(self._cat_null[self.baseline.categorical.index(b)])

    def to_bytes(self) -> bytes:
        """The window's rows (oldest first) and counters' identity; counts are rebuilt on load.

        Size: ``8 x rows x numeric + 4 x rows x categorical`` bytes plus a small header.
        """
        order = self._order()
        return _dump(_KIND_WINDOW, {
            "size": self.size, "n_seen": self.n_seen, "ks_cells": self.ks_cells,
            "numeric": list(self.baseline.numeric_names),
            "categorical": list(self.baseline.categorical_names),
        }, [self._vals[order], self._codes[order]])

    @classmethod
    def from_bytes(cls, data: bytes, baseline: Baseline, ks_cells: bool | None = None) -> SlidingWindow:
        """A saved window; ``ks_cells`` None keeps the saved choice."""
        meta, (vals, codes) = _load(data, _KIND_WINDOW)
        if (tuple(meta["numeric"]) != baseline.numeric_names
                or tuple(meta["categorical"]) != baseline.categorical_names):
            raise ValueError("window was saved against a baseline with other features")
        w = cls(baseline, meta["size"], ks_cells=meta.get("ks_cells", True) if ks_cells is None else ks_cells)
        if vals.shape[1] or codes.shape[1]:
            w.update(vals if vals.shape[1] else None, codes=codes if codes.shape[1] else None)
        else:  # a baseline without features: only the row count matters
            w.filled = min(vals.shape[0], w.size)
        w.n_seen = meta["n_seen"]
        return w


# --------------------------------------------------------------------------------- compare
@dataclass(slots=True)
class FeatureDrift:
    """Drift of one feature. Statistics a type does not have, or cannot compute, are NaN."""

    feature: str
    type: str  # "numeric" | "categorical"
    psi: float
    js: float
    ks_stat: float = math.nan
    ks_pvalue: float = math.nan
    chi2: float = math.nan
    chi2_pvalue: float = math.nan
    severity: str = "none"  # "none" | "warn" | "drift"
    drift: bool = False
    n_reference: int = 0
    n_current: int = 0
    reason: str | None = None  # why the statistics are NaN, if they are
    ks_n_reference: int = 0  # size of the reference sample the KS test used

    def to_dict(self) -> dict:
        d = {"feature": self.feature, "type": self.type, "psi": self.psi, "js": self.js}
        if self.type == "numeric":
            d["ks_stat"] = self.ks_stat
            d["ks_pvalue"] = self.ks_pvalue
        else:
            d["chi2"] = self.chi2
            d["chi2_pvalue"] = self.chi2_pvalue
        d.update(drift=self.drift, severity=self.severity, n_reference=self.n_reference,
                 n_current=self.n_current, reason=self.reason)
        return d


@dataclass(slots=True)
class DriftReport:
    """Per-feature drift and the share of drifted features (``severity == "drift"``)."""

    features: list[FeatureDrift]
    n_rows: int

    @property
    def n_drifted(self) -> int:
        return sum(f.drift for f in self.features)

    @property
    def drift_share(self) -> float:
        return self.n_drifted / len(self.features) if self.features else 0.0

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drift]

    def __getitem__(self, name: str) -> FeatureDrift:
        for f in self.features:
            if f.feature == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"n_rows": self.n_rows, "n_drifted": self.n_drifted,
                "drift_share": self.drift_share,
                "features": [f.to_dict() for f in self.features]}

    def to_json(self) -> bytes:
        """orjson bytes; NaN statistics become ``null``."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)


def _reason(n_ref: int, n_cur: int) -> str | None:
    if n_ref <= 0 and n_cur <= 0:
        return "no non-null values in the reference nor in the current data"
    if n_ref <= 0:
        return "no non-null values in the reference"
    if n_cur <= 0:
        return "no non-null values in the current data"
    return None


def compare(baseline: Baseline, window: SlidingWindow, *, warn: float = PSI_WARN,
            drift: float = PSI_DRIFT, eps: float = DEFAULT_EPS,
            ks_method: str | None = "auto", ks_min_psi: float | None = None) -> DriftReport:
    """Compare a window with its baseline, feature by feature.

    Numeric: PSI and JS distance on the baseline's bins, KS statistic of the window's values
    against the bounded reference sample (exactly ``scipy.stats.ks_2samp(sample, window)``'s
    statistic) with its p-value by ``ks_method`` (see :func:`drift_stats.ks_pvalue`: ``"auto"``,
    scipy's default choice of exact or asymptotic, so the pair equals
    ``scipy.stats.ks_2samp(sample, window)``; ``"exact"``, ``"asymp"``; or None for the raw
    statistic and no p-value, for a caller that only needs some p-values, see
    :class:`drift_stats.KSSignificance`). Categorical: PSI and JS on the top-K + other buckets,
    chi-square of the 2 x buckets table (:func:`drift_stats.chi2_categorical`). Severity from
    PSI: ``>= warn`` -> "warn", ``>= drift`` -> "drift"; ``drift`` is ``severity == "drift"``.
    A feature with no non-null value on a side gets NaN statistics, severity "none" and a
    ``reason``. ``FeatureDrift.ks_n_reference`` is the reference sample's size (the KS test's
    first sample), which the bounded baseline caps (``sample_size``). With ``ks_min_psi``, the
    distribution tests (KS, chi-square) are run only for features whose PSI reached it (the
    others get NaN test values): for a caller whose drift rule needs both.
    """
    if window.baseline is not baseline and (
            window.baseline.numeric_names != baseline.numeric_names
            or window.baseline.categorical_names != baseline.categorical_names):
        raise ValueError("window and baseline have different features")
    P = baseline.packed()
    out: dict[str, FeatureDrift] = {}
    Fn = len(baseline.numeric)
    if Fn:
        n_cur = window.filled - window._null
        psi_v = np.empty(Fn)
        js_v = np.empty(Fn)
        _binning.psi_js(P.ref_counts, window._bin_counts, P.n_bins, eps, psi_v, js_v)
        d = np.empty(Fn)
        n_ks = n_cur if ks_min_psi is None else np.where(psi_v >= ks_min_psi, n_cur, 0)
        if window.ks_cells:
            _binning.ks_from_cells(window._cell_counts, P.ucum, P.n_uniq, P.n_sample, n_ks, d)
        else:  # sort the window column of each feature tested (the window's order is irrelevant)
            d.fill(np.nan)
            for i in np.flatnonzero((n_ks > 0) & (P.n_sample > 0)):
                col = window._vals[: window.filled, i]
                col = np.sort(col[~np.isnan(col)])
                d[i] = _binning.ks_stat_sorted(baseline.numeric[i].sample, col)
        if ks_method is None:
            ks_d, ks_p = d, np.full(Fn, np.nan)
        else:
            ks_d, ks_p = ks_pvalues(d, P.n_sample, n_cur, ks_method)
        # Python numbers at C speed, then one FeatureDrift per feature
        for b, p, js, kd, kp, nr, nc, ns in zip(baseline.numeric, psi_v.tolist(), js_v.tolist(),
                                                 ks_d.tolist(), ks_p.tolist(), P.n_ref.tolist(),
                                                 n_cur.tolist(), P.n_sample.tolist()):
            sev = severity(p, warn, drift)
            out[b.name] = FeatureDrift(b.name, "numeric", p, js, kd, kp, severity=sev,
                                       drift=sev == "drift", n_reference=nr, n_current=nc,
                                       reason=_reason(nr, nc) if nr <= 0 or nc <= 0 else None,
                                       ks_n_reference=ns)
    Fc = len(baseline.categorical)
    if Fc:
        n_cur_c = window.filled - window._cat_null
        psi_c = np.empty(Fc)
        js_c = np.empty(Fc)
        _binning.psi_js(P.cat_ref_counts, window._cat_counts, P.cat_bins, eps, psi_c, js_c)
        for j, b in enumerate(baseline.categorical):
            k = b.n_bins
            if ks_min_psi is not None and not psi_c[j] >= ks_min_psi:
                chi2, chi2_p = math.nan, math.nan
            else:
                chi2, chi2_p = _chi2_table(P.cat_ref_counts[j, :k].astype(np.float64),
                                           window._cat_counts[j, :k].astype(np.float64))
            nr, nc = int(P.cat_n_ref[j]), int(n_cur_c[j])
            p = float(psi_c[j])
            sev = severity(p, warn, drift)
            out[b.name] = FeatureDrift(b.name, "categorical", p, float(js_c[j]), chi2=chi2,
                                       chi2_pvalue=chi2_p, severity=sev, drift=sev == "drift",
                                       n_reference=nr, n_current=nc, reason=_reason(nr, nc))
    return DriftReport([out[n] for n in baseline.names], window.filled)


def compare_columns(reference: Mapping[str, Sequence], current: Mapping[str, Sequence], *,
                    numeric: Iterable[str] | None = None,
                    categorical: Iterable[str] | None = None, bins: int = DEFAULT_BINS,
                    top_k: int | None = DEFAULT_TOP_K, warn: float = PSI_WARN,
                    drift: float = PSI_DRIFT, eps: float = DEFAULT_EPS,
                    ks_method: str = "auto") -> DriftReport:
    """Offline, whole-sample comparison of two column mappings over their common columns.

    The same statistics as :func:`compare`, but computed on all the data (no window, no
    bounded sample), so ``ks_stat``/``ks_pvalue`` equal ``scipy.stats.ks_2samp(reference,
    current)`` (nulls dropped) with the default ``ks_method="auto"``. Bins come from the
    reference (``bins`` quantile bins; ``top_k`` categories + other). Undeclared columns are
    numeric if numeric on both sides. Memory is O(rows) per column.

    >>> r = compare_columns({"x": [1, 2, 3, 4], "c": ["a", "b", "a", "b"]},
    ...                     {"x": [3, 4, 5, 6], "c": ["a", "a", "a", "b"]}, bins=2)
    >>> [(f.feature, f.type, round(f.ks_stat, 3), f.severity) for f in r.features]
    [('x', 'numeric', 0.5, 'drift'), ('c', 'categorical', nan, 'drift')]
    """
    from stream.detect.drift_stats import js_distance, ks_2samp, psi as _psi

    num = set(numeric or ())
    cat = set(categorical or ())
    feats: list[FeatureDrift] = []
    n_rows = 0
    for c in reference:
        if c not in current:
            continue
        ref, cur = reference[c], current[c]
        n_rows = max(n_rows, len(cur))
        if c in cat or (c not in num and not (
                _is_numeric_column(ref) and (len(cur) == 0 or _is_numeric_column(cur)))):
            cb = CategoricalBaseline.from_values(ref, name=c, top_k=top_k)
            codes = cb.encode(cur)
            cc = np.bincount(codes[codes >= 0], minlength=cb.n_bins).astype(np.float64)
            rc = cb.counts.astype(np.float64)
            chi2, chi2_p = _chi2_table(rc, cc)
            nr, nc = cb.n, int(cc.sum())
            p = _psi(rc, cc, eps=eps)
            sev = severity(p, warn, drift)
            feats.append(FeatureDrift(c, "categorical", p, js_distance(rc, cc), chi2=chi2,
                                      chi2_pvalue=chi2_p, severity=sev, drift=sev == "drift",
                                      n_reference=nr, n_current=nc, reason=_reason(nr, nc)))
        else:
            nb = NumericBaseline.from_values(ref, name=c, bins=bins, sample_size=1)
            x = _as_float(cur)
            x = x[~np.isnan(x)]
            cc = nb.bin_counts(x)
            d, pv = ks_2samp(_as_float(ref), x, method=ks_method)
            nr, nc = nb.n, int(x.size)
            p = _psi(nb.counts, cc, eps=eps)
            sev = severity(p, warn, drift)
            feats.append(FeatureDrift(c, "numeric", p, js_distance(nb.counts, cc), d, pv,
                                      severity=sev, drift=sev == "drift", n_reference=nr,
                                      n_current=nc, reason=_reason(nr, nc), ks_n_reference=nr))
    return DriftReport(feats, n_rows)
