"""Offline replay of a CSV through the *same* detection core as the workers.

Design: a CSV row is one multivariate sample of ONE entity (every value column a metric of it).
Each row becomes its own window of :class:`stream.detect.engine.Detector`: row ``i`` is ingested
at event time ``i * W`` (``W`` = the spec's window size) and closed right away with
``Detector.advance(i * W + W)``, the way a worker closes a window whose event time has passed.
So the engine standardizes the row against the entity's baseline, scores it with Half-Space Trees
*before* learning it, calibrates, decides and runs the incident lifecycle exactly as it does on
Kafka; nothing here re-implements detection. The row's verdict is read through the engine's
``on_window`` observer.

Strictly online by construction: when row ``i`` is scored the detector has seen rows ``0..i``
only (the next row is not even read yet), so a row's score never depends on later rows.

The row's timestamp is kept for the output and the evaluation but is not the engine's event
time (row index is), so irregular sampling, duplicate or out-of-order timestamps never make a
row "late"; with one row per window the window features reduce to the row's values, so offline
specs use ``features: [mean]``.

Per row the replay gives ``anomaly_score`` (the Half-Space Trees score in [0, 1], higher = more
anomalous; 0 during warm-up) and ``alert``: true while the entity's incident is open, i.e. from
the window that fires an ``anomaly`` alert up to (excluding) the one that resolves it — the rows
on which the service's alert is firing.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from stream.detect.spec import DetectorSpec, ThresholdPolicy

LABEL_COLUMNS = ("anomaly", "changepoint")

#: The built-in offline spec: one row per window, the row's values as the only features, all
#: columns one entity; the worker's model, and a decision re-tuned for one-row windows (on SKAB,
#: the same for every file): the worker's grade >= 0.99 among 200 recent scores barely ever
#: holds for single noisy rows, so the grade only needs the upper half (0.5) and the distance
#: from baseline decides (chi-square tail <= 1e-3); an incident resolves after 10 rows close to
#: baseline; the baseline is nearly frozen after warm-up (half-life 10000 rows) and ADWIN drift
#: is off (a re-learned baseline would hide the rest of an episode). ``specs/offline/skab.yaml``
#: adds SKAB's channel selection.
DEFAULT_OFFLINE_SPEC = DetectorSpec(
    name="offline", window=1.0, features=("mean",), group_by=(), drift=False,
    threshold=ThresholdPolicy(grade=0.5, score_floor=0.0, distance_p=1e-3),
    resolve_after=10, cooldown_windows=0, baseline_halflife=10000.0)


class CsvRowError(ValueError):
    """A CSV row that does not parse; the message names the file and line."""

    def __init__(self, path: str, line: int, msg: str):
        super().__init__(f"{path}:{line}: {msg}")
        self.path, self.line = path, line


def load_spec(path: str | None, warmup_rows: int | None = None) -> DetectorSpec:
    """The offline spec from a YAML file (one detector spec), else :data:`DEFAULT_OFFLINE_SPEC`.

    The spec is made offline-ready: all columns form one entity (``group_by: []`` unless it names
    labels), and ``warmup_rows`` (when given) becomes its ``warmup_windows``.
    """
    if path:
        import yaml

        from stream.detect.spec import SpecError

        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise SpecError(f"{path}: cannot read spec: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
        spec = DetectorSpec.from_dict(data, source=str(path))
    else:
        spec = DEFAULT_OFFLINE_SPEC
    if spec.group_by is None:
        spec = dataclasses.replace(spec, group_by=())
    if warmup_rows is not None:
        spec = dataclasses.replace(spec, warmup_windows=int(warmup_rows))
    return spec


# ------------------------------------------------------------------------------------- reading
def detect_separator(header: str) -> str:
    """The most frequent of ``; , \\t |`` in the header line (``,`` when none)."""
    counts = {c: header.count(c) for c in (";", ",", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def parse_time(text: str) -> float:
    """Epoch seconds, or an ISO date/time (naive = UTC), to epoch seconds; ValueError otherwise."""
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        d = datetime.fromisoformat(t.replace("Z", "+00:00"))
        if d.tzinfo is None:
            d = d.replace(tzinfo=timezone.utc)
        return d.timestamp()
    if not math.isfinite(v):
        raise ValueError(f"not a finite time: {text!r}")
    return v


@dataclasses.dataclass
class CsvTable:
    """The layout of a CSV: separator, header, the timestamp column and the value columns."""

    path: str
    sep: str
    header: list[str]
    ts_col: int
    value_cols: list[int]
    label_cols: dict[str, int]

    @property
    def value_names(self) -> list[str]:
        return [self.header[i] for i in self.value_cols]


def open_table(path: str, *, sep: str | None = None, timestamp_col: str | None = None,
               value_cols: list[str] | None = None, exclude: tuple[str, ...] = LABEL_COLUMNS) -> CsvTable:
    """Read the header (and first data row, to find the numeric columns) of a CSV.

    Defaults: the separator is detected, the first column is the timestamp, every other column
    whose first non-empty value is numeric is a metric, except the ``exclude`` (label) columns.
    """
    with open(path, newline="") as fh:
        first = fh.readline()
        if not first.strip():
            raise CsvRowError(path, 1, "empty file or missing header row")
        sep = sep or detect_separator(first)
        header = next(csv.reader([first.rstrip("\r\n")], delimiter=sep))
        sample: dict[int, str] = {}
        for row in csv.reader(fh, delimiter=sep):
            for i, v in enumerate(row):
                if i not in sample and v.strip() != "":
                    sample[i] = v
            if len(sample) >= len(header):
                break
    names = [h.strip() for h in header]
    if timestamp_col is None:
        ts = 0
    elif timestamp_col in names:
        ts = names.index(timestamp_col)
    else:
        raise CsvRowError(path, 1, f"no timestamp column {timestamp_col!r} (columns: {', '.join(names)})")
    labels = {n: i for i, n in enumerate(names) if n in exclude and i != ts}
    if value_cols:
        missing = [c for c in value_cols if c not in names]
        if missing:
            raise CsvRowError(path, 1, f"no column(s) {', '.join(map(repr, missing))} (columns: {', '.join(names)})")
        vals = [names.index(c) for c in value_cols]
    else:
        vals = []
        for i, n in enumerate(names):
            if i == ts or n in labels:
                continue
            try:
                float(sample.get(i, ""))
            except ValueError:
                continue
            vals.append(i)
        if not vals:
            raise CsvRowError(path, 2, "no numeric value column found (use --value-cols)")
    return CsvTable(path, sep, names, ts, vals, labels)


def iter_rows(table: CsvTable) -> Iterator[tuple[int, list[str], float, dict[str, float]]]:
    """(line number, raw fields, timestamp, {metric: value}) per data row.

    An empty value cell is a missing value (the metric is absent from that row); a row with the
    wrong number of fields, an unparseable timestamp, or a non-numeric / non-finite value raises
    :class:`CsvRowError` naming the line (1 = the header).
    """
    names = table.header
    n = len(names)
    with open(table.path, newline="") as fh:
        reader = csv.reader(fh, delimiter=table.sep)
        next(reader, None)
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != n:
                raise CsvRowError(table.path, line, f"expected {n} fields separated by {table.sep!r}, got {len(row)}")
            try:
                ts = parse_time(row[table.ts_col])
            except ValueError:
                raise CsvRowError(table.path, line, f"column {names[table.ts_col]!r}: not a timestamp "
                                  f"(ISO date/time or epoch seconds): {row[table.ts_col]!r}") from None
            values: dict[str, float] = {}
            for i in table.value_cols:
                cell = row[i].strip()
                if cell == "":
                    continue
                try:
                    v = float(cell)
                except ValueError:
                    raise CsvRowError(table.path, line, f"column {names[i]!r}: not a number: {row[i]!r}") from None
                if not math.isfinite(v):
                    raise CsvRowError(table.path, line, f"column {names[i]!r}: not a finite number: {row[i]!r}")
                values[names[i]] = v
            yield line, row, ts, values


# ------------------------------------------------------------------------------------- scoring
class OfflineScorer:
    """Feeds rows one at a time through a :class:`~stream.detect.engine.Detector` (one row = one window).

    >>> import dataclasses
    >>> sc = OfflineScorer(dataclasses.replace(DEFAULT_OFFLINE_SPEC, warmup_windows=20))
    >>> import random; rng = random.Random(3)
    >>> out = [sc.step({"a": rng.gauss(0, 1), "b": rng.gauss(5, 1)}) for _ in range(300)]
    >>> out += [sc.step({"a": 40.0, "b": 5.0})]
    >>> out[-1]["alert"], out[-1]["score"] > 0.5, any(o["alert"] for o in out[:300])
    (True, True, False)
    """

    def __init__(self, spec: DetectorSpec):
        from stream.detect.engine import Detector

        self.spec = spec
        self.det = Detector(spec, source_topic="offline")
        self.det.on_window = self._observe
        self.rows = 0
        self.alerts: list[dict] = []
        self._verdict: dict | None = None
        self._firing = False

    def _observe(self, window, verdict: dict) -> None:
        self._verdict = verdict

    def step(self, values: dict[str, float]) -> dict:
        """Score one row, then learn it; returns ``{"score", "alert", "verdict"}``.

        A row without any value keeps the previous alert state and scores 0 (no window opened).
        """
        w = self.spec.window
        t = self.rows * w
        self.rows += 1
        self._verdict = None
        for metric, v in values.items():
            self.alerts.extend(self.det.ingest(metric, {}, t, v))
        self.alerts.extend(self.det.advance(t + w))
        v = self._verdict
        if v is None:
            return {"score": 0.0, "alert": self._firing, "verdict": None}
        self._firing = bool(v["firing"])
        return {"score": float(v["score"]), "alert": self._firing, "verdict": v}


def replay(table: CsvTable, spec: DetectorSpec, progress=None) -> dict:
    """Score every row of a table; returns columns (line, ts, score, alert, labels...)."""
    sc = OfflineScorer(spec)
    out: dict[str, list] = {"line": [], "ts": [], "score": [], "alert": [], "values": []}
    for name in table.label_cols:
        out[name] = []
    for line, row, ts, values in iter_rows(table):
        r = sc.step(values)
        out["line"].append(line)
        out["ts"].append(ts)
        out["score"].append(r["score"])
        out["alert"].append(r["alert"])
        out["values"].append([values.get(n, math.nan) for n in table.value_names])
        for name, i in table.label_cols.items():
            cell = row[i].strip()
            try:
                out[name].append(int(float(cell)) if cell else 0)
            except ValueError:
                raise CsvRowError(table.path, line, f"label column {name!r}: not 0/1: {row[i]!r}") from None
        if progress is not None:
            progress.update()
    out["alerts"] = sc.alerts
    return out


def count_rows(path: str) -> int:
    """Data rows of a file (lines minus the header), for progress bars."""
    with open(path, "rb") as fh:
        return max(0, sum(1 for _ in fh) - 1)
