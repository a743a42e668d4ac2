"""The compiled window close (stream.detect._close.WindowClose) is its Python rule,
Detector._on_window_py: the same alerts, the same verdict per window, the same entity state byte
for byte, and the same counters.

Pure core only. The streams exercise every branch of the window close: warm-up, the
multivariate and single-feature paths (a level shift, spikes), incidents that resolve and the
cooldown after them, ADWIN drift (a slow ramp re-warms the entity), short gaps of one metric
and of whole windows (imputed), a long silence of one metric while the others report
(missing_data from the window path), NaN and infinite values (invalid features), a metric that
appears late, and a score history that fills up; under specs that switch paths off (no
single-feature test, no drift, no ``mean`` feature) and with a river model in place of the
compiled trees (an entity state from before the compiled trees).
"""
from __future__ import annotations

import dataclasses
import math
import random

import pytest

from stream.detect.engine import Detector
from stream.detect.models import _Wrapped
from stream.detect.spec import DetectorSpec, ThresholdPolicy

W = 60.0


def _feed(det: Detector, seed: int, verdicts: list) -> list[dict]:
    """Four hosts x four metrics, scraped every 20 s for 500 windows, each host its own story."""
    det.on_window = lambda w, v: verdicts.append((w.entity, w.start, repr(v)))
    rng = random.Random(seed)
    out: list[dict] = []
    for k in range(1500):
        t = 1_700_000_000.0 + k * 20.0
        win = k // 3
        for h in range(4):
            rows = []
            if h == 3 and 200 <= win < 204:
                continue  # whole windows without any sample: imputed up to impute_max_windows
            for m in ("a", "b", "c", "d"):
                if m == "d" and win < 5:
                    continue  # a metric that appears after the others (within warm-up)
                if h == 1 and m == "b" and (120 <= win < 122 or 300 <= win < 330):
                    continue  # a short gap (imputed), then a long silence (missing_data)
                v = 10.0 + h + rng.gauss(0, 1)
                if h == 0 and 150 <= win < 160:
                    v += 9.0  # a level shift that ends: firing, then resolved
                if h == 0 and m == "a" and win in (260, 261, 330):
                    v += 40.0 * (1 if k % 2 else -1)  # single-feature spikes
                if h == 2:
                    v += 0.05 * max(0, win - 60)  # a slow ramp, each window normal: ADWIN drift, re-warm
                if h == 3 and m == "c" and k % 97 == 5:
                    v = math.nan if k % 2 else math.inf  # invalid features
                rows.append((m, t + rng.random(), v))
            out += det.ingest_rows(f"h{h}", {"host": f"h{h}"}, rows, offset=k, partition=h % 2, lane=0)
    out += det.advance(1_700_000_000.0 + 1600 * 20.0)
    return out


def _python_close(det: Detector) -> Detector:
    det._close_window = det._on_window_py
    return det


def _run(spec: DetectorSpec, seed: int, python: bool, river_model_at: int | None = None):
    det = Detector(spec)
    if python:
        _python_close(det)
    if river_model_at is not None:  # h1's model becomes river's (as an old state's would load)
        from river.anomaly import HalfSpaceTrees

        close = det._close_window

        def swap(ent, w):
            if ent.id == "h1" and ent.n_windows == river_model_at:
                p = spec.model
                ent.model = _Wrapped(HalfSpaceTrees(n_trees=p.n_trees, height=p.height, window_size=p.window_size,
                                                    seed=p.seed))
            return close(ent, w)

        det._close_window = swap
    verdicts: list = []
    alerts = _feed(det, seed, verdicts)
    alerts = [{k: v for k, v in a.items() if k != "created_at"} for a in alerts]  # (wall clock)
    states = {e: det.export_state(e) for e in sorted(det.entities)}
    return alerts, verdicts, states, (det.invalid_features, det.imputed_features, det.late)


