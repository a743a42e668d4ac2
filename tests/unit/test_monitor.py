"""Model monitoring core: each alert kind, a stable stream, schema violations, state, specs."""
from __future__ import annotations

import numpy as np
import pytest

from stream.detect.monitor import ModelMonitor, Monitors, VersionMonitor
from stream.detect.monitor_spec import (
    DEFAULT_MONITOR,
    MonitorSpec,
    MonitorSpecError,
    PerformancePolicy,
    load_monitor_specs,
    spec_for,
)
from stream.inference_events import Feedback, Inference

T0 = 1_700_000_000.0


def features(rng, shift_age=0.0, country_p=(0.5, 0.3, 0.2)):
    return {"age": float(rng.normal(40 + shift_age, 10)), "income": float(rng.lognormal(10, 0.5)),
            "country": str(rng.choice(["us", "fr", "de"], p=country_p)), "vip": bool(rng.random() < 0.2),
            "tenure": None if rng.random() < 0.05 else int(rng.integers(0, 120))}


def run(mon, n, *, seed=0, model="churn", version="v1", feats=None, pred=None, label=None, start=0):
    """Feed n inferences (and their feedback if ``label``); returns the alerts."""
    rng = np.random.default_rng(seed)
    alerts = []
    for i in range(start, start + n):
        f = feats(rng, i) if feats else features(rng)
        p = pred(rng, i) if pred else int(rng.random() < 0.3)
        alerts += mon.observe(Inference(model, version, f"r{i}", T0 + i, f, p, float(rng.random()), None), 0, i)
        if label is not None:
            alerts += mon.feedback(Feedback(model, version, f"r{i}", label(rng, i, p), T0 + i + 5), 0, i)
    return alerts


def kinds(alerts):
    return [(a["kind"], a["status"]) for a in alerts]


def test_stable_stream_raises_nothing():
    for seed in range(3):
        mon = Monitors([DEFAULT_MONITOR])
        alerts = run(mon, 5000, seed=seed, label=lambda rng, i, p: p if rng.random() > 0.1 else 1 - p)
        assert alerts == [], kinds(alerts)
        vm = mon.models["churn"].versions["v1"]
        assert vm.comparisons > 30 and vm.pairs == 5000


def test_data_drift_names_the_shifted_feature_only_fires_once_and_resolves():
    mon = Monitors([MonitorSpec(resolve_after=2)])
    shifted = lambda rng, i: features(rng, shift_age=15.0 if 2500 <= i < 4000 else 0.0)
    alerts = run(mon, 6000, feats=shifted)
    assert kinds(alerts) == [("data_drift", "firing"), ("data_drift", "resolved")]
    a, r = alerts
    assert a["drift"]["drifted"] == ["age"]
    assert a["series"] == {"id": "model/churn@v1", "labels": {"model": "churn", "version": "v1"}}
    assert 2500 <= a["window"]["end"] - T0 < 2500 + 500 and a["window"]["end"] - a["window"]["start"] == 499
    (d,) = [f for f in a["drift"]["features"] if f["feature"] == "age"]
    assert d["psi"] >= 0.25 and d["ks_pvalue"] < 1e-3 and d["threshold"]["psi_drift"] == 0.25
    assert len(d["baseline_counts"]) == len(d["current_counts"]) == len(d["bins"]) + 1
    assert sum(d["baseline_counts"]) == 1000 and sum(d["current_counts"]) == 500
    assert a["source"]["topic"] == "inferences" and a["source"]["last_offset"] - a["source"]["first_offset"] == 499
    assert len(a["alert_id"]) == 32 and a["score"] == d["psi"]
    assert r["incident_id"] == a["alert_id"] and r["window"]["start"] >= 4000 + T0


