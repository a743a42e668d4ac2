"""Detection engine: short gaps imputed, long gaps alerted (missing_data), single-metric excursions.

Pure core only (no broker). Streams are generated from fixed seeds; every assertion is about the
behaviour the test names, never a recorded output.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import jsonschema
import orjson
import pytest

from stream.detect.engine import STATE_VERSION, Detector
from stream.detect.spec import DetectorSpec, SpecError, ThresholdPolicy

ROOT = Path(__file__).resolve().parents[2]
ALERT_SCHEMA = orjson.loads((ROOT / "topics/schemas/alert.schema.json").read_bytes())
W = 60.0


def _spec(**kw) -> DetectorSpec:
    kw.setdefault("warmup_windows", 20)
    kw.setdefault("drift", False)
    return DetectorSpec(name="t", group_by=("host",), window=W, **kw)


def _feed(det, rng, win, metrics=("a", "b"), host="x", n=10, bump=None, lane=0):
    """One window of samples for the given metrics (``bump``: {metric: added value})."""
    out = []
    for i in range(n):
        ts = win * W + i * (W / n)
        for m in metrics:
            v = 10.0 + rng.gauss(0, 1) + ((bump or {}).get(m, 0.0))
            out += det.ingest(m, {"host": host}, ts, v, lane=lane)
    return out


def _valid(alert):
    jsonschema.validate(orjson.loads(orjson.dumps(alert)), ALERT_SCHEMA)


# --------------------------------------------------------------------------- short gaps: imputed
def test_short_metric_gap_is_imputed_with_the_baseline_and_not_learned():
    det = Detector(_spec())
    rng = random.Random(1)
    for w in range(40):
        assert not _feed(det, rng, w)
    ent = det.entities["t/host=x"]
    verdicts = {}
    det.on_window = lambda win, v: verdicts.__setitem__(win.start, v)
    _feed(det, rng, 40, metrics=("a",))  # b sends nothing in window 40 (its first sample closed 39)
    b_before = {k: (ent.mean[k], ent.var[k]) for k in ent.mean if k.startswith("b:")}
    a_before = ent.mean["a:mean"]
    model_before = ent.model.to_bytes()
    alerts = _feed(det, rng, 41)  # its first sample closes window 40
    assert alerts == []  # a short gap is no alarm
    v = verdicts[40 * W]
    assert sorted(v["imputed"]) == sorted(f"b:{f}" for f in det.spec.features)
    # imputed values are not learned: b's baseline and the trees are untouched, a's baseline moved
    assert {k: (ent.mean[k], ent.var[k]) for k in b_before} == b_before
    assert ent.model.to_bytes() == model_before
    assert ent.mean["a:mean"] != a_before
    # the next complete window is learned by the trees again
    model_after_gap = ent.model.to_bytes()
    _feed(det, rng, 42)
    assert ent.model.to_bytes() != model_after_gap
    assert verdicts[41 * W]["imputed"] == [] and verdicts[39 * W]["imputed"] == []


def test_alert_names_the_imputed_features_and_lower_availability():
    det = Detector(_spec())
    rng = random.Random(2)
    for w in range(40):
        _feed(det, rng, w)
    ent = det.entities["t/host=x"]
    _feed(det, rng, 40, metrics=("a",), bump={"a": 50.0})  # a jumps while b is missing
    base_b = ent.mean["b:mean"]
    alerts = _feed(det, rng, 41)
    (a,) = [x for x in alerts if x["kind"] == "anomaly"]
    _valid(a)
    assert a["status"] == "firing" and a["window"]["start"] == 40 * W
    assert set(a["window"]["imputed"]) == {f"b:{f}" for f in det.spec.features}
    assert a["window"]["availability"] == pytest.approx(0.5)  # a complete, b absent
    assert a["features"]["b:mean"] == base_b  # the imputed value is the baseline mean
    by_feature = {r["feature"]: r for r in a["attribution"]}
    assert by_feature["b:mean"]["imputed"] is True and by_feature["b:mean"]["z"] == 0.0
    assert by_feature["a:mean"]["imputed"] is False and by_feature["a:mean"]["direction"] == "high"
    assert a["attribution"][0]["feature"].startswith("a:")


def test_metric_gap_longer_than_the_limit_is_not_imputed():
    det = Detector(_spec(impute_max_windows=2))
    rng = random.Random(3)
    for w in range(30):
        _feed(det, rng, w)
    verdicts = []
    det.on_window = lambda win, v: verdicts.append((win.start, v["imputed"]))
    for w in range(30, 34):
        _feed(det, rng, w, metrics=("a",))
    _feed(det, rng, 34)
    runs = [bool(imp) for start, imp in verdicts if start >= 30 * W]
    assert runs == [True, True, False, False]  # windows 30, 31 imputed; 32, 33 (3rd, 4th missing) not


def test_missing_windows_within_the_limit_are_listed_as_imputed():
    det = Detector(_spec(impute_max_windows=2))
    rng = random.Random(4)
    for w in range(40):
        _feed(det, rng, w)
    # windows 40 and 41 get no sample at all; window 42 returns with an excursion
    _feed(det, rng, 42, bump={"a": 50.0})
    alerts = _feed(det, rng, 43)
    (a,) = [x for x in alerts if x["kind"] == "anomaly"]
    assert a["window"]["imputed_windows"] == [{"start": 40 * W, "end": 41 * W}, {"start": 41 * W, "end": 42 * W}]
    assert a["imputed_gap_windows"] == 2 and "gap_windows" not in a
    assert a["window"]["imputed"] == []  # every metric is in window 42 itself
    _valid(a)


def test_longer_missing_window_run_is_reported_as_a_gap_not_imputed():
    det = Detector(_spec(impute_max_windows=2, missing_after_windows=5))
    rng = random.Random(5)
    for w in range(40):
        _feed(det, rng, w)
    _feed(det, rng, 44, bump={"a": 50.0})  # 40..43 missing: 4 windows, more than 2, not more than 5
    alerts = _feed(det, rng, 45)
    (a,) = [x for x in alerts if x["kind"] == "anomaly"]
    assert a["window"]["imputed_windows"] == [] and a["imputed_gap_windows"] == 0 and a["gap_windows"] == 4
    assert not [x for x in alerts if x["kind"] == "missing_data"]


# --------------------------------------------------------------------------- long gaps: a signal
def test_silent_entity_fires_missing_data_from_the_watermark_once_then_resolves():
    det = Detector(_spec(missing_after_windows=5))
    rng = random.Random(6)
    for w in range(30):
        _feed(det, rng, w)
    last = 29 * W + 54.0  # the last sample of window 29
    # the entity sends nothing more; housekeeping advances the lane's watermark
    closed = det.advance(30 * W)  # closes window 29
    assert [a["kind"] for a in closed] == []
    assert det.advance(35 * W) == []  # 5 whole windows silent (30..34): not more than the limit
    fired = det.advance(36 * W)  # 6 windows (30..35): more than 5
    (f,) = fired
    _valid(f)
    assert (f["kind"], f["status"]) == ("missing_data", "firing")
    assert f["missing"]["metrics"] == ["a", "b"] and f["missing"]["entity_silent"] is True
    assert f["missing"]["last_seen"] == last and f["missing"]["silent_windows"] == 6
    assert f["window"]["start"] == 30 * W and f["missing"]["detected"] == "watermark"
    assert det.advance(50 * W) == [] and det.advance(90 * W) == []  # once per incident
    back = det.ingest("a", {"host": "x"}, 95 * W, 10.0, offset=7, partition=2)
    assert back == []  # b is still missing: the incident stays open
    (r,) = det.ingest("b", {"host": "x"}, 95 * W + 1, 10.0, offset=8, partition=2)
    _valid(r)
    assert (r["kind"], r["status"], r["incident_id"]) == ("missing_data", "resolved", f["alert_id"])
    assert r["missing"]["returned"] == {"a": 95 * W, "b": 95 * W + 1}
    assert r["source"]["partition"] == 2 and r["source"]["first_offset"] == 8
    # a new silence is a new incident
    assert [a["status"] for a in det.advance(120 * W) if a["kind"] == "missing_data"] == ["firing"]


def test_single_metric_silence_fires_while_the_entity_still_reports():
    det = Detector(_spec(missing_after_windows=5))
    rng = random.Random(7)
    for w in range(30):
        _feed(det, rng, w)
    fired = []
    for w in range(30, 45):
        fired += [a for a in _feed(det, rng, w, metrics=("a",)) if a["kind"] == "missing_data"]
    (f,) = fired  # once, though b stays silent for 15 windows
    assert f["missing"]["metrics"] == ["b"] and f["missing"]["entity_silent"] is False
    assert f["window"]["start"] == 30 * W and f["window"]["end"] == 36 * W  # b missing in 30..35
    # no anomaly alert for the missing metric's absence
    assert not [a for a in fired if a["kind"] == "anomaly"]
    res = [a for a in _feed(det, rng, 45) if a["kind"] == "missing_data"]
    assert [(a["status"], a["incident_id"]) for a in res] == [("resolved", f["alert_id"])]


def test_a_gap_no_watermark_saw_is_reported_when_samples_return_with_the_same_id():
    rng1, rng2 = random.Random(8), random.Random(8)
    with_hk, without = Detector(_spec()), Detector(_spec())
    for w in range(30):
        _feed(with_hk, rng1, w)
        _feed(without, rng2, w)
    fired_hk = [a for a in with_hk.advance(60 * W) if a["kind"] == "missing_data"]
    back = _feed(without, rng2, 60)  # no housekeeping ran during the silence
    _feed(with_hk, rng1, 60)
    gap = [a for a in back if a["kind"] == "missing_data"]
    assert [a["status"] for a in gap] == ["firing", "resolved"]
    assert gap[0]["missing"]["detected"] == "on_return"
    assert gap[0]["alert_id"] == fired_hk[0]["alert_id"]  # one gap, one id, whichever path saw it


def test_may_close_veto_defers_the_silence_check():
    det = Detector(_spec())
    rng = random.Random(9)
    for w in range(30):
        _feed(det, rng, w)
    alerts, changed = det.advance_lane(60 * W, 0, may_close=lambda e: False)
    assert alerts == [] and changed == set()
    alerts, changed = det.advance_lane(61 * W, 0, may_close=lambda e: True)
    assert [a["kind"] for a in alerts] == ["missing_data"] and changed == {"t/host=x"}


def test_silence_is_checked_per_lane():
    det = Detector(_spec())
    rng = random.Random(10)
    for w in range(30):
        _feed(det, rng, w, host="p", lane=0)
        _feed(det, rng, w, host="q", lane=1)
    assert [a["series"]["id"] for a in det.advance(60 * W, lane=1) if a["kind"] == "missing_data"] == ["t/host=q"]
    assert [a["series"]["id"] for a in det.advance(60 * W, lane=0) if a["kind"] == "missing_data"] == ["t/host=p"]


def test_missing_data_can_be_turned_off():
    det = Detector(_spec(missing_after_windows=0))
    rng = random.Random(11)
    for w in range(30):
        _feed(det, rng, w)
    assert [a for a in det.advance(100 * W) if a["kind"] == "missing_data"] == []


def _as_version_2(blob: bytes) -> bytes:
    """A version-4 state blob as version 2 wrote it: baseline and score history in the JSON head."""
    from array import array

    n = int.from_bytes(blob[1:5], "big")
    body = orjson.loads(blob[5:5 + n])
    at = 5 + n
    m = int.from_bytes(blob[at:at + 4], "big")
    model = blob[at + 4:at + 4 + m]
    at += 4 + m
    b = int.from_bytes(blob[at:at + 4], "big")
    keys = body.pop("keys")
    base = array("d", blob[at + 4:at + 4 + 16 * len(keys)])  # (then a count byte per feature: not in version 2)
    at += 4 + b
    k = int.from_bytes(blob[at:at + 4], "big")
    scores = array(body.pop("score_type"), blob[at + 4:at + 4 + k])
    adw = blob[at + 4 + k:]
    body["mean"] = dict(zip(keys, base[:len(keys)]))
    body["var"] = dict(zip(keys, base[len(keys):]))
    body["scores"] = list(scores)
    head = orjson.dumps(body)
    return bytes([2]) + len(head).to_bytes(4, "big") + head + len(model).to_bytes(4, "big") + model + adw


def _as_version_3(blob: bytes) -> bytes:
    """A version-4 state blob as version 3 wrote it: the baseline section without its count bytes."""
    n = int.from_bytes(blob[1:5], "big")
    keys = orjson.loads(blob[5:5 + n])["keys"]
    at = 5 + n
    at += 4 + int.from_bytes(blob[at:at + 4], "big")  # (the model)
    b = int.from_bytes(blob[at:at + 4], "big")
    assert b == 17 * len(keys)
    return (bytes([3]) + blob[1:at] + (16 * len(keys)).to_bytes(4, "big") + blob[at + 4:at + 4 + 16 * len(keys)]
            + blob[at + 4 + b:])


def test_open_gap_survives_a_restart_and_version_1_state_is_read():
    spec = _spec()
    det = Detector(spec)
    rng = random.Random(12)
    for w in range(30):
        _feed(det, rng, w)
    (f,) = det.advance(40 * W)
    blob = det.export_state("t/host=x")
    assert blob[0] == STATE_VERSION == 4
    again = Detector(spec)
    again.import_state("t/host=x", blob)
    assert again.advance(80 * W) == []  # still the same incident: no second firing
    again.ingest("a", {"host": "x"}, 81 * W, 10.0)
    (r,) = again.ingest("b", {"host": "x"}, 81 * W, 10.0)
    assert r["status"] == "resolved" and r["incident_id"] == f["alert_id"]
    # a version-2 blob (baseline and scores as JSON) loads into the same state
    v2 = _as_version_2(blob)
    two = Detector(spec)
    two.import_state("t/host=x", v2)
    assert two.export_state("t/host=x") == blob  # (no count: settled, as every feature here is)
    # a version-3 blob (the baseline without counts) loads into the same state
    three = Detector(spec)
    three.import_state("t/host=x", _as_version_3(blob))
    assert three.export_state("t/host=x") == blob
    # a version-1 blob (no per-metric times, no gap incident) still loads and is watched
    n = int.from_bytes(v2[1:5], "big")
    body = orjson.loads(v2[5:5 + n])
    for k in ("mlast", "mwin", "gap", "zpeak"):
        del body[k]
    head = orjson.dumps(body)
    v1 = bytes([1]) + len(head).to_bytes(4, "big") + head + v2[5 + n:]
    old = Detector(spec)
    old.import_state("t/host=x", v1)
    assert old.entities["t/host=x"].mlast == {"a": 29 * W + 54.0, "b": 29 * W + 54.0}
    assert [a["kind"] for a in old.advance(90 * W)] == ["missing_data"]


def test_expiring_an_entity_resolves_its_open_gap():
    det = Detector(_spec())
    rng = random.Random(13)
    for w in range(30):
        _feed(det, rng, w)
    (f,) = det.advance(40 * W)
    assert det.expire(200 * W, ttl=100 * W) == ["t/host=x"]
    (r,) = det.advance(201 * W)
    assert (r["status"], r["incident_id"], r["missing"]["reason"]) == ("resolved", f["alert_id"], "expired")


def test_gap_spec_fields_are_validated():
    assert DetectorSpec.from_dict({"missing_after_windows": 3, "impute_max_windows": 1}, source="s.yaml").missing_after_windows == 3
    with pytest.raises(SpecError, match="missing_after_windows"):
        DetectorSpec.from_dict({"missing_after_windows": -1}, source="s.yaml")
    with pytest.raises(SpecError, match="threshold.feature_p"):
        DetectorSpec.from_dict({"threshold": {"feature_p": 1.5}}, source="s.yaml")


# ------------------------------------------------------- single-metric excursion among 50 features
BASE = (10.0, 50.0, 200.0, 1.0, 5.0)
SD = (1.0, 5.0, 20.0, 0.1, 0.5)


def _five_metric_stream(det, *, windows=150, entities=10, spike_at=None, mag=8.0, spiked=10, seed=0, n=30):
    """Entities of 5 noisy metrics (5 x 10 features); entity e's metric e % 5 spikes in ``spike_at``."""
    rng = random.Random(seed)
    fired = []
    for w in range(windows):
        for e in range(entities):
            for i in range(n):
                ts = w * W + i * (W / n)
                for m in range(5):
                    v = BASE[m] + rng.gauss(0, SD[m])
                    if w == spike_at and m == e % 5 and i < spiked:
                        v += mag * SD[m]
                    fired += [a for a in det.ingest(f"m{m}", {"host": f"h{e}"}, ts, v) if a["status"] == "firing"]
    return fired


