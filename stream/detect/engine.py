"""Online anomaly detection for every entity of one detector spec.

The flow per entity: samples are folded into event-time windows (compiled accumulators); when
the watermark passes a window's end the window's features are computed, standardized against
the entity's own baseline (an EWMA of its normal windows), squashed into [0, 1] and scored by
Half-Space Trees *before* being learned. The raw score is calibrated into an anomaly grade (its
tail probability among the entity's recent scores); a decision needs the grade, a score floor
and a minimum distance from baseline — or, for an excursion of a single feature, which barely
moves trees that split on one feature out of dozens, an improbable per-feature |z| (see
:meth:`Detector._on_window_py`). ADWIN watches each metric's window mean for change: a change
emits ``data_drift`` and re-warms the entity instead of alerting on the new normal.

Missing data. A metric absent from a window, or a whole window without samples, is a *gap*.
Short gaps (up to ``impute_max_windows``) are imputed with the entity's baseline and the alert
says which features and windows were imputed; imputed values are never learned. A gap longer
than ``missing_after_windows`` is itself a signal: a ``missing_data`` incident fires once (from
the window-close path, or from :meth:`Detector.advance_lane` when the entity sends nothing at
all) and resolves when the missing metrics send samples again.

>>> from stream.detect.spec import DetectorSpec
>>> det = Detector(DetectorSpec(window=60, warmup_windows=20))
>>> import random; rng = random.Random(1)
>>> alerts = []
>>> for i in range(60 * 60):                       # one hour of 1-second samples
...     v = 10 + rng.gauss(0, 1) + (90 if 50 * 60 <= i < 51 * 60 else 0)
...     alerts += det.ingest("cpu", {"host": "a"}, ts=float(i), value=v)
>>> [(a["kind"], a["status"], a["window"]["start"]) for a in alerts if a["status"] == "firing"]
[('anomaly', 'firing', 3000.0)]

The series then goes silent; the housekeeping watermark notices it once:

>>> gap = det.advance(3600.0 + 10 * 60)
>>> [(a["kind"], a["status"], a["missing"]["metrics"], a["missing"]["last_seen"]) for a in gap]
[('missing_data', 'firing', ['cpu'], 3599.0)]
>>> det.advance(3600.0 + 20 * 60)
[]
>>> [(a["kind"], a["status"]) for a in det.ingest("cpu", {"host": "a"}, ts=4800.0, value=10.0)]
[('missing_data', 'resolved')]
"""
from __future__ import annotations

import functools
import heapq
from array import array
import hashlib
import math
import sys
import time
from typing import Any, Iterable, Sequence

import numpy as np
import orjson

from stream.detect import _standardize
from stream.detect._close import Entity, WindowClose
from stream.detect._standardize import count_below
from stream.detect.adwin import ADWIN
from stream.detect._adwin import step_means as _step_means
from stream.detect.models import make_model, model_from_bytes
from stream.detect.spec import DetectorSpec
from stream.detect._window import add_sample as _add_sample
from stream.detect._window import Rows
from stream.detect._window import fold_rows as _fold_rows
from stream.detect._window import fold_chunks as _fold_chunks
from stream.detect.window import ClosedWindow, WindowStore

STATE_VERSION = 4  # 4: a count of learned windows per baseline feature (3, 2 and 1 still read)
# 3: baseline and score history as binary sections; 2: per-metric last-seen times, the
# missing-data incident, the |z| peak
_READABLE_VERSIONS = (1, 2, 3, 4)
# the two parts of export_parts: the sample part (version 1) and the window part (0x23: version 2,
# with the baseline's counts, as state version 4; 0x22, version 1, without them, is still read)
_PART_SAMPLES, _PART_WINDOWS = b"\x21", b"\x23"
_PART_WINDOWS_READ = (b"\x22", b"\x23")
_Z_SCALE = 8.0  # z in [-4, 4] maps onto [0, 1] for the trees
_INV_Z_SCALE = 1.0 / _Z_SCALE
_RESOLVE_P = 1e-3  # a window counts as normal again when its distance from baseline is this probable
# features left out of the single-feature |z| path: sample presence is the gap logic's business
# (one missing sample of a metric with a constant count would otherwise be a "z of 16")
_PRESENCE_FEATURES = ("count", "availability")


@functools.lru_cache(maxsize=1024)
def _chi2_isf(p: float, dof: int) -> float:
    from scipy.stats import chi2

    return float(chi2.isf(p, max(dof, 1)))


@functools.lru_cache(maxsize=1024)
def _z_crit(p: float, n: int) -> float:
    """Two-sided Gaussian critical |z| for a family-wise error p over n features (Bonferroni)."""
    from scipy.stats import norm

    return float(norm.isf(p / (2 * max(n, 1))))


_ADWIN = None
_COMPACT_ADWIN = ADWIN  # (the engine creates ``ADWIN``s; a test may swap in river's)


def _adwin():
    """river's ADWIN class (imported at the first use): entity states written before the compact
    :class:`stream.detect.adwin.ADWIN` hold river's, which go on working (:func:`_adwin_step`)."""
    global _ADWIN
    if _ADWIN is None:
        from river.drift import ADWIN

        _ADWIN = ADWIN
    return _ADWIN


def _adwin_step(ad, v: float) -> tuple[float, bool]:
    """``(ad.estimation, then ad.update(v) and ad.drift_detected)`` for an ADWIN.

    One compiled call for :class:`stream.detect.adwin.ADWIN` (the engine's, bit-identical to
    river's). For a river ADWIN (from an older entity state): through river's compiled helper
    when ``ad`` is a plain river ADWIN (the calls its update and properties make, in the same
    order, without three Python property calls per update: this runs for every metric of every
    normal window); through the public API otherwise.
    """
    if type(ad) is _COMPACT_ADWIN:
        return ad.step(v)
    h = ad.__dict__.get("_helper") if type(ad) is _adwin() else None
    if h is None or "_drift_detected" not in ad.__dict__:
        before = ad.estimation
        ad.update(v)
        return before, ad.drift_detected
    width = h.get_width()
    before = 0.0 if width == 0 else h.get_total() / width  # ADWIN.estimation
    if ad._drift_detected:  # ADWIN.update: a detector that detected starts over
        ad._reset()
        h = ad._helper
    ad._drift_detected = detected = h.update(v)
    return before, detected


def _step_means_py(adwins: dict, summary: dict, factory, delta: float, step=_adwin_step) -> list:
    """The Python rule :func:`stream.detect._adwin.step_means` compiles (its reference in tests)."""
    hits = []
    for metric in sorted(summary):
        v = float(summary[metric]["mean"])
        if not math.isfinite(v):
            continue
        ad = adwins.get(metric)
        if ad is None:
            ad = adwins[metric] = factory(delta)
        before, detected = step(ad, v)
        if detected:
            hits.append((metric, before, ad))
    return hits


