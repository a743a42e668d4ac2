"""Model monitoring on the inference stream: the pure core (no Faust, no Kafka).

Per model version (:class:`VersionMonitor`):

* **baseline** - the first ``baseline_size`` inferences of the version (or a reference file) are
  collected, feature types inferred (numbers -> numeric, anything else -> categorical) and frozen
  into a :class:`stream.detect.baseline.Baseline` of the inputs, another of the prediction (and
  score), and a **contract** (fields, their type, missing and null rates);
* **data_drift** / **prediction_drift** - the current inputs and predictions are kept in
  count-based :class:`~stream.detect.baseline.SlidingWindow` s; every ``compare_every`` inferences
  (once the window is full) they are compared with the baseline. A feature drifts when its PSI is
  at least ``psi_drift`` *and* its distribution test (KS, or chi-square for categories) is
  significant (p < :data:`SIGNIFICANCE`); an incident fires once and resolves after
  ``resolve_after`` comparisons in which no feature is at ``psi_warn`` or above (significantly);
* **schema_drift** - every ``compare_every`` inferences the events since the last check are held
  to the contract: a field missing or null more often than in the baseline (by
  ``null_rate_jump``), a new field or a type change in at least ``min_share`` of them. The rest of
  the event is still used;
* **performance_drift** - inferences and feedback are joined by request id per model
  (:class:`ModelMonitor`: both sides wait in bounded stores with an event-time TTL, so feedback
  that arrives first is not lost; what expires unmatched is counted). Each pair's error
  (classification: prediction != label; regression: absolute error) feeds river's ADWIN; a
  detected rise of at least ``min_effect`` fires with the change point and the before / after
  rates, a later fall back resolves.

Alerts use the envelope of :mod:`stream.detect.engine` (``alert_id`` a hash of detector, entity,
window, kind and status; ``series.id`` = ``model/<name>@<version>``). State is bounded (windows
and baselines are fixed-size, versions per model and the join stores are capped) and
serialises to versioned bytes.
"""
from __future__ import annotations

import hashlib
import math
import pickle
import struct
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson

from stream.detect import _binning
from stream.detect.baseline import Baseline, BaselineBuilder, DriftReport, SlidingWindow, _to_float, compare
from stream.detect.drift_stats import KSSignificance, ks_pvalue
from stream.detect.engine import alert_id
from stream.detect.monitor_spec import MonitorSpec, spec_for

__all__ = ["STATE_VERSION", "SIGNIFICANCE", "VersionMonitor", "ModelMonitor", "Monitors", "load_reference",
           "type_of"]

STATE_VERSION = 1
#: p-value a drift test must reach besides the PSI threshold (sampling noise is not drift).
SIGNIFICANCE = 1e-3
#: fewest non-null current values for a feature to be judged at all.
MIN_CURRENT = 30
#: ``ks_pvalue(d, n1, n2)[1] < SIGNIFICANCE`` (scipy's exact / asymptotic choice), remembered per size pair
_KS_SIGNIFICANT = KSSignificance(SIGNIFICANCE)
_TS_RING = 4096  # event times of recent joined pairs (for the change point)
_MAX_NEW_FIELDS = 256  # distinct unknown field names tallied per schema check


#: contract type -> the type code of ``_binning.scan_records`` (and back)
_TYPE_CODES = {None: 0, "number": 1, "string": 2, "bool": 3}
_TYPE_NAMES = {v: k for k, v in _TYPE_CODES.items()}