def test_single_metric_spike_among_50_features_fires():
    det = Detector(DetectorSpec(name="t", group_by=("host",), window=W))
    fired = _five_metric_stream(det, spike_at=120)
    anomalies = [a for a in fired if a["kind"] == "anomaly"]
    assert len(next(iter(det.entities.values())).mean) == 50
    # every entity's spike (10 of 30 samples at +8 sd on one metric) fires, in its window, and nothing else
    assert sorted(a["series"]["id"] for a in anomalies) == sorted(f"t/host=h{e}" for e in range(10))
    for a in anomalies:
        _valid(a)
        e = int(a["series"]["id"].rsplit("h", 1)[1])
        assert a["window"]["start"] == 120 * W
        assert "single_feature" in a["decision"]["path"]
        assert a["decision"]["max_z_feature"].startswith(f"m{e % 5}:")
        assert a["attribution"][0]["feature"].startswith(f"m{e % 5}:")


def test_the_multivariate_path_alone_misses_most_of_those_spikes():
    off = DetectorSpec(name="t", group_by=("host",), window=W, threshold=ThresholdPolicy(feature_p=0.0))
    fired = _five_metric_stream(Detector(off), spike_at=120)
    assert len([a for a in fired if a["kind"] == "anomaly"]) <= 5  # why the single-feature path exists


