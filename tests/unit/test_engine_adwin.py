"""The engine's ADWIN step (river's compiled helper, called directly) against river's public API."""
import random

import pytest
from river.drift import ADWIN

from stream.detect import engine


def _step_against_river(make, seed):
    """engine._adwin_step on a detector from ``make()`` against river's public API, step by step."""
    rng = random.Random(seed)
    engine._adwin()
    fast, ref = make(), ADWIN(delta=0.002)
    detections = 0
    level = 0.0
    for i in range(3000):
        if rng.random() < 0.004:
            level += rng.choice([-1, 1]) * rng.uniform(0.5, 5)
        v = level + rng.gauss(0, 1)
        before = ref.estimation
        ref.update(v)
        got = engine._adwin_step(fast, v)
        assert got == (before, ref.drift_detected)
        assert (fast.width, fast.estimation, fast.variance) == (ref.width, ref.estimation, ref.variance)
        detections += got[1]
    assert detections > 0  # the reset path ran


@pytest.mark.parametrize("seed", range(6))
def test_adwin_step_is_estimation_then_update(seed):
    _step_against_river(lambda: ADWIN(delta=0.002), seed)


def test_adwin_step_falls_back_for_other_detectors():
    class Sub(ADWIN):
        pass

    engine._adwin()
    a, b = Sub(), ADWIN()
    for v in [0.0] * 50 + [10.0] * 50:
        assert engine._adwin_step(a, v) == engine._adwin_step(b, v)


# ---------------------------------------------------------------- the compact ADWIN in the engine
from stream.detect.adwin import ADWIN as CompactADWIN  # noqa: E402
from stream.detect.engine import Detector  # noqa: E402
from stream.detect.spec import DetectorSpec  # noqa: E402


@pytest.mark.parametrize("seed", range(4))
def test_adwin_step_of_the_compact_adwin_is_rivers(seed):
    _step_against_river(lambda: CompactADWIN(0.002), seed)


def _feed(det, rng, start, end, level_at):
    alerts = []
    for i in range(start, end):
        for metric, base in (("cpu", 10.0), ("mem", 50.0)):
            alerts += det.ingest(metric, {"host": "a"}, ts=float(i), value=base + level_at(i, metric) + rng.gauss(0, 1))
    return alerts


def _level(i, metric):
    # slow ramps (each window normal, so ADWIN sees it): data_drift at windows 147, 230, 313, 396
    w = i // 60
    return {"cpu": 0.1 * max(0, w - 40), "mem": -0.05 * max(0, w - 150)}[metric]


def _comparable(alerts):
    return [{k: v for k, v in a.items() if k != "created_at"} for a in alerts]  # (wall clock)


def test_an_old_state_holding_river_adwins_loads_and_continues(monkeypatch):
    """States written before the compact ADWIN pickled river's: they load, go on, and the
    alerts are the ones a detector running the compact ADWIN all along emits."""
    spec = DetectorSpec(window=60, warmup_windows=20, group_by=("host",))
    eid = None
    # all along with the compact ADWIN
    rng = random.Random(11)
    ref = Detector(spec)
    ref_alerts = _feed(ref, rng, 0, 400 * 60, _level)
    # an old worker (river's ADWIN) up to 120 windows, its state, a new worker from there
    with monkeypatch.context() as m:
        m.setattr(engine, "ADWIN", ADWIN)
        old = Detector(spec)
        rng = random.Random(11)
        old_alerts = _feed(old, rng, 0, 200 * 60, _level)
        (eid,) = old.entities
        assert {type(a) for a in old.entities[eid].adwins.values()} == {ADWIN}
        blob = old.export_state(eid)
    new = Detector(spec)
    new.import_state(eid, blob)
    restored = new.entities[eid].adwins
    assert {type(a) for a in restored.values()} == {ADWIN} and len(restored) == 2
    # (windows still open at the export continue in the new worker)
    new_alerts = _feed(new, rng, 200 * 60, 400 * 60, _level)
    assert _comparable(old_alerts + new_alerts) == _comparable(ref_alerts)
    assert sum(a["kind"] == "data_drift" for a in old_alerts) >= 1  # drift before the restart
    assert sum(a["kind"] == "data_drift" for a in new_alerts) >= 2  # and after it, the first by river's ADWIN
    # after a drift the entity re-warms with compact ADWINs; they export and load again
    assert all(type(a) is CompactADWIN for a in new.entities[eid].adwins.values())
    again = Detector(spec)
    again.import_state(eid, new.export_state(eid))
    assert again.export_state(eid) == new.export_state(eid)


