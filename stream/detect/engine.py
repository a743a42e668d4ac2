"""Online anomaly detection for every entity of one detector spec.

The flow per entity: samples are folded into event-time windows (compiled accumulators); when
the watermark passes a window's end the window's features are computed, standardized against
the entity's own baseline (an EWMA of its normal windows), squashed into [0, 1] and scored by
Half-Space Trees *before* being learned. The raw score is calibrated into an anomaly grade (its
tail probability among the entity's recent scores); a decision needs the grade, a score floor
and a minimum distance from baseline. ADWIN watches each metric's window mean for change: a
change emits ``data_drift`` and re-warms the entity instead of alerting on the new normal.

>>> from stream.detect.spec import DetectorSpec
>>> det = Detector(DetectorSpec(window=60, warmup_windows=20))
>>> import random; rng = random.Random(1)
>>> alerts = []
>>> for i in range(60 * 60):                       # one hour of 1-second samples
...     v = 10 + rng.gauss(0, 1) + (90 if 50 * 60 <= i < 51 * 60 else 0)
...     alerts += det.ingest("cpu", {"host": "a"}, ts=float(i), value=v)
>>> [(a["kind"], a["status"], a["window"]["start"]) for a in alerts if a["status"] == "firing"]
[('anomaly', 'firing', 3000.0)]
"""
from __future__ import annotations

import functools
from array import array
import hashlib
import math
import sys
import time
from typing import Any

import numpy as np
import orjson

from stream.detect.models import make_model, model_from_bytes
from stream.detect.spec import DetectorSpec
from stream.detect.window import ClosedWindow, WindowStore

STATE_VERSION = 1
_Z_SCALE = 8.0
_RESOLVE_P = 1e-3  # a window counts as normal again when its distance from baseline is this probable  # z in [-4, 4] maps onto [0, 1] for the trees


@functools.lru_cache(maxsize=1024)
def _chi2_isf(p: float, dof: int) -> float:
    from scipy.stats import chi2

    return float(chi2.isf(p, max(dof, 1)))


