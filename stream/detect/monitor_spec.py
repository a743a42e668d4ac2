"""Model-monitor specs: YAML files with ``kind: model_monitor`` in the specs directory.

They live beside detector specs (``STREAM_SPECS_DIR``; :func:`stream.detect.spec.load_specs`
skips them). A model is monitored by the first spec, in file-name order, that selects it;
with no monitor spec, :data:`DEFAULT_MONITOR` monitors every model. Errors name the file and
the field.

>>> s = MonitorSpec.from_dict({"kind": "model_monitor", "models": {"names": ["churn"], "regex": "fraud-.*"}},
...                           source="m.yaml")
>>> s.selects("churn"), s.selects("fraud-eu"), s.selects("other")
(True, True, False)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEVERITIES = ("info", "warning", "critical")
TASKS = ("auto", "classification", "regression")


class MonitorSpecError(ValueError):
    """A monitor spec is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class SchemaPolicy:
    enabled: bool = True
    null_rate_jump: float = 0.2  # missing or null share above the baseline's by this much
    min_share: float = 0.05  # share of a check's events that must show a new field / a type change


@dataclass(frozen=True)
class PerformancePolicy:
    enabled: bool = True
    task: str = "auto"  # auto: strings / integers -> classification, else regression
    delta: float = 0.002  # ADWIN confidence
    min_effect: float = 0.05  # after - before (error rate, or absolute error) needed to alert
    min_samples: int = 100  # joined pairs before ADWIN may alert
    join_ttl_seconds: float = 86400.0  # event time an inference (or early feedback) waits for its partner
    max_pending: int = 100_000  # bound of each side of the join store


