"""Parity of stream.detect.hst.HalfSpaceTrees with river.anomaly.HalfSpaceTrees (exact)."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from river.anomaly import HalfSpaceTrees as RiverHST

from stream.detect import _hst
from stream.detect.hst import FORMAT_VERSION, HalfSpaceTrees, build_structure

TOL = 1e-12


def _stream(n, names, seed, p_missing=0.0, spread=1.0, anomaly_every=0):
    """List of dicts: mostly in [0, 1] (scaled by spread), some outliers, some missing keys."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, len(names))) * spread
    if anomaly_every:
        X[::anomaly_every] = rng.normal(3.0, 2.0, size=X[::anomaly_every].shape)
    drop = rng.random((n, len(names))) < p_missing
    rows = X.tolist()
    out = []
    for row, d in zip(rows, drop.tolist()):
        out.append({k: v for k, v, m in zip(names, row, d) if not m})
    return out, X, drop


def _river_masses(model, height):
    """river's r/l masses in our heap order, shape (n_trees, n_nodes)."""
    n_nodes = (1 << (height + 1)) - 1
    r = np.zeros((len(model.trees), n_nodes), dtype=np.int64)
    l = np.zeros_like(r)
    for t, root in enumerate(model.trees):
        stack = [(root, 0)]
        while stack:
            node, i = stack.pop()
            r[t, i] = node.r_mass
            l[t, i] = node.l_mass
            if 2 * i + 1 < n_nodes:
                stack.append((node.children[0], 2 * i + 1))
                stack.append((node.children[1], 2 * i + 2))
    return r, l


def _parity(events, check_masses=True, **params):
    """Run river and ours per event over the same dicts; return (river, ours) score arrays."""
    ref = RiverHST(**params)
    ours = HalfSpaceTrees(**params)
    rs = np.empty(len(events))
    hs = np.empty(len(events))
    r_score, r_learn = ref.score_one, ref.learn_one
    h_score, h_learn = ours.score_one, ours.learn_one
    for i, x in enumerate(events):
        rs[i] = r_score(x)
        r_learn(x)
        hs[i] = h_score(x)
        h_learn(x)
    if check_masses:
        r_mass, l_mass = _river_masses(ref, params.get("height", 8))
        m_r, m_l = ours._masses()
        np.testing.assert_array_equal(m_r, r_mass)
        np.testing.assert_array_equal(m_l, l_mass)
    assert ours.counter == ref.counter
    return rs, hs, ours


def _assert_close(rs, hs):
    assert np.max(np.abs(rs - hs)) <= TOL
    np.testing.assert_array_equal(rs, hs)  # in fact bit-identical


def test_compiled_module_is_loaded():
    assert _hst.__file__.endswith((".so", ".pyd")), _hst.__file__
    assert issubclass(HalfSpaceTrees, _hst.HSTCore)


def test_parity_defaults_100k_events_with_limits_outliers_and_missing():
    names = ["bytes", "cpu", "latency"]
    limits = {"cpu": (0.0, 2.0), "latency": (-1, 4)}  # "bytes" defaults to (0, 1) like river
    events, X, drop = _stream(100_000, names, seed=1, p_missing=0.01, spread=1.5,
                              anomaly_every=97)
    rs, hs, ours = _parity(events, limits=limits, seed=42)
    assert np.count_nonzero(rs) > 99_000  # scored across ~400 window pivots
    _assert_close(rs, hs)
    # the batch path over the same stream (missing features as a mask) gives the same scores
    batch = HalfSpaceTrees(limits=limits, seed=42)
    out = np.concatenate([
        batch.score_learn_many(np.where(drop, 0.0, X)[i:i + 33_333],
                               feature_names=names, missing=drop[i:i + 33_333])
        for i in range(0, len(X), 33_333)])
    np.testing.assert_array_equal(out, hs)
    assert batch.structure is ours.structure


def test_parity_small_window_no_limits():
    events, X, _ = _stream(12_000, ["a", "b", "c", "d", "e"], seed=2, anomaly_every=50)
    rs, hs, _ = _parity(events, window_size=50, seed=7)
    _assert_close(rs, hs)
    out = HalfSpaceTrees(window_size=50, seed=7).score_learn_many(X, feature_names="abcde")
    np.testing.assert_array_equal(out, hs)


