"""Detector specs: the unit users write.

A spec selects metrics (names and label matchers), groups them into entities (``group_by``:
all selected metrics of one entity form one vector per window), and says how windows,
features, the model, the threshold and the alert lifecycle behave. Specs are YAML files in a
directory (``STREAM_SPECS_DIR``); with none, :data:`DEFAULT_SPEC` watches every series.

>>> spec = DetectorSpec.from_dict({"name": "api", "selector": {"metrics": ["http_latency"]},
...                                "group_by": ["host"]}, source="api.yaml")
>>> spec.entity_of("http_latency", {"host": "a", "route": "/x"})
('api/host=a', {'host': 'a'})
>>> spec.entity_of("cpu", {"host": "a"}) is None
True
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FEATURES = ("mean", "std", "min", "max", "median", "iqr", "delta", "slope", "count", "availability")
DEFAULT_FEATURES = FEATURES
SEVERITIES = ("info", "warning", "critical")


class SpecError(ValueError):
    """A spec is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class ModelParams:
    n_trees: int = 10
    height: int = 8
    window_size: int = 50
    seed: int = 42


@dataclass(frozen=True)
class ThresholdPolicy:
    grade: float = 0.99  # fire when the score's tail probability among recent scores >= grade
    score_floor: float = 0.55  # ... and the raw HST score is at least this
    distance_p: float = 1e-8  # ... and sum(z^2) of the window is this improbable under chi-square(d)
    history: int = 200  # recent scores kept per entity for calibration
    # single-feature path: a window is also anomalous when its largest |z| (observed, non-degenerate
    # features; count/availability excluded) is improbable at feature_p for a Gaussian after a
    # Bonferroni correction for the number of features, and at least feature_peak_ratio times the
    # entity's recent peak |z| (a guard for heavy-tailed features); feature_p: 0 turns it off
    feature_p: float = 1e-8
    feature_peak_ratio: float = 2.5