@dataclass(frozen=True)
class MonitorSpec:
    name: str = "default-models"
    models: tuple[str, ...] = ()  # exact names
    model_regex: str | None = None  # full match; no names and no regex = every model
    baseline_size: int = 1000  # the first N inferences of each new version
    reference: str | None = None  # a CSV / JSON-lines reference file instead (resolved path)
    reference_prediction: str = "prediction"  # CSV column of the prediction in the reference
    reference_score: str = "score"
    window: int = 500  # count-based sliding window of current inferences
    compare_every: int = 100  # inferences between comparisons
    bins: int = 10
    top_k: int = 20
    psi_warn: float = 0.1
    psi_drift: float = 0.25
    resolve_after: int = 3  # consecutive comparisons below psi_warn / clean checks to resolve
    severity: str = "warning"
    prediction: bool = True  # prediction_drift on the prediction (and score) distribution
    schema: SchemaPolicy = field(default_factory=SchemaPolicy)
    performance: PerformancePolicy = field(default_factory=PerformancePolicy)
    max_versions: int = 8  # versions kept per model (the least recently seen is dropped)
    source: str = "<built-in>"

    def selects(self, model: str) -> bool:
        if not self.models and self.model_regex is None:
            return True
        if model in self.models:
            return True
        if self.model_regex is not None:
            rx = self.__dict__.get("_rx")
            if rx is None:
                rx = re.compile(self.model_regex)
                object.__setattr__(self, "_rx", rx)
            return rx.fullmatch(model) is not None
        return False

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> "MonitorSpec":
        def err(fld: str, msg: str) -> MonitorSpecError:
            return MonitorSpecError(f"{source}: field '{fld}': {msg}")

        if not isinstance(d, dict):
            raise MonitorSpecError(f"{source}: a monitor spec must be a mapping")
        if d.get("kind") != "model_monitor":
            raise err("kind", f"must be 'model_monitor', got {d.get('kind')!r}")
        known = {"kind", "name", "models", "baseline", "window", "compare_every", "thresholds", "severity",
                 "resolve_after", "prediction", "schema", "performance", "max_versions"}
        for k in d:
            if k not in known:
                raise err(k, f"unknown field (known: {', '.join(sorted(known))})")
        kw: dict[str, Any] = {"source": source}
        name = d.get("name", Path(source).stem)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise err("name", f"must be a word of letters, digits, '_', '.', '-', got {name!r}")
        kw["name"] = name
        models = d.get("models")
        if models is not None:
            if isinstance(models, list):
                models = {"names": models}
            if isinstance(models, str):
                models = {"regex": models}
            if not isinstance(models, dict):
                raise err("models", "must be a list of names, a regex string, or {names, regex}")
            for k in models:
                if k not in ("names", "regex"):
                    raise err(f"models.{k}", "unknown field (known: names, regex)")
            names = models.get("names", []) or []
            if not isinstance(names, list) or not all(isinstance(x, str) and x for x in names):
                raise err("models.names", "must be a list of model names")
            kw["models"] = tuple(names)
            if models.get("regex") is not None:
                rx = models["regex"]
                if not isinstance(rx, str) or not rx:
                    raise err("models.regex", "must be a non-empty regular expression")
                try:
                    re.compile(rx)
                except re.error as exc:
                    raise err("models.regex", f"invalid regular expression: {exc}") from None
                kw["model_regex"] = rx
            if not names and "model_regex" not in kw:
                raise err("models", "selects nothing (leave it out to monitor every model)")
        base = d.get("baseline", {}) or {}
        if isinstance(base, int) and not isinstance(base, bool):
            base = {"size": base}
        if not isinstance(base, dict):
            raise err("baseline", "must be a number of inferences or {size, reference, bins, top_k}")
        for k in base:
            if k not in ("size", "reference", "prediction_column", "score_column", "bins", "top_k"):
                raise err(f"baseline.{k}", "unknown field (known: size, reference, prediction_column, score_column, bins, top_k)")
        for k, target, lo in (("size", "baseline_size", 10), ("bins", "bins", 2), ("top_k", "top_k", 1)):
            if k in base:
                kw[target] = _int(base[k], err, f"baseline.{k}", lo)
        if base.get("reference") is not None:
            ref = base["reference"]
            if not isinstance(ref, str) or not ref:
                raise err("baseline.reference", "must be a path to a .csv or .jsonl file")
            p = Path(ref)
            if not p.is_absolute() and source not in ("<dict>", "<built-in>"):
                p = Path(source).resolve().parent / p
            if p.suffix.lower() not in (".csv", ".jsonl", ".json", ".ndjson"):
                raise err("baseline.reference", f"must be a .csv or .jsonl file, got {ref!r}")
            if not p.is_file():
                raise err("baseline.reference", f"file not found: {p}")
            kw["reference"] = str(p)
        for k, target in (("prediction_column", "reference_prediction"), ("score_column", "reference_score")):
            if k in base:
                if not isinstance(base[k], str) or not base[k]:
                    raise err(f"baseline.{k}", "must be a column name")
                kw[target] = base[k]
        win = d.get("window", {})
        if isinstance(win, int) and not isinstance(win, bool):
            win = {"size": win}
        if not isinstance(win, dict):
            raise err("window", "must be a number of inferences or {size, compare_every}")
        for k in win:
            if k not in ("size", "compare_every"):
                raise err(f"window.{k}", "unknown field (known: size, compare_every)")
        if "size" in win:
            kw["window"] = _int(win["size"], err, "window.size", 10)
        if "compare_every" in win:
            kw["compare_every"] = _int(win["compare_every"], err, "window.compare_every", 1)
        if "compare_every" in d:
            kw["compare_every"] = _int(d["compare_every"], err, "compare_every", 1)
        th = d.get("thresholds", {}) or {}
        if not isinstance(th, dict):
            raise err("thresholds", "must be a mapping {psi_warn, psi_drift}")
        for k in th:
            if k not in ("psi_warn", "psi_drift"):
                raise err(f"thresholds.{k}", "unknown field (known: psi_warn, psi_drift)")
        warn = _num(th.get("psi_warn", 0.1), err, "thresholds.psi_warn")
        drift = _num(th.get("psi_drift", 0.25), err, "thresholds.psi_drift")
        if warn <= 0:
            raise err("thresholds.psi_warn", "must be positive")
        if drift < warn:
            raise err("thresholds.psi_drift", f"must be >= psi_warn ({warn})")
        kw["psi_warn"], kw["psi_drift"] = warn, drift
        if "severity" in d:
            if d["severity"] not in SEVERITIES:
                raise err("severity", f"must be one of {', '.join(SEVERITIES)}")
            kw["severity"] = d["severity"]
        if "resolve_after" in d:
            kw["resolve_after"] = _int(d["resolve_after"], err, "resolve_after", 1)
        if "max_versions" in d:
            kw["max_versions"] = _int(d["max_versions"], err, "max_versions", 1)
        if "prediction" in d:
            if not isinstance(d["prediction"], bool):
                raise err("prediction", "must be true or false")
            kw["prediction"] = d["prediction"]
        sc = d.get("schema")
        if sc is not None:
            if isinstance(sc, bool):
                sc = {"enabled": sc}
            if not isinstance(sc, dict):
                raise err("schema", "must be true/false or {enabled, null_rate_jump, min_share}")
            params: dict[str, Any] = {}
            for k, v in sc.items():
                if k == "enabled":
                    if not isinstance(v, bool):
                        raise err("schema.enabled", "must be true or false")
                    params[k] = v
                elif k in ("null_rate_jump", "min_share"):
                    params[k] = _num(v, err, f"schema.{k}")
                    if not 0 < params[k] <= 1:
                        raise err(f"schema.{k}", "must be in (0, 1]")
                else:
                    raise err(f"schema.{k}", "unknown field (known: enabled, null_rate_jump, min_share)")
            kw["schema"] = SchemaPolicy(**params)
        pf = d.get("performance")
        if pf is not None:
            if isinstance(pf, bool):
                pf = {"enabled": pf}
            if not isinstance(pf, dict):
                raise err("performance", "must be true/false or a mapping")
            params = {}
            for k, v in pf.items():
                if k == "enabled":
                    if not isinstance(v, bool):
                        raise err("performance.enabled", "must be true or false")
                    params[k] = v
                elif k == "task":
                    if v not in TASKS:
                        raise err("performance.task", f"must be one of {', '.join(TASKS)}")
                    params[k] = v
                elif k == "delta":
                    params[k] = _num(v, err, "performance.delta")
                    if not 0 < params[k] < 1:
                        raise err("performance.delta", "must be in (0, 1)")
                elif k in ("min_effect", "join_ttl_seconds"):
                    params[k] = _num(v, err, f"performance.{k}")
                    if params[k] < 0:
                        raise err(f"performance.{k}", "must be >= 0")
                elif k in ("min_samples", "max_pending"):
                    params[k] = _int(v, err, f"performance.{k}", 1)
                else:
                    raise err(f"performance.{k}", "unknown field (known: enabled, task, delta, min_effect, "
                                                  "min_samples, join_ttl_seconds, max_pending)")
            kw["performance"] = PerformancePolicy(**params)
        return cls(**kw)