def type_of(v: Any) -> str | None:
    """The contract type of a JSON value: number, string, bool, or None for null."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return "string"


def _f(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _label(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# =============================================================================== reference
def load_reference(path: str, prediction_column: str = "prediction", score_column: str = "score") -> list[dict]:
    """Reference rows ``{"features", "prediction", "score"}`` from a CSV or JSON-lines file.

    JSON lines: inference events (``features`` / ``prediction`` / ``score``) or flat objects of
    feature values. CSV: one feature per column (numbers parsed, empty cells null), except the
    prediction and score columns.
    """
    rows: list[dict] = []
    if path.lower().endswith(".csv"):
        import csv

        with open(path, newline="") as fh:
            for rec in csv.DictReader(fh):
                feats: dict[str, Any] = {}
                pred = score = None
                for k, v in rec.items():
                    val: Any = None if v is None or v == "" else _parse_cell(v)
                    if k == prediction_column:
                        pred = val
                    elif k == score_column:
                        score = val if isinstance(val, (int, float)) else None
                    else:
                        feats[k] = val
                rows.append({"features": feats, "prediction": pred, "score": score})
    else:
        with open(path, "rb") as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {i + 1}: not valid JSON: {exc}") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}: line {i + 1}: must be a JSON object")
                if isinstance(obj.get("features"), dict):
                    rows.append({"features": obj["features"], "prediction": obj.get("prediction"),
                                 "score": obj.get("score")})
                else:
                    rows.append({"features": obj, "prediction": None, "score": None})
    if not rows:
        raise ValueError(f"{path}: no reference rows")
    return rows


def _parse_cell(v: str) -> Any:
    try:
        x = float(v)
    except ValueError:
        return v
    if not math.isfinite(x):
        return None
    return int(x) if x.is_integer() and "." not in v and "e" not in v.lower() else x


# =============================================================================== frozen parts
class _Frozen:
    """What a version's baseline phase produces: input and prediction baselines, and the contract."""

    __slots__ = ("inputs", "preds", "contract", "n", "origin", "_bytes", "_digest")

    def __init__(self, inputs: Baseline, preds: Baseline | None, contract: dict, n: int, origin: str):
        self.inputs = inputs
        self.preds = preds
        self.contract = contract
        self.n = n
        self.origin = origin
        self._bytes: bytes | None = None  # frozen: serialised once, reused by every snapshot
        self._digest: str | None = None

    @classmethod
    def fit(cls, rows: list[dict], spec: MonitorSpec, origin: str) -> "_Frozen":
        n = len(rows)
        present: Counter = Counter()
        nulls: Counter = Counter()
        types: dict[str, Counter] = {}
        for r in rows:
            for k, v in r["features"].items():
                present[k] += 1
                t = type_of(v)
                if t is None:
                    nulls[k] += 1
                else:
                    tc = types.get(k)
                    if tc is None:
                        tc = types[k] = Counter()
                    tc[t] += 1
        names = sorted(present)
        numeric = [k for k in names if k in types and set(types[k]) == {"number"}]
        categorical = [k for k in names if k not in numeric]
        bb = BaselineBuilder(numeric=numeric, categorical=categorical, n_rows=n, bins=spec.bins, top_k=spec.top_k)
        bb.update_records([r["features"] for r in rows])
        inputs = bb.build()
        contract = {}
        for k in names:
            tc = types.get(k)
            contract[k] = {"type": tc.most_common(1)[0][0] if tc else None,
                           "missing_rate": (n - present[k]) / n, "null_rate": nulls[k] / n}
        preds = None
        cols: dict[str, list] = {}
        p = [r.get("prediction") for r in rows]
        if any(v is not None for v in p):
            cols["prediction"] = p
        s = [r.get("score") for r in rows]
        if any(v is not None for v in s):
            cols["score"] = [np.nan if v is None else float(v) for v in s]
        if cols:
            preds = Baseline.fit(cols, numeric=["score"] if "score" in cols else None, bins=spec.bins,
                                 top_k=spec.top_k)
        return cls(inputs, preds, contract, n, origin)

    def to_bytes(self) -> bytes:
        if self._bytes is None:
            head = orjson.dumps({"contract": self.contract, "n": self.n, "origin": self.origin})
            a = self.inputs.to_bytes()
            b = self.preds.to_bytes() if self.preds is not None else b""
            self._bytes = struct.pack("<III", len(head), len(a), len(b)) + head + a + b
        return self._bytes

    @property
    def digest(self) -> str:
        """Content hash of :meth:`to_bytes`: names the baseline when it is stored apart."""
        if self._digest is None:
            self._digest = hashlib.blake2b(self.to_bytes(), digest_size=12).hexdigest()
        return self._digest

    @classmethod
    def from_bytes(cls, data: bytes) -> "_Frozen":
        h, la, lb = struct.unpack_from("<III", data, 0)
        o = 12
        head = orjson.loads(data[o:o + h]); o += h
        inputs = Baseline.from_bytes(data[o:o + la]); o += la
        preds = Baseline.from_bytes(data[o:o + lb]) if lb else None
        fz = cls(inputs, preds, head["contract"], head["n"], head["origin"])
        fz._bytes = bytes(data)  # the same bytes, so the same digest
        return fz


