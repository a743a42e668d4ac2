"""``stream drift``: compare a current data set with a reference, feature by feature.

Reads two CSV (header row) or JSON-lines files, detects (or takes declared) numeric and
categorical columns, and reports per feature PSI and JS distance on reference-quantile bins,
the two-sample KS test (numeric; equal to ``scipy.stats.ks_2samp``) or the chi-square test
(categorical), a severity from the PSI thresholds and whether the feature drifted. A column
present in only one file is reported as a schema difference.
"""
from __future__ import annotations

import argparse
import math
import sys

NULL_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none"})


class DriftInputError(Exception):
    """A problem with an input file, reported as ``stream drift: error: ...`` (exit 1)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "drift",
        help="compare a current data set with a reference (PSI, JS, KS, chi-square)",
        description=(
            "Compare a current data set with a reference data set, feature by feature. "
            "Files are CSV with a header row or JSON lines (one object per line), detected "
            "by extension (.csv, .jsonl/.ndjson/.json) or content. Numeric columns get PSI "
            "and Jensen-Shannon distance on quantile bins of the reference and a two-sample "
            "Kolmogorov-Smirnov test; categorical columns get PSI on the reference's top "
            "categories plus an 'other' bucket and a chi-square test. Severity comes from "
            "PSI: >= --warn is 'warn', >= --drift is 'drift'. Empty cells, NA, null and "
            "NaN are missing values."
        ),
        epilog="Exit status: 0 when the comparison ran (whatever it found), 1 on input errors.",
    )
    p.add_argument("--reference", "-r", required=True, metavar="REF",
                   help="reference data (CSV or JSON lines)")
    p.add_argument("--current", "-c", required=True, metavar="CUR",
                   help="current data to compare (CSV or JSON lines)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="output format (default: text, an aligned table)")
    p.add_argument("--categorical", metavar="COLS", default="",
                   help="comma-separated columns to treat as categorical")
    p.add_argument("--numeric", metavar="COLS", default="",
                   help="comma-separated columns to treat as numeric (unparseable values "
                   "are errors)")
    p.add_argument("--bins", type=_positive_int, default=10, metavar="N",
                   help="quantile bins of the reference for PSI/JS (default: 10)")
    p.add_argument("--top-k", type=_positive_int, default=20, metavar="K",
                   help="categories kept per categorical column, the rest is 'other' "
                   "(default: 20)")
    p.add_argument("--warn", type=float, default=0.1, metavar="PSI",
                   help="PSI at or above which a feature is 'warn' (default: 0.1)")
    p.add_argument("--drift", type=float, default=0.25, metavar="PSI",
                   help="PSI at or above which a feature is 'drift' (default: 0.25)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the report to FILE instead of standard output")
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {v}")
    return v


# ------------------------------------------------------------------------------- reading
class Table:
    """Columns of one input file, with the file line number of every row."""

    def __init__(self, path: str, columns: dict[str, list], lines: list[int]):
        self.path = path
        self.columns = columns
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)


def _detect_format(path: str, head: str) -> str:
    low = path.lower()
    if low.endswith(".csv"):
        return "csv"
    if low.endswith((".jsonl", ".ndjson", ".json")):
        return "json"
    return "json" if head.lstrip()[:1] in ("{", "[") else "csv"


def read_table(path: str) -> Table:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DriftInputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DriftInputError(f"{path}: is a directory") from None
    except OSError as exc:
        raise DriftInputError(f"{path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DriftInputError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if _detect_format(path, text[:256]) == "csv":
        return _read_csv(path, text)
    return _read_json(path, text)


def _read_csv(path: str, text: str) -> Table:
    import csv
    import io

    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                header = [h.strip() for h in row]
                break
    except csv.Error as exc:
        raise DriftInputError(f"{path}:{reader.line_num}: unparseable CSV: {exc}") from None
    if header is None:
        raise DriftInputError(f"{path}: empty file (no header row)")
    _check_header(path, reader.line_num, header)
    cols: list[list] = [[] for _ in header]
    lines: list[int] = []
    n = len(header)
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != n:
                raise DriftInputError(f"{path}:{reader.line_num}: unparseable row: expected "
                                      f"{n} fields, got {len(row)}")
            lines.append(reader.line_num)
            for col, cell in zip(cols, row):
                col.append(None if cell.strip().lower() in NULL_TOKENS else cell.strip())
    except csv.Error as exc:
        raise DriftInputError(f"{path}:{reader.line_num}: unparseable CSV: {exc}") from None
    return Table(path, dict(zip(header, cols)), lines)


def _check_header(path: str, line: int, header: list[str]) -> None:
    seen = set()
    for h in header:
        if not h:
            raise DriftInputError(f"{path}:{line}: empty column name in header")
        if h in seen:
            raise DriftInputError(f"{path}:{line}: duplicate column {h!r} in header")
        seen.add(h)


def _json_value(v):
    if v is None or isinstance(v, str):
        return None if v is None or v.strip().lower() in NULL_TOKENS else v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return v
    import orjson

    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()


def _read_json(path: str, text: str) -> Table:
    import orjson

    records: list[tuple[int, dict]] = []
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of objects
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise DriftInputError(f"{path}: invalid JSON: {exc}") from None
        if not isinstance(data, list):
            raise DriftInputError(f"{path}: expected a JSON array of objects")
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise DriftInputError(f"{path}: element {i} of the array is not an object")
            records.append((i + 1, obj))
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise DriftInputError(f"{path}:{lineno}: unparseable row: invalid JSON "
                                      f"({exc})") from None
            if not isinstance(obj, dict):
                raise DriftInputError(f"{path}:{lineno}: unparseable row: expected a JSON "
                                      f"object, got {type(obj).__name__}")
            records.append((lineno, obj))
    names: dict[str, None] = {}
    for _, obj in records:
        for k in obj:
            names.setdefault(str(k), None)
    cols = {k: [_json_value(obj.get(k)) for _, obj in records] for k in names}
    return Table(path, cols, [ln for ln, _ in records])


# ------------------------------------------------------------------------------- types
def _parse_number(v):
    """float of a number or numeric string; None if it is not one."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _is_numeric(values) -> bool:
    return all(v is None or _parse_number(v) is not None for v in values)


