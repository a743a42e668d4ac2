"""Alert events → Prometheus Alertmanager (API v2), for ``stream alertmanager-bridge``.

:func:`to_alertmanager` maps one alert event of the alerts topic to one Alertmanager alert:

* **labels** (identify the alert in Alertmanager; equal for an incident's firing and resolved
  events): ``alertname`` = kind, ``detector``, ``severity``, ``series`` = series id,
  ``incident`` = incident id (the alert_id of the firing event), and the entity's labels
  (``__name__`` becomes ``metric``; names made valid; a name taken by the ones above gets a
  ``label_`` prefix);
* **annotations**: ``summary``, ``attribution`` (top features), ``alert_id``, ``status``,
  ``window``, ``score``/``grade`` when present, ``source``;
* **times**: ``startsAt`` = the event's ``created_at``; a firing alert ends ``firing_ttl`` after
  it (the service sends no heartbeat; a resolved event ends it earlier, and an incident still
  open after ``firing_ttl`` drops out of Alertmanager: choose the TTL longer than incidents last);
  a resolved one ``endsAt`` = now. Old history replayed by a new bridge group arrives with its
  ``endsAt`` in the past, so Alertmanager keeps it as ended instead of firing it again.

:class:`AlertmanagerClient` posts batches to ``/api/v2/alerts``, retrying with exponential
backoff while Alertmanager is unreachable or answers 5xx, so nothing is lost: the bridge commits
its offsets only after a batch was delivered.
"""
from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import time
import urllib.error
import urllib.request
from typing import Any, Callable

_RESERVED = {"alertname", "detector", "severity", "series", "incident"}
_BAD = re.compile(r"[^a-zA-Z0-9_]")


def bridge_metrics(registry) -> dict[str, Any]:
    """The bridge's counters (served with ``--metrics-port``)."""
    from prometheus_client import Counter

    return {
        "delivered": Counter("stream_alertmanager_bridge_alerts_delivered", "Alerts accepted by Alertmanager",
                             registry=registry),
        "failures": Counter("stream_alertmanager_bridge_delivery_failures",
                            "Failed delivery attempts (Alertmanager unreachable or 5xx; retried)", registry=registry),
        "rejected": Counter("stream_alertmanager_bridge_alerts_rejected",
                            "Alerts Alertmanager rejected as invalid (4xx; skipped)", registry=registry),
    }


class Rejected(Exception):
    """Alertmanager answered 4xx: the alert itself is invalid, retrying cannot help."""


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def label_name(name: str) -> str:
    n = _BAD.sub("_", name) or "_"
    return "_" + n if n[0].isdigit() else n


def _top_attribution(a: dict, n: int = 3) -> str:
    parts = []
    for t in (a.get("attribution") or [])[:n]:
        s = f"{t.get('feature', '?')} {t.get('direction', '')}"
        base = (t.get("baseline") or {}).get("mean")
        if isinstance(t.get("value"), (int, float)) and isinstance(base, (int, float)):
            s += f" ({t['value']:.4g} vs baseline {base:.4g})"
        if isinstance(t.get("share"), (int, float)):
            s += f" share {t['share']:.2f}"
        parts.append(s)
    return "; ".join(parts)


