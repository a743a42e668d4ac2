"""The score history in float32: the grades, the alerts and the state are what float64 gives."""
from __future__ import annotations

import random
from array import array

import numpy as np
import pytest

from stream.detect import engine as engine_mod
from stream.detect._standardize import count_below
from stream.detect.engine import Detector, score_typecode
from stream.detect.hst import HalfSpaceTrees
from stream.detect.spec import DetectorSpec, ModelParams


@pytest.mark.parametrize("params", [ModelParams(), ModelParams(n_trees=10, height=8, window_size=250),
                                    ModelParams(n_trees=25, height=10, window_size=60)])
def test_grades_from_a_float32_history_equal_float64_grades_at_every_step(params):
    assert score_typecode(params) == "f"
    rng = np.random.default_rng(7)
    names = [f"f{i:02d}" for i in range(12)]
    X = rng.random((6_000, len(names))) * 0.3 + 0.35
    X[::37] = rng.random((len(X[::37]), len(names)))  # outliers: a wide spread of scores
    model = HalfSpaceTrees(n_trees=params.n_trees, height=params.height, window_size=params.window_size, seed=1)
    h64, h32 = array("d"), array("f")
    ties = 0
    for row in X.tolist():
        x = dict(zip(names, row))
        s = model.score_one(x)
        model.learn_one(x)
        if h64:
            assert count_below(h32, s) == count_below(h64, s)
            ties += s in h64
        h64.append(s)
        h32.append(s)
        if len(h64) > 200:
            del h64[0], h32[0]
    assert ties >= 50  # equal scores are common (few distinct masses): the tie rule is exercised


def test_large_models_keep_float64():
    # M = n_trees * window_size * (2**(height+1) - 1) >= 2**23: two scores may share a float32
    assert score_typecode(ModelParams(n_trees=25, height=15, window_size=250)) == "d"
    assert score_typecode(ModelParams(n_trees=100, height=10, window_size=41)) == "d"  # M = 8,392,700
    assert score_typecode(ModelParams(n_trees=100, height=10, window_size=40)) == "f"  # M = 8,188,000


def _run(det, n_windows=300, seed=3):
    rng = random.Random(seed)
    verdicts, alerts = [], []
    det.on_window = lambda w, v: verdicts.append((w.entity, w.start, v["score"], v["grade"], v["anomalous"]))
    for w in range(n_windows):
        for k in range(4):
            ts = 1_700_000_000.0 + w * 60 + k * 15
            for e in range(6):
                bump = 40.0 if (e == 2 and 200 <= w < 203) or (e == 4 and w == 260) else 0.0
                rows = [(m, ts, 100 + j * 10 + rng.gauss(0, 2) + bump) for j, m in enumerate(("cpu", "mem", "io"))]
                alerts += det.ingest_rows(f"svc/host=h{e}", {"host": f"h{e}"}, rows)
    return verdicts, alerts


def test_the_engine_alerts_and_grades_exactly_as_with_a_float64_history(monkeypatch):
    spec = DetectorSpec(name="svc", group_by=("host",), warmup_windows=20)
    det32 = Detector(spec)
    assert det32._score_type == "f"
    v32, a32 = _run(det32)
    monkeypatch.setattr(engine_mod, "score_typecode", lambda params: "d")
    det64 = Detector(spec)
    assert det64._score_type == "d"
    v64, a64 = _run(det64)
    assert v32 == v64
    assert sum(v[4] for v in v32) >= 2  # the bumps were found
    graded = [v[3] for v in v32 if v[3] > 0]
    assert len(graded) > 500 and len(set(graded)) > 50  # the grades were real: many, varied
    assert len({v[2] for v in v32}) > 100  # (the model past its first window: varied scores)
    strip = lambda a: {k: v for k, v in a.items() if k != "created_at"}  # noqa: E731
    assert [strip(a) for a in a32] == [strip(a) for a in a64]
    ent = det32.entities["svc/host=h0"]
    assert ent.scores.typecode == "f" and len(ent.scores) == spec.threshold.history
    assert ent.scores.itemsize * len(ent.scores) == 800  # 4 bytes a score


def test_state_round_trip_keeps_the_history_and_reads_float64_states(monkeypatch):
    spec = DetectorSpec(name="svc", group_by=("host",), warmup_windows=20)
    det = Detector(spec)
    _run(det, n_windows=60)
    eid = "svc/host=h1"
    before = det.entities[eid].scores
    again = Detector(spec)
    again.import_state(eid, det.export_state(eid))
    assert again.entities[eid].scores == before and again.entities[eid].scores.typecode == "f"
    # a state written with a float64 history (before this change, or by a larger model) reads too
    monkeypatch.setattr(engine_mod, "score_typecode", lambda params: "d")
    det64 = Detector(spec)
    _run(det64, n_windows=60)
    monkeypatch.undo()
    blob = det64.export_state(eid)
    into32 = Detector(spec)
    into32.import_state(eid, blob)
    assert list(into32.entities[eid].scores) == [float(np.float32(s)) for s in det64.entities[eid].scores]