def test_parity_deep_trees_height_15():
    # same random draws as n_trees=25 for the first trees; river's construction of all 25
    # trees of height 15 alone takes ~13 s, see the slow test below
    events, X, _ = _stream(1_500, ["x", "y"], seed=3, anomaly_every=11)
    rs, hs, _ = _parity(events, n_trees=2, height=15, window_size=100, seed=5,
                        limits={"y": (0, 1.2)})
    _assert_close(rs, hs)
    st = build_structure(["x", "y"], 3, 15, {"y": (0, 1.2)}, 5)  # a prefix of 25 trees' draws
    ref2 = build_structure(["x", "y"], 2, 15, {"y": (0, 1.2)}, 5, builder="river")
    np.testing.assert_array_equal(st.feature[:2], ref2.feature)
    np.testing.assert_array_equal(st.threshold[:2], ref2.threshold)


@pytest.mark.slow
def test_parity_25_trees_height_15():
    events, X, _ = _stream(800, ["x", "y", "z"], seed=4, anomaly_every=13)
    # river needs ~15 s just to build these 25 x 65,535 node objects
    rs, hs, _ = _parity(events, check_masses=False, n_trees=25, height=15, window_size=250,
                        seed=11)
    assert np.count_nonzero(rs) >= 500
    _assert_close(rs, hs)
    out = HalfSpaceTrees(n_trees=25, height=15, seed=11).score_learn_many(X,
                                                                          feature_names="xyz")
    np.testing.assert_array_equal(out, hs)


@pytest.mark.parametrize("params", [
    dict(n_trees=3, height=4, seed=5),
    dict(n_trees=4, height=6, seed=9, limits={"a": (0, 10), "c": (-2.5, 0.5)}),
    dict(n_trees=10, height=8, seed=123),
])
def test_replica_structure_equals_river_construction(params):
    a = build_structure("abc", builder="river", cache=False, **params)
    b = build_structure("abc", builder="replica", cache=False, **params)
    np.testing.assert_array_equal(a.feature, b.feature)
    np.testing.assert_array_equal(a.threshold, b.threshold)


def test_structure_is_shared_per_params_and_seed():
    a, b = HalfSpaceTrees(seed=1), HalfSpaceTrees(seed=1)
    c = HalfSpaceTrees(seed=1, limits={"x": (0, 2)})
    for m in (a, b, c):
        m.learn_one({"x": 0.5, "y": 0.1})
    assert a.structure is b.structure
    assert c.structure is not a.structure
    assert a.feature_names == ("x", "y")


# -- edge cases (all against river) --------------------------------------------------------------

def test_single_feature_uint16_masses():
    events, _, _ = _stream(3_000, ["v"], seed=5, anomaly_every=7)
    rs, hs, ours = _parity(events, n_trees=5, height=6, window_size=300, seed=3)
    assert ours._masses()[0].dtype == np.uint16
    _assert_close(rs, hs)


def test_constant_stream():
    events = [{"a": 0.3, "b": 0.3}] * 2_000
    rs, hs, _ = _parity(events, window_size=100, seed=1)
    _assert_close(rs, hs)
    assert rs[-1] == hs[-1] < 0.5


def test_missing_features_and_unknown_features():
    rng = np.random.default_rng(6)
    events = []
    for i in range(4_000):
        x = {"a": float(rng.random()), "b": float(rng.random()), "c": float(rng.random())}
        if i % 3 == 0:
            del x["b"]
        if i % 5 == 0:
            del x["a"]
        if i % 17 == 0:
            x = {}
        if i % 11 == 0:
            x["zzz"] = 99.0  # unknown to the trees: ignored by both
        events.append(x)
    events[0] = {"a": 0.1, "b": 0.2, "c": 0.3}  # trees are built over sorted(first x)
    rs, hs, _ = _parity(events, n_trees=6, height=7, window_size=64, seed=8)
    _assert_close(rs, hs)