# =============================================================================== per version
class VersionMonitor:
    """Monitor of one model version: baseline, windows, contract, error stream, incidents."""

    def __init__(self, spec: MonitorSpec, model: str, version: str, *, source_topic: str = "inferences",
                 feedback_topic: str = "feedback", frozen: _Frozen | None = None,
                 labels: Mapping[str, str] | None = None):
        self.spec = spec
        self.model = model
        self.version = version
        self.source_topic = source_topic
        self.feedback_topic = feedback_topic
        self.entity = f"model/{model}@{version}"
        self.labels = {**(labels or {}), "model": model, "version": version}
        self.rows: list[dict] = []  # baseline phase: collected rows (at most baseline_size)
        self.frozen: _Frozen | None = None
        self.window: SlidingWindow | None = None
        self.pwindow: SlidingWindow | None = None
        W = spec.window
        self.ts = np.full(W, np.nan)
        self.part = np.full(W, -1, dtype=np.int64)
        self.off = np.full(W, -1, dtype=np.int64)
        self.pos = 0
        self.pending: list[tuple] = []  # rows since the last comparison: (features, pred, score, ts, part, off)
        self.seen = 0
        self.last_ts = -math.inf
        self.incidents: dict[str, dict | None] = {k: None for k in
                                                  ("data_drift", "prediction_drift", "schema_drift", "performance_drift")}
        self.streak: dict[str, int] = {k: 0 for k in self.incidents}
        self.comparisons = 0
        # performance
        self.adwin = None
        self.pairs = 0
        self.err_sum = 0.0  # since the last change (for the "before" rate)
        self.err_n = 0
        self.pair_ts: list[float] = []  # ring of the last _TS_RING pair event times
        self.pair_err: list[float] = []  # ... and their errors (to locate the change point)
        self.task: str | None = None if spec.performance.task == "auto" else spec.performance.task
        self.skipped_pairs = 0
        self.last_pair_ts = -math.inf
        if frozen is not None:
            self._freeze(frozen)

    # ------------------------------------------------------------------ baseline
    @property
    def ready(self) -> bool:
        return self.frozen is not None

    def _freeze(self, frozen: _Frozen) -> None:
        self.frozen = frozen
        self.rows = []
        self._field_table()
        # KS statistics by sorting the few features whose PSI calls for the test (see _drift)
        self.window = SlidingWindow(frozen.inputs, self.spec.window, ks_cells=False)
        self.pwindow = (SlidingWindow(frozen.preds, self.spec.window, ks_cells=False)
                        if (frozen.preds is not None and self.spec.prediction) else None)

    def _field_table(self) -> None:
        frozen = self.frozen
        # the contract's fields, their expected type code and their column in the numeric window,
        # for the compiled per-batch scan (_binning.scan_records)
        self._fields = tuple(frozen.contract)
        self._expected = np.array([_TYPE_CODES.get(frozen.contract[k]["type"], -1) for k in self._fields],
                                  dtype=np.int32)
        col = {n: i for i, n in enumerate(frozen.inputs.numeric_names)}
        self._numcol = np.array([col.get(k, -1) for k in self._fields], dtype=np.int32)

    # ------------------------------------------------------------------ inferences
    def observe(self, features: Mapping, prediction: Any, score: float | None, ts: float,
                partition: int = -1, offset: int = -1) -> list[dict]:
        self.seen += 1
        if ts > self.last_ts:
            self.last_ts = ts
        if self.frozen is None:
            self.rows.append({"features": dict(features), "prediction": prediction, "score": score})
            if len(self.rows) >= self.spec.baseline_size:
                self._freeze(_Frozen.fit(self.rows, self.spec, f"first {len(self.rows)} inferences"))
            return []
        self.pending.append((features, prediction, score, ts, partition, offset))
        if len(self.pending) >= self.spec.compare_every:
            return self.flush()
        return []

    def flush(self) -> list[dict]:
        """Fold the pending rows into the windows and compare (if the window is full)."""
        if not self.pending or self.frozen is None:
            return []
        rows, self.pending = self.pending, []
        out: list[dict] = []
        n = len(rows)
        feats = [r[0] for r in rows]
        inputs = self.frozen.inputs
        X = np.full((n, len(inputs.numeric)), np.nan)
        tally = np.zeros((len(self._fields), 5), dtype=np.int64)
        extra = _binning.scan_records(feats, self._fields, self._expected, self._numcol, X, tally, _to_float)
        if self.spec.schema.enabled:
            a = self._schema_check(rows, tally, extra)
            if a is not None:
                out.append(a)
        codes = None
        if inputs.categorical:
            codes = inputs.encode_categorical({c: [f.get(c) for f in feats] for c in inputs.categorical_names}, n)
        self.window.update(X, codes=codes)
        if self.pwindow is not None:
            self.pwindow.update_records([{"prediction": r[1], "score": r[2]} for r in rows])
        W = self.spec.window
        last = rows[-W:]
        idx = (self.pos + n - len(last) + np.arange(len(last))) % W
        self.ts[idx] = [r[3] for r in last]
        self.part[idx] = [r[4] for r in last]
        self.off[idx] = [r[5] for r in last]
        self.pos = (self.pos + n) % W
        if self.window.filled >= W:
            self.comparisons += 1
            out += self._drift("data_drift", self.frozen.inputs, self.window)
            if self.pwindow is not None:
                out += self._drift("prediction_drift", self.frozen.preds, self.pwindow)
        return out

    # ------------------------------------------------------------------ drift
    def _judge(self, report: DriftReport) -> tuple[list[str], list[str]]:
        """(drifted, warned) features: PSI over the threshold, significant, enough current values.

        Significance is decided on the exact p-value (:data:`_KS_SIGNIFICANT`), only for features
        whose PSI reached ``psi_warn``; the p-values themselves are computed for the features an
        alert reports (:meth:`_drift_alert`).
        """
        drifted, warned = [], []
        warn, drift = self.spec.psi_warn, self.spec.psi_drift
        for f in report.features:
            if not (f.n_current >= MIN_CURRENT and f.psi >= warn):  # NaN PSI compares False
                continue
            if f.type == "numeric":
                significant = _KS_SIGNIFICANT(f.ks_stat, f.ks_n_reference, f.n_current)
            else:
                significant = math.isfinite(f.chi2_pvalue) and f.chi2_pvalue < SIGNIFICANCE
            if not significant:
                continue
            if f.psi >= drift:
                drifted.append(f.feature)
            else:
                warned.append(f.feature)
        return drifted, warned

    def _drift(self, kind: str, base: Baseline, window: SlidingWindow) -> list[dict]:
        spec = self.spec
        # KS statistics only: p-values are computed below for what an alert reports
        report = compare(base, window, warn=spec.psi_warn, drift=spec.psi_drift, ks_method=None,
                         ks_min_psi=spec.psi_warn)
        drifted, warned = self._judge(report)
        inc = self.incidents[kind]
        if inc is None:
            if not drifted:
                return []
            a = self._drift_alert(kind, "firing", base, window, report, drifted, warned)
            self.incidents[kind] = {"id": a["alert_id"], "start": a["window"]["start"], "features": drifted}
            self.streak[kind] = 0
            return [a]
        self.streak[kind] = 0 if (drifted or warned) else self.streak[kind] + 1
        if self.streak[kind] >= spec.resolve_after:
            a = self._drift_alert(kind, "resolved", base, window, report, drifted, warned)
            a["incident_id"] = inc["id"]
            self.incidents[kind] = None
            self.streak[kind] = 0
            return [a]
        return []

    def _window_span(self) -> dict:
        ts = self.ts[~np.isnan(self.ts)]
        return {"start": float(ts.min()), "end": float(ts.max())} if ts.size else {"start": 0.0, "end": 0.0}

    def _source(self) -> dict:
        ok = self.off >= 0
        ranges = []
        for p in sorted(set(self.part[ok].tolist())):
            o = self.off[ok & (self.part == p)]
            ranges.append({"partition": int(p), "first_offset": int(o.min()), "last_offset": int(o.max())})
        first = ranges[0] if ranges else {"partition": None, "first_offset": None, "last_offset": None}
        return {"topic": self.source_topic, "partition": first["partition"], "first_offset": first["first_offset"],
                "last_offset": first["last_offset"], "ranges": ranges}

    def _envelope(self, kind: str, status: str, window: dict, source: dict) -> dict:
        spec = self.spec
        return {
            "alert_id": alert_id(spec.name, self.entity, window["start"], window["end"], kind, status),
            "status": status,
            "kind": kind,
            "detector": spec.name,
            "severity": spec.severity,
            "series": {"id": self.entity, "labels": dict(self.labels)},
            "window": window,
            "source": source,
            "model": {"name": self.model, "version": self.version, "inferences_seen": self.seen,
                      "baseline": {"origin": self.frozen.origin if self.frozen else None,
                                   "size": self.frozen.n if self.frozen else len(self.rows)},
                      "window_size": spec.window, "compare_every": spec.compare_every},
            "related": [],
            "created_at": time.time(),
        }

    def _drift_alert(self, kind: str, status: str, base: Baseline, window: SlidingWindow, report: DriftReport,
                     drifted: list[str], warned: list[str]) -> dict:
        spec = self.spec
        a = self._envelope(kind, status, self._window_span(), self._source())
        details = []
        for f in report.features:
            if f.feature not in drifted and f.feature not in warned:
                continue
            b = base[f.feature]
            if f.type == "numeric":  # scipy.stats.ks_2samp(reference sample, window)'s pair
                f.ks_stat, f.ks_pvalue = ks_pvalue(f.ks_stat, f.ks_n_reference, f.n_current)
            d = f.to_dict()
            if f.type == "numeric":
                d["ks_reference_sample"] = f.ks_n_reference
            d = {k: (_f(v) if isinstance(v, float) else v) for k, v in d.items()}
            d["severity"] = "drift" if f.feature in drifted else "warn"
            d["drift"] = f.feature in drifted
            d["threshold"] = {"psi_warn": spec.psi_warn, "psi_drift": spec.psi_drift, "p_value": SIGNIFICANCE}
            if f.type == "numeric":
                d["bins"] = [float(x) for x in b.inner_edges]
                d["baseline_counts"] = b.counts.tolist()
                d["current_counts"] = window.counts(f.feature).tolist()
            else:
                d["baseline_counts"] = b.counts_dict()
                d["current_counts"] = window.counts(f.feature)
            details.append(d)
        a["features"] = {f.feature: _f(f.psi) for f in report.features}
        a["score"] = max((_f(f.psi) or 0.0 for f in report.features if f.feature in drifted), default=0.0)
        a["threshold"] = {"psi_warn": spec.psi_warn, "psi_drift": spec.psi_drift, "p_value": SIGNIFICANCE,
                          "min_current": MIN_CURRENT}
        a["drift"] = {"test": "psi", "drifted": drifted, "warned": warned, "features": details,
                      "n_features": len(report.features), "drift_share": len(drifted) / max(1, len(report.features)),
                      "window_rows": window.filled, "baseline_rows": self.frozen.n}
        return a

    # ------------------------------------------------------------------ schema
    def _schema_check(self, rows: list[tuple], tally: np.ndarray, extra: list[int]) -> dict | None:
        """Hold the rows to the contract. ``tally`` and ``extra`` come from ``_binning.scan_records``
        over the rows' features: per contract field, rows without it and rows per value type;
        the rows with fields outside the contract."""
        pol = self.spec.schema
        contract = self.frozen.contract
        n = len(rows)
        violations = []
        for i, k in enumerate(self._fields):
            c = contract[k]
            miss = int(tally[i, 0]) / n
            if miss - c["missing_rate"] >= pol.null_rate_jump:
                violations.append({"type": "missing_field", "field": k, "baseline_rate": c["missing_rate"],
                                   "current_rate": miss})
            nr = int(tally[i, 1]) / n
            if nr - c["null_rate"] >= pol.null_rate_jump:
                violations.append({"type": "null_rate", "field": k, "baseline_rate": c["null_rate"],
                                   "current_rate": nr})
            e = self._expected[i]
            if e > 0:  # a typed field: non-null values of another type
                wrong = {_TYPE_NAMES[t]: int(tally[i, 1 + t]) for t in (1, 2, 3) if t != e and tally[i, 1 + t]}
                if wrong:
                    share = sum(wrong.values()) / n
                    if share >= pol.min_share:
                        violations.append({"type": "type_change", "field": k, "expected": c["type"],
                                           "observed": wrong, "share": share})
        new: Counter = Counter()
        for r in extra:
            for k in rows[r][0]:
                if k not in contract and (k in new or len(new) < _MAX_NEW_FIELDS):
                    new[k] += 1
        for k, cnt in sorted(new.items()):
            if cnt / n >= pol.min_share:
                violations.append({"type": "new_field", "field": k, "share": cnt / n,
                                   "observed_types": sorted({type_of(r[0][k]) or "null" for r in rows if k in r[0]})})
        kind = "schema_drift"
        inc = self.incidents[kind]
        if inc is None:
            if not violations:
                return None
            ts = [r[3] for r in rows]
            offs = [(r[4], r[5]) for r in rows if r[5] >= 0]
            src = {"topic": self.source_topic, "partition": offs[0][0] if offs else None,
                   "first_offset": min(o for p, o in offs if p == offs[0][0]) if offs else None,
                   "last_offset": max(o for p, o in offs if p == offs[0][0]) if offs else None}
            a = self._envelope(kind, "firing", {"start": min(ts), "end": max(ts)}, src)
            a["score"] = float(len(violations))
            a["threshold"] = {"null_rate_jump": pol.null_rate_jump, "min_share": pol.min_share}
            a["drift"] = {"violations": violations, "checked_events": n,
                          "contract": {k: contract[k] for k in sorted({v["field"] for v in violations}) if k in contract}}
            self.incidents[kind] = {"id": a["alert_id"], "start": a["window"]["start"],
                                    "violations": [[v["type"], v["field"]] for v in violations]}
            self.streak[kind] = 0
            return a
        self.streak[kind] = 0 if violations else self.streak[kind] + 1
        if self.streak[kind] >= self.spec.resolve_after:
            ts = [r[3] for r in rows]
            a = self._envelope(kind, "resolved", {"start": min(ts), "end": max(ts)}, {"topic": self.source_topic})
            a["incident_id"] = inc["id"]
            a["score"] = 0.0
            a["threshold"] = {"null_rate_jump": pol.null_rate_jump, "min_share": pol.min_share}
            a["drift"] = {"violations": [], "checked_events": n}
            self.incidents[kind] = None
            self.streak[kind] = 0
            return a
        return None

    # ------------------------------------------------------------------ performance
    def _error(self, prediction: Any, label: Any) -> float | None:
        if self.task is None:  # auto, decided by the first pair
            cls = (isinstance(prediction, str) or isinstance(label, str)
                   or (isinstance(prediction, int) and isinstance(label, int)))
            self.task = "classification" if cls else "regression"
        if self.task == "classification":
            return 0.0 if _label(prediction) == _label(label) else 1.0
        try:
            e = abs(float(prediction) - float(label))
        except (TypeError, ValueError, OverflowError):
            return None
        return e if math.isfinite(e) else None

    def on_pair(self, prediction: Any, label: Any, ts: float, fb_ts: float,
                source: dict | None = None) -> list[dict]:
        pol = self.spec.performance
        err = self._error(prediction, label)
        if err is None:
            self.skipped_pairs += 1
            return []
        if self.adwin is None:
            # the compact compiled ADWIN, bit-identical to river's (tests/unit/test_adwin.py); a
            # state written before holds river's, which goes on working through the same API
            from stream.detect.adwin import ADWIN

            self.adwin = ADWIN(delta=pol.delta)
        self.pairs += 1
        self.err_sum += err
        self.err_n += 1
        if len(self.pair_ts) < _TS_RING:
            self.pair_ts.append(ts)
            self.pair_err.append(err)
        else:
            self.pair_ts[(self.pairs - 1) % _TS_RING] = ts
            self.pair_err[(self.pairs - 1) % _TS_RING] = err
        self.last_pair_ts = max(self.last_pair_ts, ts)
        ad = self.adwin
        ad.update(err)
        if not ad.drift_detected:
            return []
        cp_index, before, after, n_before, width, approx = self._locate_change()
        cp_ts = self.pair_ts[cp_index % _TS_RING]
        # the pairs since this change are the next comparison's "before"
        tail = [self.pair_err[i % _TS_RING] for i in range(cp_index, self.pairs)]
        self.err_sum, self.err_n = float(sum(tail)), len(tail)
        if not math.isfinite(before):
            return []
        inc = self.incidents["performance_drift"]
        change = {"change_point": cp_ts, "change_point_index": cp_index, "change_point_approximate": approx,
                  "before": before, "after": after, "width_after": width, "n_before": n_before}
        if inc is None:
            if self.pairs < pol.min_samples or after - before < pol.min_effect:
                return []
            a = self._perf_alert("firing", cp_ts, change, source)
            self.incidents["performance_drift"] = {"id": a["alert_id"], "start": cp_ts, "before": before,
                                                   "after": after}
            return [a]
        if after < before and after <= inc["before"] + 0.5 * (inc["after"] - inc["before"]):
            a = self._perf_alert("resolved", cp_ts, change, source)
            a["incident_id"] = inc["id"]
            self.incidents["performance_drift"] = None
            return [a]
        return []

    def _locate_change(self) -> tuple[int, float, float, int, int, bool]:
        """Where the error level changed, within the pairs since the last change.

        ADWIN says *that* it changed (its cut is coarse: bucket boundaries); the split that
        maximises the two-segment mean-shift statistic ``k (L - k) / L * (mean_1 - mean_2)^2``
        over the remembered pairs since the last change says *where*, and gives the before /
        after rates. Returns (index of the first pair after the change, before, after,
        pairs before, pairs after, approximate: the segment was longer than the memory).
        """
        L = min(self.err_n, len(self.pair_err), self.pairs)
        approx = self.err_n > L
        start = self.pairs - L
        x = np.array([self.pair_err[i % _TS_RING] for i in range(start, self.pairs)], dtype=np.float64)
        if L < 2:
            return start, math.nan, float(x.mean()) if L else math.nan, 0, L, approx
        c = np.cumsum(x)
        k = np.arange(1, L)
        left = c[:-1] / k
        right = (c[-1] - c[:-1]) / (L - k)
        stat = k * (L - k) / L * (left - right) ** 2
        j = int(np.argmax(stat))
        return start + j + 1, float(left[j]), float(right[j]), j + 1, L - j - 1, approx

    def _perf_alert(self, status: str, cp_ts: float, change: dict, source: dict | None) -> dict:
        pol = self.spec.performance
        window = {"start": cp_ts, "end": max(self.last_pair_ts, cp_ts)}
        a = self._envelope("performance_drift", status, window, source or {"topic": self.feedback_topic})
        metric = "error_rate" if self.task == "classification" else "mean_absolute_error"
        a["score"] = change["after"] - change["before"]
        a["threshold"] = {"adwin_delta": pol.delta, "min_effect": pol.min_effect, "min_samples": pol.min_samples}
        a["features"] = {f"{metric}:before": change["before"], f"{metric}:after": change["after"]}
        a["drift"] = {"detector": "ADWIN", "task": self.task, "metric": metric, "pairs": self.pairs,
                      "changes": [change], "change_point": cp_ts}
        return a

    # ------------------------------------------------------------------ state
    def to_bytes(self, frozen_apart: bool = False) -> bytes:
        """Serialised state; ``frozen_apart``: the frozen baseline is left out and named by its
        digest (``head["frozen_ref"]``), for a caller that stores it once, apart."""
        apart = frozen_apart and self.frozen is not None
        head = {
            "model": self.model, "version": self.version, "labels": self.labels, "rows": self.rows,
            "pending": [[dict(r[0]), r[1], r[2], r[3], r[4], r[5]] for r in self.pending],
            "ts": [None if math.isnan(x) else x for x in self.ts.tolist()], "part": self.part.tolist(),
            "off": self.off.tolist(), "pos": self.pos, "seen": self.seen,
            "last_ts": None if self.last_ts == -math.inf else self.last_ts,
            "incidents": self.incidents, "streak": self.streak, "comparisons": self.comparisons,
            "pairs": self.pairs, "err_sum": self.err_sum, "err_n": self.err_n, "pair_ts": self.pair_ts,
            "pair_err": self.pair_err,
            "task": self.task, "skipped_pairs": self.skipped_pairs,
            "last_pair_ts": None if self.last_pair_ts == -math.inf else self.last_pair_ts,
        }
        if apart:
            head["frozen_ref"] = self.frozen.digest
        blobs = [orjson.dumps(head),
                 self.frozen.to_bytes() if (self.frozen and not apart) else b"",
                 self.window.to_bytes() if self.window is not None else b"",
                 self.pwindow.to_bytes() if self.pwindow is not None else b"",
                 pickle.dumps(self.adwin, protocol=5) if self.adwin is not None else b""]
        return bytes([STATE_VERSION]) + struct.pack("<5I", *map(len, blobs)) + b"".join(blobs)

    @classmethod
    def from_bytes(cls, data: bytes, spec: MonitorSpec, *, source_topic: str = "inferences",
                   feedback_topic: str = "feedback", frozen_lookup=None) -> "VersionMonitor":
        """``frozen_lookup(digest) -> _Frozen``: for a state whose baseline is stored apart."""
        if not data or data[0] != STATE_VERSION:
            raise ValueError(f"unsupported model-monitor state version {data[:1]!r} (this build reads {STATE_VERSION})")
        lens = struct.unpack_from("<5I", data, 1)
        o = 1 + 20
        parts = []
        for n in lens:
            parts.append(bytes(data[o:o + n]))
            o += n
        head = orjson.loads(parts[0])
        vm = cls(spec, head["model"], head["version"], source_topic=source_topic, feedback_topic=feedback_topic,
                 labels=head["labels"])
        ref = head.get("frozen_ref")
        if parts[1] or ref:
            if ref:
                if frozen_lookup is None:
                    raise ValueError(f"state of {head['model']}@{head['version']} names its baseline {ref}: "
                                     f"no lookup given")
                vm.frozen = frozen_lookup(ref)
            else:
                vm.frozen = _Frozen.from_bytes(parts[1])
            vm._field_table()
            vm.window = SlidingWindow.from_bytes(parts[2], vm.frozen.inputs, ks_cells=False)
            vm.pwindow = SlidingWindow.from_bytes(parts[3], vm.frozen.preds, ks_cells=False) if parts[3] else None
        vm.rows = head["rows"]
        vm.pending = [tuple(r) for r in head["pending"]]
        W = spec.window
        if len(head["ts"]) == W:
            vm.ts = np.array([np.nan if x is None else x for x in head["ts"]], dtype=np.float64)
            vm.part = np.array(head["part"], dtype=np.int64)
            vm.off = np.array(head["off"], dtype=np.int64)
            vm.pos = head["pos"]
        vm.seen = head["seen"]
        vm.last_ts = head["last_ts"] if head["last_ts"] is not None else -math.inf
        vm.incidents, vm.streak, vm.comparisons = head["incidents"], head["streak"], head["comparisons"]
        vm.pairs, vm.err_sum, vm.err_n, vm.pair_ts = head["pairs"], head["err_sum"], head["err_n"], head["pair_ts"]
        vm.pair_err = head["pair_err"]
        vm.task, vm.skipped_pairs = head["task"], head["skipped_pairs"]
        vm.last_pair_ts = head["last_pair_ts"] if head["last_pair_ts"] is not None else -math.inf
        vm.adwin = pickle.loads(parts[4]) if parts[4] else None
        return vm


