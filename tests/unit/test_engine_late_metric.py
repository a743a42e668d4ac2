"""A metric that appears after an entity's warm-up (an exporter added to a host, an error counter
first exported at its first error) gets its own warm-up: it opens no incident and does not stop the
entity from learning, and once its baseline has settled an excursion of it is caught.

Before, such a metric's features entered the settled baseline with the variance of one or two
windows (a small fraction of the real one, growing at the EWMA's pace), so the next windows had a
|z| of 20-100 on them: the entity went anomalous and, as anomalous windows are not learned, stayed
so for good, deaf to everything else (found by tests/unit/test_window_close.py's stream).
"""
from __future__ import annotations

import random

import pytest

from stream.detect.engine import Detector
from stream.detect.spec import DetectorSpec

W = 60.0
T0 = 1_700_000_040.0  # (a window boundary)


def _stream(det: Detector, seed: int, *, appears: int, spike_at: int | None, windows: int = 220):
    rng = random.Random(seed)
    eid, labels = det.spec.entity_of("latency", {"host": "web-1"})
    alerts = []
    for k in range(windows * 4):  # scraped every 15 s
        win = k // 4
        t = T0 + k * 15.0
        rows = [("latency", t, 100.0 + rng.gauss(0, 5)), ("cpu", t, 0.4 + rng.gauss(0, 0.02))]
        if win >= appears:
            v = 2.0 + rng.gauss(0, 0.5)
            if spike_at is not None and spike_at <= win < spike_at + 2:
                v += 12.0
            rows.append(("errors", t, v))
        alerts += det.ingest_rows(eid, labels, rows, offset=k)
    return alerts


def _entity(det: Detector):
    (ent,) = det.entities.values()
    return ent


def _spec():
    return DetectorSpec(name="t", group_by=("host",), window=W, warmup_windows=20, drift=False)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_late_metric_opens_no_incident_and_the_entity_keeps_learning(seed):
    det = Detector(_spec())
    alerts = _stream(det, seed, appears=60, spike_at=None)
    firing = [a for a in alerts if a["kind"] == "anomaly" and a["status"] == "firing"]
    assert firing == [], [(a["window"]["start"] - T0) / W for a in firing]
    ent = _entity(det)
    assert ent.incident is None and ent.n_normal >= 215  # every window but a handful learned
    counts = ent.base.counts()
    assert counts["errors:mean"] >= 150 and counts["latency:mean"] == min(ent.n_normal, 255)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_excursion_of_the_late_metric_is_caught_once_it_has_settled(seed):
    det = Detector(_spec())
    alerts = _stream(det, seed, appears=60, spike_at=150)
    firing = [a for a in alerts if a["kind"] == "anomaly" and a["status"] == "firing"]
    assert [(a["window"]["start"] - T0) / W for a in firing] == [150.0]
    assert firing[0]["decision"]["max_z_feature"].startswith("errors:")


def test_a_young_feature_is_left_out_of_the_tests_until_its_own_warm_up():
    """Its z is 0 (x 0.5 for the trees) while it has been learned from fewer windows than the
    entity's warm-up, then it is tested like the others."""
    det = Detector(_spec())
    _stream(det, 1, appears=60, spike_at=None, windows=61 + 25)
    ent = _entity(det)
    assert 20 <= ent.base.counts()["errors:mean"] < 30
    z = ent.base.z_dict()
    assert z["errors:mean"] != 0.0 and z["errors:max"] != 0.0  # 20+ windows: settled, tested
    det2 = Detector(_spec())
    _stream(det2, 1, appears=60, spike_at=None, windows=61 + 10)
    z2 = _entity(det2).base.z_dict()
    assert all(v == 0.0 for k, v in z2.items() if k.startswith("errors:"))  # ~10 windows: young
    assert any(v != 0.0 for k, v in z2.items() if k.startswith("latency:"))
