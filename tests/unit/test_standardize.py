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
import pickle
import struct
from array import array

import pytest
from hypothesis import given, settings, strategies as st

from stream.detect import _close, _standardize, _window
from stream.detect._standardize import Baseline, count_below
import numpy as np
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


def ref_standardize(obs, mean, var, counts=None, young=0):
    z, x = {}, {}
    zmax, zfeat, n_z, d2 = 0.0, None, 0, 0.0
    inv_scale = 1.0 / Z_SCALE
    for k, v in obs.items():
        m = mean.get(k)
        if m is None or (counts is not None and counts[k] < young):  # (young: learned from too few windows)
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


def ref_learn(feats, mean, var, a, counts=None, settle=0):
    b = 1.0 - a
    for k, v in feats.items():
        m = mean.get(k)
        if m is None:
            mean[k] = v
            var[k] = 0.0
            if counts is not None:
                counts[k] = 1 if settle else 255  # (a late joiner, or settled as before counts)
            continue
        d = v - m
        n = counts[k] if counts is not None else 255
        if counts is not None and n < 255:
            counts[k] = n + 1
        if n < settle:  # a feature's own warm-up: a running mean and variance
            w = 1.0 / (n + 1)
            mean[k] = m + w * d
            var[k] = (1.0 - w) * (var[k] + w * d * d)
            continue
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


def _run(seed, n_windows=120, feats=FEATS, reload_every=0, as_summary=False, settle=0):
    """``settle`` > 0: once the baseline is warm (n >= 10 learned windows, when ``a`` becomes the
    EWMA's), a feature that joins is counted from 1, learned with a running mean for its first
    ``settle`` windows and left out of the tests until then (the engine's rule for a metric that
    appears after the entity's warm-up); before that, features join settled, as without counts."""
    rng = random.Random(seed)
    counts = {} if settle else None
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
        if as_summary and rng.random() < 0.05:  # an expectation of 0 (int or float): availability 1
            expected[rng.choice(metrics)] = rng.choice([0, 0.0, -0.0])
        given = summary
        if as_summary:  # the engine's input: window summaries as compiled Summary objects
            given = {m: _window._summary_from([d[f] for f in SUMMARY_FIELDS]) for m, d in summary.items()}
        obs, bad = base.features(given, expected, feats, keys)
        r_obs, r_bad = ref_features(summary, expected, feats)
        assert bits(obs) == bits(r_obs) and bad == r_bad
        now = settle if n >= 10 else 0  # (the engine: min(warmup_windows, 255) once warm, else 0)
        x, d2, zmax, zfeat, n_z = base.standardize(PRESENCE, 0.125, True, now)
        rz, rx, rd2, rzmax, rzfeat, rn_z = ref_standardize(r_obs, mean, var, counts, now)
        assert bits(base.z_dict()) == bits(rz)
        assert bits(x) == bits(rx)
        assert bits((d2, zmax, zfeat, n_z)) == bits((rd2, rzmax, rzfeat, rn_z))
        if rng.random() < 0.8:  # a normal window is learned
            a = 0.05 if n >= 10 else 1.0 / (n + 1)
            base.learn(a, now)
            ref_learn(r_obs, mean, var, a, counts, now)
            n += 1
        if rng.random() < 0.02:  # drift: the baseline starts over
            base.clear()
            mean.clear(); var.clear()
            if counts is not None:
                counts.clear()
            n = 0
        if reload_every and step % reload_every == reload_every - 1:  # restart from the state
            if settle and step % (2 * reload_every) == reload_every - 1:  # the serialized state keeps the counts
                keys_, values = base.state()
                base = Baseline()
                base.load_state(keys_, values)
            else:  # mean and var dicts (an old state): every feature counts as settled
                base = Baseline()
                base.load(dict(mean), dict(var))
                if counts is not None:
                    counts.update(dict.fromkeys(counts, 255))
        if counts is not None:
            assert base.counts() == counts
        for m, s in summary.items():
            e = expected.get(m)
            expected[m] = s["count"] if e is None else e + 0.05 * (s["count"] - e)
        assert bits(base.mean_dict()) == bits(mean)
        assert bits(base.var_dict()) == bits(var)
        assert len(base) == len(mean)
        for k in list(mean)[:3] + ["nope:mean"]:
            assert bits(base.get(k)) == bits(mean.get(k)) and (k in base) == (k in mean)
            assert bits(base.get_var(k)) == bits(var.get(k))


