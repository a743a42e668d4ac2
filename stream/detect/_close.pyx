# cython: language_level=3
"""The window close of :class:`stream.detect.engine.Detector`, compiled, and the entity record it
works on.

:meth:`WindowClose.close` scores, decides and learns one closed window of one entity: the rule of
``Detector._on_window_py`` (its Python reference, which ``tests/unit/test_window_close.py`` holds
it to, alert for alert and state byte for byte). A window close ran ≈ 7 us, half of it in the
kernels it calls (features, standardize, HST score and learn, ADWIN) and half in the Python
around them: attribute and dict traffic on the entity, threshold lookups, the expected-count
update. Cythonizing the engine's module as it was gained nothing (Python 3.11's specializing
interpreter already runs untyped glue about as fast): the gain needs the entity's scalars typed,
so :class:`Entity` is a cdef class and this pass reads them as C values. What only an alert, an
imputation, a drift decision or a long gap needs stays in the engine's Python (``_impute``,
``_drift_alert``, ``_lifecycle_alert``, ``_window_gaps``): those are rare. A warm 5-metric
window now takes ≈ 3.9 us, ≈ 3.3 of them in the kernels.

The spec is frozen, so its constants are read once, when the detector is built; so are the
engine's helpers it calls (``make_model``, ``step_means``, ``ADWIN``...): a test that swaps one
does it before building the detector. The close holds its detector by a weak reference (the
detector holds the close).
"""

from libc.math cimport INFINITY, nearbyint
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.ref cimport PyObject

from stream.detect._standardize cimport Baseline
from stream.detect._window cimport Summary

import weakref
from array import array

from stream.detect._standardize import count_below
from stream.detect._hst import HSTCore


cdef class Entity:
    """One entity's detection state (what ``Detector`` keeps per entity; serialized by its
    ``export_parts``). A cdef class so that the window close reads its scalars as C values."""

    cdef public object id, labels, model, scores, incident, gap, watch
    cdef public long lane, n_normal, n_windows, normal_streak, saved_windows, wslot
    cdef public Baseline base
    cdef public dict expected, adwins, cursor, mlast, mwin
    cdef public double cooldown_until, last_end, last_seen, zpeak
    cdef public bint gap_flagged

    def __init__(self, eid, labels, long lane, score_type="d"):
        self.id = eid
        self.labels = labels
        self.lane = lane
        self.base = Baseline()  # per-feature EWMA mean / variance (C arrays)
        self.n_normal = 0
        self.n_windows = 0
        self.model = None
        self.scores = array(score_type)  # recent scores (4 or 8 bytes each: score_typecode)
        self.expected = {}
        self.incident = None
        self.normal_streak = 0
        self.cooldown_until = -INFINITY
        self.adwins = {}
        self.last_end = -INFINITY
        self.gap_flagged = False
        self.last_seen = -INFINITY
        self.cursor = {}  # source partition -> highest source offset folded in
        # metric -> latest event time of a sample (ingest time); its keys are the entity's metrics
        self.mlast = {}
        self.mwin = {}  # metric -> end of the last closed window that had it
        self.gap = None  # the open missing_data incident
        self.watch = None  # deadline of its entry in the lane's silence heap
        self.zpeak = 0.0  # decaying peak of the largest |z| over recent normal windows
        # n_windows when the window-close part of the state was last exported (export_parts):
        # that part changes only when a window closes, i.e. when n_windows moves
        self.saved_windows = -1
        self.wslot = 1  # the slot (0 or 1) its window part was last exported to (the first goes to 0)

    @property
    def mean(self):
        """The baseline means, ``{"metric:feature": mean}`` (a copy, in baseline order)."""
        return self.base.mean_dict()

    @property
    def var(self):
        """The baseline variances, ``{"metric:feature": variance}`` (a copy, in baseline order)."""
        return self.base.var_dict()


