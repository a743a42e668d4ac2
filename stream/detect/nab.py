"""NAB scoring of changepoint detections, and point-wise metrics, as SKAB scores them.

The Numenta Anomaly Benchmark (NAB) scores a detector by *labeled windows*: each true changepoint
owns a window; the first detection inside it earns a reward that falls from ``A_tp`` at the
window's start to ``A_fp`` at its end along a sigmoid (early detection pays more); every
detection outside all windows costs ``A_fp``; a window without any detection costs ``A_fn``.
Later detections inside an already-detected window are neither rewarded nor penalized. Scores
are normalized between the null detector (detects nothing: every window costs ``A_fn``) and a
perfect one (detects every window at its start: ``A_tp`` each)::

    score = 100 * (raw - null) / (perfect - null)

so the null detector scores 0, a perfect detector 100, and a detector worse than doing nothing
scores below 0. Aggregates over many files sum raw/null/perfect before normalizing.

This module follows the protocol of the SKAB repository (waico/SKAB ``core/metrics.py``, from
the TSAD library), which its leaderboard uses:

* windows of a fixed width (60 s for SKAB) placed to the **right** of each true changepoint,
  ``[cp, cp + width]``, both ends inclusive; when two windows overlap the right one is cut to
  start where the left one ends ("cut right window");
* the reward curve is TSAD's "improved" scaled sigmoid: a ``tanh`` over ``[-pi/2, pi/2]``
  sampled at 1000 points, from ``A_tp`` at the window start down to ``A_fp`` at its end
  (NAB's original logistic curve depends on the sampling step; this one does not);
* profiles (``A_tp``, ``A_fp``, ``A_fn``): standard (1, -0.11, -1), reward_low_FP
  (1, -0.22, -1), reward_low_FN (1, -0.11, -2);
* predicted changepoints of a binary alert series are its transitions
  (``|diff(alert)|``, the first element being ``alert[0]``), as SKAB's notebooks derive them.

>>> r = nab_score([[0.0]], [[0.0]], width=60.0)      # detected at the changepoint itself
>>> r["standard"]
100.0
>>> nab_score([[0.0]], [[]], width=60.0)["standard"]  # the null detector
0.0
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PROFILES: dict[str, tuple[float, float, float]] = {
    # name: (A_tp, A_fp, A_fn)
    "standard": (1.0, -0.11, -1.0),
    "reward_low_FP": (1.0, -0.22, -1.0),
    "reward_low_FN": (1.0, -0.11, -2.0),
}
_DETAIL = 1000  # points of TSAD's reward curve


def windows_right(changepoints: Sequence[float], width: float) -> list[tuple[float, float]]:
    """Scoring windows ``[cp, cp + width]`` to the right of each (sorted) changepoint.

    Overlaps are resolved as TSAD's "cut right window": a window starting at or before the end
    of the previous one starts at that end instead.

    >>> windows_right([0.0, 30.0, 200.0], 60.0)
    [(0.0, 60.0), (60.0, 90.0), (200.0, 260.0)]
    """
    wins = [[float(c), float(c) + width] for c in sorted(changepoints)]
    for i in range(len(wins) - 1):
        if wins[i][1] >= wins[i + 1][0]:
            wins[i + 1][0] = wins[i][1]
    return [(a, b) for a, b in wins]


def reward(position: float, a_tp: float, a_fp: float) -> float:
    """Reward of the first detection at relative ``position`` in its window (0 = start, 1 = end).

    TSAD's curve: ``y(x) = (A_tp - A_fp)/2 * (1 - tanh(x)/tanh(pi/2)) + A_fp`` for x on a
    1000-point grid over [-pi/2, pi/2], read at index ``int(position * 1000)`` (capped).

    >>> reward(0.0, 1.0, -0.11), round(reward(1.0, 1.0, -0.11), 6)
    (1.0, -0.11)
    """
    x = np.linspace(-math.pi / 2, math.pi / 2, _DETAIL)
    i = min(int(position * _DETAIL), _DETAIL - 1)
    i = max(i, 0)
    return float((a_tp - a_fp) / 2 * -math.tanh(x[i]) / math.tanh(math.pi / 2) + (a_tp - a_fp) / 2 + a_fp)


def confusion_windows(windows: Sequence[tuple[float, float]], detections: Sequence[float]):
    """(first detection per window or None, number of detections outside every window)."""
    det = np.sort(np.asarray(detections, dtype=float))
    firsts: list[float | None] = []
    inside = np.zeros(len(det), dtype=bool)
    for a, b in windows:
        m = (det >= a) & (det <= b)
        inside |= m
        firsts.append(float(det[m][0]) if m.any() else None)
    return firsts, int((~inside).sum())


def nab_raw(changepoints: Sequence[float], detections: Sequence[float], width: float) -> dict[str, tuple[float, float, float]]:
    """Per profile (raw, null, perfect) for one file; sum these over files, then :func:`normalize`."""
    wins = windows_right(changepoints, width)
    firsts, n_fp = confusion_windows(wins, detections)
    out = {}
    for name, (a_tp, a_fp, a_fn) in PROFILES.items():
        raw = a_fp * n_fp
        for (a, b), t in zip(wins, firsts):
            if t is None:
                raw += a_fn
            else:
                raw += reward((t - a) / (b - a) if b > a else 0.0, a_tp, a_fp)
        out[name] = (raw, len(wins) * a_fn, len(wins) * a_tp)
    return out


def normalize(raw: float, null: float, perfect: float) -> float:
    """``100 * (raw - null) / (perfect - null)``; 0.0 when there is nothing to detect."""
    if perfect == null:
        return 0.0
    return 100.0 * (raw - null) / (perfect - null)


def nab_score(changepoints: Sequence[Sequence[float]], detections: Sequence[Sequence[float]], width: float,
              ) -> dict[str, float]:
    """NAB scores per profile over several files (raw, null and perfect summed before normalizing).

    ``changepoints[i]`` and ``detections[i]`` are the times (seconds) of file i.
    """
    tot = {name: [0.0, 0.0, 0.0] for name in PROFILES}
    for cps, dets in zip(changepoints, detections):
        for name, parts in nab_raw(cps, dets, width).items():
            for k in range(3):
                tot[name][k] += parts[k]
    return {name: normalize(*v) for name, v in tot.items()}


def detections_from_alerts(times: Sequence[float], alert: Sequence[bool | int]) -> list[float]:
    """Predicted changepoints of a binary alert series: its transitions (SKAB's ``|diff|``).

    >>> detections_from_alerts([0, 1, 2, 3, 4], [0, 1, 1, 0, 0])
    [1.0, 3.0]
    >>> detections_from_alerts([0, 1, 2], [1, 1, 1])
    [0.0]
    """
    a = np.asarray(alert, dtype=np.int8)
    if len(a) == 0:
        return []
    cp = np.empty(len(a), dtype=bool)
    cp[0] = a[0] != 0
    cp[1:] = a[1:] != a[:-1]
    return [float(t) for t in np.asarray(times, dtype=float)[cp]]


def confusion(true: Sequence[int | bool], pred: Sequence[int | bool]) -> tuple[int, int, int, int]:
    """(TP, TN, FP, FN) of point-wise binary labels."""
    t = np.asarray(true, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    return int((t & p).sum()), int((~t & ~p).sum()), int((~t & p).sum()), int((t & ~p).sum())


def pointwise(tp: int, tn: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall, F1, false-alarm rate and missed-alarm rate (the last two in %).

    F1 = TP / (TP + (FP + FN) / 2) (SKAB's formula, equal to 2PR/(P+R)); FAR = FP / (FP + TN);
    MAR = FN / (FN + TP). A ratio with a zero denominator is reported as 0.

    >>> m = pointwise(tp=3, tn=5, fp=1, fn=1)
    >>> round(m["f1"], 4), round(m["far"], 2), m["mar"]
    (0.75, 16.67, 25.0)
    """
    def div(a: float, b: float) -> float:
        return a / b if b else 0.0

    return {
        "precision": div(tp, tp + fp),
        "recall": div(tp, tp + fn),
        "f1": div(tp, tp + (fp + fn) / 2),
        "far": 100.0 * div(fp, fp + tn),
        "mar": 100.0 * div(fn, fn + tp),
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }
