"""Every KS p-value the service reports equals scipy.stats.ks_2samp's (default method) to 1e-9.

The streaming path (``compare`` on a sliding window against the bounded reference sample, and
the monitor's alerts) and the significance decisions that gate drift are held to
``scipy.stats.ks_2samp(reference_sample, window_values)`` called on the raw samples.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.detect import drift_stats
from stream.detect.baseline import Baseline, SlidingWindow, compare
from stream.detect.drift_stats import KSSignificance, ks_pvalue
from stream.detect.monitor import SIGNIFICANCE, Monitors
from stream.detect.monitor_spec import MonitorSpec
from stream.inference_events import Inference

pytestmark = [pytest.mark.filterwarnings("ignore:ks_2samp. Exact calculation unsuccessful")]

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-9


def scipy_pair(sample, values):
    r = scipy.stats.ks_2samp(sample, values)  # default method: 'auto'
    return float(r.statistic), float(r.pvalue)


def assert_window_matches_scipy(base: Baseline, win: SlidingWindow, report=None) -> float:
    """Every numeric feature's (ks_stat, ks_pvalue) of ``compare`` vs scipy; returns max |dp|."""
    report = report or compare(base, win)  # the default method, no argument
    worst = 0.0
    for b in base.numeric:
        f = report[b.name]
        v = win.values(b.name)
        if v.size == 0 or b.sample.size == 0:
            assert math.isnan(f.ks_stat) and math.isnan(f.ks_pvalue)
            continue
        d, p = scipy_pair(b.sample, v)
        assert f.ks_n_reference == b.sample.size and f.n_current == v.size
        assert abs(f.ks_stat - d) <= TOL, (b.name, f.ks_stat, d)
        assert abs(f.ks_pvalue - p) <= TOL, (b.name, f.ks_pvalue, p)
        worst = max(worst, abs(f.ks_pvalue - p))
    return worst


values = st.one_of(st.integers(-3, 3).map(float), st.floats(-50, 50, allow_nan=False),
                   st.just(float("nan")))


@FAST
@given(st.data())
def test_streaming_window_pvalues_equal_scipy_random_and_tied(data):
    F = data.draw(st.integers(1, 3))
    n_ref = data.draw(st.integers(1, 80))
    ref = np.array(data.draw(st.lists(st.lists(values, min_size=F, max_size=F),
                                      min_size=n_ref, max_size=n_ref)))
    base = Baseline.fit(ref, bins=data.draw(st.integers(1, 8)),
                        sample_size=data.draw(st.integers(1, 60)))
    win = SlidingWindow(base, size=data.draw(st.integers(1, 70)), ks_cells=data.draw(st.booleans()))
    for _ in range(data.draw(st.integers(1, 3))):
        n = data.draw(st.integers(1, 50))
        win.update(np.array(data.draw(st.lists(st.lists(values, min_size=F, max_size=F),
                                               min_size=n, max_size=n))).reshape(n, F))
    assert_window_matches_scipy(base, win)


def test_streaming_window_pvalues_adversarial():
    rng = np.random.default_rng(11)
    cases = {
        # name: (reference column, current stream column)
        "ties": (rng.integers(0, 4, 3000).astype(float), rng.integers(0, 5, 900).astype(float)),
        "constant_both": (np.full(800, 7.0), np.full(900, 7.0)),
        "constant_shifted": (np.full(800, 7.0), np.full(900, 8.0)),
        "constant_reference": (np.full(800, 7.0), rng.normal(7, 1, 900)),
        "disjoint": (rng.normal(0, 1, 2500), rng.normal(50, 1, 900)),
        "heavy_nulls": (np.where(rng.random(3000) < 0.5, np.nan, rng.normal(size=3000)),
                        np.where(rng.random(900) < 0.9, np.nan, rng.normal(0.3, 1, 900))),
        "all_null_current": (rng.normal(size=300), np.full(900, np.nan)),
        "infinities": (np.r_[rng.normal(size=500), -np.inf, np.inf],
                       np.r_[rng.normal(size=890), [np.inf] * 10]),
    }
    names = list(cases)
    ref = np.column_stack([np.resize(cases[k][0], 3000) if cases[k][0].size != 3000
                           else cases[k][0] for k in names])
    cur = np.column_stack([cases[k][1] for k in names])
    base = Baseline.fit(ref, names=names, bins=10, sample_size=2000)
    worst = 0.0
    for size in (1, 2, 37, 500, 900):  # one-row windows; sizes unequal to the sample's
        for cells in (True, False):  # KS from the reference-point counts, or by sorting
            win = SlidingWindow(base, size=size, ks_cells=cells)
            for i in range(0, cur.shape[0], 128):
                win.update(cur[i:i + 128])
            worst = max(worst, assert_window_matches_scipy(base, win))
    assert worst <= TOL


