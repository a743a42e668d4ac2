"""Realistic metric streams for the load test, with injected anomalies and their ground truth.

``N`` entities (hosts) each export ``M`` metrics (``m0`` … ``m{M-1}``, label ``entity=e<i>``). Every
``step`` seconds of event time an entity sends **one message** holding its ``M`` samples, as an
exporter does after a scrape: ``{"samples": [{"metric", "labels", "value", "ts"}, ...]}``, keyed by
the entity. Each series has its own level, a daily pattern (±10 %, phase per entity) and Gaussian
noise (3 % of its level) — the ideas of :mod:`stream.demo`, vectorized over entities.

Event time is a **history replay**: it starts ``hours`` before the run and advances one ``step``
per round of ``N`` messages, however fast they are sent, so at the maximum rate hours of event
time (and the worker's 60 s windows) pass in seconds of wall time.

Injected anomalies (each on its own entity, after the detector's warm-up; the interval is the
ground truth):

========== ============================================================================
spike      one scrape of one metric ×10
level      one metric +50 % of its level for ``level_s``
variance   one metric's noise ×6 for ``variance_s``
drift      one metric creeps linearly from +0 to +80 % of its level over ``drift_s`` (slow drift)
correlated every metric of the entity +6 % together (≈2 noise σ each) for ``level_s``
missing    75 % of the entity's scrapes are lost (no message) for ``missing_s``
========== ============================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import orjson

KINDS = ("spike", "level_shift", "variance", "drift", "correlated", "missing")
SPEC_NAME = "loadtest"


@dataclass(frozen=True)
class Anomaly:
    entity: int
    kind: str
    start: float  # event time (s), inclusive
    end: float  # event time (s), exclusive
    metric: int = -1  # -1: every metric of the entity

    def as_dict(self) -> dict:
        return {"entity": entity_id(self.entity), "kind": self.kind, "start": self.start, "end": self.end,
                "metric": f"m{self.metric}" if self.metric >= 0 else "*"}


def entity_id(e: int) -> str:
    """The id the service gives the entity (spec ``loadtest``, ``group_by: [entity]``)."""
    return f"{SPEC_NAME}/entity=e{e}"


def spec_yaml(window: float = 60.0) -> str:
    """The detector spec of the load test: the M metrics of an entity form one vector per window."""
    return (f"# written by python -m loadtest\nname: {SPEC_NAME}\nselector:\n  labels:\n    job: loadtest\n"
            f"group_by: [entity]\nwindow:\n  size: {window:g}\n")


@dataclass
class Workload:
    entities: int = 200
    metrics: int = 5
    step: float = 15.0  # scrape interval (event-time seconds)
    t0: float = 1_700_000_000.0  # event time of the first scrape (a multiple of the window)
    seed: int = 7
    warmup_s: float = 3600.0  # no injection before t0 + warmup_s (detector warm-up: 30 windows)
    level_s: float = 1800.0
    variance_s: float = 1200.0
    drift_s: float = 3600.0
    missing_s: float = 1200.0
    anomalies: list[Anomaly] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n, m = self.entities, self.metrics
        self.base = (50.0 + 10.0 * np.arange(m)[None, :] + 3.0 * (np.arange(n) % 17)[:, None]).astype(float)
        self.phase = rng.uniform(0, 2 * math.pi, size=(n, 1))
        self._labels = [{"entity": f"e{e}", "job": "loadtest"} for e in range(n)]
        self._keys = [f"e{e}".encode() for e in range(n)]
        self._names = [f"m{j}" for j in range(m)]
        self._busy: dict[int, float] = {}  # entity -> event time until which it carries an injection

    # ----------------------------------------------------------------------------- schedule
    def ts(self, k: int) -> float:
        return self.t0 + k * self.step

    def duration(self, kind: str) -> float:
        return {"spike": self.step, "level_shift": self.level_s, "variance": self.variance_s,
                "drift": self.drift_s, "correlated": self.level_s, "missing": self.missing_s}[kind]

    def schedule(self, k0: int, k1: int, per_kind: int, seed: int, kinds=KINDS) -> list[Anomaly]:
        """Add ``per_kind`` injections of every kind within scrapes [k0, k1) (after the warm-up);
        each on an entity that carries no other injection at that time. Intervals are shortened
        (to no less than 5 windows) when the range is short. Returns the new ones."""
        rng = np.random.default_rng(seed)
        lo = max(self.ts(k0), self.t0 + self.warmup_s)
        hi = self.ts(k1)
        new: list[Anomaly] = []
        margin = 5 * 60.0  # room after the interval for the window (and resolution) to close
        for kind in kinds:
            dur = self.duration(kind)
            if kind != "spike":
                dur = max(300.0, min(dur, (hi - lo - margin - 60) / 1.5))
            if hi - lo < dur + margin + 60:
                continue
            for _ in range(per_kind):
                for _try in range(50):
                    e = int(rng.integers(self.entities))
                    start = lo + float(rng.uniform(0, hi - lo - dur - margin))
                    start = self.t0 + math.ceil((start - self.t0) / self.step) * self.step  # on a scrape
                    if self._busy.get(e, -math.inf) + 2 * 3600 < start:  # 2 h apart on one entity
                        break
                else:
                    continue
                metric = -1 if kind in ("correlated", "missing") else int(rng.integers(self.metrics))
                a = Anomaly(e, kind, start, start + dur, metric)
                self._busy[e] = a.end
                new.append(a)
        self.anomalies.extend(new)
        return new

    # ----------------------------------------------------------------------------- values
    def step_messages(self, k: int, rng: np.random.Generator) -> list[tuple[int, bytes, bytes]]:
        """The messages of scrape k: (entity index, key, value), entities in order; lost ones omitted."""
        t = self.ts(k)
        base = self.base
        noise_sd = np.full_like(base, 0.03) * base
        vals = base * (1 + 0.1 * np.sin(2 * math.pi * t / 86400.0 + self.phase))
        lost: set[int] = set()
        mult = None
        for a in self.anomalies:
            if not a.start <= t < a.end:
                continue
            e, j = a.entity, a.metric
            if a.kind == "variance":
                noise_sd[e, j] *= 6
            elif a.kind == "missing":
                if rng.random() < 0.75:
                    lost.add(e)
            elif a.kind == "spike":
                if mult is None:
                    mult = np.ones_like(base)
                mult[e, j] *= 10
            elif a.kind == "level_shift":
                vals[e, j] += 0.5 * base[e, j]
            elif a.kind == "drift":
                vals[e, j] += 0.8 * base[e, j] * (t - a.start) / (a.end - a.start)
            elif a.kind == "correlated":
                vals[e, :] += 0.06 * base[e, :]
        vals = vals + rng.normal(0.0, 1.0, size=base.shape) * noise_sd
        if mult is not None:
            vals = vals * mult
        names, labels, keys = self._names, self._labels, self._keys
        out = []
        rows = vals.tolist()
        for e in range(self.entities):
            if e in lost:
                continue
            lab = labels[e]
            out.append((e, keys[e], orjson.dumps(
                {"samples": [{"metric": names[j], "labels": lab, "value": v, "ts": t} for j, v in enumerate(rows[e])]})))
        return out

    def messages(self, k0: int, k1: int, seed: int | None = None):
        """Yield (k, messages of scrape k) for k in [k0, k1)."""
        rng = np.random.default_rng(self.seed * 1_000_003 + k0 if seed is None else seed)
        for k in range(k0, k1):
            yield k, self.step_messages(k, rng)