def test_value_types_nan_ints_bools_and_mapping():
    class Row(dict):
        pass  # not an exact dict: the generic mapping path

    events = [{"a": 0.2, "b": 1}, {"a": 1, "b": 0}, {"a": True, "b": 0.5},
              {"a": float("nan"), "b": 0.4}, Row(a=0.7, b=0.1)] * 60
    rs, hs, _ = _parity(events, n_trees=4, height=5, window_size=20, seed=2)
    _assert_close(rs, hs)
    with pytest.raises(TypeError):
        HalfSpaceTrees(seed=1).learn_one({"a": "x"})


def test_window_size_one_and_height_zero():
    events, _, _ = _stream(500, ["a", "b"], seed=9)
    for params in (dict(window_size=1, n_trees=3, height=4, seed=1),
                   dict(window_size=10, n_trees=3, height=0, seed=1)):
        rs, hs, _ = _parity(events, **params)
        _assert_close(rs, hs)


def test_first_window_scores_zero_and_score_before_learn():
    m = HalfSpaceTrees(window_size=5, seed=1)
    assert m.score_one({"a": 0.5}) == 0.0 and m.structure is None
    for _ in range(4):
        m.learn_one({"a": 0.5})
        assert m.score_one({"a": 0.5}) == 0.0
    m.learn_one({"a": 0.5})
    assert not m.first_window and m.score_one({"a": 0.5}) == 0.0  # all mass on its path
    assert m.score_one({"a": 0.01}) > 0.0


def test_many_features_beyond_stack_buffer():
    names = [f"f{i:03d}" for i in range(80)]
    events, X, _ = _stream(600, names, seed=10, anomaly_every=9)
    rs, hs, _ = _parity(events, n_trees=4, height=6, window_size=40, seed=4)
    _assert_close(rs, hs)
    assert np.array_equal(
        HalfSpaceTrees(n_trees=4, height=6, window_size=40, seed=4).score_learn_many(
            X, feature_names=names), hs)


def test_score_learn_one_and_batch_default_names():
    events, X, _ = _stream(1_000, [0, 1, 2], seed=11)
    rs, hs, _ = _parity(events, window_size=60, seed=3)  # int feature names, as river allows
    a = HalfSpaceTrees(window_size=60, seed=3)
    np.testing.assert_array_equal([a.score_learn_one(x) for x in events], hs)
    b = HalfSpaceTrees(window_size=60, seed=3)
    np.testing.assert_array_equal(b.score_learn_many(X), hs)  # names default to 0..d-1
    assert b.feature_names == (0, 1, 2)


def test_batch_argument_checks():
    m = HalfSpaceTrees(seed=1)
    m.learn_one({"a": 0.1, "b": 0.2})
    with pytest.raises(ValueError):
        m.score_learn_many(np.zeros((3, 3)))
    with pytest.raises(ValueError):
        m.score_learn_many(np.zeros(3))
    with pytest.raises(ValueError):
        m.score_learn_many(np.zeros((3, 2)), feature_names=["b", "a"])
    with pytest.raises(ValueError):
        m.score_learn_many(np.zeros((3, 2)), missing=np.zeros((2, 2), bool))
    with pytest.raises(ValueError):
        HalfSpaceTrees(window_size=0)


# -- serialization --------------------------------------------------------------------------------

def _continue_equal(a, b, events):
    for x in events:
        assert a.score_one(x) == b.score_one(x)
        a.learn_one(x)
        b.learn_one(x)


def test_bytes_round_trip_continues_identically():
    events, X, _ = _stream(2_000, ["a", "b", "c"], seed=12, anomaly_every=5)
    m = HalfSpaceTrees(limits={"a": (0, 2)}, seed=21)
    m.score_learn_many(X[:1_337], feature_names="abc")  # mid-window, past several pivots
    blob = m.to_bytes()
    assert blob[0] == FORMAT_VERSION
    r = HalfSpaceTrees.from_bytes(blob)
    assert r.structure is m.structure  # not duplicated
    assert (r.counter, r.first_window, r.feature_names, r.limits) == (
        m.counter, m.first_window, m.feature_names, m.limits)
    assert len(blob) < 2 * 10 * 256 + 200  # compact uint8 masses + a small header
    assert r.to_bytes() == blob
    np.testing.assert_array_equal(r.score_learn_many(X[1_337:]), m.score_learn_many(X[1_337:]))
    _continue_equal(r, m, events[:300])
    p = pickle.loads(pickle.dumps(m))
    _continue_equal(p, m, events[300:600])