cdef class WindowClose:
    """``close(entity, window) -> alerts`` for one detector (its constants read once).

    A detector builds its own and calls it for every closed window (``Detector._emit``):

    >>> from stream.detect.engine import Detector
    >>> from stream.detect.spec import DetectorSpec
    >>> det = Detector(DetectorSpec(window=60, warmup_windows=5))
    >>> for i in range(10 * 60):  # ten minutes of one series, one sample a second
    ...     _ = det.ingest("cpu", {"host": "a"}, float(i), 1.0 + (i % 7) * 0.1)
    >>> type(det._wc).__name__, det._close_window == det._wc.close
    ('WindowClose', True)
    >>> ent = next(iter(det.entities.values()))
    >>> type(ent).__name__, ent.n_windows, ent.n_normal, ent.incident
    ('Entity', 9, 9, None)
    """

    cdef object det_ref, make_model, model_params, step_means, adwin, adwin_step, chi2, zcrit
    cdef tuple feats, presence
    cdef dict fkeys, chi2_cache, resolve_cache, zcrit_cache
    cdef double size, alpha, zdecay, grade, score_floor, distance_p, feature_p, peak_ratio
    cdef double cooldown_span, inv_scale, resolve_p, drift_delta
    cdef long warmup, history, resolve_after, missing_after, zpeak_after, settle
    cdef bint drift, has_mean

    def __init__(self, det, *, presence, double inv_scale, double resolve_p, make_model, chi2, zcrit,
                 step_means, adwin, adwin_step):
        spec = det.spec
        thr = spec.threshold
        self.det_ref = weakref.ref(det)  # (the detector holds this object: no cycle)
        self.feats = det._feats
        self.fkeys = det._fkeys  # (the detector's cache, shared: filled as metrics appear)
        self.presence = presence
        self.inv_scale = inv_scale
        self.resolve_p = resolve_p
        self.make_model = make_model
        self.model_params = spec.model
        self.chi2 = chi2
        self.zcrit = zcrit
        self.step_means = step_means
        self.adwin = adwin
        self.adwin_step = adwin_step
        self.chi2_cache = {}
        self.resolve_cache = {}
        self.zcrit_cache = {}
        self.size = spec.window
        self.alpha = det.alpha
        self.zdecay = det._zdecay
        self.grade = thr.grade
        self.score_floor = thr.score_floor
        self.distance_p = thr.distance_p
        self.feature_p = thr.feature_p
        self.peak_ratio = thr.feature_peak_ratio
        self.history = thr.history
        self.warmup = spec.warmup_windows
        self.settle = det._settle
        self.resolve_after = spec.resolve_after
        self.cooldown_span = spec.cooldown_windows * spec.window
        self.missing_after = spec.missing_after_windows
        self.zpeak_after = max(2, spec.warmup_windows // 2)
        self.drift = bool(spec.drift)
        self.has_mean = det._has_mean
        self.drift_delta = spec.drift_delta

    cdef double _chi2(self, dict cache, double p, long dof) except? -1.0:
        cdef PyObject* v = PyDict_GetItem(cache, dof)
        if v is NULL:
            t = float(self.chi2(p, dof))
            PyDict_SetItem(cache, dof, t)
            return t
        return <object> v

    cdef double _zcrit(self, long n) except? -1.0:
        cdef PyObject* v = PyDict_GetItem(self.zcrit_cache, n)
        if v is NULL:
            t = float(self.zcrit(self.feature_p, n))
            PyDict_SetItem(self.zcrit_cache, n, t)
            return t
        return <object> v

    def close(self, Entity ent, w):
        """Score, decide and learn the closed window ``w`` of ``ent``; returns its alerts."""
        cdef list out = []
        cdef dict summary = w.summary
        cdef dict expected = ent.expected
        cdef Baseline base = ent.base
        cdef double start = w.start, end = w.end, g, score, grade, d2, zmax, z_crit, z_thr, zpeak, a, d, cnt, e
        cdef long gap = 0, n_z, dof, nsc
        cdef bint has_imp, warm, multi, single, anomalous
        cdef PyObject* ep
        det = self.det_ref()
        if ent.last_end > -INFINITY:
            # int(round(x)) of Python: round half to even, as nearbyint in the default rounding mode
            g = nearbyint((start - ent.last_end) / self.size)
            if g > 0:
                gap = <long> g
        ent.last_end = end
        ent.gap_flagged = False
        ent.n_windows += 1
        # the window's feature vector (kept by the baseline; its dict is built only for an alert)
        bad = base.features(summary, expected, self.feats, self.fkeys, False)[1]
        if bad:
            det.invalid_features += bad  # NaN / inf never reach a model: treated as missing, counted
        # imputation: nothing is missing in the common case (no gap, every expected metric here)
        imp = info = None
        has_imp = False
        if gap == 0:
            for m in expected:
                if m not in summary:
                    gap = -1
                    break
        if gap != 0:
            if gap < 0:
                gap = 0
            imp, info = det._impute(ent, w, gap)
            has_imp = len(imp) > 0
            if has_imp:
                det.imputed_features += len(imp)
        # standardize against the entity's baseline (see Detector._on_window_py)
        # (a feature that joined the baseline late is left out until it has its own warm-up)
        x, d2, zmax, zfeat, n_z = base.standardize(self.presence, self.inv_scale, has_imp,
                                                   self.settle if ent.n_normal >= self.warmup else 0)
        if has_imp:
            for k in imp:
                x[k] = 0.5
        warm = ent.n_normal >= self.warmup
        if ent.model is None:
            ent.model = self.make_model(self.model_params)
        model = ent.model
        if warm:
            if has_imp:
                score = float(model.score_one(x))
            else:
                core = model.m
                if isinstance(core, HSTCore):
                    score = core.score_base(base, self.inv_scale)
                else:
                    score = model.score_base(base, self.inv_scale)
        else:
            score = 0.0
        scores = ent.scores
        nsc = len(scores)
        grade = (<double> count_below(scores, score)) / nsc if (warm and nsc) else 0.0
        dof = base.on
        multi = (warm and grade >= self.grade and score >= self.score_floor
                 and d2 >= self._chi2(self.chi2_cache, self.distance_p, dof))
        z_crit = self._zcrit(n_z) if (warm and self.feature_p > 0) else INFINITY
        z_thr = self.peak_ratio * ent.zpeak
        if not z_thr > z_crit:  # max(z_crit, ratio * zpeak), as Python's max picks
            z_thr = z_crit
        single = warm and n_z > 0 and zmax >= z_thr
        anomalous = multi or single
        path = ("multivariate+single_feature" if multi and single else
                "multivariate" if multi else "single_feature" if single else None)
        zpeak = ent.zpeak
        # drift: ADWIN over each metric's window mean; Python only when one detects a change
        drift_alert = None
        if self.drift and not anomalous and warm and self.has_mean:
            hits = self.step_means(ent.adwins, summary, self.adwin, self.drift_delta, self.adwin_step)
            if hits:
                drift_alert = det._drift_alert(ent, w, info if info is not None else {"gap_windows": gap}, hits)
        # lifecycle
        if anomalous:
            ent.normal_streak = 0
            if ent.incident is None and start >= ent.cooldown_until:
                al = det._lifecycle_alert(ent, w, "firing", imp if imp is not None else {}, score, grade, gap,
                                          info if info is not None else {"gap_windows": gap},
                                          path, zmax, zfeat, n_z, z_crit, zpeak, z_thr, d2, dof)
                ent.incident = {"id": al["alert_id"], "start": w.start}
                out.append(al)
        else:
            if d2 < self._chi2(self.resolve_cache, self.resolve_p, dof if dof > 1 else 1):
                ent.normal_streak += 1
            else:
                ent.normal_streak = 0
            if ent.incident is not None and ent.normal_streak >= self.resolve_after:
                al = det._lifecycle_alert(ent, w, "resolved", imp if imp is not None else {}, score, grade, gap,
                                          info if info is not None else {"gap_windows": gap},
                                          path, zmax, zfeat, n_z, z_crit, zpeak, z_thr, d2, dof)
                al["incident_id"] = ent.incident["id"]
                out.append(al)
                ent.incident = None
                ent.cooldown_until = end + self.cooldown_span
        if drift_alert is not None:
            out.append(drift_alert)
        # learn (after scoring: strictly online); first the expected sample count per window
        for metric, s in summary.items():
            if type(s) is Summary:  # (the engine's; a test may hand dicts: s["count"] as it is)
                cnt = (<Summary> s).v[0]
                first = int(cnt)
            else:
                first = s["count"]
                cnt = first
            ep = PyDict_GetItem(expected, metric)
            if ep is NULL:
                PyDict_SetItem(expected, metric, first)
            else:
                e = <object> ep
                PyDict_SetItem(expected, metric, e + 0.05 * (cnt - e))
        if warm:  # (a drift above emptied the history: its length is read again)
            scores.append(score)
            if len(scores) > self.history:
                del scores[0]
        # only normal windows are learned, and never imputed values (Detector._on_window_py)
        if not anomalous and (ent.incident is None or ent.normal_streak > 0 or not warm):
            if not has_imp:
                model = ent.model  # (a drift above replaced it: the new model learns)
                core = model.m
                if isinstance(core, HSTCore):
                    core.learn_base(base, self.inv_scale)
                else:
                    model.learn_base(base, self.inv_scale)
            a = self.alpha if ent.n_normal >= self.warmup else 1.0 / (ent.n_normal + 1)
            base.learn(a, self.settle if ent.n_normal >= self.warmup else 0)
            ent.n_normal += 1
            if ent.n_normal > self.zpeak_after:  # the baseline's std means something by now
                d = ent.zpeak * self.zdecay
                ent.zpeak = zmax if zmax > d else d
        mwin = ent.mwin
        wend = w.end
        for m in summary:  # an entity's windows close in ascending order
            PyDict_SetItem(mwin, m, wend)
        # long gaps of single metrics while the entity still reports
        if self.missing_after > 0 and len(summary) < len(ent.mlast):
            out += det._window_gaps(ent, w)
        obs = det.on_window
        if obs is not None:
            obs(w, {"score": score, "grade": grade, "distance": d2, "anomalous": anomalous,
                    "firing": ent.incident is not None, "warm": warm, "max_z": zmax,
                    "path": path, "imputed": info.get("imputed", []) if info is not None else []})
        return out