def to_alertmanager(a: dict, *, now: float | None = None, firing_ttl: float = 86400.0) -> dict[str, Any]:
    now = time.time() if now is None else now
    series = a.get("series") or {}
    labels: dict[str, str] = {}
    for k, v in sorted((series.get("labels") or {}).items()):
        name = "metric" if k == "__name__" else label_name(str(k))
        if name in _RESERVED:
            name = "label_" + name
        labels[name] = str(v)
    labels.update({
        "alertname": str(a.get("kind", "unknown")),
        "detector": str(a.get("detector", "")),
        "severity": str(a.get("severity", "")),
        "series": str(series.get("id", "")),
        "incident": str(a.get("incident_id") or a.get("alert_id", "")),
    })
    kind, sid = a.get("kind", "alert"), series.get("id", "?")
    summary = f"{kind} on {sid}"
    if isinstance(a.get("score"), (int, float)) and a.get("kind") == "anomaly":
        summary += f": score {a['score']:.3f}"
        if isinstance(a.get("grade"), (int, float)):
            summary += f", grade {a['grade']:.2f}"
    changes = (a.get("drift") or {}).get("changes") or []
    if changes:
        summary += ": " + ", ".join(
            f"{c.get('metric', c.get('feature', '?'))} {c.get('before_mean', float('nan')):.4g}"
            f"→{c.get('after_mean', float('nan')):.4g}" for c in changes[:3] if isinstance(c, dict))
    win = a.get("window") or {}
    annotations = {"summary": summary, "alert_id": str(a.get("alert_id", "")), "status": str(a.get("status", ""))}
    top = _top_attribution(a)
    if top:
        annotations["attribution"] = top
    if isinstance(win.get("start"), (int, float)) and isinstance(win.get("end"), (int, float)):
        annotations["window"] = f"{_iso(win['start'])} .. {_iso(win['end'])}"
    for k in ("score", "grade"):
        if isinstance(a.get(k), (int, float)):
            annotations[k] = f"{a[k]:.6g}"
    src = a.get("source") or {}
    if src.get("topic"):
        annotations["source"] = f"{src['topic']}/{src.get('partition')} offsets {src.get('first_offset')}..{src.get('last_offset')}"
    created = a.get("created_at") if isinstance(a.get("created_at"), (int, float)) else now
    starts = min(created, now)
    # a firing event ends firing_ttl after it started: replayed history (a new bridge group reads
    # the topic from the beginning) whose TTL has passed arrives already ended and fires nothing
    ends = now if a.get("status") == "resolved" else starts + firing_ttl
    return {"labels": labels, "annotations": annotations, "startsAt": _iso(starts), "endsAt": _iso(ends)}


class AlertmanagerClient:
    """POST /api/v2/alerts with retries; ``sleep`` and ``stop`` make waiting interruptible."""

    def __init__(self, url: str, *, timeout: float = 10.0, backoff: float = 0.5, max_backoff: float = 30.0,
                 log: Callable[[str], None] = print, stop: Callable[[], bool] = lambda: False,
                 sleep: Callable[[float], None] = time.sleep, metrics: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.timeout, self.backoff, self.max_backoff = timeout, backoff, max_backoff
        self.log, self.stop, self.sleep = log, stop, sleep
        self.delivered = 0
        self.retries = 0
        self.metrics = metrics or {}

    def _count(self, name: str, n: int = 1) -> None:
        if name in self.metrics:
            self.metrics[name].inc(n)

    def post(self, alerts: list[dict]) -> None:
        """One attempt. Raises OSError (unreachable / 5xx) or Rejected (4xx)."""
        req = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                r.read()
        except http.client.HTTPException as exc:  # not HTTP at all (a wrong port): retried like unreachable
            raise OSError(f"not an HTTP answer ({type(exc).__name__}: {exc}); is this Alertmanager's port?") from None
        except urllib.error.HTTPError as exc:
            body = exc.read()[:500].decode(errors="replace")
            if 400 <= exc.code < 500:
                raise Rejected(f"HTTP {exc.code}: {body}") from None
            raise OSError(f"HTTP {exc.code}: {body}") from None

    def deliver(self, alerts: list[dict]) -> bool:
        """Deliver the batch, retrying until done; False only when stopped before delivery.

        A batch Alertmanager rejects (4xx) is retried alert by alert; an alert rejected on its own
        is reported and skipped (retrying an invalid alert would block every later one).
        """
        if not alerts:
            return True
        delay, failing = self.backoff, False
        while True:
            try:
                self.post(alerts)
                if failing:
                    self.log(f"Alertmanager at {self.url} reachable again; delivered {len(alerts)} alert(s)")
                self.delivered += len(alerts)
                self._count("delivered", len(alerts))
                return True
            except Rejected as exc:
                if len(alerts) > 1:
                    return all(self.deliver([one]) for one in alerts)
                self.log(f"Alertmanager at {self.url} rejected alert "
                         f"{alerts[0].get('annotations', {}).get('alert_id', '?')}: {exc}; skipped")
                self._count("rejected")
                return True
            except OSError as exc:  # URLError, connection refused, timeouts, 5xx
                reason = getattr(exc, "reason", exc)
                if not failing:
                    self.log(f"cannot deliver to Alertmanager at {self.url} (--alertmanager-url; is it running "
                             f"and reachable?): {reason}; retrying with backoff up to {self.max_backoff:g} s")
                failing = True
                self.retries += 1
                self._count("failures")
            if self.stop():
                return False
            self.sleep(delay)
            if self.stop():
                return False
            delay = min(delay * 2, self.max_backoff)