def test_bytes_round_trip_unseeded_embeds_structure_and_edge_states():
    events, _, _ = _stream(700, ["a", "b"], seed=13)
    m = HalfSpaceTrees(n_trees=3, height=5, window_size=300)  # seed=None: random trees
    for x in events[:450]:
        m.learn_one(x)
    r = HalfSpaceTrees.from_bytes(m.to_bytes())
    np.testing.assert_array_equal(r.structure.threshold, m.structure.threshold)
    _continue_equal(r, m, events[450:])
    fresh = HalfSpaceTrees.from_bytes(HalfSpaceTrees(seed=3, feature_names=["q"]).to_bytes())
    assert fresh.structure is None and fresh.feature_names == ("q",) and fresh.first_window
    first = HalfSpaceTrees(window_size=300, seed=3)
    for x in events[:10]:
        first.learn_one(x)
    _continue_equal(HalfSpaceTrees.from_bytes(first.to_bytes()), first, events[10:])
    with pytest.raises(ValueError):
        HalfSpaceTrees.from_bytes(b"\x07" + m.to_bytes()[1:])
    with pytest.raises(ValueError):
        HalfSpaceTrees.from_bytes(m.to_bytes() + b"\x00")


def test_nbytes_per_model():
    m = HalfSpaceTrees(seed=1)
    m.learn_one({"a": 0.5})
    mass = 2 * 10 * 256  # r and l, compact (2**height per tree), uint8 for window_size <= 255
    assert mass < m.nbytes < mass + 400
    assert m.structure.nbytes == 10 * 255 * 16  # shared, not counted
    assert 100_000 * m.nbytes < 1.1 * 2**30
    big = HalfSpaceTrees(window_size=1000, seed=1)
    big.learn_one({"a": 0.5})
    assert 2 * mass < big.nbytes < 2 * mass + 400  # uint16


def test_scores_are_finite_and_in_unit_interval():
    events, X, _ = _stream(3_000, ["a", "b"], seed=14, anomaly_every=3)
    out = HalfSpaceTrees(window_size=100, seed=2).score_learn_many(X, feature_names="ab")
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in out)


# -- compact masses and the v1 format -----------------------------------------------------------

def _v1_blob(ref, ours, height):
    """The bytes the v1 format held for ``ours``: its header and JSON, with river's per-node
    masses (r then l, heap order, little-endian) where v2 holds compact ones."""
    from stream.detect.hst import _HEAD

    v2 = ours.to_bytes()
    _, flags, item, _, n_trees, h, ws, counter, mlen = _HEAD.unpack_from(v2)
    meta = v2[_HEAD.size:_HEAD.size + mlen]
    r, l = _river_masses(ref, height)
    dt = f"<u{item}"
    return (_HEAD.pack(1, flags, item, 0, n_trees, h, ws, counter, mlen) + meta
            + r.astype(dt).tobytes() + l.astype(dt).tobytes())


def test_v1_state_with_per_node_masses_is_read_and_continues_like_river():
    # states written before the compact layout (changelogs hold them) load exactly
    events, _, _ = _stream(1_500, ["a", "b", "c"], seed=31, anomaly_every=4, p_missing=0.1)
    params = dict(n_trees=6, height=5, window_size=40, seed=5)
    ref, ours = RiverHST(**params), HalfSpaceTrees(**params)
    for x in events[:1_000]:  # past many pivots, mid-window
        ref.learn_one(x)
        ours.learn_one(x)
    old = HalfSpaceTrees.from_bytes(_v1_blob(ref, ours, 5))
    assert old.to_bytes()[0] == FORMAT_VERSION == 2
    r_mass, l_mass = _river_masses(ref, 5)
    np.testing.assert_array_equal(old._masses()[0], r_mass)
    np.testing.assert_array_equal(old._masses()[1], l_mass)
    for x in events[1_000:]:
        assert old.score_one(x) == ref.score_one(x)
        old.learn_one(x)
        ref.learn_one(x)