def alert_id(*parts: Any) -> str:
    """Deterministic id: the same (detector, entity, window, kind) always gives the same id."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


class _Entity:
    __slots__ = ("id", "labels", "lane", "mean", "var", "n_normal", "n_windows", "model", "scores", "expected",
                 "incident", "normal_streak", "cooldown_until", "adwins", "last_end", "gap_flagged", "metrics",
                 "last_seen", "cursor")

    def __init__(self, eid: str, labels: dict[str, str], lane: int):
        self.id = eid
        self.labels = labels
        self.lane = lane
        self.mean: dict[str, float] = {}
        self.var: dict[str, float] = {}
        self.n_normal = 0
        self.n_windows = 0
        self.model = None
        self.scores = array("d")  # recent scores (8 bytes each, not a deque of float objects)
        self.expected: dict[str, float] = {}
        self.incident: dict | None = None
        self.normal_streak = 0
        self.cooldown_until = -math.inf
        self.adwins: dict[str, Any] = {}
        self.last_end = -math.inf
        self.gap_flagged = False
        self.metrics: set[str] = set()
        self.last_seen = -math.inf
        self.cursor: dict[int, int] = {}  # source partition -> highest source offset folded in


class Detector:
    """All entities of one spec. Pure: no I/O; the caller decodes, ingests and publishes."""

    def __init__(self, spec: DetectorSpec, *, source_topic: str = "metrics"):
        self.spec = spec
        self.source_topic = source_topic
        self.windows = WindowStore(spec.window, spec.allowed_lateness)
        self.entities: dict[str, _Entity] = {}
        self.late = 0
        self.invalid_features = 0
        self.alpha = 1 - 0.5 ** (1 / spec.baseline_halflife)
        # optional observer of every closed window's verdict (offline scoring, evaluation):
        # called as on_window(window, verdict) with verdict = {"score", "grade", "distance",
        # "anomalous", "firing", "warm"}; "firing" is whether the entity's incident is open after
        # this window. It only reads; None (the default) costs nothing.
        self.on_window = None

    # ------------------------------------------------------------------------ ingest
    def ingest(self, metric: str, labels: dict[str, str], ts: float, value: float, *, offset: int = -1,
               partition: int = -1, lane: int = 0, entity: tuple[str, dict[str, str]] | None = None) -> list[dict]:
        """Fold one sample in; returns the alerts of the windows its event time closes.

        A window closes when the entity's own event time passes its end plus the allowed
        lateness (so replayed history and interleaved partitions work); :meth:`advance` closes
        the windows of entities that went quiet.
        """
        # ``entity``: the (entity id, entity labels) the caller already resolved with this spec's
        # entity_of (the worker routes by entity before the sample gets here)
        hit = entity if entity is not None else self.spec.entity_of(metric, labels)
        if hit is None:
            return []
        eid, elabels = hit
        ent = self.entities.get(eid)
        if ent is None:
            eid = sys.intern(eid)  # one string object per entity in every index that holds it
            ent = self.entities[eid] = _Entity(eid, elabels, lane)
        else:
            eid = ent.id
        ent.metrics.add(metric)
        if ts > ent.last_seen:
            ent.last_seen = ts
        if not self.windows.add(eid, metric, ts, value, offset, partition, lane):
            self.late += 1
        if eid in self.windows.starts:
            return self._emit(self.windows.close_entity(eid, ent.last_seen))
        return []

    # ----------------------------------------------------------------------- advance
    def advance(self, watermark: float, lane: int = 0) -> list[dict]:
        """Close the lane's windows up to a watermark (entities gone quiet); returns their alerts."""
        return self.advance_lane(watermark, lane)[0]

    def advance_lane(self, watermark: float, lane: int = 0, may_close=None) -> tuple[list[dict], set[str]]:
        """Like :meth:`advance`, also returning the entities whose state changed.

        ``may_close(entity_id)`` can veto closing an entity's windows (the worker vetoes entities
        that are still receiving samples, whatever the lane's event time says).
        """
        closed = self.windows.close_until(watermark, lane, may_close)
        return self._emit(closed), {w.entity for w in closed}

    def _emit(self, windows: list[ClosedWindow]) -> list[dict]:
        alerts: list[dict] = []
        for w in windows:
            alerts.extend(self._on_window(w))
        firing = [a for a in alerts if a["kind"] == "anomaly" and a["status"] == "firing"]
        if len(firing) > 1:  # other entities anomalous in the same window
            by_window: dict[float, list[dict]] = {}
            for a in firing:
                by_window.setdefault(a["window"]["start"], []).append(a)
            for group in by_window.values():
                for a in group:
                    a["related"] = [b["series"]["id"] for b in group if b is not a]
        return alerts

    def _features(self, ent: _Entity, w: ClosedWindow) -> dict[str, float]:
        feats: dict[str, float] = {}
        for metric in sorted(w.summary):
            s = w.summary[metric]
            exp = ent.expected.get(metric)
            for f in self.spec.features:
                if f == "availability":
                    v = min(1.0, s["count"] / exp) if exp else 1.0
                else:
                    v = float(s[f])
                if not math.isfinite(v):
                    self.invalid_features += 1
                    continue  # NaN / inf never reach a model: treated as missing, counted
                feats[f"{metric}:{f}"] = v
        return feats

    def _on_window(self, w: ClosedWindow) -> list[dict]:
        spec = self.spec
        ent = self.entities[w.entity]
        out: list[dict] = []
        gap = 0
        if ent.last_end > -math.inf:
            gap = int(round((w.start - ent.last_end) / spec.window))
        ent.last_end = w.end
        ent.gap_flagged = False
        ent.n_windows += 1
        feats = self._features(ent, w)
        for metric, s in w.summary.items():  # learn the expected sample count per window
            e = ent.expected.get(metric)
            ent.expected[metric] = s["count"] if e is None else e + 0.05 * (s["count"] - e)
        # --- standardize against the entity's baseline --------------------------------------------
        z: dict[str, float] = {}
        for k, v in feats.items():
            m = ent.mean.get(k)
            if m is None:
                z[k] = 0.0
                continue
            sd = math.sqrt(ent.var[k])
            floor = 1e-3 * max(abs(m), 1e-9) + 1e-9  # a constant feature still gets a finite z
            z[k] = (v - m) / max(sd, floor)
        x = {k: min(1.0, max(0.0, 0.5 + zk / _Z_SCALE)) for k, zk in z.items()}
        warm = ent.n_normal >= spec.warmup_windows
        if ent.model is None:
            ent.model = make_model(spec.model)
        score = float(ent.model.score_one(x)) if warm else 0.0
        scores = ent.scores
        grade = (sum(1 for s in scores if s < score) / len(scores)) if (warm and scores) else 0.0
        # distance from baseline: sum of squared z against the chi-square tail (a window must be
        # improbable as a whole, not only rank high among recent scores)
        d2 = sum(v * v for v in z.values())
        thr = spec.threshold
        anomalous = (warm and grade >= thr.grade and score >= thr.score_floor
                     and d2 >= _chi2_isf(thr.distance_p, len(z)))
        # --- drift ---------------------------------------------------------------------------------
        drift_alert = None
        if spec.drift and not anomalous and warm:
            drift_alert = self._drift(ent, w, feats)
        # --- lifecycle -----------------------------------------------------------------------------
        if anomalous:
            ent.normal_streak = 0
            if ent.incident is None and w.start >= ent.cooldown_until:
                a = self._alert(ent, w, "anomaly", "firing", feats, z, score, grade, gap)
                ent.incident = {"id": a["alert_id"], "start": w.start}
                out.append(a)
        else:
            # back to normal means close to baseline again, not merely a lower rank among recent
            # scores (those include the incident's own): a level shift stays firing until it ends
            # or ADWIN declares it the new normal
            near = d2 < _chi2_isf(_RESOLVE_P, max(1, len(z)))
            ent.normal_streak = ent.normal_streak + 1 if near else 0
            if ent.incident is not None and ent.normal_streak >= spec.resolve_after:
                a = self._alert(ent, w, "anomaly", "resolved", feats, z, score, grade, gap)
                a["incident_id"] = ent.incident["id"]
                out.append(a)
                ent.incident = None
                ent.cooldown_until = w.end + spec.cooldown_windows * spec.window
        if drift_alert is not None:
            out.append(drift_alert)
        # --- learn (after scoring: strictly online) ---------------------------------------------
        if warm:
            scores.append(score)
            if len(scores) > thr.history:
                del scores[0]
        # learn only normal windows: nothing of an open incident (not even its lower-ranked
        # windows) may leak into the baseline, or the incident would soon look normal
        if not anomalous and (ent.incident is None or ent.normal_streak > 0 or not warm):
            ent.model.learn_one(x)
            self._update_baseline(ent, feats)
        if self.on_window is not None:
            self.on_window(w, {"score": score, "grade": grade, "distance": d2, "anomalous": anomalous,
                               "firing": ent.incident is not None, "warm": warm})
        return out

    def _update_baseline(self, ent: _Entity, feats: dict[str, float]) -> None:
        a = self.alpha if ent.n_normal >= self.spec.warmup_windows else 1.0 / (ent.n_normal + 1)
        for k, v in feats.items():
            m = ent.mean.get(k)
            if m is None:
                ent.mean[k], ent.var[k] = v, 0.0
                continue
            d = v - m
            ent.mean[k] = m + a * d
            ent.var[k] = (1 - a) * (ent.var[k] + a * d * d)
        ent.n_normal += 1

    def _drift(self, ent: _Entity, w: ClosedWindow, feats: dict[str, float]) -> dict | None:
        from river.drift import ADWIN

        changed = []
        for metric in sorted(w.summary):
            v = feats.get(f"{metric}:mean")
            if v is None:
                continue
            ad = ent.adwins.get(metric)
            if ad is None:
                ad = ent.adwins[metric] = ADWIN(delta=self.spec.drift_delta)
            before = ad.estimation
            ad.update(v)
            if ad.drift_detected:
                # statistically significant is not enough: the shift must matter against the
                # metric's own sample noise (its baseline within-window std), or a slow daily
                # pattern would be reported as drift all day long
                noise = ent.mean.get(f"{metric}:std") or 0.0
                effect = abs(ad.estimation - before) / max(noise, 1e-9 * max(abs(before), 1.0))
                if effect >= self.spec.drift_min_effect:
                    changed.append({"metric": metric, "before_mean": before, "after_mean": ad.estimation,
                                    "effect_size": effect,
                                    "change_point": w.end - ad.width * self.spec.window, "window_width": ad.width})
        if not changed:
            return None
        a = self._base(ent, w, "data_drift", "firing")
        a["drift"] = {"detector": "ADWIN", "delta": self.spec.drift_delta, "changes": changed,
                      "change_point": min(c["change_point"] for c in changed)}
        a["features"] = feats
        a["baseline"] = self._baseline(ent, feats)
        a["score"] = max(abs(c["after_mean"] - c["before_mean"]) for c in changed)
        a["threshold"] = {"adwin_delta": self.spec.drift_delta, "min_effect": self.spec.drift_min_effect}
        # the new normal: re-warm the model and the baseline instead of alerting on it for ever
        ent.model = make_model(self.spec.model)
        ent.mean.clear(); ent.var.clear(); ent.n_normal = 0; del ent.scores[:]
        ent.adwins.clear()
        return a

    # ------------------------------------------------------------------------ alerts
    def _baseline(self, ent: _Entity, feats: dict[str, float]) -> dict:
        return {k: {"mean": ent.mean[k], "std": math.sqrt(ent.var[k])} for k in feats if k in ent.mean}

    def _base(self, ent: _Entity, w: ClosedWindow, kind: str, status: str) -> dict:
        spec = self.spec
        ranges = sorted(
            ({"partition": s["partition"], "first_offset": s["first_offset"], "last_offset": s["last_offset"], "metric": m}
             for m, s in w.summary.items() if s["first_offset"] >= 0),
            key=lambda r: (r["partition"], r["first_offset"]),
        )
        first = ranges[0] if ranges else {"partition": None, "first_offset": None, "last_offset": None}
        eid = w.entity
        return {
            "alert_id": alert_id(spec.name, eid, w.start, w.end, kind, status),
            "status": status,
            "kind": kind,
            "detector": spec.name,
            "severity": spec.severity,
            "series": {"id": eid, "labels": ent.labels, "metrics": sorted(w.summary)},
            "window": {"start": w.start, "end": w.end},
            "source": {"topic": self.source_topic, "partition": first["partition"],
                       "first_offset": first["first_offset"], "last_offset": first["last_offset"], "ranges": ranges},
            "summary": {m: {k: s[k] for k in ("count", "mean", "std", "min", "max", "median", "first_ts", "last_ts")}
                        for m, s in w.summary.items()},
            "related": [],
            "created_at": time.time(),
        }

    def _alert(self, ent: _Entity, w: ClosedWindow, kind: str, status: str, feats: dict, z: dict,
               score: float, grade: float, gap: int) -> dict:
        spec = self.spec
        a = self._base(ent, w, kind, status)
        total = sum(abs(v) for v in z.values()) or 1.0
        attribution = sorted(
            ({"feature": k, "share": abs(z[k]) / total,
              "direction": "high" if z[k] > 1 else "low" if z[k] < -1 else "normal",
              "value": feats[k], "z": z[k],
              "baseline": {"mean": ent.mean.get(k), "std": math.sqrt(ent.var[k]) if k in ent.var else None}}
             for k in z),
            key=lambda r: -r["share"],
        )
        a.update({
            "features": feats,
            "score": score,
            "grade": grade,
            "threshold": {"grade": spec.threshold.grade, "score_floor": spec.threshold.score_floor,
                          "distance_p": spec.threshold.distance_p, "history": len(ent.scores)},
            "attribution": attribution,
            "baseline": self._baseline(ent, feats),
            "model": {"type": "HalfSpaceTrees", "params": vars(spec.model) if hasattr(spec.model, "__dict__") else {},
                      "windows_seen": ent.n_windows, "normal_windows_learned": ent.n_normal,
                      "warm": ent.n_normal >= spec.warmup_windows, "warmup_windows": spec.warmup_windows},
            "imputed_gap_windows": gap - 1 if 1 < gap <= spec.impute_max_windows + 1 else 0,
        })
        if gap > spec.impute_max_windows + 1:
            a["gap_windows"] = gap - 1
        return a

    # ------------------------------------------------------------------ durable state
    def export_state(self, eid: str) -> bytes:
        """The entity's whole state (open windows, baseline, model, threshold, drift, lifecycle), versioned."""
        import pickle

        ent = self.entities[eid]
        body = {
            "labels": ent.labels, "lane": ent.lane, "mean": ent.mean, "var": ent.var, "n_normal": ent.n_normal,
            "n_windows": ent.n_windows, "scores": list(ent.scores), "expected": ent.expected,
            "incident": ent.incident, "normal_streak": ent.normal_streak,
            "cooldown_until": ent.cooldown_until if math.isfinite(ent.cooldown_until) else None,
            "last_end": ent.last_end if math.isfinite(ent.last_end) else None,
            "last_seen": ent.last_seen if math.isfinite(ent.last_seen) else None,
            "metrics": sorted(ent.metrics), "windows": self.windows.export_entity(eid),
            "cursor": {str(k): v for k, v in ent.cursor.items()},
        }
        model = ent.model.to_bytes() if ent.model is not None else b""
        adw = pickle.dumps(ent.adwins, protocol=5) if ent.adwins else b""
        head = orjson.dumps(body)
        return bytes([STATE_VERSION]) + len(head).to_bytes(4, "big") + head + len(model).to_bytes(4, "big") + model + adw

    def import_state(self, eid: str, data: bytes) -> None:
        import pickle

        if not data or data[0] != STATE_VERSION:
            raise ValueError(f"unsupported entity state version {data[:1]!r}")
        n = int.from_bytes(data[1:5], "big")
        body = orjson.loads(data[5:5 + n])
        m = int.from_bytes(data[5 + n:9 + n], "big")
        model = data[9 + n:9 + n + m]
        adw = data[9 + n + m:]
        self.drop(eid)
        eid = sys.intern(eid)
        ent = self.entities[eid] = _Entity(eid, body["labels"], body["lane"])
        ent.mean, ent.var = body["mean"], body["var"]
        ent.n_normal, ent.n_windows = body["n_normal"], body["n_windows"]
        ent.scores = array("d", body["scores"])
        ent.expected, ent.incident, ent.normal_streak = body["expected"], body["incident"], body["normal_streak"]
        ent.cooldown_until = body["cooldown_until"] if body["cooldown_until"] is not None else -math.inf
        ent.last_end = body["last_end"] if body["last_end"] is not None else -math.inf
        ent.last_seen = body["last_seen"] if body["last_seen"] is not None else -math.inf
        ent.cursor = {int(k): v for k, v in body.get("cursor", {}).items()}
        ent.metrics = set(body["metrics"])
        ent.model = model_from_bytes(model) if model else None
        ent.adwins = pickle.loads(adw) if adw else {}
        self.windows.import_entity(eid, body["windows"], ent.lane)

    def drop(self, eid: str) -> None:
        self.entities.pop(eid, None)
        self.windows.drop_entity(eid)

    def seen(self, eid: str, partition: int, offset: int) -> bool:
        """True if the entity already folded in this source message (a replay after a crash)."""
        ent = self.entities.get(eid)
        return ent is not None and offset <= ent.cursor.get(partition, -1)

    def advance_cursor(self, eid: str, partition: int, offset: int) -> None:
        ent = self.entities.get(eid)
        if ent is not None and offset > ent.cursor.get(partition, -1):
            ent.cursor[partition] = offset

    def expire(self, now_event_time: float, ttl: float, lane: int | None = None) -> list[str]:
        """Forget entities idle (in event time) for longer than ttl; returns their ids."""
        gone = [e for e, ent in self.entities.items()
                if ent.last_seen < now_event_time - ttl and (lane is None or ent.lane == lane)]
        for e in gone:
            self.drop(e)
        return gone