def test_categorical_drift_and_alert_ids_are_deterministic():
    shifted = lambda rng, i: features(rng, country_p=(0.1, 0.2, 0.7) if i >= 2000 else (0.5, 0.3, 0.2))
    a1 = run(Monitors([DEFAULT_MONITOR]), 3000, feats=shifted)
    a2 = run(Monitors([DEFAULT_MONITOR]), 3000, feats=shifted)
    assert kinds(a1) == [("data_drift", "firing")] and a1[0]["drift"]["drifted"] == ["country"]
    d = a1[0]["drift"]["features"][0]
    assert set(d["baseline_counts"]) == {"us", "fr", "de", "__other__"} and "chi2_pvalue" in d
    assert [a["alert_id"] for a in a1] == [a["alert_id"] for a in a2]


def test_prediction_drift():
    alerts = run(Monitors([DEFAULT_MONITOR]), 3500, pred=lambda rng, i: int(rng.random() < (0.3 if i < 2500 else 0.7)))
    assert kinds(alerts) == [("prediction_drift", "firing")]
    assert alerts[0]["drift"]["drifted"] == ["prediction"]


def test_string_predictions_and_score_drift():
    alerts = run(Monitors([DEFAULT_MONITOR]), 3000, pred=lambda rng, i: "yes" if rng.random() < 0.5 else "no")
    assert alerts == []
    mon = Monitors([DEFAULT_MONITOR])
    rng2 = np.random.default_rng(5)
    out = []
    for i in range(3000):
        s = float(rng2.beta(2, 5) if i < 2000 else rng2.beta(5, 2))
        out += mon.observe(Inference("m", "1", f"r{i}", T0 + i, features(rng2), "yes", s, None))
    assert kinds(out) == [("prediction_drift", "firing")] and out[0]["drift"]["drifted"] == ["score"]


def test_renamed_field_raises_one_schema_drift_and_no_data_drift():
    def renamed(rng, i):
        f = features(rng)
        if i >= 2000:
            f["income_eur"] = f.pop("income")
        return f

    alerts = run(Monitors([DEFAULT_MONITOR]), 4000, feats=renamed)
    assert kinds(alerts) == [("schema_drift", "firing")], kinds(alerts)
    v = {(x["type"], x["field"]) for x in alerts[0]["drift"]["violations"]}
    assert v == {("missing_field", "income"), ("new_field", "income_eur")}
    assert alerts[0]["drift"]["contract"]["income"]["type"] == "number"


def test_type_change_and_null_jump_are_schema_drift_and_do_not_crash():
    def broken(rng, i):
        f = features(rng)
        if i >= 1500:
            f["age"] = "forty"  # strings in a numeric feature: null for the statistics
            f["country"] = None
        return f

    alerts = run(Monitors([DEFAULT_MONITOR]), 2500, feats=broken)
    assert kinds(alerts) == [("schema_drift", "firing")]
    v = {(x["type"], x["field"]) for x in alerts[0]["drift"]["violations"]}
    assert v == {("type_change", "age"), ("null_rate", "country")}


def test_schema_drift_resolves_when_the_field_returns():
    def gap(rng, i):
        f = features(rng)
        if 1500 <= i < 2000:
            del f["vip"]
        return f

    alerts = run(Monitors([MonitorSpec(resolve_after=2)]), 3000, feats=gap)
    assert kinds(alerts) == [("schema_drift", "firing"), ("schema_drift", "resolved")]
    assert alerts[1]["incident_id"] == alerts[0]["alert_id"]


def test_performance_drift_change_point_and_rates():
    mon = Monitors([DEFAULT_MONITOR])
    alerts = run(mon, 4000, label=lambda rng, i, p: p if rng.random() > (0.1 if i < 2000 else 0.35) else 1 - p)
    assert kinds(alerts) == [("performance_drift", "firing")]
    d = alerts[0]["drift"]
    assert d["task"] == "classification" and d["metric"] == "error_rate"
    ch = d["changes"][0]
    assert abs(ch["change_point"] - (T0 + 2000)) < 100, ch
    assert 0.06 < ch["before"] < 0.14 and 0.25 < ch["after"] < 0.45
    assert alerts[0]["window"]["start"] == ch["change_point"]
    assert alerts[0]["source"]["topic"] == "feedback"


