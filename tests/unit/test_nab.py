"""NAB scoring (SKAB protocol) and point-wise metrics on hand-made cases computed by hand."""
from __future__ import annotations

import math

import pytest

from stream.detect import nab

W = 60.0  # SKAB: 60 s window to the right of each changepoint


def _reward(pos: float, a_tp: float, a_fp: float) -> float:
    """TSAD's curve, written out independently: index int(pos*1000) of a 1000-point tanh grid."""
    i = min(int(pos * 1000), 999)
    x = -math.pi / 2 + i * math.pi / 999
    return (a_tp - a_fp) / 2 * (1 - math.tanh(x) / math.tanh(math.pi / 2)) + a_fp


def test_perfect_detector_scores_100_in_every_profile():
    cps = [[100.0, 400.0], [50.0]]
    s = nab.nab_score(cps, cps, W)
    assert s == {"standard": 100.0, "reward_low_FP": 100.0, "reward_low_FN": 100.0}


def test_null_detector_scores_0():
    s = nab.nab_score([[100.0, 400.0]], [[]], W)
    assert s == {"standard": 0.0, "reward_low_FP": 0.0, "reward_low_FN": 0.0}


def test_early_detection_beats_late_detection():
    early = nab.nab_score([[100.0]], [[105.0]], W)["standard"]
    late = nab.nab_score([[100.0]], [[150.0]], W)["standard"]
    assert 100.0 > early > late > 0.0
    # by hand: one window, raw = reward, null = -1, perfect = 1 -> 100 * (r + 1) / 2
    r = _reward(5 / 60, 1.0, -0.11)
    assert early == pytest.approx(100 * (r + 1) / 2, abs=1e-9)
    # the window's end is still inside (inclusive) and earns A_fp
    end = nab.nab_score([[100.0]], [[160.0]], W)["standard"]
    assert end == pytest.approx(100 * (-0.11 + 1) / 2)


def test_only_the_first_detection_in_a_window_counts():
    one = nab.nab_score([[100.0]], [[110.0]], W)
    more = nab.nab_score([[100.0]], [[110.0, 120.0, 150.0]], W)
    assert one == more


def test_false_positive_costs_per_profile():
    # one changepoint detected at its start (raw +1) plus one detection far outside the window
    raw = nab.nab_raw([100.0], [100.0, 500.0], W)
    assert raw["standard"] == pytest.approx((1 - 0.11, -1.0, 1.0))
    assert raw["reward_low_FP"] == pytest.approx((1 - 0.22, -1.0, 1.0))
    assert raw["reward_low_FN"] == pytest.approx((1 - 0.11, -2.0, 1.0))
    s = nab.nab_score([[100.0]], [[100.0, 500.0]], W)
    assert s["standard"] == pytest.approx(100 * (0.89 + 1) / 2)     # 94.5
    assert s["reward_low_FP"] == pytest.approx(100 * (0.78 + 1) / 2)  # 89.0
    assert s["reward_low_FN"] == pytest.approx(100 * (0.89 + 2) / 3)  # 96.33
    # a detection just before the window is a false positive too
    assert nab.nab_raw([100.0], [99.0], W)["standard"][0] == pytest.approx(-0.11 - 1.0)


def test_missed_changepoint_costs_a_fn_per_profile():
    raw = nab.nab_raw([100.0, 1000.0], [100.0], W)
    assert raw["standard"] == pytest.approx((1 - 1, -2.0, 2.0))
    assert raw["reward_low_FN"] == pytest.approx((1 - 2, -4.0, 2.0))
    s = nab.nab_score([[100.0, 1000.0]], [[100.0]], W)
    assert s["standard"] == pytest.approx(50.0)
    assert s["reward_low_FN"] == pytest.approx(100 * 3 / 6)


def test_overall_sums_raw_scores_before_normalizing():
    # file A perfect (1 window), file B missed (3 windows): (1 - 3 - (-4)) / (4 - (-4)) = 25 %
    s = nab.nab_score([[10.0], [10.0, 200.0, 400.0]], [[10.0], []], W)
    assert s["standard"] == pytest.approx(25.0)


def test_worse_than_null_is_negative():
    s = nab.nab_score([[100.0]], [[1000.0 + i for i in range(20)]], W)
    assert s["standard"] == pytest.approx(100 * (-1 - 20 * 0.11 + 1) / 2)
    assert s["standard"] < 0


def test_overlapping_windows_cut_right():
    assert nab.windows_right([0.0, 30.0], W) == [(0.0, 60.0), (60.0, 90.0)]
    # a detection at 70 belongs to the second (cut) window, at position 10/30
    raw = nab.nab_raw([0.0, 30.0], [0.0, 70.0], W)["standard"][0]
    assert raw == pytest.approx(1.0 + _reward(10 / 30, 1.0, -0.11))


def test_reward_curve_ends_and_monotone():
    assert nab.reward(0.0, 1.0, -0.11) == pytest.approx(1.0)
    assert nab.reward(1.0, 1.0, -0.11) == pytest.approx(-0.11)
    assert nab.reward(0.5, 1.0, -0.11) == pytest.approx(_reward(0.5, 1.0, -0.11))
    vals = [nab.reward(p / 20, 1.0, -0.11) for p in range(21)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_no_changepoints_scores_zero_not_nan():
    assert nab.nab_score([[]], [[5.0]], W)["standard"] == 0.0


def test_detections_from_alerts_are_transitions():
    assert nab.detections_from_alerts([0, 1, 2, 3, 4, 5], [0, 1, 1, 0, 1, 1]) == [1.0, 3.0, 4.0]
    assert nab.detections_from_alerts([0, 1], [1, 0]) == [0.0, 1.0]
    assert nab.detections_from_alerts([], []) == []


def test_pointwise_by_hand():
    true = [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    pred = [0, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    tp, tn, fp, fn = nab.confusion(true, pred)
    assert (tp, tn, fp, fn) == (2, 4, 2, 2)
    m = nab.pointwise(tp, tn, fp, fn)
    assert m["precision"] == 0.5 and m["recall"] == 0.5
    assert m["f1"] == pytest.approx(0.5)            # 2 / (2 + 4/2)
    assert m["far"] == pytest.approx(100 * 2 / 6)   # FP / (FP + TN)
    assert m["mar"] == pytest.approx(50.0)          # FN / (FN + TP)


def test_pointwise_degenerate_cases():
    m = nab.pointwise(0, 10, 0, 0)
    assert m["f1"] == 0.0 and m["far"] == 0.0 and m["mar"] == 0.0
    perfect = nab.pointwise(*nab.confusion([0, 1, 1], [0, 1, 1]))
    assert perfect["f1"] == 1.0 and perfect["far"] == 0.0 and perfect["mar"] == 0.0
