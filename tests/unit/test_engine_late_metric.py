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

import orjson

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
    # (features there from the warm-up count as settled; the late one counts its own windows)
    assert counts["errors:mean"] >= 150 and counts["latency:mean"] == 255


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


def test_a_window_part_written_before_the_counts_loads_with_its_features_settled():
    """Window parts of version 1 (0x22: the baseline without a count byte per feature, as written
    before 2026-12-07) still load; every feature counts as settled, as it was used then."""
    det = Detector(_spec())
    _stream(det, 1, appears=60, spike_at=None, windows=70)  # (errors: a late, young feature)
    ent = _entity(det)
    fast, slow, slot = det.export_parts(ent.id, full=True)
    assert slow[:1] == b"\x23"
    n = int.from_bytes(slow[1:5], "big")
    keys = orjson.loads(slow[5:5 + n])["keys"]
    at = 5 + n
    at += 4 + int.from_bytes(slow[at:at + 4], "big")  # (the model)
    assert int.from_bytes(slow[at:at + 4], "big") == 17 * len(keys)
    old = (b"\x22" + slow[1:at] + (16 * len(keys)).to_bytes(4, "big") + slow[at + 4:at + 4 + 16 * len(keys)]
           + slow[at + 4 + 17 * len(keys):])
    slots = [None, None]
    slots[slot] = old
    again = Detector(_spec())
    again.import_parts(ent.id, fast, slots)
    loaded = _entity(again)
    assert set(loaded.base.counts().values()) == {255}
    assert loaded.base.mean_dict() == ent.base.mean_dict() and loaded.base.var_dict() == ent.base.var_dict()
    slots[slot] = slow  # and the current part keeps the counts
    new = Detector(_spec())
    new.import_parts(ent.id, fast, slots)
    assert _entity(new).base.counts() == ent.base.counts() != _entity(again).base.counts()