def test_regression_error_and_recovery_resolves():
    mon = Monitors([MonitorSpec(performance=PerformancePolicy(min_effect=0.5))])
    rng = np.random.default_rng(3)
    out = []
    for i in range(6000):
        y = float(rng.normal(10, 2))
        noise = 3.0 if 2000 <= i < 4000 else 0.5
        out += mon.observe(Inference("price", "2", f"r{i}", T0 + i, features(rng), y, None, None))
        out += mon.feedback(Feedback("price", "2", f"r{i}", y + float(rng.normal(0, noise)), T0 + i))
    assert kinds(out) == [("performance_drift", "firing"), ("performance_drift", "resolved")], kinds(out)
    assert out[0]["drift"]["task"] == "regression"
    assert abs(out[0]["drift"]["change_point"] - (T0 + 2000)) < 100
    assert abs(out[1]["drift"]["change_point"] - (T0 + 4000)) < 100


def test_feedback_before_its_inference_is_joined_and_unmatched_is_counted():
    spec = MonitorSpec(performance=PerformancePolicy(join_ttl_seconds=100, max_pending=50))
    mm = ModelMonitor(spec, "m")
    mm.feedback(Feedback("m", "1", "early", 1, T0))
    assert len(mm.pending_fb) == 1
    mm.observe(Inference("m", "1", "early", T0 + 1, {"x": 1.0}, 1))
    assert mm.stats["joined"] == 1 and not mm.pending_fb and mm.versions["1"].pairs == 1
    mm.feedback(Feedback("m", "1", "orphan", 0, T0 + 2))
    for i in range(200):  # event time moves on: the orphan expires, counted; the stores stay bounded
        mm.observe(Inference("m", "1", f"r{i}", T0 + 10 + i, {"x": 1.0}, 1))
    assert mm.stats["feedback_expired_unmatched"] == 1 and mm.unmatched_feedback == 1
    assert len(mm.pending_inf) <= 50
    assert mm.stats["inferences_expired_unlabelled"] >= 150


def test_versions_are_bounded_and_each_gets_its_own_baseline():
    mon = Monitors([MonitorSpec(max_versions=2, baseline_size=10)])
    for v in ("a", "b", "c"):
        run(mon, 20, version=v)
    mm = mon.models["churn"]
    assert list(mm.versions) == ["b", "c"] and mm.stats["versions_dropped"] == 1
    assert all(vm.ready and vm.frozen.n == 10 for vm in mm.versions.values())


def test_state_round_trip_continues_identically():
    shifted = lambda rng, i: features(rng, shift_age=15.0 if i >= 2000 else 0.0)
    label = lambda rng, i, p: p if rng.random() > (0.1 if i < 1800 else 0.4) else 1 - p
    whole = run(Monitors([DEFAULT_MONITOR]), 3000, feats=shifted, label=label)
    mon = Monitors([DEFAULT_MONITOR])
    first = run(mon, 1234, feats=shifted, label=label)
    blob = mon.export_state("churn")
    assert blob[0] == 1
    mon2 = Monitors([DEFAULT_MONITOR])
    mon2.import_state("churn", blob)
    assert mon2.export_state("churn") == blob
    # the rest of the same stream (same rng draws: regenerate and skip the first part)
    rng = np.random.default_rng(0)
    rest = []
    for i in range(3000):
        f = shifted(rng, i)
        p = int(rng.random() < 0.3)
        s = float(rng.random())
        lab = label(rng, i, p)
        if i >= 1234:
            rest += mon2.observe(Inference("churn", "v1", f"r{i}", T0 + i, f, p, s, None), 0, i)
            rest += mon2.feedback(Feedback("churn", "v1", f"r{i}", lab, T0 + i + 5), 0, i)
    strip = lambda al: [{k: v for k, v in a.items() if k not in ("created_at", "model")} for a in al]
    assert strip(first + rest) == strip(whole) and kinds(whole) == [("performance_drift", "firing"),
                                                                     ("data_drift", "firing")]
    with pytest.raises(ValueError, match="version"):
        ModelMonitor.from_bytes(b"\x09" + blob[1:], DEFAULT_MONITOR)