@pytest.mark.parametrize("seed", range(8))
def test_late_features_get_their_own_warm_up_as_the_python_rule_says(seed):
    _run(seed, n_windows=160, settle=10)
    _run(seed, n_windows=160, settle=10, reload_every=23, as_summary=True)
    _run(seed, n_windows=160, settle=300)  # (past the 255 a count holds)


def test_without_settle_counts_change_nothing():
    """settle 0 (an entity in its warm-up, or before counts existed): features join settled and
    learn with the weight given, as the rule before counts: the same floats as learning without
    the argument."""
    rng = random.Random(4)
    a, b = Baseline(), Baseline()
    for i in range(50):
        summary = _window_summary(rng, ["m0", "m1", "late"] if i > 20 else ["m0", "m1"], i)
        for base in (a, b):
            base.features(summary, {}, FEATS, {})
            base.standardize(PRESENCE, 0.125, False, 0)
        a.learn(0.05)
        b.learn(0.05, 0)
    assert bits(a.mean_dict()) == bits(b.mean_dict()) and bits(a.var_dict()) == bits(b.var_dict())
    assert set(a.counts().values()) == {255}


def test_a_state_without_counts_loads_its_features_as_settled():
    base = Baseline()
    base.features({"m": {f: 1.0 for f in SUMMARY_FIELDS}}, {}, ("mean", "max"), {})
    base.learn(1.0, 10)  # (joined a warm baseline: counted from 1)
    base.learn(0.5, 10)
    keys, values = base.state()
    assert base.counts() == {"m:mean": 2, "m:max": 2} and len(values) == 2 * 16 + 2
    old = Baseline()
    old.load_state(keys, values[:32])  # as written before the counts were kept
    assert old.counts() == {"m:mean": 255, "m:max": 255} and old.mean_dict() == base.mean_dict()
    again = Baseline()
    again.load_state(keys, values)
    assert again.counts() == base.counts() and again.state() == base.state()
    with pytest.raises(ValueError, match="bytes for 2 features"):
        Baseline().load_state(keys, values[:33])


@pytest.mark.parametrize("seed", range(12))
def test_baseline_kernel_equals_the_python_rule(seed):
    _run(seed)


@pytest.mark.parametrize("seed", range(4))
def test_baseline_kernel_equals_the_python_rule_across_reloads(seed):
    _run(100 + seed, reload_every=7)


def test_other_feature_sets():
    _run(7, feats=("mean", "availability"))
    _run(8, feats=("count",))


@pytest.mark.parametrize("seed", range(6))
def test_features_of_compiled_summaries_equal_the_python_rule(seed):
    """The fast path (unboxed Summary fields by index; availability against int, float or zero
    expectations) gives the dict path's vector bit for bit."""
    _run(200 + seed, as_summary=True, reload_every=11 if seed % 2 else 0)
    _run(300 + seed, feats=("availability", "count", "mean"), as_summary=True)


def test_features_of_a_summary_name_an_unknown_feature_as_the_dict_did():
    acc = _window.WindowAccumulators(buffer_size=8)
    slot = acc.alloc()
    acc.add(slot, 0.0, 1.0, 0, 0)
    with pytest.raises(KeyError, match="nope"):
        Baseline().features({"m": acc.take_summary(slot)}, {}, ("mean", "nope"), {})


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
    assert isinstance(got, _window.Summary) and dict(got) == got.to_dict()
    assert bits(got.to_dict()) == bits(want) and [type(v) for v in got.values()] == [type(v) for v in want.values()]
    assert list(got.items()) == list(got.to_dict().items()) and list(got) == list(SUMMARY_FIELDS)
    assert all(bits(got[k]) == bits(want[k]) and bits(got.get(k)) == bits(want[k]) for k in SUMMARY_FIELDS)
    assert got.get("nope", 5) == 5 and "nope" not in got and "median" in got
    with pytest.raises(KeyError):
        got["nope"]
    assert got == want and want == got and not (got != want)
    assert pickle.loads(pickle.dumps(got)) == got
    assert acc.used == used - 1
    assert tuple(got) == SUMMARY_FIELDS


@pytest.mark.parametrize("module", [_standardize, _window, _close])
def test_module_examples(module):
    """The compiled modules' docstring examples (pytest collects doctests from .py files only)."""
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


# --- shared layouts: baselines with the same key sequence share one Layout --------------------
FEATS2 = ("mean", "availability")