def score_typecode(params) -> str:
    """The ``array`` typecode of an entity's score history: ``"f"`` (4 bytes a score) when float32
    keeps every comparison the grade makes, else ``"d"``.

    A Half-Space Trees score is ``1 - k / M`` for an integer ``k`` and ``M = n_trees *
    window_size * (2**(height+1) - 1)`` (river's, and ours, bit-identical). Below 1 a float32's
    spacing is at most ``2**-24``, so while ``M < 2**23`` two different scores are more than two
    float32 spacings apart and stay in the same order after rounding; equal scores round alike
    (``count_below`` rounds the current score too). The default model (10 trees, height 8,
    window 50: M = 255,500) qualifies; a full history of 200 scores then takes 0.8 KB per entity
    instead of 1.6 KB. Larger models keep float64.

    >>> from stream.detect.spec import ModelParams
    >>> score_typecode(ModelParams()), score_typecode(ModelParams(n_trees=25, height=15, window_size=250))
    ('f', 'd')
    """
    m = params.n_trees * params.window_size * ((1 << (params.height + 1)) - 1)
    return "f" if m < 1 << 23 else "d"


def alert_id(*parts: Any) -> str:
    """Deterministic id: the same (detector, entity, window, kind) always gives the same id."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


# One entity's state: a cdef class (stream/detect/_close.pyx), so that the compiled window close
# reads its scalars as C values
_Entity = Entity


class Detector:
    """All entities of one spec. Pure: no I/O; the caller decodes, ingests and publishes."""

    def __init__(self, spec: DetectorSpec, *, source_topic: str = "metrics"):
        self.spec = spec
        self.source_topic = source_topic
        self.windows = WindowStore(spec.window, spec.allowed_lateness)
        self.entities: dict[str, _Entity] = {}
        self.late = 0
        self.invalid_features = 0
        self.imputed_features = 0
        self.alpha = 1 - 0.5 ** (1 / spec.baseline_halflife)
        self._zdecay = 0.5 ** (1 / spec.threshold.history)
        # per lane: heap of (deadline, entity) — the watermark at which the entity counts as
        # silent if it sends nothing more (checked by advance_lane; O(due entries), not O(entities))
        self._silence: dict[int, list[tuple[float, str]]] = {}
        self._pending: dict[int, list[dict]] = {}  # per lane: alerts to emit at the next advance
        # a sample this far after its metric's previous one may end a long gap (checked exactly then)
        self._gap_span = spec.missing_after_windows * spec.window if spec.missing_after_windows > 0 else math.inf
        # optional observer of every closed window's verdict (offline scoring, evaluation):
        # called as on_window(window, verdict) with verdict = {"score", "grade", "distance",
        # "anomalous", "firing", "warm", "max_z", "path", "imputed"}; "firing" is whether the
        # entity's incident is open after this window. It only reads; None (the default) costs nothing.
        self.on_window = None
        self._fkeys: dict[str, tuple[str, ...]] = {}  # metric -> its "metric:feature" keys (spec order)
        self._feats = tuple(spec.features)
        self._has_mean = "mean" in self._feats
        self._watching = spec.missing_after_windows > 0
        self._score_type = score_typecode(spec.model)
        # windows a feature new to a settled baseline is learned from with a running mean first
        # (its own warm-up; Baseline.learn counts up to 255)
        self._settle = min(spec.warmup_windows, 255)
        # what the compiled sample loops take besides the entity: the window store, its pool, index,
        # heaps, window size and lateness, the gap span and whether silence is watched (all fixed
        # for the detector's life: built once, not per call)
        w = self.windows
        self._fold = (w, w.acc, w.entities, w.heaps, w.size, w.lateness, self._gap_span, self._watching)
        # the window close, compiled (stream/detect/_close.pyx; its Python rule: _on_window_py),
        # with the spec's constants and the engine's helpers as they are now (tests swap ADWIN)
        self._wc = WindowClose(self, presence=_PRESENCE_FEATURES, inv_scale=_INV_Z_SCALE, resolve_p=_RESOLVE_P,
                               make_model=make_model, chi2=_chi2_isf, zcrit=_z_crit, step_means=_step_means,
                               adwin=ADWIN, adwin_step=_adwin_step)
        self._close_window = self._wc.close  # (entity, window) -> alerts

    # ------------------------------------------------------------------------ gaps
    def _ws(self, ts: float) -> float:
        return math.floor(ts / self.spec.window) * self.spec.window

    def _silent_windows(self, last_ts: float, ref: float) -> int:
        """Whole windows without a sample after the one holding ``last_ts``, ending by ``ref``."""
        size = self.spec.window
        return int(math.floor((ref - self._ws(last_ts) - size) / size + 1e-9))

    def _deadline(self, ent: _Entity) -> float:
        """The watermark at which the entity has been silent for more than missing_after_windows."""
        spec = self.spec
        return self._ws(ent.last_seen) + (spec.missing_after_windows + 2) * spec.window + spec.allowed_lateness

    def _watch(self, ent: _Entity) -> None:
        dl = self._deadline(ent)
        ent.watch = dl
        heapq.heappush(self._silence.setdefault(ent.lane, []), (dl, ent.id))

    # ------------------------------------------------------------------------ ingest
    def ingest(self, metric: str, labels: dict[str, str], ts: float, value: float, *, offset: int = -1,
               partition: int = -1, lane: int = 0, entity: tuple[str, dict[str, str]] | None = None) -> list[dict]:
        """Fold one sample in; returns the alerts of the windows its event time closes.

        A window closes when the entity's own event time passes its end plus the allowed
        lateness (so replayed history and interleaved partitions work); :meth:`advance` closes
        the windows of entities that went quiet. A sample of a metric in an open ``missing_data``
        incident counts as its return (the incident resolves when every missing metric returned);
        a gap longer than ``missing_after_windows`` that no watermark noticed while it lasted is
        reported when its samples return (firing, then resolved when all have returned).
        """
        # ``entity``: the (entity id, entity labels) the caller already resolved with this spec's
        # entity_of (the worker routes by entity before the sample gets here)
        hit = entity if entity is not None else self.spec.entity_of(metric, labels)
        if hit is None:
            return []
        return self.ingest_rows(hit[0], hit[1], ((metric, ts, value),), offset=offset, partition=partition, lane=lane)

    def ingest_rows(self, eid: str, elabels: dict[str, str], rows: Iterable[Sequence], *, offset: int = -1,
                    partition: int = -1, lane: int = 0) -> list[dict]:
        """:meth:`ingest` for the rows ``(metric, ts, value)`` of one entity, in order.

        The worker's path: the samples of one entity from one source message arrive together
        (``eid``, ``elabels``: the entity as this spec's ``entity_of`` resolves it), so the entity
        is looked up once, not once per sample. The same alerts and state as calling
        :meth:`ingest` row by row (``tests/unit/test_core.py``).
        """
        ent = self.entities.get(eid) or self._new_entity(eid, elabels, lane)
        eid = ent.id
        if type(rows) is not list and type(rows) is not Rows:
            rows = list(rows)
        out: list[dict] = []
        windows, acc, wents, heaps, size, lateness, gap_span, watching = self._fold
        fold_py = self._fold_py
        i, n = 0, len(rows)
        # the compiled loop (stream.detect._window.fold_rows) folds samples in until one needs the
        # Python path (a metric returning from a long gap, an entity to watch for silence) or
        # closes windows; the result is the Python loop's (_fold_py), sample for sample
        while i < n:
            if ent.watch is None and watching:
                out += fold_py(ent, rows, i, i + 1, offset, partition, lane)
                i += 1
                continue
            i, ent.last_seen, late, why = _fold_rows(acc, wents, heaps, size, lateness, gap_span, eid, ent.mlast,
                                                     ent.last_seen, ent.gap is not None, rows, i, offset,
                                                     partition, lane)
            if late:
                windows.late += late
                self.late += late
            if why == 1:
                out += fold_py(ent, rows, i, i + 1, offset, partition, lane)
                i += 1
            elif why == 2:
                out += self._emit(windows.close_entity(eid, ent.last_seen))
        return out

    def _new_entity(self, eid: str, elabels: dict[str, str] | bytes, lane: int) -> _Entity:
        if type(elabels) is bytes:  # as JSON (an internal message's, decoded with columns)
            elabels = orjson.loads(elabels)
        eid = sys.intern(eid)  # one string object per entity in every index that holds it
        ent = self.entities[eid] = _Entity(eid, elabels, lane, self._score_type)
        return ent

    def ingest_chunks(self, eid: str, elabels: dict[str, str] | bytes, chunks: Iterable[Sequence], lane: int = 0) -> tuple[list[dict], bool]:
        """:meth:`ingest_rows` for each chunk ``(source partition, source offset, rows)`` of one
        entity (an internal message's, in order), skipping the chunks the entity already folded
        in (:meth:`seen`) and advancing its cursor; returns ``(alerts, whether any was folded)``.
        The worker's path: one call per entity and internal message; ``elabels`` may be the
        labels' JSON bytes (parsed only when the entity is new).

        The loop over chunks and rows, the cursor included, is compiled
        (:func:`stream.detect._window.fold_chunks`): it hands back only what :meth:`ingest_rows`
        hands to Python (a sample after a long gap, an entity to watch, window closes). The
        result is :meth:`_ingest_chunks_py`'s, alert for alert and state for state
        (``tests/unit/test_engine_rows.py``)."""
        if type(chunks) is not list:
            chunks = list(chunks)
        ent = self.entities.get(eid)
        unchecked = -1
        if ent is None:  # (its first chunk is not checked against the cursor: it has none)
            ent = self._new_entity(eid, elabels, lane)
            unchecked = 0
        eid = ent.id
        out: list[dict] = []
        windows, acc, wents, heaps, size, lateness, gap_span, watching = self._fold
        cursor = ent.cursor
        ci = i = 0
        folded = False
        while True:
            ci, i, ent.last_seen, late, why, f = _fold_chunks(
                acc, wents, heaps, size, lateness, gap_span, eid, ent.mlast, ent.last_seen, ent.gap is not None,
                chunks, ci, i, cursor, ent.watch is None and watching, unchecked, lane)
            if f:
                folded = True
            if late:
                windows.late += late
                self.late += late
            if why == 0:
                return out, folded
            if why == 1:
                src_p, src_o, rows = chunks[ci]
                out += self._fold_py(ent, rows, i, i + 1, src_o, src_p, lane)
                i += 1
            else:
                out += self._emit(windows.close_entity(eid, ent.last_seen))

    def _ingest_chunks_py(self, eid: str, elabels: dict[str, str], chunks: Iterable[Sequence], lane: int = 0) -> tuple[list[dict], bool]:
        """:meth:`ingest_chunks` as a Python loop over :meth:`ingest_rows` (its reference in tests)."""
        alerts: list[dict] = []
        folded = False
        ent = self.entities.get(eid)
        for src_p, src_o, rows in chunks:
            if ent is not None:
                cursor = ent.cursor
                if src_o <= cursor.get(src_p, -1):
                    continue  # already folded in before a crash: at-least-once input, effectively-once state
            out = self.ingest_rows(eid, elabels, rows, offset=src_o, partition=src_p, lane=lane)
            if out:
                alerts += out
            if ent is None:
                ent = self.entities[eid]
                cursor = ent.cursor
            if src_o > cursor.get(src_p, -1):
                cursor[src_p] = src_o
            folded = True
        return alerts, folded

    def _fold_py(self, ent: _Entity, rows: Sequence, i: int, j: int, offset: int, partition: int, lane: int) -> list[dict]:
        """The per-sample loop of :meth:`ingest_rows` in Python, over ``rows[i:j]``: the path of
        samples the compiled loop hands back, and its reference in the tests."""
        eid = ent.id
        out: list[dict] = []
        mlast = ent.mlast
        windows = self.windows
        acc, wents, heaps, size, lateness = windows.acc, windows.entities, windows.heaps, windows.size, windows.lateness
        gap_span = self._gap_span
        watching = self._watching
        for k in range(i, j):
            metric, ts, value = rows[k]
            prev = mlast.get(metric)
            if prev is None:
                mlast[metric] = ts
            elif ts > prev:
                # only a gap of more than missing_after_windows windows, or an open incident, matters
                if ent.gap is not None or ts - prev > gap_span:
                    out += self._on_return(ent, metric, prev, ts, offset, partition)
                mlast[metric] = ts
            if ts > ent.last_seen:
                ent.last_seen = ts
            if ent.watch is None and watching:
                self._watch(ent)  # armed until a watermark finds it silent (re-armed by its next sample)
            # WindowStore.add_sample without its Python frame (once per sample)
            starts = _add_sample(acc, wents, heaps, size, eid, metric, ts, value, offset, partition, lane)
            if starts is None:
                windows.late += 1
                self.late += 1
                rec = wents.get(eid)
                starts = rec.starts if rec is not None else None
            # close the windows the entity's own event time has passed (the test of close_entity,
            # inline: most samples close nothing)
            if starts and starts[0] <= ent.last_seen - size - lateness:
                out += self._emit(windows.close_entity(eid, ent.last_seen))
        return out

    def _on_return(self, ent: _Entity, metric: str, prev: float, ts: float, offset: int, partition: int) -> list[dict]:
        out: list[dict] = []
        g = ent.gap
        lim = self.spec.missing_after_windows
        ref = self._ws(ts)
        if self._silent_windows(prev, ref) > lim and (g is None or metric not in g["missing"]):
            # a long gap nobody noticed while it lasted (no watermark passed it): report it now
            silent = {m: t for m, t in ent.mlast.items()
                      if t < ref and self._silent_windows(t, ref) > lim}
            out += self._open_gap(ent, silent, ref, "on_return")
            g = ent.gap
        if g is not None and metric in g["missing"] and ts > g["missing"][metric]:
            g["returned"][metric] = ts
            del g["missing"][metric]
            if not g["missing"]:
                a = self._gap_alert(ent, "resolved", ts)
                if offset >= 0:
                    a["source"].update(partition=partition, first_offset=offset, last_offset=offset,
                                       ranges=[{"partition": partition, "first_offset": offset,
                                                "last_offset": offset, "metric": metric}])
                out.append(a)
                ent.gap = None
        return out

    def _open_gap(self, ent: _Entity, silent: dict[str, float], ref: float, how: str) -> list[dict]:
        """Open (or extend) the entity's missing_data incident with the silent metrics.

        One incident per entity at a time: metrics that fall silent while it is open join it
        without a new alert; it resolves when every metric in it has sent a sample again.
        """
        if not silent:
            return []
        g = ent.gap
        if g is not None:
            for m, t in silent.items():
                if m not in g["missing"]:
                    g["missing"][m] = t
                    g["last"][m] = t
                    g["returned"].pop(m, None)
            return []
        size = self.spec.window
        g = ent.gap = {"id": "", "start": min(self._ws(t) + size for t in silent.values()),
                       "missing": dict(silent), "last": dict(silent), "returned": {}, "detected": how}
        a = self._gap_alert(ent, "firing", ref)
        g["id"] = a["alert_id"]
        return [a]

    def _gap_alert(self, ent: _Entity, status: str, ref: float) -> dict:
        """A ``missing_data`` event of the entity's gap incident (firing: the metrics missing now;
        resolved: every metric that was missing, with the time each returned)."""
        spec = self.spec
        g = ent.gap
        metrics = g["missing"] if status == "firing" else g["last"]
        last = {m: g["last"][m] for m in sorted(metrics)}
        silent = max((self._silent_windows(t, ref) for t in last.values()), default=0)
        a = {
            "alert_id": alert_id(spec.name, ent.id, g["start"], "gap", "missing_data", status),
            "status": status,
            "kind": "missing_data",
            "detector": spec.name,
            "severity": spec.severity,
            "series": {"id": ent.id, "labels": ent.labels, "metrics": sorted(ent.mlast)},
            "window": {"start": g["start"], "end": ref},
            "source": {"topic": self.source_topic, "partition": None, "first_offset": None, "last_offset": None,
                       "ranges": []},
            "summary": {},
            "related": [],
            "score": float(silent),
            "threshold": {"missing_after_windows": spec.missing_after_windows, "window": spec.window,
                          "allowed_lateness": spec.allowed_lateness},
            "missing": {
                "metrics": sorted(metrics),
                "last_seen": max(last.values()) if last else None,
                "last_seen_by_metric": last,
                "silent_windows": silent,
                "entity_silent": set(g["last"]) >= set(ent.mlast),
                "detected": g["detected"],
            },
            "created_at": time.time(),
        }
        if status == "resolved":
            a["incident_id"] = g["id"]
            a["missing"]["returned"] = dict(sorted(g["returned"].items()))
            if g["missing"]:
                a["missing"]["still_missing"] = sorted(g["missing"])
        return a

    # ----------------------------------------------------------------------- advance
    def advance(self, watermark: float, lane: int = 0) -> list[dict]:
        """Close the lane's windows up to a watermark (entities gone quiet); returns their alerts."""
        return self.advance_lane(watermark, lane)[0]

    def advance_lane(self, watermark: float, lane: int = 0, may_close=None,
                     silence_watermark: float | None = None) -> tuple[list[dict], set[str]]:
        """Like :meth:`advance`, also returning the entities whose state changed.

        ``silence_watermark`` (default: ``watermark``) is the event time the silence check runs
        at: the worker closes quiet windows well behind its lane's event time, for safety, but a
        silent exporter should be reported soon after ``missing_after_windows``.

        ``may_close(entity_id)`` can veto closing an entity's windows (the worker vetoes entities
        that are still receiving samples, whatever the lane's event time says); it vetoes the
        silence check too. An entity whose last sample is more than ``missing_after_windows``
        whole windows (plus the allowed lateness) behind the watermark fires ``missing_data``
        here, once per incident, even if it sends nothing at all.
        """
        closed = self.windows.close_until(watermark, lane, may_close)
        alerts = self._pending.pop(lane, [])
        alerts += self._emit(closed)
        changed = {w.entity for w in closed}
        if self.spec.missing_after_windows > 0:
            if silence_watermark is not None and silence_watermark > watermark:
                watermark = silence_watermark
            heap = self._silence.get(lane)
            retry = []
            while heap and heap[0][0] <= watermark:
                dl, eid = heapq.heappop(heap)
                ent = self.entities.get(eid)
                if ent is None or ent.watch != dl or ent.lane != lane:
                    continue  # a stale entry (entity dropped, or re-armed with another deadline)
                new = self._deadline(ent)
                if new > watermark:  # it sent samples since: check again later
                    ent.watch = new
                    retry.append((new, eid))
                    continue
                if may_close is not None and not may_close(eid):
                    ent.watch = watermark + self.spec.window
                    retry.append((ent.watch, eid))
                    continue
                ent.watch = None  # re-armed by its next sample
                lim = self.spec.missing_after_windows
                silent = {m: t for m, t in ent.mlast.items() if self._silent_windows(t, watermark - self.spec.allowed_lateness) > lim}
                if silent:
                    alerts += self._open_gap(ent, silent, watermark, "watermark")
                    changed.add(eid)
            for item in retry:
                heapq.heappush(heap, item)
        return alerts, changed

    def _emit(self, windows: list[ClosedWindow]) -> list[dict]:
        alerts: list[dict] = []
        close = self._close_window
        ents = self.entities
        for w in windows:
            alerts.extend(close(ents[w.entity], w))
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
        # metrics sorted, spec features in order; availability = count / expected count (capped
        # at 1); NaN / inf never reach a model: treated as missing, counted (compiled kernel)
        feats, bad = ent.base.features(w.summary, ent.expected, self._feats, self._fkeys)
        if bad:
            self.invalid_features += bad
        return feats

    def _keys(self, metric: str) -> tuple[str, ...]:
        """The metric's ``"metric:feature"`` keys in spec feature order (built once per metric)."""
        keys = self._fkeys.get(metric)
        if keys is None:
            keys = _standardize.feature_keys(self._fkeys, metric, self._feats)
        return keys

    def _impute(self, ent: _Entity, w: ClosedWindow, gap: int) -> tuple[dict[str, float], dict]:
        """Baseline values for the features of metrics missing from a short gap, and the gap facts.

        A metric the entity had in earlier windows but not in this one is imputed when its run of
        windows without samples (this one included, plus any whole windows missing before it) is
        at most ``impute_max_windows``: each of its features takes the entity's baseline mean, the
        conditional expectation when nothing is known, so its z is 0 — the vector stays complete
        for the trees while the imputed features add no evidence (they are left out of the
        chi-square degrees of freedom and of the single-feature |z| path). Longer runs are not
        imputed (their features are absent, as before, and a run past ``missing_after_windows``
        raises ``missing_data``). Whole windows without any sample before this one are imputed
        the same way when there are at most ``impute_max_windows`` of them; as every feature is
        computed within its window, they change no feature of this window: they are listed in
        the alert, never scored and never learned.
        """
        spec = self.spec
        size = spec.window
        imp: dict[str, float] = {}
        info: dict = {"gap_windows": gap}
        summary = w.summary
        if gap == 0 and ent.expected.keys() <= summary.keys():
            return imp, info  # nothing missing (the common case)
        base_get = ent.base.get
        for m in ent.expected:
            if m in summary:
                continue
            last = ent.mwin.get(m)
            if last is None:
                continue
            run = int(round((w.end - last) / size))
            if run > spec.impute_max_windows:
                continue
            for k in self._keys(m):
                b = base_get(k)
                if b is not None:
                    imp[k] = b
        if imp:
            info["imputed"] = sorted(imp)
        if 1 <= gap <= spec.impute_max_windows:
            info["imputed_windows"] = [{"start": w.start - i * size, "end": w.start - (i - 1) * size}
                                       for i in range(gap, 0, -1)]
        return imp, info

    def _on_window_py(self, ent: _Entity, w: ClosedWindow) -> list[dict]:
        """Score, decide and learn one closed window (then check its entity's metrics for long gaps).

        The rule, in Python: the engine runs it compiled (:class:`stream.detect._close.WindowClose`,
        held to this method alert for alert and state byte for byte by
        ``tests/unit/test_window_close.py``); both hand alerts, drift decisions and long gaps to
        :meth:`_lifecycle_alert`, :meth:`_drift_alert` and :meth:`_window_gaps`.

        Decision, after warm-up: the window is anomalous when either
        - (multivariate) the HST grade >= ``threshold.grade``, the raw score >= ``score_floor``
          and the window's sum of squared z is improbable under chi-square(d) at ``distance_p``; or
        - (single feature) its largest |z| among observed, non-degenerate features (presence
          features count/availability excluded: a count that never varied would make one missing
          sample a "z of 16"; they still count in n) is improbable for a Gaussian after a
          Bonferroni correction for the n features at ``feature_p`` *and* at least ``feature_peak_ratio``
          times the entity's recent peak |z| (a decaying maximum over its normal windows, half-life
          ``history`` windows), which guards heavy-tailed features (min/max, deltas) whose normal
          |z| reaches 6-7 now and then. Trees splitting on one feature out of 50 barely move for
          an excursion of that feature alone, so the grade path alone rarely catches one.
        """
        spec = self.spec
        out: list[dict] = []
        gap = 0  # whole windows without any sample between the previous closed window and this one
        if ent.last_end > -math.inf:
            gap = max(0, int(round((w.start - ent.last_end) / spec.window)))
        ent.last_end = w.end
        ent.gap_flagged = False
        ent.n_windows += 1
        base = ent.base
        # the window's feature vector (kept by the baseline; its dict is built only for an alert)
        _, bad = base.features(w.summary, ent.expected, self._feats, self._fkeys, False)
        if bad:
            self.invalid_features += bad  # NaN / inf never reach a model: treated as missing, counted
        imp, info = self._impute(ent, w, gap)
        if imp:
            self.imputed_features += len(imp)
        # --- standardize against the entity's baseline --------------------------------------------
        thr = spec.threshold
        # z of every observed feature against the baseline (0 without one); x: z squashed into
        # [0, 1] for the trees; d2: the window's squared distance from baseline; zmax / zfeat:
        # the largest |z| among tested features (presence features excluded), n_z: how many
        # were tested (std above a floor relative to the mean). One compiled pass
        # (stream/detect/_standardize.pyx, the Python rule in tests/unit/test_standardize.py).
        # x is built as a dict only to add imputed features (0.5); otherwise the trees read it
        # from the baseline's vector (score_base / learn_base: the same x, no dict)
        # a feature that joined the baseline after the entity's warm-up (a metric that appeared
        # later) is left out (z 0) until it has been learned from as many windows as the warm-up
        # (Baseline.standardize's young; Baseline.learn gives it its own running-mean warm-up)
        x, d2, zmax, zfeat, n_z = base.standardize(_PRESENCE_FEATURES, _INV_Z_SCALE, bool(imp),
                                                   self._settle if ent.n_normal >= spec.warmup_windows else 0)
        for k in imp:
            x[k] = 0.5
        warm = ent.n_normal >= spec.warmup_windows
        if ent.model is None:
            ent.model = make_model(spec.model)
        score = (float(ent.model.score_one(x)) if imp else ent.model.score_base(base, _INV_Z_SCALE)) if warm else 0.0
        scores = ent.scores
        grade = (count_below(scores, score) / len(scores)) if (warm and scores) else 0.0  # share below
        # distance from baseline: sum of squared z against the chi-square tail (a window must be
        # improbable as a whole, not only rank high among recent scores); imputed features carry
        # no evidence, so they count in neither the sum nor the degrees of freedom
        dof = base.n_obs
        multi = (warm and grade >= thr.grade and score >= thr.score_floor
                 and d2 >= _chi2_isf(thr.distance_p, dof))
        z_crit = _z_crit(thr.feature_p, n_z) if (warm and thr.feature_p > 0) else math.inf
        z_thr = max(z_crit, thr.feature_peak_ratio * ent.zpeak)
        single = warm and n_z > 0 and zmax >= z_thr
        anomalous = multi or single
        path = ("multivariate+single_feature" if multi and single else
                "multivariate" if multi else "single_feature" if single else None)
        zpeak = ent.zpeak
        # --- drift ---------------------------------------------------------------------------------
        drift_alert = None
        if spec.drift and not anomalous and warm:
            drift_alert = self._drift(ent, w, info)
        # --- lifecycle -----------------------------------------------------------------------------
        if anomalous:
            ent.normal_streak = 0
            if ent.incident is None and w.start >= ent.cooldown_until:
                a = self._lifecycle_alert(ent, w, "firing", imp, score, grade, gap, info,
                                          path, zmax, zfeat, n_z, z_crit, zpeak, z_thr, d2, dof)
                ent.incident = {"id": a["alert_id"], "start": w.start}
                out.append(a)
        else:
            # back to normal means close to baseline again, not merely a lower rank among recent
            # scores (those include the incident's own): a level shift stays firing until it ends.
            # ADWIN sees only normal windows, so it re-baselines a slow ramp, not an abrupt shift
            # that keeps every window anomalous (README, Known gaps)
            near = d2 < _chi2_isf(_RESOLVE_P, max(1, dof))
            ent.normal_streak = ent.normal_streak + 1 if near else 0
            if ent.incident is not None and ent.normal_streak >= spec.resolve_after:
                a = self._lifecycle_alert(ent, w, "resolved", imp, score, grade, gap, info,
                                          path, zmax, zfeat, n_z, z_crit, zpeak, z_thr, d2, dof)
                a["incident_id"] = ent.incident["id"]
                out.append(a)
                ent.incident = None
                ent.cooldown_until = w.end + spec.cooldown_windows * spec.window
        if drift_alert is not None:
            out.append(drift_alert)
        # --- learn (after scoring: strictly online) ---------------------------------------------
        for metric, s in w.summary.items():  # learn the expected sample count per window
            e = ent.expected.get(metric)
            ent.expected[metric] = s["count"] if e is None else e + 0.05 * (s["count"] - e)
        if warm:
            scores.append(score)
            if len(scores) > thr.history:
                del scores[0]
        # learn only normal windows: nothing of an open incident (not even its lower-ranked
        # windows) may leak into the baseline, or the incident would soon look normal. Imputed
        # values are never learned: the baseline takes the observed features only, and the trees
        # skip a window with imputed features (their baseline-centred coordinates would pile mass
        # on the centre as if observed; river's missing-feature rule would reinforce the heaviest
        # path instead, which is imputation too)
        if not anomalous and (ent.incident is None or ent.normal_streak > 0 or not warm):
            if not imp:
                ent.model.learn_base(base, _INV_Z_SCALE)
            self._update_baseline(ent)
            if ent.n_normal > max(2, spec.warmup_windows // 2):  # the baseline's std means something by now
                d = ent.zpeak * self._zdecay
                ent.zpeak = zmax if zmax > d else d
        mwin = ent.mwin
        for m in w.summary:  # an entity's windows close in ascending order
            mwin[m] = w.end
        # --- long gaps of single metrics while the entity still reports -----------------------------
        if spec.missing_after_windows > 0 and len(w.summary) < len(ent.mlast):  # some metric is absent
            out += self._window_gaps(ent, w)
        if self.on_window is not None:
            self.on_window(w, {"score": score, "grade": grade, "distance": d2, "anomalous": anomalous,
                               "firing": ent.incident is not None, "warm": warm, "max_z": zmax,
                               "path": path, "imputed": info.get("imputed", [])})
        return out

    def _lifecycle_alert(self, ent: _Entity, w: ClosedWindow, status: str, imp: dict, score: float, grade: float,
                         gap: int, info: dict, path, zmax, zfeat, n_z, z_crit, zpeak, z_thr, d2, dof) -> dict:
        """The ``anomaly`` alert (firing or resolved) of a window close, with its decision facts."""
        feats, z = self._vectors(ent.base, imp)
        return self._alert(ent, w, "anomaly", status, feats, z, score, grade, gap, info,
                           self._decision(path, zmax, zfeat, n_z, z_crit, zpeak, z_thr, d2,
                                          self.spec.threshold.distance_p, dof))

    def _window_gaps(self, ent: _Entity, w: ClosedWindow) -> list[dict]:
        """A ``missing_data`` alert for the entity's metrics silent for more than
        ``missing_after_windows`` while it still reports (some metric absent from ``w``)."""
        lim = self.spec.missing_after_windows
        silent = {m: t for m, t in ent.mlast.items()
                  if t < w.start and self._silent_windows(t, w.end) > lim}
        return self._open_gap(ent, silent, w.end, "window") if silent else []

    @staticmethod
    def _vectors(base, imp: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """The window's features (observed, then imputed) and their z (imputed: 0), for an alert."""
        feats = base.obs_dict()
        z = base.z_dict()
        if imp:
            feats.update(imp)
            for k in imp:
                z[k] = 0.0
        return feats, z

    @staticmethod
    def _decision(path, zmax, zfeat, n_z, z_crit, zpeak, z_thr, d2, distance_p, dof) -> dict:
        """The decision facts of an alert (built only for an alert)."""
        return {"path": path, "max_z": zmax, "max_z_feature": zfeat, "features_tested": n_z,
                "z_critical": z_crit if math.isfinite(z_crit) else None,
                "z_peak": zpeak, "z_threshold": z_thr if math.isfinite(z_thr) else None,
                "distance": d2, "distance_threshold": _chi2_isf(distance_p, dof), "dof": dof}

    def _update_baseline(self, ent: _Entity) -> None:
        """Learn the entity's last window vector (the one :meth:`_features` computed) into its baseline."""
        a = self.alpha if ent.n_normal >= self.spec.warmup_windows else 1.0 / (ent.n_normal + 1)
        # mean <- m + a (v - m), var <- (1 - a)(var + a (v - m)^2); a new feature starts at its value
        ent.base.learn(a, self._settle if ent.n_normal >= self.spec.warmup_windows else 0)
        ent.n_normal += 1

    def _drift(self, ent: _Entity, w: ClosedWindow, info: dict | None = None) -> dict | None:
        """ADWIN over each metric's window mean (the ``metric:mean`` feature, when finite)."""
        if not self._has_mean:
            return None  # no "mean" feature: nothing to watch
        # each metric's window mean (the metric:mean feature; non-finite ones are left out of
        # the features) into its ADWIN, metrics in sorted order: one compiled call per window
        # (stream.detect._adwin.step_means; the Python loop is _step_means_py)
        hits = _step_means(ent.adwins, w.summary, ADWIN, self.spec.drift_delta, _adwin_step)
        return self._drift_alert(ent, w, info, hits) if hits else None

    def _drift_alert(self, ent: _Entity, w: ClosedWindow, info: dict | None, hits: list) -> dict | None:
        """The ``data_drift`` alert of the ADWINs that detected a change (``hits``: ``(metric,
        mean before, ADWIN)``), if the change matters; it re-warms the entity."""
        changed = []
        for metric, before, ad in hits:
            # statistically significant is not enough: the shift must matter against the
            # metric's own sample noise (its baseline within-window std), or a slow daily
            # pattern would be reported as drift all day long
            noise = ent.base.get(f"{metric}:std") or 0.0
            effect = abs(ad.estimation - before) / max(noise, 1e-9 * max(abs(before), 1.0))
            if effect >= self.spec.drift_min_effect:
                changed.append({"metric": metric, "before_mean": before, "after_mean": ad.estimation,
                                "effect_size": effect,
                                "change_point": w.end - ad.width * self.spec.window, "window_width": ad.width})
        if not changed:
            return None
        a = self._base(ent, w, "data_drift", "firing", info)
        a["drift"] = {"detector": "ADWIN", "delta": self.spec.drift_delta, "changes": changed,
                      "change_point": min(c["change_point"] for c in changed)}
        feats = ent.base.obs_dict()  # the window's observed features
        a["features"] = feats
        a["baseline"] = self._baseline(ent, feats)
        a["score"] = max(abs(c["after_mean"] - c["before_mean"]) for c in changed)
        a["threshold"] = {"adwin_delta": self.spec.drift_delta, "min_effect": self.spec.drift_min_effect}
        # the new normal: re-warm the model and the baseline instead of alerting on it for ever
        ent.model = make_model(self.spec.model)
        ent.base.clear(); ent.n_normal = 0; del ent.scores[:]
        ent.adwins.clear()
        ent.zpeak = 0.0
        return a

    # ------------------------------------------------------------------------ alerts
    def _baseline(self, ent: _Entity, feats: dict[str, float]) -> dict:
        base = ent.base
        return {k: {"mean": base.get(k), "std": math.sqrt(base.get_var(k))} for k in feats if k in base}

    def _base(self, ent: _Entity, w: ClosedWindow, kind: str, status: str, info: dict | None = None) -> dict:
        spec = self.spec
        ranges = sorted(
            ({"partition": s["partition"], "first_offset": s["first_offset"], "last_offset": s["last_offset"], "metric": m}
             for m, s in w.summary.items() if s["first_offset"] >= 0),
            key=lambda r: (r["partition"], r["first_offset"]),
        )
        first = ranges[0] if ranges else {"partition": None, "first_offset": None, "last_offset": None}
        eid = w.entity
        window = {"start": w.start, "end": w.end}
        if info is not None:
            window["availability"] = self._availability(ent, w)
            window["imputed"] = info.get("imputed", [])
            window["imputed_windows"] = info.get("imputed_windows", [])
        return {
            "alert_id": alert_id(spec.name, eid, w.start, w.end, kind, status),
            "status": status,
            "kind": kind,
            "detector": spec.name,
            "severity": spec.severity,
            "series": {"id": eid, "labels": ent.labels, "metrics": sorted(w.summary)},
            "window": window,
            "source": {"topic": self.source_topic, "partition": first["partition"],
                       "first_offset": first["first_offset"], "last_offset": first["last_offset"], "ranges": ranges},
            "summary": {m: {k: s[k] for k in ("count", "mean", "std", "min", "max", "median", "first_ts", "last_ts")}
                        for m, s in w.summary.items()},
            "related": [],
            "created_at": time.time(),
        }

    @staticmethod
    def _availability(ent: _Entity, w: ClosedWindow) -> float:
        """Share of the entity's expected samples present in the window (a missing metric counts 0)."""
        shares = []
        for m, exp in ent.expected.items():
            s = w.summary.get(m)
            shares.append(0.0 if s is None else min(1.0, s["count"] / exp) if exp else 1.0)
        return sum(shares) / len(shares) if shares else 1.0

    def _alert(self, ent: _Entity, w: ClosedWindow, kind: str, status: str, feats: dict, z: dict,
               score: float, grade: float, gap: int, info: dict | None = None, decision: dict | None = None) -> dict:
        spec = self.spec
        a = self._base(ent, w, kind, status, info)
        imputed = set((info or {}).get("imputed", ()))
        base = ent.base
        total = sum(abs(v) for v in z.values()) or 1.0
        attribution = sorted(
            ({"feature": k, "share": abs(z[k]) / total,
              "direction": "high" if z[k] > 1 else "low" if z[k] < -1 else "normal",
              "value": feats[k], "z": z[k], "imputed": k in imputed,
              "baseline": {"mean": base.get(k), "std": math.sqrt(base.get_var(k)) if k in base else None}}
             for k in z),
            key=lambda r: -r["share"],
        )
        thr = spec.threshold
        a.update({
            "features": feats,
            "score": score,
            "grade": grade,
            "threshold": {"grade": thr.grade, "score_floor": thr.score_floor,
                          "distance_p": thr.distance_p, "history": len(ent.scores),
                          "feature_p": thr.feature_p, "feature_peak_ratio": thr.feature_peak_ratio},
            "attribution": attribution,
            "baseline": self._baseline(ent, feats),
            "model": {"type": "HalfSpaceTrees", "params": vars(spec.model) if hasattr(spec.model, "__dict__") else {},
                      "windows_seen": ent.n_windows, "normal_windows_learned": ent.n_normal,
                      "warm": ent.n_normal >= spec.warmup_windows, "warmup_windows": spec.warmup_windows},
            "imputed_gap_windows": gap if 1 <= gap <= spec.impute_max_windows else 0,
        })
        if decision is not None:
            a["decision"] = decision
        if gap > spec.impute_max_windows:
            a["gap_windows"] = gap
        return a

    # ------------------------------------------------------------------ durable state
    def export_state(self, eid: str) -> bytes:
        """The entity's whole state (open windows, baseline, model, threshold, drift, lifecycle), versioned.

        Version 4: ``[4] | u32 n | JSON head | u32 m | model | u32 b | baseline | u32 s | scores | ADWINs``
        (lengths big-endian). The head holds the lifecycle, the open windows and the baseline's
        feature keys; the baseline's means and variances (float64) then each feature's count of
        learned windows (a byte; version 3 had no counts) and the score history (its
        array's bytes, float32 or float64 as ``head["score_type"]`` says) are binary: as JSON
        numbers, formatting them was most of the export's time. Native byte order (little-endian
        on every platform this runs on), as for the internal messages.
        """
        ent = self.entities[eid]
        return self._window_sections(ent, bytes([STATE_VERSION]), {
            "labels": ent.labels, "lane": ent.lane,
            "last_seen": ent.last_seen if math.isfinite(ent.last_seen) else None,
            "metrics": sorted(ent.mlast), "windows": self.windows.export_entity(eid),
            "cursor": {str(k): v for k, v in ent.cursor.items()}, "mlast": ent.mlast, "gap": ent.gap})

    @staticmethod
    def _window_sections(ent: _Entity, tag: bytes, head: dict) -> bytes:
        """``tag | u32 n | JSON head | u32 m | model | u32 b | baseline | u32 s | scores | ADWINs``:
        the sections of what only a closed window changes (version 3's layout, and the window
        part's), the JSON head holding ``head`` and the window-close fields."""
        import pickle

        keys, base = ent.base.state()
        scores = ent.scores
        head.update({
            "n_windows": ent.n_windows, "keys": keys, "n_normal": ent.n_normal, "score_type": scores.typecode,
            "expected": ent.expected, "incident": ent.incident, "normal_streak": ent.normal_streak,
            "cooldown_until": ent.cooldown_until if math.isfinite(ent.cooldown_until) else None,
            "last_end": ent.last_end if math.isfinite(ent.last_end) else None,
            "mwin": ent.mwin, "zpeak": ent.zpeak})
        head_b = orjson.dumps(head)
        model = ent.model.to_bytes() if ent.model is not None else b""
        adw = pickle.dumps(ent.adwins, protocol=5) if ent.adwins else b""
        sb = scores.tobytes()
        return b"".join((tag, len(head_b).to_bytes(4, "big"), head_b, len(model).to_bytes(4, "big"), model,
                         len(base).to_bytes(4, "big"), base, len(sb).to_bytes(4, "big"), sb, adw))

    # The state in two parts (the worker's table keeps them as separate records): what a sample
    # changes — the open windows, the latest times, the source cursor, the missing-data incident —
    # and what only a closed window changes — model, baseline, score history, ADWIN, alert
    # lifecycle. A window closes once per entity and window (every 60 s in real time) while a
    # commit writes every entity a commit interval touched (every few seconds), so the second,
    # larger part (≈ 90 % of the bytes) is written only when it changed.
    #
    # The window part alternates between two slots, and the sample part names the slot it goes
    # with: a write interrupted between the two (a crash before the commit) leaves the last
    # sample part with the slot it names intact, because a slot is only overwritten after a
    # sample part naming the other one was written (records of one entity go to one partition,
    # in order).
    def export_parts(self, eid: str, full: bool = False) -> tuple[bytes, bytes | None, int]:
        """``(sample part, window part, slot)`` of the entity's state: the window part is None
        when no window closed since the last call (and not ``full``); ``slot`` (0 or 1) is the one
        the window part belongs in, which the sample part names. :meth:`import_parts` reads them;
        together they hold what :meth:`export_state` holds.

        Sample part: ``[0x21] | JSON``. Window part: ``[0x23] | u32 n | JSON head | u32 m |
        model | u32 b | baseline | u32 s | scores | ADWINs`` (the sections of version 4). Both
        carry ``n_windows``, which must agree when they are read back.
        """
        ent = self.entities[eid]
        slow = None
        if full or ent.saved_windows != ent.n_windows:
            slow = self._window_sections(ent, _PART_WINDOWS, {})
            ent.saved_windows = ent.n_windows
            ent.wslot = 1 - ent.wslot
        fast = {"labels": ent.labels, "lane": ent.lane, "n_windows": ent.n_windows, "wslot": ent.wslot,
                "last_seen": ent.last_seen if math.isfinite(ent.last_seen) else None,
                "windows": self.windows.export_entity(eid),
                "cursor": {str(k): v for k, v in ent.cursor.items()}, "mlast": ent.mlast, "gap": ent.gap}
        return _PART_SAMPLES + orjson.dumps(fast), slow, ent.wslot

    @staticmethod
    def is_state_part(data: bytes) -> bool:
        """Whether ``data`` is the sample part of :meth:`export_parts` (not a whole state)."""
        return data[:1] == _PART_SAMPLES

    def import_parts(self, eid: str, fast: bytes, slots: Sequence[bytes | None]) -> None:
        """Load an entity from the sample part of :meth:`export_parts` and its window parts
        (``slots[0]``, ``slots[1]``, None where absent): the one the sample part names is used."""
        if fast[:1] != _PART_SAMPLES:
            raise ValueError(f"not the sample part of an entity state: {fast[:1]!r}")
        body = orjson.loads(fast[1:])
        slow = slots[body["wslot"]]
        if slow is None or slow[:1] not in _PART_WINDOWS_READ:
            raise ValueError(f"entity state of {eid!r}: its window part (slot {body['wslot']}) is missing")
        head, model, base, scores, adw = self._sections(slow, 1)
        if head["n_windows"] != body["n_windows"]:
            raise ValueError(f"entity state parts of {eid!r} disagree: windows {body['n_windows']} "
                             f"and {head['n_windows']}")
        head.update(body)
        self._load(eid, 3, head, model, base, scores, adw)
        ent = self.entities[eid]
        ent.saved_windows, ent.wslot = head["n_windows"], body["wslot"]

    @staticmethod
    def _sections(data: bytes, at: int) -> tuple[dict, bytes, bytes, array, bytes]:
        """(JSON head, model, baseline, scores, ADWINs) of the binary layout of version 3."""
        n = int.from_bytes(data[at:at + 4], "big")
        head = orjson.loads(data[at + 4:at + 4 + n])
        at += 4 + n
        m = int.from_bytes(data[at:at + 4], "big")
        model = data[at + 4:at + 4 + m]
        at += 4 + m
        b = int.from_bytes(data[at:at + 4], "big")
        base = data[at + 4:at + 4 + b]
        at += 4 + b
        k = int.from_bytes(data[at:at + 4], "big")
        scores = array(head["score_type"])
        scores.frombytes(data[at + 4:at + 4 + k])
        return head, model, base, scores, data[at + 4 + k:]

    def import_state(self, eid: str, data: bytes) -> None:
        """Load an entity from :meth:`export_state`'s bytes (versions 1 to 3)."""
        if not data or data[0] not in _READABLE_VERSIONS:
            raise ValueError(f"unsupported entity state version {data[:1]!r}")
        version = data[0]
        if version >= 3:
            body, model, base, scores, adw = self._sections(data, 1)
        else:
            n = int.from_bytes(data[1:5], "big")
            body = orjson.loads(data[5:5 + n])
            m = int.from_bytes(data[5 + n:9 + n], "big")
            model = data[9 + n:9 + n + m]
            adw = data[9 + n + m:]
            base = scores = None
        self._load(eid, version, body, model, base, scores, adw)

    def _load(self, eid: str, version: int, body: dict, model: bytes, base: bytes | None, stored: array | None,
              adw: bytes) -> None:
        import pickle

        self.drop(eid)
        eid = sys.intern(eid)
        ent = self.entities[eid] = _Entity(eid, body["labels"], body["lane"], self._score_type)
        if version >= 3:
            ent.base.load_state(body["keys"], base)
            ent.scores = array(self._score_type, stored) if stored.typecode != self._score_type else stored
        else:
            ent.base.load(body["mean"], body["var"])
            ent.scores = array(self._score_type, body["scores"])
        ent.n_normal, ent.n_windows = body["n_normal"], body["n_windows"]
        ent.expected, ent.incident, ent.normal_streak = body["expected"], body["incident"], body["normal_streak"]
        ent.cooldown_until = body["cooldown_until"] if body["cooldown_until"] is not None else -math.inf
        ent.last_end = body["last_end"] if body["last_end"] is not None else -math.inf
        ent.last_seen = body["last_seen"] if body["last_seen"] is not None else -math.inf
        ent.cursor = {int(k): v for k, v in body.get("cursor", {}).items()}
        ent.model = model_from_bytes(model) if model else None
        ent.adwins = pickle.loads(adw) if adw else {}
        if "mlast" in body:  # version 2
            ent.mlast, ent.mwin, ent.gap, ent.zpeak = body["mlast"], body["mwin"], body["gap"], body["zpeak"]
        else:  # version 1 kept no per-metric times: every metric counts as last seen with the entity
            if math.isfinite(ent.last_seen):
                ent.mlast = dict.fromkeys(sorted(body["metrics"]), ent.last_seen)
            if math.isfinite(ent.last_end):
                ent.mwin = dict.fromkeys(ent.expected, ent.last_end)
        self.windows.import_entity(eid, body["windows"], ent.lane)
        if self.spec.missing_after_windows > 0 and math.isfinite(ent.last_seen):
            self._watch(ent)

    def drop(self, eid: str) -> None:
        self.entities.pop(eid, None)  # its silence-heap entry goes stale and is skipped
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
        """Forget entities idle (in event time) for longer than ttl; returns their ids.

        An expiring entity's open ``missing_data`` incident is resolved (``missing.reason:
        "expired"``); that alert comes out of the lane's next :meth:`advance_lane`.
        """
        gone = [e for e, ent in self.entities.items()
                if ent.last_seen < now_event_time - ttl and (lane is None or ent.lane == lane)]
        for e in gone:
            ent = self.entities[e]
            if ent.gap is not None:
                a = self._gap_alert(ent, "resolved", now_event_time)
                a["missing"]["reason"] = "expired"
                self._pending.setdefault(ent.lane, []).append(a)
            self.drop(e)
        return gone