class _JoinStore(dict):
    """request id -> entry (a tuple whose [2] is the event time), oldest first, FIFO-expired.

    A plain dict (lookups, and listing it for a snapshot, at C speed; ``OrderedDict`` lists
    15x slower) with a deque of ``(request id, entry)`` in insertion order for expiry; a
    deque item whose entry is no longer the stored one (joined, or put again) is skipped.
    """

    __slots__ = ("order",)

    def __init__(self):
        super().__init__()
        self.order: deque = deque()

    def put(self, rid: str, entry: tuple) -> None:
        """Store ``entry``; a request id put again moves to the end."""
        if rid in self:
            del self[rid]
        self[rid] = entry
        self.order.append((rid, entry))

    def expire(self, horizon: float, cap: int) -> int:
        """Drop the oldest entries while more than ``cap`` or older than ``horizon``; how many."""
        order = self.order
        n = 0
        while order and (len(self) > cap or order[0][1][2] < horizon):
            rid, entry = order.popleft()
            if self.get(rid) is entry:
                del self[rid]
                n += 1
        if len(order) > 2 * len(self) + 1024:  # mostly joined entries: rebuild
            self.order = deque(self.items())
        return n

    @classmethod
    def load(cls, data) -> "_JoinStore":
        """From its serialised form: columnar, or the first format's [id, *entry] rows."""
        st = cls()
        pairs = zip(data["ids"], data["entries"]) if isinstance(data, dict) else ((r[0], r[1:]) for r in data)
        for rid, entry in pairs:
            st.put(rid, tuple(entry))
        return st


