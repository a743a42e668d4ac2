"""Drift statistics: PSI, Jensen-Shannon distance, two-sample KS and chi-square.

Pure functions over bin counts (PSI, JS), samples (KS) and category counts (chi-square,
categorical PSI), used by :mod:`stream.detect.baseline` (the streaming path), ``stream drift``
(the offline command) and the unit tests, which hold every function to a plain numpy or scipy
computation.

Conventions
-----------
* Missing data never raises: a side with no (non-null) observation gives ``nan`` statistics,
  and :func:`severity` maps ``nan`` to ``"none"``. NaN values inside a sample are nulls and are
  dropped before KS.
* ``psi`` smooths empty bins (see its docstring); ``js_distance`` needs no smoothing because
  ``0 * log 0 = 0``.
* ``ks_2samp`` returns exactly what ``scipy.stats.ks_2samp(a, b)`` returns (``method="auto"``,
  two-sided), with the statistic computed by one merge pass over the sorted samples; every KS
  p-value comes from scipy's own distributions (:func:`ks_pvalue`), never from a hand-written
  or limiting formula.

>>> round(psi([10, 20, 70], [10, 20, 70]), 12)
0.0
>>> round(js_distance([1, 0], [0, 1]), 12)
1.0
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from stream.detect import _binning

__all__ = [
    "DEFAULT_EPS",
    "OTHER",
    "PSI_WARN",
    "PSI_DRIFT",
    "psi",
    "js_distance",
    "ks_2samp",
    "ks_pvalue",
    "ks_pvalues",
    "KSSignificance",
    "chi2_categorical",
    "psi_categorical",
    "bucket_categories",
    "severity",
]

#: Pseudo-proportion added to every bin before the PSI log ratio.
DEFAULT_EPS = 1e-4
#: Label of the bucket that collects categories outside the reference's top-K.
OTHER = "__other__"
#: Default PSI thresholds: ``>= PSI_WARN`` is "warn", ``>= PSI_DRIFT`` is "drift".
PSI_WARN = 0.1
PSI_DRIFT = 0.25

# scipy.stats.ks_2samp(method="auto") is exact up to this many observations per side.
_MAX_AUTO_N = 10000
_INT32_MAX = np.iinfo(np.int32).max

try:  # the same helper scipy.stats.ks_2samp calls for its exact p-value
    from scipy.stats._stats_py import _attempt_exact_2kssamp as _scipy_exact_2kssamp
except ImportError:  # pragma: no cover - a future scipy moved it: fall back to 'asymp'
    _scipy_exact_2kssamp = None


def _counts(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if np.any(a < 0) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite and non-negative")
    return a


def psi(expected_counts, actual_counts, eps: float = DEFAULT_EPS) -> float:
    """Population Stability Index of two count vectors on the same bins.

    With ``p_i = e_i / sum(e)`` and ``q_i = a_i / sum(a)`` over ``k`` bins, empty bins are
    smoothed by adding ``eps`` to every proportion and renormalising::

        p'_i = (p_i + eps) / (1 + k * eps)        q'_i = (q_i + eps) / (1 + k * eps)
        PSI  = sum_i (q'_i - p'_i) * ln(q'_i / p'_i)

    so a bin empty on one side contributes a large but finite term. ``eps=0`` gives the
    unsmoothed PSI (``inf`` if a bin is empty on exactly one side). Returns ``nan`` if either
    side has no counts. The conventional reading: < 0.1 stable, 0.1-0.25 moderate shift,
    >= 0.25 significant shift (see :func:`severity`).

    >>> round(psi([50, 50], [50, 50]), 12)
    0.0
    >>> round(psi([25, 25, 25, 25], [10, 20, 30, 40]), 6)
    0.228005
    >>> round(psi([100, 0], [50, 50]), 4)      # an empty reference bin is smoothed
    4.6043
    >>> psi([0, 0], [1, 2])
    nan
    """
    e = _counts(expected_counts, "expected_counts")
    a = _counts(actual_counts, "actual_counts")
    if e.shape != a.shape:
        raise ValueError(f"bin count mismatch: {e.size} expected vs {a.size} actual bins")
    E, A = e.sum(), a.sum()
    if e.size == 0 or E <= 0 or A <= 0:
        return math.nan
    k = e.size
    p = (e / E + eps) / (1.0 + k * eps)
    q = (a / A + eps) / (1.0 + k * eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (q - p) * np.log(q / p)
    terms[(p == q)] = 0.0
    return float(np.sum(terms))


def js_distance(p_counts, q_counts) -> float:
    """Jensen-Shannon distance (base 2) of two count vectors on the same bins, in ``[0, 1]``.

    The square root of the JS divergence ``0.5 KL(p||m) + 0.5 KL(q||m)`` with ``m = (p + q)/2``,
    logs in base 2. No smoothing: terms with a zero proportion are ``0`` (``0 * log 0 = 0``) and
    ``m > 0`` wherever ``p`` or ``q`` is. Equal to
    ``scipy.spatial.distance.jensenshannon(p, q, base=2)``. ``nan`` if either side is empty.

    >>> js_distance([5, 5], [5, 5])
    0.0
    >>> round(js_distance([1, 0], [0, 1]), 12)
    1.0
    >>> round(js_distance([10, 20, 30, 40], [40, 30, 20, 10]), 6)
    0.391868
    """
    pc = _counts(p_counts, "p_counts")
    qc = _counts(q_counts, "q_counts")
    if pc.shape != qc.shape:
        raise ValueError(f"bin count mismatch: {pc.size} vs {qc.size} bins")
    P, Q = pc.sum(), qc.sum()
    if pc.size == 0 or P <= 0 or Q <= 0:
        return math.nan
    p = pc / P
    q = qc / Q
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        tp = np.where(p > 0, 0.5 * p * np.log(p / m), 0.0)
        tq = np.where(q > 0, 0.5 * q * np.log(q / m), 0.0)
    jsd = float(np.sum(tp + tq)) / math.log(2.0)
    return math.sqrt(min(max(jsd, 0.0), 1.0))


def _sample(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[~np.isnan(a)]


def _lattice(n1: int, n2: int, d: float) -> tuple[int, int]:
    """``(h, lcm)``: ``d`` on scipy's exact lattice ``h / lcm(n1, n2)`` (as scipy rounds it)."""
    g = math.gcd(n1, n2)
    lcm = (n1 // g) * n2
    return int(np.round(d * lcm)), lcm


def _ks_pvalue_uncached(d: float, n1: int, n2: int, mode: str) -> tuple[float, float]:
    prob = math.nan
    if mode == "exact":
        if _scipy_exact_2kssamp is None:  # pragma: no cover
            mode = "asymp"
        else:
            success, d, prob = _scipy_exact_2kssamp(n1, n2, math.gcd(n1, n2), d, "two-sided")
            if not success:
                mode = "asymp"
    if mode == "asymp":
        from scipy.stats import kstwo

        m, n = sorted([float(n1), float(n2)], reverse=True)
        en = m * n / (m + n)
        with np.errstate(all="ignore"):  # n1 = n2 = 1 rounds en to 0: NaN, as in scipy
            prob = kstwo.sf(d, np.round(en))
    return float(d), float(np.clip(prob, 0.0, 1.0))


#: scipy's p-values already computed: key -> (statistic, p-value); bounded (cleared when full)
_PVALUE_CACHE: dict[tuple, tuple[float, float]] = {}
_PVALUE_CACHE_MAX = 65536


def _mode(n1: int, n2: int, method: str) -> str:
    if method == "auto":  # scipy.stats.ks_2samp's default rule
        return "exact" if max(n1, n2) <= _MAX_AUTO_N else "asymp"
    if method == "exact":
        g = math.gcd(n1, n2)
        return "asymp" if n1 // g >= _INT32_MAX / (n2 // g) else "exact"
    if method == "asymp":
        return method
    raise ValueError(f"unknown KS method {method!r}")


def ks_pvalue(d: float, n1: int, n2: int, method: str = "auto") -> tuple[float, float]:
    """Two-sided two-sample KS p-value for statistic ``d`` and sample sizes ``n1``, ``n2``.

    Returns ``(statistic, pvalue)``: like scipy, the exact method reports the statistic rounded
    to the lattice ``h / lcm(n1, n2)`` it computed the probability for.

    ``method`` (scipy's names and rules):

    * ``"auto"`` - scipy's default: exact if ``max(n1, n2) <= 10000``, else ``"asymp"``; an
      exact computation that fails numerically also falls back to ``"asymp"``;
    * ``"exact"`` - exact unless ``lcm(n1, n2)`` is too large (scipy's rule);
    * ``"asymp"`` - ``scipy.stats.kstwo.sf(d, round(n1 n2 / (n1 + n2)))``, scipy's asymptotic.

    The distributions are scipy's own, not re-implemented: the exact one is the helper
    ``scipy.stats.ks_2samp`` itself calls (``scipy.stats._stats_py._attempt_exact_2kssamp``;
    scipy has no public function for the exact two-sample distribution) and the asymptotic one
    is ``scipy.stats.kstwo``, so ``ks_pvalue`` with ``method="auto"`` reproduces
    ``scipy.stats.ks_2samp``. Results are memoised (the exact p-value depends only on
    ``n1``, ``n2`` and the lattice point), since the exact computation costs milliseconds.

    >>> d, p = ks_pvalue(0.5, 10, 10)
    >>> d, round(p, 6)
    (0.5, 0.167821)
    >>> ks_pvalue(0.0, 5, 7)
    (0.0, 1.0)
    """
    if not (n1 > 0 and n2 > 0) or math.isnan(d):
        return math.nan, math.nan
    n1, n2 = int(n1), int(n2)
    d = float(d)
    mode = _mode(n1, n2, method)
    key = (n1, n2, mode, _lattice(n1, n2, d)[0] if mode == "exact" else d)
    hit = _PVALUE_CACHE.get(key)
    if hit is None:
        if len(_PVALUE_CACHE) >= _PVALUE_CACHE_MAX:
            _PVALUE_CACHE.clear()
        hit = _PVALUE_CACHE[key] = _ks_pvalue_uncached(d, n1, n2, mode)
    return hit


def ks_pvalues(d, n1, n2, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """:func:`ks_pvalue` over arrays of statistics and sample sizes.

    Returns ``(statistics, pvalues)`` (NaN where a size is 0 or ``d`` is NaN).
    """
    d = np.asarray(d, dtype=np.float64)
    n1 = np.broadcast_to(np.asarray(n1, dtype=np.float64), d.shape)
    n2 = np.broadcast_to(np.asarray(n2, dtype=np.float64), d.shape)
    out_d = np.empty(d.shape)
    out_p = np.empty(d.shape)
    for i in np.ndindex(d.shape):
        out_d[i], out_p[i] = ks_pvalue(d[i], n1[i], n2[i], method)
    return out_d, out_p


class KSSignificance:
    """Decides ``ks_pvalue(d, n1, n2)[1] < alpha`` with as few p-value computations as possible.

    The two-sided p-value is non-increasing in ``d`` for fixed sample sizes, so per
    ``(n1, n2)`` this remembers the smallest statistic found significant and the largest
    found not significant; a query between the two computes the p-value with
    :func:`ks_pvalue` (scipy's distributions, ``method``) and narrows them. The decisions are
    those of the exact p-value; a stream's comparisons cost one or two exact computations
    per sample-size pair instead of one per feature per comparison. Bounded: at most
    ``max_pairs`` size pairs are remembered (cleared when full).

    >>> sig = KSSignificance(1e-3)
    >>> sig(0.5, 100, 100), sig(0.1, 100, 100), sig(0.6, 100, 100)
    (True, False, True)
    >>> sig.computed
    2
    """

    __slots__ = ("alpha", "method", "bounds", "computed", "max_pairs")

    def __init__(self, alpha: float, method: str = "auto", max_pairs: int = 4096):
        self.alpha = float(alpha)
        self.method = method
        self.bounds: dict[tuple[int, int], list[float]] = {}  # (n1, n2) -> [not-sig max, sig min]
        self.computed = 0
        self.max_pairs = max_pairs

    def __call__(self, d: float, n1: int, n2: int) -> bool:
        if not (n1 > 0 and n2 > 0) or math.isnan(d):
            return False
        key = (int(n1), int(n2))
        b = self.bounds.get(key)
        if b is None:
            if len(self.bounds) >= self.max_pairs:
                self.bounds.clear()
            b = self.bounds[key] = [-math.inf, math.inf]
        if d >= b[1]:
            return True
        if d <= b[0]:
            return False
        self.computed += 1
        sig = ks_pvalue(d, key[0], key[1], self.method)[1] < self.alpha
        if sig:
            b[1] = d
        else:
            b[0] = d
        return sig


def ks_2samp(a, b, method: str = "auto") -> tuple[float, float]:
    """Two-sample two-sided Kolmogorov-Smirnov test: ``(statistic, pvalue)``.

    Equal to ``scipy.stats.ks_2samp(a, b)`` (default ``method="auto"``, two-sided): the
    statistic ``max |F_a - F_b|`` is computed by one merge pass over the sorted samples (ties
    handled as scipy does, by evaluating both ECDFs after every distinct value) and the p-value
    by :func:`ks_pvalue` with scipy's own exact/asymptotic distributions and decision rule.

    Differences from scipy, on purpose: NaN values are nulls and dropped (scipy propagates
    NaN); an empty sample (after dropping nulls) gives ``(nan, nan)`` instead of raising.

    >>> ks_2samp([1, 2, 3, 4], [1, 2, 3, 4])
    (0.0, 1.0)
    >>> d, p = ks_2samp([0.1, 0.2, 0.3], [0.7, 0.8, 0.9, 1.0])
    >>> d, round(p, 6)
    (1.0, 0.057143)
    >>> ks_2samp([float("nan")], [1.0])
    (nan, nan)
    """
    x = np.sort(_sample(a))
    y = np.sort(_sample(b))
    if x.size == 0 or y.size == 0:
        return math.nan, math.nan
    d = _binning.ks_stat_sorted(x, y)
    return ks_pvalue(d, x.size, y.size, method)


def _norm_key(k):
    if isinstance(k, str):
        return k
    if k is None or (isinstance(k, float) and math.isnan(k)):
        return None
    if isinstance(k, bool):
        return "true" if k else "false"
    return str(k)


def _norm_counts(counts: Mapping) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in counts.items():
        key = _norm_key(k)
        if key is None:
            continue
        v = float(v)
        if v < 0 or not math.isfinite(v):
            raise ValueError("category counts must be finite and non-negative")
        out[key] = out.get(key, 0.0) + v
    return out


def bucket_categories(
    expected_counts: Mapping, actual_counts: Mapping, top_k: int | None = None, other: str = OTHER
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Align two category-count maps onto the reference's top-K categories plus ``other``.

    The kept categories are the ``top_k`` most frequent of ``expected_counts`` (all of them if
    ``top_k`` is None; ties broken by label), in decreasing frequency; every other category of
    either side is summed into the ``other`` bucket, which is always last (and present, even
    if empty, so the bins are fixed). Keys are normalised to strings (``True`` -> ``"true"``,
    ``1`` -> ``"1"``); ``None``/NaN keys (nulls) are ignored.

    >>> bucket_categories({"a": 5, "b": 3, "c": 1}, {"a": 2, "d": 4}, top_k=2)
    (['a', 'b', '__other__'], array([5., 3., 1.]), array([2., 0., 4.]))
    """
    exp = _norm_counts(expected_counts)
    act = _norm_counts(actual_counts)
    ranked = sorted((k for k, v in exp.items() if v > 0), key=lambda k: (-exp[k], k))
    keep = ranked if top_k is None else ranked[: max(int(top_k), 0)]
    labels = [k for k in keep if k != other] + [other]
    index = {k: i for i, k in enumerate(labels)}
    e = np.zeros(len(labels))
    a = np.zeros(len(labels))
    o = len(labels) - 1
    for k, v in exp.items():
        e[index.get(k, o)] += v
    for k, v in act.items():
        a[index.get(k, o)] += v
    return labels, e, a


def psi_categorical(
    expected_counts: Mapping,
    actual_counts: Mapping,
    top_k: int | None = None,
    eps: float = DEFAULT_EPS,
    other: str = OTHER,
) -> float:
    """PSI of two category-count maps, bucketed by :func:`bucket_categories`.

    New categories in ``actual_counts`` land in the ``other`` bucket, which is empty in the
    reference unless ``top_k`` cut some of its categories, so they raise the PSI through the
    smoothing of :func:`psi`.

    >>> round(psi_categorical({"a": 50, "b": 50}, {"a": 50, "b": 50}), 12)
    0.0
    >>> round(psi_categorical({"a": 50, "b": 50}, {"a": 40, "b": 40, "new": 20}), 4)
    1.5644
    """
    _, e, a = bucket_categories(expected_counts, actual_counts, top_k=top_k, other=other)
    return psi(e, a, eps=eps)


def chi2_categorical(expected_counts: Mapping, actual_counts: Mapping) -> tuple[float, float]:
    """Pearson chi-square test of homogeneity of reference vs current category counts.

    Builds the 2 x k contingency table (row 0 reference, row 1 current) over the union of the
    categories (keys normalised as in :func:`bucket_categories`), drops categories with zero
    count on both sides, and returns ``(chi2, pvalue)`` equal to
    ``scipy.stats.chi2_contingency(table, correction=False)`` (no Yates correction, so the
    statistic is the same for every k; ``dof = k - 1``, ``p = chi2.sf(stat, dof)``). A single
    category left gives scipy's degenerate ``(0.0, 1.0)``; a side with no counts gives
    ``(nan, nan)``.

    >>> chi2, p = chi2_categorical({"a": 30, "b": 70}, {"a": 30, "b": 70})
    >>> float(chi2), float(p)
    (0.0, 1.0)
    >>> chi2, p = chi2_categorical({"a": 60, "b": 40}, {"a": 40, "b": 60})
    >>> round(chi2, 6), round(p, 6)
    (8.0, 0.004678)
    >>> chi2_categorical({"a": 10}, {})
    (nan, nan)
    """
    exp = _norm_counts(expected_counts)
    act = _norm_counts(actual_counts)
    keys = list(exp) + [k for k in act if k not in exp]
    e = np.array([exp.get(k, 0.0) for k in keys], dtype=np.float64)
    a = np.array([act.get(k, 0.0) for k in keys], dtype=np.float64)
    return _chi2_table(e, a)


def _chi2_table(e: np.ndarray, a: np.ndarray) -> tuple[float, float]:
    """Pearson chi-square (no correction) of the 2 x k table ``[e, a]``."""
    keep = (e + a) > 0
    e, a = e[keep], a[keep]
    E, A = e.sum(), a.sum()
    if E <= 0 or A <= 0:
        return math.nan, math.nan
    k = e.size
    if k < 2:
        return 0.0, 1.0
    N = E + A
    col = e + a
    exp_e = E * col / N
    exp_a = A * col / N
    stat = float(np.sum((e - exp_e) ** 2 / exp_e) + np.sum((a - exp_a) ** 2 / exp_a))
    from scipy.stats import chi2 as _chi2

    return stat, float(_chi2.sf(stat, k - 1))


def severity(psi_value: float, warn: float = PSI_WARN, drift: float = PSI_DRIFT) -> str:
    """``"none"``, ``"warn"`` (PSI >= ``warn``) or ``"drift"`` (PSI >= ``drift``); NaN -> none.

    >>> severity(0.05), severity(0.1), severity(0.3), severity(float("nan"))
    ('none', 'warn', 'drift', 'none')
    """
    if psi_value is None:
        return "none"
    if psi_value >= drift:  # NaN compares False: "none"
        return "drift"
    if psi_value >= warn:
        return "warn"
    return "none"
