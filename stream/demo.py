"""Synthetic metric streams with injected anomalies, for the demo, the tests and the load test.

Each series has a daily pattern plus noise. Anomalies are injected at known windows so tests
can check that they, and only they, are alerted.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Injection:
    series: int  # index of the series
    kind: str  # spike | level_shift | creep
    start: float  # event time (s)
    duration: float  # s


def sample_value(series: int, ts: float, rng: random.Random, injections: tuple[Injection, ...] = ()) -> float:
    base = 100.0 + 20.0 * series
    v = base * (1 + 0.1 * math.sin(2 * math.pi * ts / 86400.0)) + rng.gauss(0, base * 0.03)
    for inj in injections:
        if inj.series != series or not inj.start <= ts < inj.start + inj.duration:
            continue
        if inj.kind == "spike":
            v *= 10
        elif inj.kind == "level_shift":
            v += base * 0.5
        elif inj.kind == "creep":
            v += base * 0.6 * (ts - inj.start) / inj.duration
    return v


def generate(n_series: int, start: float, hours: float, step: float = 10.0, *, metric: str = "http_latency_ms",
             injections: tuple[Injection, ...] = (), seed: int = 7, label: str = "host"):
    """Yield metric events in event-time order: n_series series, one sample every `step` s."""
    rng = random.Random(seed)
    n = int(hours * 3600 / step)
    for i in range(n):
        ts = start + i * step
        for sidx in range(n_series):
            yield {"metric": metric, "labels": {label: f"h{sidx}"}, "value": sample_value(sidx, ts, rng, injections), "ts": ts}
