"""The compiled per-window kernels (stream/detect/_standardize.pyx, WindowAccumulators.take_summary)
against the Python rules they replaced, bit for bit.

The reference below is the engine's former Python code (features, the z / x / d2 / zmax pass, the
EWMA baseline update over dicts), kept here verbatim as the specification; the compiled
:class:`Baseline` must give exactly the same floats (compared by their bits), dicts in the same
order, and the same serialized baseline, over random vectors with NaN / inf, constant
features, missing metrics, new metrics appearing, resets and reloads.
"""
from __future__ import annotations

import doctest
import math
import random
import struct
from array import array

import pytest
from hypothesis import given, settings, strategies as st

from stream.detect import _standardize, _window
from stream.detect._standardize import Baseline, count_below
from stream.detect.window import SUMMARY_FIELDS

FEATS = ("mean", "std", "min", "max", "median", "iqr", "delta", "slope", "count", "availability")
PRESENCE = ("count", "availability")
Z_SCALE = 8.0


# --- the reference: the engine's Python rules before the compiled kernel ----------------------
def ref_features(summary, expected, feats):
    out, bad = {}, 0
    for metric in sorted(summary):
        s = summary[metric]
        exp = expected.get(metric)
        for f in feats:
            if f == "availability":
                v = min(1.0, s["count"] / exp) if exp else 1.0
            else:
                v = float(s[f])
            if not math.isfinite(v):
                bad += 1
                continue
            out[f"{metric}:{f}"] = v
    return out, bad


def ref_standardize(obs, mean, var):
    z, x = {}, {}
    zmax, zfeat, n_z, d2 = 0.0, None, 0, 0.0
    inv_scale = 1.0 / Z_SCALE
    for k, v in obs.items():
        m = mean.get(k)
        if m is None:
            z[k] = 0.0
            x[k] = 0.5
            continue
        sd = math.sqrt(var[k])
        am = m if m >= 0.0 else -m
        floor = 1e-3 * (am if am > 1e-9 else 1e-9) + 1e-9
        zk = z[k] = (v - m) / (sd if sd > floor else floor)
        d2 += zk * zk
        t = 0.5 + zk * inv_scale
        x[k] = 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)
        if sd > floor:
            n_z += 1
            a = zk if zk >= 0.0 else -zk
            if a > zmax and not k.endswith(PRESENCE):
                zmax, zfeat = a, k
    return z, x, d2, zmax, zfeat, n_z


def ref_learn(feats, mean, var, a):
    b = 1.0 - a
    for k, v in feats.items():
        m = mean.get(k)
        if m is None:
            mean[k] = v
            var[k] = 0.0
            continue
        d = v - m
        mean[k] = m + a * d
        var[k] = b * (var[k] + a * d * d)


def bits(o):
    """Floats by their bits (so -0.0 != 0.0 and NaN == NaN), dicts as ordered item lists."""
    if isinstance(o, float):
        return ("f", struct.pack("<d", o))
    if isinstance(o, dict):
        return [(k, bits(v)) for k, v in o.items()]
    if isinstance(o, (list, tuple)):
        return [bits(v) for v in o]
    return o


# --- random windows ---------------------------------------------------------------------------
def _value(rng, level):
    r = rng.random()
    if r < 0.01:
        return rng.choice([math.nan, math.inf, -math.inf])
    if r < 0.05:
        return level  # a constant (degenerate) feature now and then
    if r < 0.06:
        return -0.0
    return level + rng.gauss(0, 1 + abs(level) * rng.choice([0.01, 0.3]))


def _window_summary(rng, metrics, step):
    out = {}
    for i, m in enumerate(metrics):
        if rng.random() < 0.1:
            continue  # the metric is missing from this window
        s = {f: _value(rng, 10.0 * (i + 1) + (50 if step > 0 and rng.random() < 0.02 else 0)) for f in SUMMARY_FIELDS}
        s["count"] = rng.choice([1, 2, 5, 6, 6, 6])
        out[m] = s
    return out


def _run(seed, n_windows=120, feats=FEATS, reload_every=0):
    rng = random.Random(seed)
    metrics = ["m0", "zz", "a:b", "cpu", "m1"][: rng.randint(1, 5)]
    keys: dict = {}
    base = Baseline()
    mean, var = {}, {}
    expected: dict = {}
    n = 0
    for step in range(n_windows):
        if step == n_windows // 2:
            metrics = metrics + ["late_metric"]  # a metric appears later
        summary = _window_summary(rng, metrics, step)
        obs, bad = base.features(summary, expected, feats, keys)
        r_obs, r_bad = ref_features(summary, expected, feats)
        assert bits(obs) == bits(r_obs) and bad == r_bad
        x, d2, zmax, zfeat, n_z = base.standardize(PRESENCE)
        rz, rx, rd2, rzmax, rzfeat, rn_z = ref_standardize(r_obs, mean, var)
        assert bits(base.z_dict()) == bits(rz)
        assert bits(x) == bits(rx)
        assert bits((d2, zmax, zfeat, n_z)) == bits((rd2, rzmax, rzfeat, rn_z))
        if rng.random() < 0.8:  # a normal window is learned
            a = 0.05 if n >= 10 else 1.0 / (n + 1)
            base.learn(a)
            ref_learn(r_obs, mean, var, a)
            n += 1
        if rng.random() < 0.02:  # drift: the baseline starts over
            base.clear()
            mean.clear(); var.clear()
            n = 0
        if reload_every and step % reload_every == reload_every - 1:  # restart from the state
            base = Baseline()
            base.load(dict(mean), dict(var))
        for m, s in summary.items():
            e = expected.get(m)
            expected[m] = s["count"] if e is None else e + 0.05 * (s["count"] - e)
        assert bits(base.mean_dict()) == bits(mean)
        assert bits(base.var_dict()) == bits(var)
        assert len(base) == len(mean)
        for k in list(mean)[:3] + ["nope:mean"]:
            assert bits(base.get(k)) == bits(mean.get(k)) and (k in base) == (k in mean)
            assert bits(base.get_var(k)) == bits(var.get(k))


@pytest.mark.parametrize("seed", range(12))
def test_baseline_kernel_equals_the_python_rule(seed):
    _run(seed)


@pytest.mark.parametrize("seed", range(4))
def test_baseline_kernel_equals_the_python_rule_across_reloads(seed):
    _run(100 + seed, reload_every=7)


def test_other_feature_sets():
    _run(7, feats=("mean", "availability"))
    _run(8, feats=("count",))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=False, allow_infinity=False, width=64),
                          st.floats(min_value=0, max_value=1e12, allow_nan=False)), min_size=1, max_size=8),
       st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=8),
       st.floats(min_value=0.0, max_value=1.0))
def test_standardize_any_floats(baseline, values, a):
    """Extreme and signed values: the compiled z / x / d2 / zmax and the update match exactly."""
    names = [f"k{i}" for i in range(max(len(baseline), len(values)))]
    # one feature per metric ("k<i>:mean"); the first len(baseline) of them have a baseline
    mean = {f"{names[i]}:mean": m for i, (m, _) in enumerate(baseline)}
    var = {f"{names[i]}:mean": v for i, (_, v) in enumerate(baseline)}
    summary = {f"k{i}": {"mean": v} for i, v in enumerate(values)}
    base = Baseline()
    base.load(dict(mean), dict(var))
    obs, bad = base.features(summary, {}, ("mean",), {})
    r_obs, r_bad = ref_features(summary, {}, ("mean",))
    assert bits(obs) == bits(r_obs) and bad == r_bad
    x, d2, zmax, zfeat, n_z = base.standardize(PRESENCE)
    rz, rx, rd2, rzmax, rzfeat, rn_z = ref_standardize(r_obs, mean, var)
    assert bits((base.z_dict(), x, d2, zmax, zfeat, n_z)) == bits((rz, rx, rd2, rzmax, rzfeat, rn_z))
    base.learn(a)
    ref_learn(r_obs, mean, var, a)
    assert bits((base.mean_dict(), base.var_dict())) == bits((mean, var))


def test_load_rejects_mismatched_mean_and_var():
    with pytest.raises(ValueError):
        Baseline().load({"a": 1.0, "b": 2.0}, {"b": 0.0, "a": 0.0})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False), max_size=300), st.floats(allow_nan=False))
def test_count_below_is_the_python_rule(scores, score):
    assert count_below(array("d", scores), score) == sum(map(score.__gt__, scores))


@pytest.mark.parametrize("n", [1, 2, 7, 32, 33, 100])
def test_take_summary_is_summary_then_release(n):
    rng = random.Random(n)
    acc = _window.WindowAccumulators(buffer_size=32)
    a, b = acc.alloc(), acc.alloc()
    for i in range(n):
        t, v, off = float(i * 3 + rng.random()), rng.gauss(5, 2), rng.randint(0, 99)
        acc.add(a, t, v, off, 3)
        acc.add(b, t, v, off, 3)
    want = dict(zip(SUMMARY_FIELDS, acc.summary(a)))
    acc.release(a)
    used = acc.used
    got = acc.take_summary(b)
    assert bits(got) == bits(want) and [type(v) for v in got.values()] == [type(v) for v in want.values()]
    assert acc.used == used - 1
    assert tuple(got) == SUMMARY_FIELDS


def test_module_examples():
    """The compiled module's docstring examples (pytest collects doctests from .py files only)."""
    res = doctest.testmod(_standardize, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0