def _num(v: Any, err, fld: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise err(fld, f"must be a number, got {v!r}")
    return float(v)


def _int(v: Any, err, fld: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise err(fld, f"must be an integer >= {lo}, got {v!r}")
    return v


DEFAULT_MONITOR = MonitorSpec()


def load_monitor_specs(directory: str | Path | None) -> list[MonitorSpec]:
    """Every ``kind: model_monitor`` spec in ``directory``; the default monitor when there is none."""
    import yaml

    specs: list[MonitorSpec] = []
    if directory:
        path = Path(directory)
        if not path.is_dir():
            raise MonitorSpecError(f"{directory}: specs directory not found (STREAM_SPECS_DIR)")
        for f in sorted(path.glob("*.y*ml")):
            try:
                data = yaml.safe_load(f.read_text())
            except yaml.YAMLError as exc:
                raise MonitorSpecError(f"{f}: not valid YAML: {exc}") from None
            if isinstance(data, dict) and data.get("kind") == "model_monitor":
                specs.append(MonitorSpec.from_dict(data, source=str(f)))
        names = [s.name for s in specs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise MonitorSpecError(f"{directory}: duplicate monitor name(s): {', '.join(sorted(dup))}")
    return specs or [DEFAULT_MONITOR]


def spec_for(specs: list[MonitorSpec], model: str) -> MonitorSpec | None:
    """The first spec that selects ``model`` (None: the model is not monitored)."""
    for s in specs:
        if s.selects(model):
            return s
    return None