@dataclass(frozen=True)
class DetectorSpec:
    name: str = "default"
    metrics: tuple[str, ...] = ()  # empty: every metric
    label_matchers: tuple[tuple[str, str], ...] = ()  # (label, regex); fullmatch
    group_by: tuple[str, ...] | None = None  # None: every series is its own entity
    window: float = 60.0
    allowed_lateness: float = 0.0
    features: tuple[str, ...] = DEFAULT_FEATURES
    model: ModelParams = field(default_factory=ModelParams)
    warmup_windows: int = 30
    threshold: ThresholdPolicy = field(default_factory=ThresholdPolicy)
    severity: str = "warning"
    cooldown_windows: int = 5
    resolve_after: int = 3
    drift: bool = True
    drift_delta: float = 0.002
    drift_min_effect: float = 1.0  # |after - before| in units of the metric's sample noise
    baseline_halflife: float = 30.0  # windows; EWMA of the entity's normal feature values
    impute_max_windows: int = 2  # gaps up to this many windows are imputed with the baseline (never learned)
    missing_after_windows: int = 5  # silent for more windows than this: a missing_data incident (0: off)
    source: str = "<built-in>"

    # ------------------------------------------------------------------------------
    def entity_of(self, metric: str, labels: dict[str, str]) -> tuple[str, dict[str, str]] | None:
        """(entity id, entity labels) for a sample this spec selects, else None."""
        if self.metrics and metric not in self.metrics:
            return None
        for label, rx in self._compiled:
            if not rx.fullmatch(labels.get(label, "")):
                return None
        if self.group_by is None:
            ent = dict(labels)
            ent["__name__"] = metric
            key = metric + ("{" + ",".join(f"{k}={labels[k]}" for k in sorted(labels)) + "}" if labels else "")
            return f"{self.name}/{key}", ent
        ent = {k: labels.get(k, "") for k in self.group_by}
        return f"{self.name}/" + ",".join(f"{k}={ent[k]}" for k in self.group_by), ent

    @property
    def _compiled(self) -> list[tuple[str, re.Pattern]]:
        cache = self.__dict__.get("_rx")
        if cache is None:
            cache = [(k, re.compile(v)) for k, v in self.label_matchers]
            object.__setattr__(self, "_rx", cache)
        return cache

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> "DetectorSpec":
        def err(fld: str, msg: str) -> SpecError:
            return SpecError(f"{source}: field '{fld}': {msg}")

        if not isinstance(d, dict):
            raise SpecError(f"{source}: a spec must be a mapping")
        known = {"name", "selector", "group_by", "window", "features", "model", "warmup_windows", "threshold",
                 "severity", "cooldown_windows", "resolve_after", "drift", "baseline_halflife", "impute_max_windows",
                 "missing_after_windows"}
        for k in d:
            if k not in known:
                raise err(k, f"unknown field (known: {', '.join(sorted(known))})")
        kw: dict[str, Any] = {"source": source}
        name = d.get("name", Path(source).stem)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise err("name", f"must be a word of letters, digits, '_', '.', '-', got {name!r}")
        kw["name"] = name
        sel = d.get("selector", {}) or {}
        if not isinstance(sel, dict):
            raise err("selector", "must be a mapping with 'metrics' and/or 'labels'")
        for k in sel:
            if k not in ("metrics", "labels"):
                raise err(f"selector.{k}", "unknown field (known: metrics, labels)")
        if "metrics" in sel:
            m = sel["metrics"]
            if not isinstance(m, list) or not all(isinstance(x, str) and x for x in m):
                raise err("selector.metrics", "must be a list of metric names")
            if not m:
                raise err("selector.metrics", "an empty list matches nothing (leave it out to select every metric)")
            kw["metrics"] = tuple(m)
        labels = sel.get("labels", {}) or {}
        if not isinstance(labels, dict):
            raise err("selector.labels", "must map label names to regular expressions")
        matchers = []
        for k, v in labels.items():
            try:
                rx = re.compile(str(v))
            except re.error as exc:
                raise err(f"selector.labels.{k}", f"invalid regular expression: {exc}") from None
            if rx.pattern == "" or rx.pattern.startswith("(?!)"):
                raise err(f"selector.labels.{k}", "matches nothing")
            matchers.append((str(k), str(v)))
        kw["label_matchers"] = tuple(matchers)
        if "group_by" in d and d["group_by"] is not None:
            g = d["group_by"]
            if not isinstance(g, list) or not all(isinstance(x, str) for x in g):
                raise err("group_by", "must be a list of label names")
            kw["group_by"] = tuple(g)
        win = d.get("window", {}) or {}
        if isinstance(win, (int, float)):
            win = {"size": win}
        if not isinstance(win, dict):
            raise err("window", "must be a number of seconds or {size, allowed_lateness}")
        size = _num(win.get("size", 60), err, "window.size")
        if size <= 0:
            raise err("window.size", f"must be positive, got {size}")
        late = _num(win.get("allowed_lateness", 0), err, "window.allowed_lateness")
        if late < 0:
            raise err("window.allowed_lateness", f"must be >= 0, got {late}")
        kw["window"], kw["allowed_lateness"] = float(size), float(late)
        if "features" in d:
            f = d["features"]
            if not isinstance(f, list) or not f:
                raise err("features", f"must be a non-empty list of {', '.join(FEATURES)}")
            for x in f:
                if x not in FEATURES:
                    raise err("features", f"unknown feature {x!r} (known: {', '.join(FEATURES)})")
            kw["features"] = tuple(f)
        if "model" in d:
            m = d["model"] or {}
            if not isinstance(m, dict):
                raise err("model", "must be a mapping")
            params = {}
            for k, v in m.items():
                if k not in ModelParams.__dataclass_fields__:
                    raise err(f"model.{k}", "unknown parameter (known: n_trees, height, window_size, seed)")
                if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "seed" else 1):
                    raise err(f"model.{k}", f"must be a positive integer, got {v!r}")
                params[k] = v
            kw["model"] = ModelParams(**params)
        if "threshold" in d:
            t = d["threshold"] or {}
            if not isinstance(t, dict):
                raise err("threshold", "must be a mapping")
            params = {}
            for k, v in t.items():
                if k not in ThresholdPolicy.__dataclass_fields__:
                    raise err(f"threshold.{k}", "unknown field (known: grade, score_floor, distance_p, history, "
                                                    "feature_p, feature_peak_ratio)")
                params[k] = _num(v, err, f"threshold.{k}")
            if not 0 < params.get("grade", 0.5) <= 1:
                raise err("threshold.grade", "must be in (0, 1]")
            if not 0 <= params.get("feature_p", 0.0) < 1:
                raise err("threshold.feature_p", "must be in [0, 1) (0 turns the single-feature path off)")
            if params.get("feature_peak_ratio", 1.0) < 0:
                raise err("threshold.feature_peak_ratio", "must be >= 0")
            if "history" in params:
                params["history"] = int(params["history"])
                if params["history"] < 10:
                    raise err("threshold.history", "must be at least 10")
            kw["threshold"] = ThresholdPolicy(**params)
        for k in ("warmup_windows", "cooldown_windows", "resolve_after", "impute_max_windows", "missing_after_windows"):
            if k in d:
                v = d[k]
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise err(k, f"must be a non-negative integer, got {v!r}")
                kw[k] = v
        if "baseline_halflife" in d:
            kw["baseline_halflife"] = _num(d["baseline_halflife"], err, "baseline_halflife")
            if kw["baseline_halflife"] <= 0:
                raise err("baseline_halflife", "must be positive")
        if "severity" in d:
            if d["severity"] not in SEVERITIES:
                raise err("severity", f"must be one of {', '.join(SEVERITIES)}")
            kw["severity"] = d["severity"]
        if "drift" in d:
            dr = d["drift"]
            if isinstance(dr, bool):
                kw["drift"] = dr
            elif isinstance(dr, dict):
                kw["drift"] = bool(dr.get("enabled", True))
                kw["drift_delta"] = _num(dr.get("delta", 0.002), err, "drift.delta")
                kw["drift_min_effect"] = _num(dr.get("min_effect", 1.0), err, "drift.min_effect")
                if not 0 < kw["drift_delta"] < 1:
                    raise err("drift.delta", "must be in (0, 1)")
            else:
                raise err("drift", "must be true/false or {enabled, delta}")
        return cls(**kw)