class _Ref:
    """One baseline under test and its reference state (dicts), fed by its own random stream."""

    def __init__(self, rng, metrics, feats):
        self.rng, self.metrics, self.feats = rng, metrics, feats
        self.cache = {}
        self.base = Baseline()
        self.mean, self.var, self.expected = {}, {}, {}
        self.n = 0
        self.feats_last = None
        self.obs, self.z = {}, {}
        self.keys = []  # the positions seen so far: the baseline's keys must keep them

    def window(self, step):
        rng, base = self.rng, self.base
        feats = self.feats if rng.random() < 0.9 else (FEATS2 if self.feats != FEATS2 else FEATS)
        self.feats_last = feats
        cache = self.cache.setdefault(feats, {})
        summary = _window_summary(rng, self.metrics, step)
        build = rng.random() < 0.7
        obs, bad = base.features(summary, self.expected, feats, cache, build)
        r_obs, r_bad = ref_features(summary, self.expected, feats)
        assert bad == r_bad and (bits(obs) == bits(r_obs) if build else obs is None)
        self.obs, self.z = r_obs, {}
        if rng.random() < 0.9:
            x, d2, zmax, zfeat, n_z = base.standardize(PRESENCE)
            rz, rx, rd2, rzmax, rzfeat, rn_z = ref_standardize(r_obs, self.mean, self.var)
            assert bits((x, d2, zmax, zfeat, n_z)) == bits((rx, rd2, rzmax, rzfeat, rn_z))
            self.z = rz
            if rng.random() < 0.8:
                a = 0.05 if self.n >= 10 else 1.0 / (self.n + 1)
                base.learn(a)
                ref_learn(r_obs, self.mean, self.var, a)
                self.n += 1
        for m, s in summary.items():
            e = self.expected.get(m)
            self.expected[m] = s["count"] if e is None else e + 0.05 * (s["count"] - e)

    def check(self):
        base = self.base
        assert bits(base.mean_dict()) == bits(self.mean)
        assert bits(base.var_dict()) == bits(self.var)
        assert len(base) == len(self.mean)
        assert bits(base.obs_dict()) == bits(self.obs)
        assert bits(base.z_dict()) == bits(self.z)
        for k in list(self.mean)[-3:] + ["nope:mean"]:
            assert bits(base.get(k)) == bits(self.mean.get(k)) and (k in base) == (k in self.mean)
            assert bits(base.get_var(k)) == bits(self.var.get(k))
        keys = base.keys
        assert keys[:len(self.keys)] == self.keys  # positions never move
        assert base.index == {k: i for i, k in enumerate(keys)} and base.layout.keys == keys
        self.keys = keys
        # between calls a baseline is on the canonical layout of its feature tuple and keys
        lay = base.layout
        assert lay.shared and lay is _standardize._layouts[(lay.mfeats, tuple(keys))]
        assert lay.mfeats in (None, self.feats_last)


@pytest.mark.parametrize("seed", range(8))
def test_baselines_sharing_layouts_equal_the_python_rule(seed):
    """Several baselines, some with the same metrics, some not (in other orders, metrics appearing
    later, another feature tuple now and then), fed in turn: each stays equal to its reference
    whatever the others do (add keys, clear, reload)."""
    rng = random.Random(1000 + seed)
    pool = ["m0", "zz", "a:b", "cpu", "m1", "disk"]
    refs = []
    for i in range(8):
        metrics = pool[:3] if i < 4 else rng.sample(pool, rng.randint(1, 5))  # 4 alike, 4 random
        refs.append(_Ref(random.Random(rng.random()), metrics, FEATS if i % 3 else FEATS2))
    sharing = 0
    for step in range(150):
        r = refs[rng.randrange(len(refs))]
        if step == 60:
            for r2 in refs[:2]:
                r2.metrics = r2.metrics + ["late_metric"]  # two of the alike add a key
        u = rng.random()
        if u < 0.03:
            r.base.clear()
            r.mean.clear(); r.var.clear(); r.n = 0
        elif u < 0.06:  # restart from the state: a new baseline
            r.base = Baseline()
            r.base.load(dict(r.mean), dict(r.var))
            r.obs, r.z, r.keys = {}, {}, []
        elif u < 0.08:  # load into the same baseline (positions kept)
            r.base.load(dict(r.mean), dict(r.var))
        else:
            r.window(step)
        for r2 in refs:
            r2.check()
        sharing = max(sharing, len(refs) - len({id(r2.base.layout) for r2 in refs}))
    assert sharing >= 2  # (layouts were shared)


def _feed(base, metrics, feats=FEATS, value=1.0):
    summary = {m: {**{f: value for f in SUMMARY_FIELDS}, "count": 2} for m in metrics}
    return base.features(summary, {}, feats, {})