def test_same_length_normal_stream_fires_nothing():
    for seed in (0, 1):
        det = Detector(DetectorSpec(name="t", group_by=("host",), window=W))
        assert _five_metric_stream(det, spike_at=None, seed=seed) == []


def test_constant_count_is_not_a_single_feature_excursion():
    # one sample short in a window of an entity whose count never varied: not a 16-sigma "spike"
    det = Detector(_spec())
    rng = random.Random(14)
    for w in range(60):
        _feed(det, rng, w, n=10 if w != 50 else 9)
    assert [a for a in det.advance(61 * W) if a["kind"] == "anomaly"] == []


def test_offline_empty_cells_are_imputed_for_short_runs_only():
    import dataclasses

    from stream.detect.offline import DEFAULT_OFFLINE_SPEC, OfflineScorer

    sc = OfflineScorer(dataclasses.replace(DEFAULT_OFFLINE_SPEC, warmup_windows=20))
    rng = random.Random(15)
    for _ in range(100):
        sc.step({"a": rng.gauss(0, 1), "b": rng.gauss(5, 1)})
    imputed = [sc.step({"a": rng.gauss(0, 1)})["verdict"]["imputed"] for _ in range(4)]
    assert imputed == [["b:mean"], ["b:mean"], [], []]  # impute_max_windows = 2 rows
    assert not sc.step({"a": rng.gauss(0, 1), "b": rng.gauss(5, 1)})["alert"]  # b's return is no anomaly


