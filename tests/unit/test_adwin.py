"""The compact compiled ADWIN (stream.detect.adwin) against river's ADWIN, step by step.

Every comparison is **exact** (``==`` on the floats, NaN matching NaN): the port performs the
same IEEE-754 double operations in the same order as river's Rust helper (``-ffp-contract=off``
so the C compiler fuses no multiply-add, which Rust never does; the same libm ``log``; ``sqrt``
is correctly rounded in both), so ``estimation``, ``width``, ``variance`` and ``total`` must be
bit-identical, not merely close. A tolerance would hide a reordered sum, which is what can flip
a cut decision a thousand values later.
"""
from __future__ import annotations

import gc
import math
import pickle
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river.drift import ADWIN as RiverADWIN

from stream.detect.adwin import ADWIN, FORMAT_VERSION

FIELDS = ("drift_detected", "width", "total", "variance", "estimation", "n_detections")


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def snapshot(ad) -> tuple:
    return tuple(getattr(ad, f) for f in FIELDS)


def assert_same_state(ours, ref, where=""):
    got, exp = snapshot(ours), snapshot(ref)
    assert all(_same(g, e) for g, e in zip(got, exp)), f"{where}: ours {got} != river {exp}"


def lockstep(values, params=None, ours=None, ref=None) -> int:
    """Feed both; assert the same detection and the same numbers after every value; return
    the number of detections."""
    params = params or {}
    ours = ADWIN(**params) if ours is None else ours
    ref = RiverADWIN(**params) if ref is None else ref
    detections = 0
    for i, v in enumerate(values):
        got = ours.update(v)
        ref.update(v)
        assert got is ref.drift_detected, f"step {i} value {v!r} params {params}"
        assert_same_state(ours, ref, f"step {i} params {params}")
        detections += got
    return detections


# ------------------------------------------------------------------ streams
def normal(rng, n, mu=0.0, sd=1.0):
    return [rng.gauss(mu, sd) for _ in range(n)]


def level_shifts(rng, n, p=0.004, size=5.0, sd=1.0):
    level, out = 0.0, []
    for _ in range(n):
        if rng.random() < p:
            level += rng.choice([-1, 1]) * rng.uniform(0.3, size)
        out.append(level + rng.gauss(0, sd))
    return out


def slow_drift(rng, n, slope=0.002, sd=1.0):
    return [slope * i + rng.gauss(0, sd) for i in range(n)]


def integers(rng, n):
    lo = 0
    out = []
    for i in range(n):
        if i and i % 700 == 0:
            lo = rng.randint(-20, 20)
        out.append(rng.randint(lo, lo + 5))
    return out


def bernoulli(rng, n):
    p, out = 0.2, []
    for i in range(n):
        if i and i % 900 == 0:
            p = rng.choice([0.05, 0.2, 0.5, 0.8])
        out.append(1 if rng.random() < p else 0)
    return out


PARAMS = [
    {},
    {"delta": 0.05},
    {"delta": 1e-5},
    {"delta": 0.5, "clock": 1},
    {"clock": 1},
    {"clock": 7, "max_buckets": 2},
    {"clock": 3, "max_buckets": 3, "min_window_length": 1, "grace_period": 0},
    {"max_buckets": 9, "min_window_length": 10, "grace_period": 50},
    {"delta": 0.1, "clock": 16, "max_buckets": 4, "min_window_length": 2, "grace_period": 5},
]


@pytest.mark.parametrize("params", PARAMS, ids=[repr(p) for p in PARAMS])
@pytest.mark.parametrize("kind", ["normal", "shifts", "drift", "integers", "bernoulli"])
def test_streams_match_river_at_every_step(kind, params):
    total = 0
    for seed in range(3):
        rng = random.Random(f"{kind}-{seed}")
        values = {"normal": lambda: normal(rng, 2500, rng.uniform(-100, 100), rng.uniform(0.01, 10)),
                  "shifts": lambda: level_shifts(rng, 2500),
                  "drift": lambda: slow_drift(rng, 2500),
                  "integers": lambda: integers(rng, 2500),
                  "bernoulli": lambda: bernoulli(rng, 2500)}[kind]()
        total += lockstep(values, params)
    if kind in ("shifts", "integers") and params.get("delta", 0.002) >= 0.002:
        assert total > 0  # the cut and the reset paths ran