def _to_numeric(table: Table, name: str) -> list[float]:
    out = []
    for v, line in zip(table.columns[name], table.lines):
        if v is None:
            out.append(math.nan)
            continue
        x = _parse_number(v)
        if x is None:
            raise DriftInputError(f"{table.path}:{line}: column {name!r} is numeric but has "
                                  f"the value {v!r}")
        out.append(x)
    return out


def _split(cols: str) -> list[str]:
    return [c.strip() for c in cols.split(",") if c.strip()]


# ------------------------------------------------------------------------------- output
def _fmt(v, p=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if p:
        return f"{v:.4g}"
    return f"{v:.4f}"


def render_text(rows: list[dict]) -> str:
    head = ["feature", "type", "psi", "js", "ks_stat", "ks_pvalue", "chi2", "chi2_pvalue",
            "severity", "drift"]
    table = [head]
    notes = []
    for r in rows:
        table.append([
            r["feature"], r["type"], _fmt(r.get("psi")), _fmt(r.get("js")),
            _fmt(r.get("ks_stat")), _fmt(r.get("ks_pvalue"), True), _fmt(r.get("chi2")),
            _fmt(r.get("chi2_pvalue"), True), r["severity"], "yes" if r["drift"] else "no",
        ])
        if r.get("reason"):
            notes.append(f"  {r['feature']}: {r['reason']}")
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    numeric_cols = {2, 3, 4, 5, 6, 7}
    lines = []
    for k, row in enumerate(table):
        cells = [c.rjust(w) if (i in numeric_cols and k) else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    compared = [r for r in rows if r["type"] != "schema"]
    n_drift = sum(bool(r["drift"]) for r in compared)
    n_warn = sum(r["severity"] == "warn" for r in compared)
    share = n_drift / len(compared) if compared else 0.0
    lines.append("")
    lines.append(f"{n_drift} of {len(compared)} features drifted ({share:.0%}), {n_warn} warn"
                 + (f"; {len(rows) - len(compared)} schema difference(s)"
                    if len(rows) != len(compared) else ""))
    if notes:
        lines.append("notes:")
        lines.extend(notes)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- run
def compute(args) -> list[dict]:
    """The report rows (one dict per feature) for parsed ``args``."""
    from stream.detect.baseline import compare_columns

    ref = read_table(args.reference)
    cur = read_table(args.current)
    declared_cat = _split(args.categorical)
    declared_num = _split(args.numeric)
    both = set(declared_cat) & set(declared_num)
    if both:
        raise DriftInputError(f"declared both numeric and categorical: {', '.join(sorted(both))}")
    known = set(ref.columns) | set(cur.columns)
    unknown = [c for c in declared_cat + declared_num if c not in known]
    if unknown:
        raise DriftInputError(f"no such column in either file: {', '.join(unknown)}")

    common = [c for c in ref.columns if c in cur.columns]
    numeric, categorical = [], []
    for c in common:
        if c in declared_cat:
            categorical.append(c)
        elif c in declared_num or (_is_numeric(ref.columns[c]) and _is_numeric(cur.columns[c])):
            numeric.append(c)
        else:
            categorical.append(c)
    ref_cols: dict[str, list] = {}
    cur_cols: dict[str, list] = {}
    for c in common:
        if c in numeric:
            ref_cols[c] = _to_numeric(ref, c)
            cur_cols[c] = _to_numeric(cur, c)
        else:
            ref_cols[c] = [_cat_label(v) for v in ref.columns[c]]
            cur_cols[c] = [_cat_label(v) for v in cur.columns[c]]
    report = compare_columns(ref_cols, cur_cols, numeric=numeric, categorical=categorical,
                             bins=args.bins, top_k=args.top_k, warn=args.warn,
                             drift=args.drift)
    by_name = {f.feature: f.to_dict() for f in report.features}
    rows = []
    for c in list(ref.columns) + [c for c in cur.columns if c not in ref.columns]:
        if c in by_name:
            rows.append(by_name[c])
        else:
            where = "reference" if c in ref.columns else "current"
            rows.append({"feature": c, "type": "schema", "drift": False, "severity": "schema",
                         "reason": f"column only in the {where} data"})
    return rows


def _num_label(f: float) -> str:
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)


def _cat_label(v):
    """A categorical value's label. Numbers are one category however written: the JSON number
    3, the CSV cell "3.0" and "3" are all "3"; strings with a leading zero ("007") are kept."""
    if v is None:
        return None
    x = _parse_number(v)
    if x is None or not math.isfinite(x):
        return v if isinstance(v, str) else str(v)
    if isinstance(v, str):
        t = v.strip().lstrip("+-")
        if len(t) > 1 and t[0] == "0" and t[1].isdigit():
            return v
    return _num_label(x)


def run(args) -> int:
    import orjson

    try:
        rows = compute(args)
    except DriftInputError as exc:
        print(f"stream drift: error: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        data = orjson.dumps(rows, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    else:
        data = render_text(rows).encode()
    if args.output:
        try:
            with open(args.output, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            print(f"stream drift: error: {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(data.decode())
        sys.stdout.flush()
    return 0