def _num(v: Any, err, fld: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise err(fld, f"must be a number, got {v!r}")
    return float(v)


DEFAULT_SPEC = DetectorSpec()


def load_specs(directory: str | Path | None, *, window: float | None = None, lateness: float | None = None) -> list[DetectorSpec]:
    """Every ``*.yaml``/``*.yml`` spec in ``directory``; the default spec when there is none.

    ``window`` / ``lateness`` (from settings) set the default spec's window.
    """
    import yaml

    specs: list[DetectorSpec] = []
    if directory:
        path = Path(directory)
        if not path.is_dir():
            raise SpecError(f"{directory}: specs directory not found (STREAM_SPECS_DIR)")
        for f in sorted(path.glob("*.y*ml")):
            try:
                data = yaml.safe_load(f.read_text())
            except yaml.YAMLError as exc:
                raise SpecError(f"{f}: not valid YAML: {exc}") from None
            if isinstance(data, dict) and data.get("kind") == "model_monitor":
                continue  # model-monitor specs live beside detector specs
            specs.append(DetectorSpec.from_dict(data, source=str(f)))
        names = [s.name for s in specs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SpecError(f"{directory}: duplicate detector name(s): {', '.join(sorted(dup))}")
    if not specs:
        kw = {}
        if window is not None:
            kw["window"] = float(window)
        if lateness is not None:
            kw["allowed_lateness"] = float(lateness)
        specs = [DetectorSpec(**kw)]
    return specs