def test_long_streams_with_many_detections():
    rng = random.Random(7)
    values = level_shifts(rng, 30_000, p=0.001, size=3.0)
    assert lockstep(values) >= 5
    values = slow_drift(rng, 20_000, slope=0.0005)
    assert lockstep(values, {"clock": 1}) >= 1
    values = normal(rng, 20_000)  # long window, many levels
    ours = ADWIN()
    lockstep(values, ours=ours)
    assert ours.n_levels >= 10


def test_constants_and_special_values():
    for c in (0.0, 1.0, -3.5, 1e300, 1e-300, 123456789.123):
        assert lockstep([c] * 3000, {"clock": 1}) == 0
    lockstep([0.0] * 500 + [1.0] * 500 + [0.0] * 500)
    lockstep([1e12] * 200 + [1e12 + 1] * 300 + [-1e12] * 300)
    # non-finite inputs propagate identically (the engine never sends them)
    lockstep([1.0] * 40 + [math.inf] + [1.0] * 100, {"clock": 1})
    lockstep([1.0] * 40 + [math.nan] + [2.0] * 100, {"clock": 1})


def test_inputs_are_converted_as_river_does():
    lockstep([True, False, 3, 2**40, 1.5] * 100)
    import numpy as np
    lockstep(list(np.random.default_rng(1).normal(size=500)))  # numpy float64 scalars
    with pytest.raises(TypeError):
        ADWIN().update("1")


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-1000, 1000),
                              st.sampled_from([0.0, 1.0])), min_size=1, max_size=600),
    delta=st.sampled_from([0.002, 0.01, 0.2, 0.9]),
    clock=st.integers(1, 40),
    max_buckets=st.integers(2, 8),
    min_window_length=st.integers(0, 12),
    grace_period=st.integers(0, 30),
    repeat=st.integers(1, 4),
)
def test_hypothesis_streams(values, delta, clock, max_buckets, min_window_length, grace_period, repeat):
    params = dict(delta=delta, clock=clock, max_buckets=max_buckets, min_window_length=min_window_length,
                  grace_period=grace_period)
    lockstep(values * repeat, params)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), clock=st.sampled_from([1, 5, 32]), cut=st.integers(0, 3000))
def test_hypothesis_shifts_and_pickle(seed, clock, cut):
    rng = random.Random(seed)
    values = level_shifts(rng, 3000, p=0.01, size=4.0)
    ours, ref = ADWIN(clock=clock), RiverADWIN(clock=clock)
    lockstep(values[:cut], ours=ours, ref=ref)
    copy = pickle.loads(pickle.dumps(ours, protocol=5))
    assert_same_state(copy, ref)
    lockstep(values[cut:], ours=copy, ref=ref)


# ------------------------------------------------------------------ pickling
def test_pickle_round_trip_mid_stream_continues_identically():
    rng = random.Random(3)
    values = level_shifts(rng, 8000, p=0.003)
    for params in ({}, {"clock": 1, "max_buckets": 3}, {"delta": 0.3, "grace_period": 0, "min_window_length": 1}):
        ours, ref = ADWIN(**params), RiverADWIN(**params)
        pos = 0
        for cut in sorted(rng.sample(range(1, len(values)), 25)):
            lockstep(values[pos:cut], params, ours, ref)
            pos = cut
            blob = pickle.dumps(ours, protocol=5)
            again = pickle.loads(blob)
            assert again.to_bytes() == ours.to_bytes()
            assert again.rows() == ours.rows()
            assert (again.delta, again.clock, again.max_buckets, again.min_window_length, again.grace_period) == \
                   (ours.delta, ours.clock, ours.max_buckets, ours.min_window_length, ours.grace_period)
            ours = again
        lockstep(values[pos:], params, ours, ref)


def test_pickle_right_after_a_detection_keeps_the_reset_pending():
    values = [0.0] * 300 + [10.0] * 100
    ours, ref = ADWIN(clock=1), RiverADWIN(clock=1)
    for i, v in enumerate(values):
        ours.update(v)
        ref.update(v)
        if ref.drift_detected:
            break
    assert ours.drift_detected and ours.n_detections == 1
    copy = pickle.loads(pickle.dumps(ours))
    assert copy.drift_detected
    lockstep(values[i + 1:], ours=copy, ref=ref)  # the next update starts over, as river's
    assert copy.width == ref.width < 100