def test_inconsistent_masses_are_rejected():
    events, _, _ = _stream(300, ["a", "b"], seed=32)
    params = dict(n_trees=2, height=3, window_size=50, seed=6)
    ref, ours = RiverHST(**params), HalfSpaceTrees(**params)
    for x in events:
        ref.learn_one(x)
        ours.learn_one(x)
    v1 = bytearray(_v1_blob(ref, ours, 3))
    v1[-1] ^= 0x7F  # a leaf's latest mass no longer sums into its parent's
    with pytest.raises(ValueError, match="inconsistent masses"):
        HalfSpaceTrees.from_bytes(bytes(v1))
    v2 = bytearray(ours.to_bytes())
    n_e = 1 << 3
    v2[-2 * n_e + 1] = 255  # tree 0's l: the root's left child heavier than the root
    with pytest.raises(ValueError, match="inconsistent masses"):
        HalfSpaceTrees.from_bytes(bytes(v2))


@pytest.mark.parametrize("height", [0, 1, 4, 8])
def test_compact_masses_round_trip(height):
    from stream.detect._hst import compact_masses, expand_masses

    rng = np.random.default_rng(height)
    n_leaves = 1 << height
    leaves = rng.integers(0, 30, size=(3, n_leaves)).astype(np.uint8)
    # per-node masses of complete trees: each level the pairwise sums of the one below
    levels = [leaves.astype(np.int64)]
    while levels[0].shape[1] > 1:
        levels.insert(0, levels[0][:, 0::2] + levels[0][:, 1::2])
    full = np.concatenate(levels, axis=1).astype(np.uint16)
    c = compact_masses(full, height)
    assert c.shape == (3, n_leaves)
    np.testing.assert_array_equal(expand_masses(c, height), full)


# --- the engine's path: x read from the entity's Baseline, no dict ------------------------------
@pytest.mark.parametrize("n_metrics,seed", [(2, 0), (5, 1), (12, 2)])  # 12 x 7 = 84 keys: past the stack buffers
def test_score_base_and_learn_base_equal_the_dict_path(n_metrics, seed):
    """score_base / learn_base on a Baseline's vector give score_one / learn_one of its x dict,
    score for score and mass for mass: windows with metrics missing (names without a value),
    a metric arriving late (a name the model never had, a layout key the model lacks), features
    without a baseline (x 0.5), drifted baselines (cleared), a layout grown and shared."""
    from stream.detect._standardize import Baseline

    rng = np.random.default_rng(seed)
    feats = ("mean", "std", "min", "max", "median", "count", "availability")
    metrics = [f"m{i}" for i in range(n_metrics)]
    keys: dict = {}
    inv = 1.0 / 8.0
    bases = [Baseline(), Baseline()]  # (the same keys: one shared layout)
    by_dict = [HalfSpaceTrees(n_trees=5, height=6, window_size=20, seed=7) for _ in bases]
    by_base = [HalfSpaceTrees(n_trees=5, height=6, window_size=20, seed=7) for _ in bases]
    n_scored = 0
    for step in range(400):
        if step == 150:
            metrics.append("late")
        for k, base in enumerate(bases):
            summ = {m: {"count": int(rng.integers(1, 7)), **{f: float(rng.normal(10 * (i + 1), 2 + (step > 300) * 30))
                                                            for f in feats if f not in ("count", "availability")}}
                    for i, m in enumerate(metrics) if rng.random() > 0.15}
            base.features(summ, {m: 5.0 for m in metrics}, feats, keys, False)
            x = base.standardize(("count", "availability"), inv)[0]
            assert x == base.x_dict(inv)
            if base.standardize(("count", "availability"), inv, False)[0] is not None:
                raise AssertionError("build=False returns no dict")
            s_dict, s_base = by_dict[k].score_one(x), by_base[k].score_base(base, inv)
            assert s_base == s_dict
            n_scored += s_dict > 0
            by_dict[k].learn_one(x)
            by_base[k].learn_base(base, inv)
            base.learn(0.05 if step > 10 else 1.0 / (step + 1))
            if rng.random() < 0.01:
                base.clear()
    for a, b in zip(by_dict, by_base):
        assert a.feature_names == b.feature_names and a.counter == b.counter
        for ma, mb in zip(a._compact_masses(), b._compact_masses()):
            assert np.array_equal(ma, mb)
    assert n_scored > 500  # (scores past the first window were compared)