def test_layout_shared_then_copied_on_write():
    a, b, c = Baseline(), Baseline(), Baseline()
    _feed(a, ["cpu", "mem"])
    a.learn(1.0)
    _feed(b, ["mem", "cpu"])  # one window: sorted, the same key sequence
    b.learn(1.0)
    _feed(c, ["cpu"]); _feed(c, ["cpu", "mem"])  # the same sequence, built in two steps
    assert a.layout is b.layout is c.layout and a.layout.shared
    assert _standardize._layouts[(FEATS, tuple(a.keys))] is a.layout
    before = (a.keys, a.index, a.mean_dict(), a.var_dict())
    _feed(b, ["cpu", "disk", "mem"], value=3.0)  # b adds keys: its own layout from now on
    b.learn(0.5)
    assert b.layout is not a.layout and b.layout.shared
    assert (a.keys, a.index, a.mean_dict(), a.var_dict()) == before and a.layout is c.layout
    assert b.keys[:len(before[0])] == before[0] and b.keys[len(before[0]):] == [f"disk:{f}" for f in FEATS]
    assert b.mean_dict()["cpu:mean"] == 2.0 and b.mean_dict()["disk:mean"] == 3.0
    assert a.mean_dict()["cpu:mean"] == 1.0
    _feed(a, ["cpu", "disk", "mem"]); _feed(a, ["cpu"])  # a catches up: shares b's layout
    assert a.layout is b.layout and c.layout is not a.layout
    _feed(c, ["cpu", "mem"], feats=FEATS2)  # another feature tuple: same keys, another layout
    assert c.keys == before[0] and c.layout.shared and c.layout.mfeats == FEATS2
    assert bits(c.obs_dict()) == bits({"cpu:mean": 1.0, "cpu:availability": 1.0,
                                      "mem:mean": 1.0, "mem:availability": 1.0})
    _feed(c, ["cpu", "mem"])  # back to FEATS
    assert bits(c.obs_dict()) == bits(_feed(Baseline(), ["cpu", "mem"])[0])
    assert c.layout is _standardize._layouts[(FEATS, tuple(before[0]))] and c.layout.mfeats == FEATS


def test_load_shares_the_layout_then_features():
    a = Baseline()
    _feed(a, ["cpu", "mem"], value=2.0)
    a.learn(1.0)
    b = Baseline()
    b.load(a.mean_dict(), a.var_dict())  # the same keys in the same order, no feature tuple yet
    assert b.keys == a.keys and b.layout.shared and b.layout.mfeats is None
    seq = tuple(a.keys)
    assert _standardize._layouts[(None, seq)] is b.layout
    obs, _ = _feed(b, ["cpu", "mem"], value=4.0)  # then a's layout (and the other one is freed)
    b.learn(0.5)
    assert b.layout is a.layout and (None, seq) not in _standardize._layouts
    assert b.mean_dict()["mem:mean"] == 3.0 and a.mean_dict()["mem:mean"] == 2.0
    c = Baseline()
    c.load({"mem:mean": 1.0, "cpu:mean": 2.0}, {"mem:mean": 0.0, "cpu:mean": 0.0})  # another order
    obs, _ = _feed(c, ["cpu", "mem"], value=4.0)
    assert list(obs) == list(_feed(Baseline(), ["cpu", "mem"])[0])  # vector order: metrics, features
    assert c.keys[:2] == ["mem:mean", "cpu:mean"] and c.layout is not a.layout
    x, *_ = c.standardize(PRESENCE)
    assert x["cpu:mean"] == 1.0 and x["cpu:std"] == 0.5  # baseline 2 (var 0): z large; no baseline: 0.5


def test_layouts_freed_with_their_baselines():
    import gc
    gc.collect()
    before = set(_standardize._layouts.keys())
    bases = [Baseline() for _ in range(50)]
    for i, b in enumerate(bases):
        _feed(b, [f"gc_{i % 5}", f"gc_x{i % 3}"])
        b.learn(1.0)
        if i % 7 == 0:
            b.load(b.mean_dict(), b.var_dict())
    made = set(_standardize._layouts.keys()) - before
    assert 15 <= len(made) <= 16  # one per key sequence (+ the empty one if it was not there)
    del b, bases
    gc.collect()
    assert set(_standardize._layouts.keys()) <= before


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), max_size=300), st.floats(0, 1))
def test_count_below_on_a_float32_history_compares_in_float32(scores, score):
    f32 = np.float32
    expect = sum(f32(score) > f32(h) for h in scores)
    assert count_below(array("f", scores), score) == expect