# =============================================================================== per model
class ModelMonitor:
    """One model: its versions (at most ``max_versions``) and the inference/feedback join."""

    def __init__(self, spec: MonitorSpec, model: str, *, source_topic: str = "inferences",
                 feedback_topic: str = "feedback", reference: _Frozen | None = None):
        self.spec = spec
        self.model = model
        self.source_topic = source_topic
        self.feedback_topic = feedback_topic
        self.reference = reference
        self.versions: OrderedDict[str, VersionMonitor] = OrderedDict()  # least recently seen first
        self.pending_inf = _JoinStore()  # request_id -> (version, prediction, ts)
        self.pending_fb = _JoinStore()  # request_id -> (version, label, ts, part, off)
        self.now = -math.inf  # the model's event time (max ts seen)
        self.stats = Counter()  # joined, feedback_expired_unmatched, inferences_expired_unlabelled, ...

    def version(self, version: str, labels: Mapping[str, str] | None = None) -> VersionMonitor:
        vm = self.versions.get(version)
        if vm is None:
            vm = self.versions[version] = VersionMonitor(
                self.spec, self.model, version, source_topic=self.source_topic,
                feedback_topic=self.feedback_topic, frozen=self.reference, labels=labels)
            while len(self.versions) > self.spec.max_versions:
                self.versions.popitem(last=False)
                self.stats["versions_dropped"] += 1
        else:
            self.versions.move_to_end(version)
        return vm

    def _expire(self) -> None:
        pol = self.spec.performance
        horizon = self.now - pol.join_ttl_seconds
        n = self.pending_inf.expire(horizon, pol.max_pending)
        if n:
            self.stats["inferences_expired_unlabelled"] += n
        if self.pending_fb:
            n = self.pending_fb.expire(horizon, pol.max_pending)
            if n:
                self.stats["feedback_expired_unmatched"] += n

    def observe(self, inf, partition: int = -1, offset: int = -1) -> list[dict]:
        """One decoded :class:`stream.inference_events.Inference` of this model."""
        if inf.ts > self.now:
            self.now = inf.ts
        vm = self.version(inf.version, inf.labels)
        out = vm.observe(inf.features, inf.prediction, inf.score, inf.ts, partition, offset)
        if self.spec.performance.enabled:
            fb = self.pending_fb.pop(inf.request_id, None)
            if fb is not None:
                self.stats["joined"] += 1
                out += vm.on_pair(inf.prediction, fb[1], inf.ts, fb[2], self._fb_source(fb[3], fb[4]))
            else:
                self.pending_inf.put(inf.request_id, (inf.version, inf.prediction, inf.ts))
            self._expire()
        return out

    def observe_many(self, infs: list, partition: int = -1, offset: int = -1) -> list[dict]:
        """:meth:`observe` for a message's inferences of this model, in order (same result)."""
        out: list[dict] = []
        perf = self.spec.performance.enabled
        pending_fb, pending_inf = self.pending_fb, self.pending_inf
        ver = vm = None
        for inf in infs:
            if inf.ts > self.now:
                self.now = inf.ts
            if inf.version != ver or vm is None:
                ver = inf.version
                vm = self.version(ver, inf.labels)
            a = vm.observe(inf.features, inf.prediction, inf.score, inf.ts, partition, offset)
            if a:
                out += a
            if perf:
                rid = inf.request_id
                fb = pending_fb.pop(rid, None) if pending_fb else None
                if fb is not None:
                    self.stats["joined"] += 1
                    out += vm.on_pair(inf.prediction, fb[1], inf.ts, fb[2], self._fb_source(fb[3], fb[4]))
                else:
                    pending_inf.put(rid, (ver, inf.prediction, inf.ts))
                self._expire()
        return out

    def _fb_source(self, partition: int, offset: int) -> dict:
        return {"topic": self.feedback_topic, "partition": partition if partition >= 0 else None,
                "first_offset": offset if offset >= 0 else None, "last_offset": offset if offset >= 0 else None}

    def feedback(self, fb, partition: int = -1, offset: int = -1) -> list[dict]:
        """One decoded :class:`stream.inference_events.Feedback` of this model."""
        if not self.spec.performance.enabled:
            return []
        self.stats["feedback"] += 1
        inf = self.pending_inf.pop(fb.request_id, None)
        out: list[dict] = []
        if inf is not None:
            self.stats["joined"] += 1
            vm = self.versions.get(inf[0])
            if vm is None:
                self.stats["feedback_version_gone"] += 1
            else:
                out = vm.on_pair(inf[1], fb.label, inf[2], fb.ts, self._fb_source(partition, offset))
        else:  # the label came first: it waits for its inference
            self.pending_fb.put(fb.request_id, (fb.version, fb.label, fb.ts, partition, offset))
            if fb.ts > self.now:
                self.now = fb.ts
        self._expire()
        return out

    def expire(self, horizon: float) -> list[str]:
        """Forget the versions that have sent nothing since event time ``horizon``.

        A version's last activity is its newest inference or labelled pair (event time).
        Returns the versions dropped (counted in ``stats["versions_expired"]``).
        """
        gone = [v for v, vm in self.versions.items() if max(vm.last_ts, vm.last_pair_ts) < horizon]
        for v in gone:
            del self.versions[v]
        self.stats["versions_expired"] += len(gone)
        return gone

    def flush(self) -> list[dict]:
        out: list[dict] = []
        for vm in self.versions.values():
            out += vm.flush()
        return out

    @property
    def unmatched_feedback(self) -> int:
        """Feedback without its inference: still waiting plus expired."""
        return len(self.pending_fb) + self.stats["feedback_expired_unmatched"]

    def frozen_parts(self) -> dict[str, _Frozen]:
        """digest -> frozen baseline, of the versions that have one."""
        return {vm.frozen.digest: vm.frozen for vm in self.versions.values() if vm.frozen is not None}

    def to_bytes(self, frozen_apart: bool = False) -> bytes:
        head = orjson.dumps({
            "model": self.model, "now": None if self.now == -math.inf else self.now, "stats": dict(self.stats),
            # columnar (request ids, then entries): serialised at C speed, the stores can be large
            "pending_inf": {"ids": list(self.pending_inf), "entries": list(self.pending_inf.values())},
            "pending_fb": {"ids": list(self.pending_fb), "entries": list(self.pending_fb.values())},
            "versions": list(self.versions),
        })
        blobs = [vm.to_bytes(frozen_apart) for vm in self.versions.values()]
        return (bytes([STATE_VERSION]) + struct.pack("<I", len(head)) + head
                + b"".join(struct.pack("<I", len(b)) + b for b in blobs))

    @classmethod
    def from_bytes(cls, data: bytes, spec: MonitorSpec, *, source_topic: str = "inferences",
                   feedback_topic: str = "feedback", reference: _Frozen | None = None,
                   frozen_lookup=None) -> "ModelMonitor":
        if not data or data[0] != STATE_VERSION:
            raise ValueError(f"unsupported model-monitor state version {data[:1]!r} (this build reads {STATE_VERSION})")
        (n,) = struct.unpack_from("<I", data, 1)
        head = orjson.loads(data[5:5 + n])
        mm = cls(spec, head["model"], source_topic=source_topic, feedback_topic=feedback_topic, reference=reference)
        mm.now = head["now"] if head["now"] is not None else -math.inf
        mm.stats = Counter(head["stats"])
        mm.pending_inf = _JoinStore.load(head["pending_inf"])
        mm.pending_fb = _JoinStore.load(head["pending_fb"])
        o = 5 + n
        for v in head["versions"]:
            (m,) = struct.unpack_from("<I", data, o)
            o += 4
            mm.versions[v] = VersionMonitor.from_bytes(data[o:o + m], spec, source_topic=source_topic,
                                                       feedback_topic=feedback_topic, frozen_lookup=frozen_lookup)
            o += m
        return mm