def test_state_is_bounded():
    mon = Monitors([DEFAULT_MONITOR])
    run(mon, 3000, label=lambda rng, i, p: p)
    small = len(mon.export_state("churn"))
    run(mon, 6000, start=3000, label=lambda rng, i, p: p)
    assert len(mon.export_state("churn")) < small * 1.5


def test_reference_file_baseline(tmp_path):
    rng = np.random.default_rng(1)
    ref = tmp_path / "ref.csv"
    lines = ["age,income,country,prediction"]
    for _ in range(2000):
        f = features(rng)
        lines.append(f"{f['age']},{f['income']},{f['country']},{int(rng.random() < 0.3)}")
    ref.write_text("\n".join(lines) + "\n")
    spec_file = tmp_path / "mon.yaml"
    spec_file.write_text("kind: model_monitor\nname: churn\nmodels: [churn]\nbaseline: {reference: ref.csv}\n")
    specs = load_monitor_specs(tmp_path)
    assert specs[0].reference == str(ref)
    mon = Monitors(specs)
    vm_alerts = run(mon, 1500, feats=lambda rng, i: {k: v for k, v in features(rng, shift_age=15.0 if i >= 700 else 0).items()
                                                    if k in ("age", "income", "country")})
    assert kinds(vm_alerts) == [("data_drift", "firing")] and vm_alerts[0]["drift"]["drifted"] == ["age"]
    assert vm_alerts[0]["model"]["baseline"] == {"origin": f"reference {ref}", "size": 2000}
    assert run(mon, 10, model="other") == [] and mon.unmonitored == 10


def test_spec_parsing_and_errors_name_file_and_field(tmp_path):
    s = MonitorSpec.from_dict({"kind": "model_monitor", "name": "m", "models": {"regex": "fraud-.*"},
                               "baseline": 500, "window": {"size": 300, "compare_every": 50},
                               "thresholds": {"psi_warn": 0.2, "psi_drift": 0.3}, "severity": "critical",
                               "schema": {"null_rate_jump": 0.3}, "performance": {"task": "regression"}},
                              source="x.yaml")
    assert (s.baseline_size, s.window, s.compare_every, s.psi_drift, s.performance.task) == (500, 300, 50, 0.3, "regression")
    assert spec_for([s, DEFAULT_MONITOR], "fraud-eu") is s and spec_for([s], "churn") is None
    bad = [({"kind": "model_monitor", "window": {"size": 0}}, "window.size"),
           ({"kind": "model_monitor", "thresholds": {"psi_warn": 0.3, "psi_drift": 0.2}}, "thresholds.psi_drift"),
           ({"kind": "model_monitor", "models": {"regex": "("}}, "models.regex"),
           ({"kind": "model_monitor", "severity": "loud"}, "severity"),
           ({"kind": "model_monitor", "performance": {"delta": 2}}, "performance.delta"),
           ({"kind": "model_monitor", "baseline": {"reference": "nope.csv"}}, "baseline.reference"),
           ({"kind": "model_monitor", "colour": 1}, "colour")]
    for d, fld in bad:
        with pytest.raises(MonitorSpecError, match=rf"x.yaml: field '{fld}'"):
            MonitorSpec.from_dict(d, source="x.yaml")
    (tmp_path / "a.yaml").write_text("name: detector-spec\n")  # a detector spec: ignored here
    assert load_monitor_specs(tmp_path) == [DEFAULT_MONITOR]
    (tmp_path / "b.yaml").write_text("kind: model_monitor\nwindow: -1\n")
    with pytest.raises(MonitorSpecError, match=r"b.yaml: field 'window.size'"):
        load_monitor_specs(tmp_path)