SPECS = {
    "default": DetectorSpec(name="t", group_by=("host",), window=W, warmup_windows=20, missing_after_windows=5),
    "no-single-feature": DetectorSpec(name="t", group_by=("host",), window=W, warmup_windows=20,
                                      threshold=ThresholdPolicy(feature_p=0.0)),
    "no-drift-short-history": DetectorSpec(name="t", group_by=("host",), window=W, warmup_windows=10, drift=False,
                                           threshold=ThresholdPolicy(history=20), cooldown_windows=0,
                                           resolve_after=1, missing_after_windows=0),
    "no-mean-feature": DetectorSpec(name="t", group_by=("host",), window=W, warmup_windows=20,
                                    features=("count", "std", "max", "availability")),
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("seed", [1, 2])
def test_compiled_window_close_is_the_python_rule(name, seed):
    spec = SPECS[name]
    compiled = _run(spec, seed, python=False)
    python = _run(spec, seed, python=True)
    assert compiled[3] == python[3]  # invalid / imputed feature counts, late samples
    assert compiled[1] == python[1]  # every window's verdict (score, grade, distance, path, ...)
    assert compiled[0] == python[0]  # alerts
    assert compiled[2] == python[2]  # every entity's state, byte for byte
    if name == "default":  # the stream exercised what it was built to exercise
        alerts = compiled[0]
        kinds = {(a["kind"], a["status"]) for a in alerts}
        assert {("anomaly", "firing"), ("anomaly", "resolved"), ("data_drift", "firing"),
                ("missing_data", "firing")} <= kinds, kinds
        paths = {a["decision"]["path"] for a in alerts if a["kind"] == "anomaly" and a["status"] == "firing"}
        assert "single_feature" in paths and any("multivariate" in p for p in paths), paths
        assert any(a["window"].get("imputed") for a in alerts) or compiled[3][1] > 0
        assert compiled[3][0] > 0 and compiled[3][1] > 0  # invalid and imputed features were met


def test_compiled_window_close_with_a_river_model():
    spec = SPECS["default"]
    compiled = _run(spec, 3, python=False, river_model_at=60)
    python = _run(spec, 3, python=True, river_model_at=60)
    assert compiled[:2] == python[:2] and compiled[3] == python[3]
    assert compiled[2] == python[2]
    assert compiled[2]["h1"] != _run(spec, 3, python=False)[2]["h1"]  # the swap took effect


def test_the_engine_runs_the_compiled_close():
    from stream.detect._close import Entity, WindowClose

    det = Detector(SPECS["default"])
    assert isinstance(det._wc, WindowClose) and det._close_window == det._wc.close
    det.ingest("a", {"host": "x"}, 0.0, 1.0)
    assert [type(e) for e in det.entities.values()] == [Entity]
    # a spec is frozen: the constants the close read at construction cannot go stale
    with pytest.raises(dataclasses.FrozenInstanceError):
        det.spec.window = 30.0  # type: ignore[misc]


def test_window_summaries_given_as_dicts_as_the_python_rule():
    """A window whose summaries are plain dicts (a float count among them): the compiled close
    reads them as the Python rule does, down to the type of the first expected count."""
    from stream.detect.window import SUMMARY_FIELDS, ClosedWindow

    def run(python: bool):
        det = Detector(SPECS["default"])
        if python:
            _python_close(det)
        rng = random.Random(9)
        det.ingest("a", {"host": "x"}, 0.0, 1.0)  # (creates the entity)
        (ent,) = det.entities.values()
        out = []
        for i in range(60):
            summary = {m: {f: 10.0 + rng.gauss(0, 1) for f in SUMMARY_FIELDS} for m in ("a", "b")}
            summary["a"]["count"] = 3.0 if i % 7 else 2  # a float count, and an int one
            summary["b"]["count"] = 4
            for s in summary.values():
                s.update(first_offset=i, last_offset=i, partition=0)
            if i == 40:
                summary["a"]["mean"] += 50.0
            out += det._close_window(ent, ClosedWindow(ent.id, i * W, (i + 1) * W, summary))
        alerts = [{k: v for k, v in a.items() if k != "created_at"} for a in out]
        return alerts, det.export_state(ent.id), repr(ent.expected)

    compiled, python = run(False), run(True)
    assert compiled == python
    assert "3.0" in compiled[2] or "2" in compiled[2]