def test_large_window_uses_scipys_asymptotic_like_ks_2samp():
    """max(n1, n2) > 10000: scipy's 'auto' switches to kstwo; so does the streaming path."""
    rng = np.random.default_rng(2)
    base = Baseline.fit(rng.normal(size=(3000, 1)), sample_size=3000)
    win = SlidingWindow(base, size=12000)
    win.update(rng.normal(0.05, 1, size=(12000, 1)))
    assert_window_matches_scipy(base, win)


@FAST
@given(st.integers(1, 3000), st.integers(1, 3000), st.floats(0.0, 1.0), st.sampled_from([1e-3, 0.05]))
def test_significance_decisions_equal_the_exact_pvalue(n1, n2, d, alpha):
    sig = KSSignificance(alpha)
    rng = np.random.default_rng(n1 * 7919 + n2)
    # many queries on the same size pair (the cached bounds at work), in random order
    for x in [d, *rng.random(12).tolist(), d / 3, min(1.0, 2 * d)]:
        assert sig(x, n1, n2) == (ks_pvalue(x, n1, n2)[1] < alpha), (x, n1, n2)
    assert not sig(math.nan, n1, n2) and not sig(0.5, 0, n2)


def test_significance_computes_few_pvalues():
    sig = KSSignificance(1e-3)
    rng = np.random.default_rng(0)
    for d in rng.uniform(0.2, 0.4, 500):  # a drifted feature, compared 500 times
        assert sig(d, 1000, 500)
    for d in rng.uniform(0.0, 0.05, 500):  # a stable one
        assert not sig(d, 1000, 500)
    assert sig.computed <= 20


def test_pvalue_memo_returns_scipys_value():
    drift_stats._PVALUE_CACHE.clear()
    a = np.arange(40.0)
    b = np.arange(13.0) + 9.5
    d, p = scipy_pair(a, b)
    for _ in range(2):  # computed, then from the memo
        d2, p2 = ks_pvalue(drift_stats.ks_2samp(a, b)[0], 40, 13)
        assert abs(d2 - d) <= TOL and abs(p2 - p) <= TOL
    with pytest.raises(ValueError):
        ks_pvalue(0.1, 10, 10, method="kolmogorov")  # the limiting law is not offered


def _inference(i, x, version="1"):
    return Inference("m", version, f"r{i}", 1.7e9 + i, x, 0.0, None, None)


def test_monitor_alert_pvalues_equal_scipy_on_the_compared_window():
    """The data_drift alert's KS pairs are scipy's on (reference sample, window at the alert)."""
    rng = np.random.default_rng(4)
    spec = MonitorSpec(baseline_size=1500, window=400, compare_every=50, prediction=False,
                       resolve_after=2)
    mon = Monitors([spec])
    alerts = []
    worst = 0.0
    n_checked = 0
    for i in range(6000):
        shift = 0.6 if 3000 <= i < 4500 else 0.0
        x = {"a": float(rng.normal(shift)), "b": float(np.round(rng.normal(0.5 * shift), 1)),
             "c": float(rng.normal()), "k": int(rng.integers(0, 4))}
        new = mon.observe(_inference(i, x), 0, i)
        for a in new:
            if a["kind"] != "data_drift":
                continue
            alerts.append(a)
            vm = mon.models["m"].versions["1"]
            base, win = vm.frozen.inputs, vm.window
            for feat in a["drift"]["features"]:
                if feat["type"] != "numeric":
                    continue
                d, p = scipy_pair(base[feat["feature"]].sample, win.values(feat["feature"]))
                assert feat["ks_reference_sample"] == base[feat["feature"]].sample.size
                assert abs(feat["ks_stat"] - d) <= TOL and abs(feat["ks_pvalue"] - p) <= TOL
                assert feat["ks_pvalue"] < SIGNIFICANCE  # drifted and warned are significant
                worst = max(worst, abs(feat["ks_pvalue"] - p))
                n_checked += 1
    assert [a["status"] for a in alerts] == ["firing", "resolved"]
    assert set(alerts[0]["drift"]["drifted"]) >= {"a"} and "c" not in alerts[0]["drift"]["drifted"]
    assert n_checked >= 1 and worst <= TOL
