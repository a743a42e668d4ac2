"""Monitor state per model version stops growing, whatever the stream length."""
from __future__ import annotations

import numpy as np

from stream.detect.monitor import Monitors
from stream.detect.monitor_spec import MonitorSpec, PerformancePolicy
from stream.inference_events import Feedback, Inference

T0 = 1_700_000_000.0


def _feed(mons, rng, start, stop, labelled, shift_at=None):
    for i in range(start, stop):
        shift = 1.0 if shift_at is not None and i >= shift_at else 0.0
        x = {f"f{j}": float(v) for j, v in enumerate(rng.normal(shift, 1, 8))}
        x["c"] = str(rng.choice(list("abcdefgh")))
        x["n"] = int(rng.integers(0, 1000))  # many distinct integers: the bounded sample at work
        p = float(rng.random() < 0.3)
        mons.observe(Inference("m", "1", f"r{i:08d}", T0 + i, x, p, float(rng.random()), None), 0, i)
        if labelled:
            lab = p if rng.random() > (0.1 if i < 30_000 else 0.3) else 1.0 - p
            mons.feedback(Feedback("m", "1", f"r{i:08d}", lab, T0 + i + 3), 0, i)


def _sizes(labelled, spec, points, shift_at=None):
    rng = np.random.default_rng(5)
    mons = Monitors([spec])
    out, done = [], 0
    for upto in points:
        _feed(mons, rng, done, upto, labelled, shift_at)
        done = upto
        out.append(len(mons.export_state("m")))
    return out, mons


def test_state_stops_growing_with_labels_drift_and_alerts():
    spec = MonitorSpec(baseline_size=2000, window=500, compare_every=100)
    points = [10_000, 25_000, 40_000, 60_000]
    sizes, mons = _sizes(True, spec, points, shift_at=45_000)
    vm = mons.models["m"].versions["1"]
    assert vm.pairs == 60_000 and vm.comparisons > 500
    assert any(v is not None for v in vm.incidents.values())  # drift and a worse error rate happened
    # from 10k to 60k inferences: a few hundred bytes of number formatting and ADWIN's
    # logarithmic bucket list at most, on a state of hundreds of kB
    growth = max(sizes) - sizes[0]
    assert growth < 0.01 * sizes[0], sizes
    assert len(mons.models["m"].pending_inf) < 100 and len(vm.pair_err) <= 4096


def test_unlabelled_join_store_stops_at_its_bound():
    cap = 3000
    spec = MonitorSpec(baseline_size=1000, window=300, compare_every=100,
                       performance=PerformancePolicy(max_pending=cap))
    sizes, mons = _sizes(False, spec, [2_000, 5_000, 10_000, 20_000])
    mm = mons.models["m"]
    assert len(mm.pending_inf) == cap and mm.stats["inferences_expired_unlabelled"] == 20_000 - cap
    assert len(mm.pending_inf.order) <= 2 * cap + 1024
    # grows while the store fills, then flat
    assert sizes[0] < sizes[1]
    assert abs(sizes[3] - sizes[2]) < 0.01 * sizes[2], sizes


def test_join_store_order_queue_is_compacted_when_labels_join():
    spec = MonitorSpec(baseline_size=100, window=100, compare_every=50)
    mons = Monitors([spec])
    rng = np.random.default_rng(0)
    _feed(mons, rng, 0, 20_000, labelled=True)
    mm = mons.models["m"]
    assert len(mm.pending_inf) == 0 and len(mm.pending_inf.order) <= 1024 + 1