def test_engine_alerts_are_the_same_with_rivers_adwin(monkeypatch):
    spec = DetectorSpec(window=60, warmup_windows=20, group_by=("host",))

    def run():
        det = Detector(spec)
        return _comparable(_feed(det, random.Random(5), 0, 400 * 60, _level)), det

    ours, det = run()
    assert all(type(a) is CompactADWIN for e in det.entities.values() for a in e.adwins.values())
    monkeypatch.setattr(engine, "ADWIN", ADWIN)
    theirs, det = run()
    assert all(type(a) is ADWIN for e in det.entities.values() for a in e.adwins.values())
    assert ours == theirs
    assert sum(a["kind"] == "data_drift" for a in ours) >= 3


@pytest.mark.parametrize("seed", range(3))
def test_the_compiled_drift_pass_is_the_python_loop(monkeypatch, seed):
    """_adwin.step_means (one call per window) against engine._step_means_py: the same alerts
    and the same entity state, window for window, with drifts and a NaN mean now and then."""
    spec = DetectorSpec(window=60, warmup_windows=20, group_by=("host",))

    def level(i, metric):
        return _level(i, metric) + (float("nan") if metric == "mem" and i % 3001 == 7 else 0.0)

    def run():
        det = Detector(spec)
        alerts = _comparable(_feed(det, random.Random(seed), 0, 400 * 60, level))
        return alerts, {e: det.export_state(e) for e in det.entities}

    compiled = run()
    calls = []

    def py(*a):
        calls.append(1)
        return engine._step_means_py(*a)

    monkeypatch.setattr(engine, "_step_means", py)
    python = run()
    assert calls and repr(compiled) == repr(python)  # (repr: a NaN window mean equals itself)
    assert sum(a["kind"] == "data_drift" for a in compiled[0]) >= 3


def test_step_means_of_summaries_and_dicts_and_other_adwins():
    """Summary objects and dicts, metrics in sorted order, created by the factory, non-compact
    ADWINs through the fallback, NaN means skipped."""
    from stream.detect import _adwin, _window

    fields = _window.SUMMARY_FIELDS
    rng = random.Random(3)
    a_c, a_p = {}, {}
    for i in range(600):
        lvl = 0.0 if i < 300 else 8.0
        means = {m: lvl + rng.gauss(0, 1) for m in ("z", "a", "m")}
        means["m"] = float("nan") if i % 50 == 0 else means["m"]
        summ = {m: _window._summary_from([1, v] + [0.0] * 12) if m != "a" else {"mean": v} for m, v in means.items()}
        if i == 0:
            a_c["a"] = ADWIN(delta=0.01)  # (river's: the fallback steps it)
            a_p["a"] = ADWIN(delta=0.01)
        got = _adwin.step_means(a_c, summ, CompactADWIN, 0.01, engine._adwin_step)
        want = engine._step_means_py(a_p, summ, CompactADWIN, 0.01)
        assert [(m, b) for m, b, _ in got] == [(m, b) for m, b, _ in want]
        assert list(a_c) == list(a_p)
    assert type(a_c["z"]) is CompactADWIN and type(a_c["a"]) is ADWIN
    assert (a_c["z"].width, a_c["z"].total) == (a_p["z"].width, a_p["z"].total)
