"""``stream score``: score a CSV file offline, row by row, with the workers' detection core.

See :mod:`stream.detect.offline` for the design (one row = one window of the same
:class:`~stream.detect.engine.Detector`, scored before it is learned: strictly online).
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score a CSV offline with the same detector as the workers (strictly online)",
        description=(
            "Replay a CSV file through the workers' detection core and write every input row "
            "back with two more columns: anomaly_score (Half-Space Trees score in [0, 1], higher "
            "= more anomalous, 0 during warm-up) and alert (true while the service's alert would "
            "be firing: from the row that fires an incident up to the one that resolves it). "
            "By default the first column is the timestamp (ISO date/time or epoch seconds) and "
            "every other numeric column is a metric of ONE entity; columns named 'anomaly' or "
            "'changepoint' (labels) are not metrics unless named in --value-cols. Each row is "
            "its own window, scored before it is learned: a row's score only depends on the rows "
            "up to and including itself. Empty cells are missing values."),
        epilog=("Exit status: 0 on success; 1 when a row does not parse (the error names the file and "
                "line, nothing is written past it and OUT is removed); 2 on a bad spec or arguments."),
    )
    p.add_argument("input", metavar="INPUT.csv", help="input CSV with a header row")
    p.add_argument("--output", "-o", required=True, metavar="OUT.csv", help="output CSV ('-' = standard output)")
    p.add_argument("--spec", metavar="FILE",
                   help="detector spec YAML (default: the built-in offline spec: one row per window, features "
                   "[mean], the worker's model with a decision tuned for one-row windows); "
                   "e.g. specs/offline/skab.yaml")
    p.add_argument("--timestamp-col", metavar="C", help="timestamp column (default: the first column)")
    p.add_argument("--value-cols", metavar="A,B", help="comma-separated metric columns (default: every other numeric column)")
    p.add_argument("--sep", metavar="SEP", help="field separator (default: detected from the header: ; , tab |)")
    p.add_argument("--warmup-rows", type=int, metavar="N",
                   help="rows learned before any alert (default: the spec's warmup_windows)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import csv
    import os

    from stream.detect.offline import CsvRowError, OfflineScorer, count_rows, iter_rows, load_spec, open_table
    from stream.detect.spec import SpecError
    from stream.progress import Progress

    try:
        spec = load_spec(args.spec, args.warmup_rows)
        table = open_table(args.input, sep=args.sep, timestamp_col=args.timestamp_col,
                           value_cols=[c.strip() for c in args.value_cols.split(",") if c.strip()] if args.value_cols else None)
    except SpecError as exc:
        print(f"stream score: error: {exc}", file=sys.stderr)
        return 2
    except CsvRowError as exc:
        print(f"stream score: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"stream score: error: {args.input}: {exc.strerror}", file=sys.stderr)
        return 1
    to_stdout = args.output == "-"
    out = sys.stdout if to_stdout else open(args.output, "w", newline="")
    n = count_rows(args.input)
    bar = Progress(n, "score", unit="rows", enabled=False if (args.no_progress or n < 5000) else None)
    ok = False
    try:
        w = csv.writer(out, delimiter=table.sep, lineterminator="\n")
        w.writerow(table.header + ["anomaly_score", "alert"])
        sc = OfflineScorer(spec)
        alerts = 0
        for _line, row, _ts, values in iter_rows(table):
            r = sc.step(values)
            alerts += r["alert"]
            w.writerow(row + [f"{r['score']:.6f}", "true" if r["alert"] else "false"])
            bar.update()
        ok = True
    except CsvRowError as exc:
        print(f"stream score: error: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        if not to_stdout:
            out.close()
            if not ok:
                os.unlink(args.output)
    fired = sum(1 for a in sc.alerts if a["kind"] == "anomaly" and a["status"] == "firing")
    print(f"stream score: {sc.rows} rows, {len(table.value_cols)} metrics ({', '.join(table.value_names)}); "
          f"{fired} incident(s), {alerts} alert row(s) -> {args.output}", file=sys.stderr)
    return 0