def test_example_spec_loads():
    from pathlib import Path

    from stream.detect.spec import load_specs

    d = Path(__file__).resolve().parents[2] / "specs" / "monitors"
    specs = load_monitor_specs(d)
    assert specs[0].name == "example-models" and specs[0].source.endswith("example.yaml")
    load_specs(d)  # the detector loader skips it


def test_version_monitor_alone():
    vm = VersionMonitor(DEFAULT_MONITOR, "m", "1")
    assert vm.observe({"x": 1.0}, 0.5, None, T0) == [] and not vm.ready


def test_alerts_of_every_kind_match_the_alert_schema():
    import json
    from pathlib import Path

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parents[2] / "topics" / "schemas" / "alert.schema.json").read_text())
    v = jsonschema.Draft202012Validator(schema)

    def story(rng, i):
        f = features(rng, shift_age=15.0 if 2000 <= i < 3500 else 0.0)
        if 2500 <= i < 3000:
            f["extra"] = 1
        return f

    alerts = run(Monitors([MonitorSpec(resolve_after=2)]), 4500, feats=story,
                 pred=lambda rng, i: int(rng.random() < (0.3 if i < 2000 else 0.8)),
                 label=lambda rng, i, p: p if rng.random() > (0.1 if i < 2000 else 0.4) else 1 - p)
    assert {a["kind"] for a in alerts} == {"data_drift", "prediction_drift", "schema_drift", "performance_drift"}
    assert {a["status"] for a in alerts} == {"firing", "resolved"}
    for a in alerts:
        v.validate(a)


def _perf_stream(mon, start, end):
    """Error-rate steps (0.1 -> 0.35 -> 0.1) on one model, fed from inference start to end."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(6000):
        f = features(rng)
        p = int(rng.random() < 0.3)
        s = float(rng.random())
        err = 0.35 if 2000 <= i < 4000 else 0.1
        lab = p if rng.random() > err else 1 - p
        if start <= i < end:
            out += mon.observe(Inference("churn", "v1", f"r{i}", T0 + i, f, p, s, None), 0, i)
            out += mon.feedback(Feedback("churn", "v1", f"r{i}", lab, T0 + i + 5), 0, i)
    return out


def test_performance_drift_with_the_compact_adwin_equals_rivers_and_old_states_continue(monkeypatch):
    """The monitors' ADWIN is the compact one (bit-identical to river's): the alerts equal those
    of a monitor running river's ADWIN, and a state written by such a monitor (a pickled river
    ADWIN) loads and goes on with the same alerts."""
    import river.drift

    import stream.detect.adwin as compact

    strip = lambda al: [{k: v for k, v in a.items() if k not in ("created_at", "model")} for a in al]
    mon = Monitors([DEFAULT_MONITOR])
    ours = _perf_stream(mon, 0, 6000)
    assert kinds(ours) == [("performance_drift", "firing"), ("performance_drift", "resolved")], kinds(ours)
    assert type(mon.models["churn"].versions["v1"].adwin) is compact.ADWIN
    with monkeypatch.context() as m:
        m.setattr(compact, "ADWIN", river.drift.ADWIN)  # a monitor of the release before
        old = Monitors([DEFAULT_MONITOR])
        rivers = _perf_stream(old, 0, 3000)
        assert type(old.models["churn"].versions["v1"].adwin) is river.drift.ADWIN
        blob = old.export_state("churn")
        rivers += _perf_stream(old, 3000, 6000)
    assert strip(rivers) == strip(ours)
    new = Monitors([DEFAULT_MONITOR])
    new.import_state("churn", blob)
    assert type(new.models["churn"].versions["v1"].adwin) is river.drift.ADWIN
    assert strip(_perf_stream(Monitors([DEFAULT_MONITOR]), 0, 3000) + _perf_stream(new, 3000, 6000)) == strip(ours)