# =============================================================================== all models
class Monitors:
    """Every monitored model of a worker. Pure: the caller decodes, calls, and publishes."""

    def __init__(self, specs: Iterable[MonitorSpec], *, source_topic: str = "inferences",
                 feedback_topic: str = "feedback"):
        self.specs = list(specs)
        self.source_topic = source_topic
        self.feedback_topic = feedback_topic
        self.models: dict[str, ModelMonitor] = {}
        self.unmonitored = 0
        self._refs: dict[str, _Frozen] = {}
        for s in self.specs:  # reference files are read once, at start (errors fail early)
            if s.reference:
                try:
                    rows = load_reference(s.reference, s.reference_prediction, s.reference_score)
                except (OSError, ValueError) as exc:
                    raise ValueError(f"{s.source}: field 'baseline.reference': {exc}") from None
                self._refs[s.name] = _Frozen.fit(rows, s, f"reference {s.reference}")

    def model(self, name: str) -> ModelMonitor | None:
        mm = self.models.get(name)
        if mm is None:
            spec = spec_for(self.specs, name)
            if spec is None:
                return None
            mm = self.models[name] = ModelMonitor(spec, name, source_topic=self.source_topic,
                                                  feedback_topic=self.feedback_topic,
                                                  reference=self._refs.get(spec.name))
        return mm

    def observe(self, inf, partition: int = -1, offset: int = -1) -> list[dict]:
        mm = self.model(inf.model)
        if mm is None:
            self.unmonitored += 1
            return []
        return mm.observe(inf, partition, offset)

    def observe_many(self, infs: list, partition: int = -1, offset: int = -1) -> list[dict]:
        """:meth:`observe` for a message's inferences, in order; consecutive ones of a model together."""
        out: list[dict] = []
        i, n = 0, len(infs)
        while i < n:
            name = infs[i].model
            j = i + 1
            while j < n and infs[j].model == name:
                j += 1
            mm = self.model(name)
            if mm is None:
                self.unmonitored += j - i
            else:
                out += mm.observe_many(infs[i:j] if (i or j < n) else infs, partition, offset)
            i = j
        return out

    def feedback(self, fb, partition: int = -1, offset: int = -1) -> list[dict]:
        mm = self.model(fb.model)
        if mm is None:
            self.unmonitored += 1
            return []
        return mm.feedback(fb, partition, offset)

    def expire(self, now: float, ttl: float, models: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
        """Forget what has sent nothing for ``ttl`` seconds of event time before ``now``.

        Versions of the given ``models`` (default: all) idle since ``now - ttl`` are dropped; a
        model left without versions whose own newest event (inference or feedback) is older
        than that is dropped whole. Returns ``(models dropped, models that lost versions but
        remain)``: the caller deletes the former's stored state and rewrites the latter's.
        """
        horizon = now - ttl
        dropped: list[str] = []
        changed: list[str] = []
        for name in list(self.models if models is None else models):
            mm = self.models.get(name)
            if mm is None:
                continue
            lost = mm.expire(horizon)
            if not mm.versions and mm.now < horizon:
                del self.models[name]
                dropped.append(name)
            elif lost:
                changed.append(name)
        return dropped, changed

    def export_state(self, name: str, frozen_apart: bool = False) -> bytes:
        """A model's state; ``frozen_apart``: without its frozen baselines, named by digest
        (:meth:`frozen_parts` gives them; :meth:`import_state` then needs ``frozen_lookup``)."""
        return self.models[name].to_bytes(frozen_apart)

    def frozen_parts(self, name: str) -> dict[str, bytes]:
        """digest -> serialised frozen baseline, of a model's versions (immutable: stored once)."""
        return {d: f.to_bytes() for d, f in self.models[name].frozen_parts().items()}

    def import_state(self, name: str, data: bytes, frozen_lookup=None) -> None:
        """``frozen_lookup(digest) -> bytes``: where a state exported with ``frozen_apart`` finds
        its baselines (a reference-file baseline of the spec is found without it)."""
        spec = spec_for(self.specs, name)
        if spec is None:
            return
        ref = self._refs.get(spec.name)
        cache: dict[str, _Frozen] = {}

        def lookup(digest: str) -> _Frozen:
            if ref is not None and ref.digest == digest:
                return ref  # shared, as in memory
            if digest not in cache:
                raw = frozen_lookup(digest) if frozen_lookup is not None else None
                if raw is None:
                    raise ValueError(f"model {name}: its stored baseline {digest} is missing")
                cache[digest] = _Frozen.from_bytes(raw)
            return cache[digest]

        self.models[name] = ModelMonitor.from_bytes(data, spec, source_topic=self.source_topic,
                                                    feedback_topic=self.feedback_topic,
                                                    reference=ref, frozen_lookup=lookup)