def test_bytes_format_is_versioned_and_compact():
    fresh = ADWIN()
    assert fresh.to_bytes()[0] == FORMAT_VERSION == 1
    assert ADWIN.from_bytes(fresh.to_bytes()).to_bytes() == fresh.to_bytes()
    ours, ref = ADWIN(), RiverADWIN()
    for v in normal(random.Random(1), 36):
        ours.update(v)
        ref.update(v)
    assert len(pickle.dumps(ours, protocol=5)) < len(pickle.dumps(ref, protocol=5)) / 2
    blob = ours.to_bytes()
    with pytest.raises(ValueError, match="version"):
        ADWIN.from_bytes(bytes([99]) + blob[1:])
    with pytest.raises(ValueError):
        ADWIN.from_bytes(blob[:-8])
    with pytest.raises(ValueError):
        ADWIN.from_bytes(b"")


def test_copy_is_independent():
    import copy
    a = ADWIN()
    for v in range(50):
        a.update(float(v % 3))
    b = copy.deepcopy(a)
    assert b.to_bytes() == a.to_bytes()
    b.update(100.0)
    assert b.to_bytes() != a.to_bytes()


# ------------------------------------------------------------------ structure, memory, corners
def test_rows_are_river_buckets_in_window_order():
    ours = ADWIN()
    rng = random.Random(5)
    for v in normal(rng, 5000):
        ours.update(v)
        rows = ours.rows()
        levels = [lv for lv, _, _ in rows]
        assert levels == sorted(levels, reverse=True)  # oldest (biggest) first
        assert sum(2 ** lv for lv in levels) == ours.width
        assert all(levels.count(lv) <= ours.max_buckets for lv in set(levels))
        assert all(var == 0.0 for lv, _, var in rows if lv == 0)


def test_instance_is_small_and_not_gc_tracked():
    a = ADWIN()
    assert sys.getsizeof(a) <= 96 and a.nbytes() == 0
    assert not gc.is_tracked(a)
    for v in range(36):
        a.update(float(v))
    assert sys.getsizeof(a) + a.nbytes() <= 400  # river's: ~1.1 KB of RSS


def test_parameters_and_invalid_ones():
    a = ADWIN(0.01, 16, 4, 3, 7)
    assert (a.delta, a.clock, a.max_buckets, a.min_window_length, a.grace_period) == (0.01, 16, 4, 3, 7)
    assert repr(a) == "ADWIN(delta=0.01, clock=16, max_buckets=4, min_window_length=3, grace_period=7)"
    assert ADWIN().estimation == 0.0 and ADWIN().width == 0.0 and not ADWIN().drift_detected
    with pytest.raises(ValueError):
        ADWIN(clock=0)  # river: a panic (modulo by zero) at the first update
    with pytest.raises(ValueError):
        ADWIN(max_buckets=0)  # river: a panic at the first update
    with pytest.raises(ValueError):
        ADWIN(max_buckets=65535)  # a level's count is a uint16 (river's a usize)


def test_max_buckets_1_matches_river_until_river_panics():
    """The one corner without parity. With max_buckets=1 a level can be left empty by a merge
    (its 2 rows go up), and once a cut has popped the top level, the level below it can be empty
    too: river then drops "the oldest row" of that empty level (reads a zero slot, then panics on
    its length, leaving its state half-updated). Ours drops the oldest row there is. Up to that
    point both agree exactly."""
    rng = random.Random(1)
    params = dict(clock=1, max_buckets=1, grace_period=0, min_window_length=1, delta=0.5)
    ours, ref = ADWIN(**params), RiverADWIN(**params)
    level = 0.0
    panicked = False
    for i in range(500):
        if rng.random() < 0.05:
            level = rng.uniform(-10, 10)
        v = level + rng.gauss(0, 1)
        got = ours.update(v)
        try:
            ref.update(v)
        except BaseException as exc:  # pyo3's PanicException derives from BaseException
            assert "slice index" in str(exc) or "overflow" in str(exc)
            panicked = True
            break
        assert got is ref.drift_detected
        assert_same_state(ours, ref, f"step {i}")
    assert panicked and i > 100
    # ours goes on, a consistent window
    for v in normal(rng, 500):
        ours.update(v)
        assert sum(2 ** lv for lv, _, _ in ours.rows()) == ours.width