def test_silence_watermark_reports_a_silent_entity_before_its_windows_are_closed():
    """The worker closes quiet windows ten windows behind its lane but checks silence one behind:
    with silence_watermark the missing_data alert does not wait for the closing watermark."""
    det = Detector(_spec(missing_after_windows=5))
    rng = random.Random(6)
    for w in range(30):
        _feed(det, rng, w)
    # lane event time at window 37: closing runs at 27 (nothing silent there), silence at 36
    alerts, _ = det.advance_lane(27 * W, 0, silence_watermark=36 * W)
    (f,) = [a for a in alerts if a["kind"] == "missing_data"]
    assert f["status"] == "firing" and f["missing"]["silent_windows"] == 6
    # the same without silence_watermark: nothing yet
    det2 = Detector(_spec(missing_after_windows=5))
    rng = random.Random(6)
    for w in range(30):
        _feed(det2, rng, w)
    assert [a for a in det2.advance_lane(27 * W, 0)[0] if a["kind"] == "missing_data"] == []
    # a veto still holds it back (the worker vetoes entities that received samples recently)
    det3 = Detector(_spec(missing_after_windows=5))
    rng = random.Random(6)
    for w in range(30):
        _feed(det3, rng, w)
    assert det3.advance_lane(27 * W, 0, may_close=lambda e: False, silence_watermark=36 * W)[0] == []
