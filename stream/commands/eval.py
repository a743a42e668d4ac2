"""``stream eval``: replay labeled CSV files through the detection core and score the result.

Each file is replayed with :mod:`stream.detect.offline` (the workers' core, one row per window,
strictly online). The first ``--warmup-rows`` rows of each file are the warm-up: learned, never
alerted on, and left out of every metric (the SKAB leaderboard fits its models on the same first
400 rows and scores the rest). On the remaining rows:

* point-wise precision, recall, F1, FAR and MAR of ``alert`` against the ``anomaly`` column;
* NAB scores (standard, reward_low_FP, reward_low_FN) of the alert transitions against the
  ``changepoint`` column, with SKAB's protocol (:mod:`stream.detect.nab`): a 60 s window to the
  right of each true changepoint. Without a ``changepoint`` column the transitions of
  ``anomaly`` are the changepoints.

Overall figures sum the confusion counts and the NAB raw/null/perfect scores of all files before
dividing, as SKAB's ``chp_score`` does over a list of files.
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate the detector on labeled CSV files (NAB, F1, FAR, MAR; SKAB protocol)",
        description=(
            "Replay labeled CSV files (SKAB layout: datetime;features...;anomaly;changepoint, separator "
            "detected) through the workers' detection core, strictly online, and report per file and "
            "overall: NAB scores (standard, reward_low_FP, reward_low_FN; scoring windows of --nab-window "
            "seconds to the right of each true changepoint, as SKAB scores them) and point-wise precision, "
            "recall, F1, false-alarm rate and missed-alarm rate on the 'anomaly' column. The first "
            "--warmup-rows rows of each file are learned only and left out of every metric. A directory "
            "argument means every *.csv in it."),
        epilog="Exit status: 0 on success; 1 when a file cannot be read or a row does not parse (file:line named).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="labeled CSV files or directories of them")
    p.add_argument("--report", required=True, metavar="OUT.json", help="JSON report to write")
    p.add_argument("--plots", metavar="DIR", help="write one PNG per file here (series, score, alerts, labels)")
    p.add_argument("--warmup-rows", type=int, default=400, metavar="N",
                   help="rows of each file used as warm-up only (default: 400, as SKAB's leaderboard)")
    p.add_argument("--spec", metavar="FILE", help="detector spec YAML (default: the built-in offline spec)")
    p.add_argument("--nab-window", type=float, default=60.0, metavar="S",
                   help="NAB scoring window in seconds, right of each changepoint (default: 60, SKAB)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _files(paths: list[str]) -> list[str]:
    from pathlib import Path

    out = []
    for p in paths:
        q = Path(p)
        if q.is_dir():
            out.extend(str(f) for f in sorted(q.glob("*.csv"), key=lambda f: (len(f.stem), f.stem)))
        else:
            out.append(str(q))
    return out


def evaluate_file(path: str, spec, warmup_rows: int, nab_window: float) -> tuple[dict, dict]:
    """(per-file result, replay columns) of one labeled file."""
    from stream.detect import nab
    from stream.detect.offline import CsvRowError, open_table, replay

    table = open_table(path)
    if "anomaly" not in table.label_cols:
        raise CsvRowError(path, 1, "no 'anomaly' label column")
    cols = replay(table, spec)
    k = min(warmup_rows, len(cols["ts"]))
    ts = cols["ts"][k:]
    alert = cols["alert"][k:]
    truth = cols["anomaly"][k:]
    if "changepoint" in cols:
        cps = [t for t, c in zip(ts, cols["changepoint"][k:]) if c]
    else:
        cps = nab.detections_from_alerts(ts, truth)
    dets = nab.detections_from_alerts(ts, alert)
    raw = nab.nab_raw(cps, dets, nab_window)
    conf = nab.confusion(truth, alert)
    res = {
        "file": path,
        "rows": len(cols["ts"]),
        "scored_rows": len(ts),
        "metrics": table.value_names,
        "changepoints": len(cps),
        "detections": len(dets),
        "incidents": sum(1 for a in cols["alerts"] if a["kind"] == "anomaly" and a["status"] == "firing"),
        "drift_events": sum(1 for a in cols["alerts"] if a["kind"] == "data_drift"),
        "nab": {name: nab.normalize(*v) for name, v in raw.items()},
        "nab_raw": {name: list(v) for name, v in raw.items()},
        **nab.pointwise(*conf),
    }
    return res, cols


def plot_file(path: str, out_png: str, cols: dict, metrics: list[str], warmup_rows: int,
              watched: tuple[str, ...] = ()) -> None:
    """Series (up to 4 of the metrics the spec watches, min-max scaled), score, alerts and labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t = np.asarray(cols["ts"], dtype=float)
    t = t - t[0]
    vals = np.asarray(cols["values"], dtype=float)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    shown = [j for j, name in enumerate(metrics) if not watched or name in watched][:4]
    for j in shown:
        name = metrics[j]
        v = vals[:, j]
        lo, hi = np.nanmin(v), np.nanmax(v)
        ax1.plot(t, (v - lo) / (hi - lo) if hi > lo else v * 0, lw=0.7, label=name)
    ax1.set_ylabel("features (min-max scaled)")
    ax1.legend(loc="upper left", fontsize=7, ncol=4)
    score = np.asarray(cols["score"], dtype=float)
    ax2.plot(t, score, lw=0.7, color="tab:blue", label="anomaly_score")
    alert = np.asarray(cols["alert"], dtype=bool)
    truth = np.asarray(cols.get("anomaly", [0] * len(t)), dtype=bool)
    for ax in (ax1, ax2):
        ax.fill_between(t, 0, 1, where=truth, color="tab:red", alpha=0.15, step="post",
                        transform=ax.get_xaxis_transform(), label="labeled anomaly" if ax is ax2 else None)
        if warmup_rows and warmup_rows < len(t):
            ax.axvline(t[warmup_rows], color="grey", ls=":", lw=1, label="end of warm-up" if ax is ax2 else None)
        for tc, c in zip(t, cols.get("changepoint", [])):
            if c:
                ax.axvline(tc, color="tab:red", lw=0.8)
    ax2.fill_between(t, 0, 0.12, where=alert, color="black", alpha=0.8, step="post",
                     transform=ax2.get_xaxis_transform(), label="alert")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("score")
    ax2.set_xlabel("seconds since the first row")
    ax2.legend(loc="upper left", fontsize=7, ncol=4)
    fig.suptitle(path, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def run(args) -> int:
    import dataclasses
    import os
    import time
    from pathlib import Path

    import orjson

    from stream.detect import nab
    from stream.detect.offline import CsvRowError, load_spec
    from stream.detect.spec import SpecError
    from stream.progress import Progress

    try:
        spec = load_spec(args.spec, args.warmup_rows)
    except SpecError as exc:
        print(f"stream eval: error: {exc}", file=sys.stderr)
        return 2
    files = _files(args.paths)
    if not files:
        print("stream eval: error: no CSV files found", file=sys.stderr)
        return 1
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    bar = Progress(len(files), "eval", unit="files", enabled=False if args.no_progress else None)
    try:
        for f in files:
            try:
                res, cols = evaluate_file(f, spec, args.warmup_rows, args.nab_window)
            except CsvRowError as exc:
                print(f"stream eval: error: {exc}", file=sys.stderr)
                return 1
            except OSError as exc:
                print(f"stream eval: error: {f}: {exc.strerror}", file=sys.stderr)
                return 1
            if args.plots:
                name = "_".join(Path(f).with_suffix("").parts[-2:]) + ".png"
                png = os.path.join(args.plots, name)
                plot_file(f, png, cols, res["metrics"], args.warmup_rows, spec.metrics)
                res["plot"] = png
            results.append(res)
            bar.update()
    finally:
        bar.close()
    tot = {k: sum(r[k] for r in results) for k in ("tp", "tn", "fp", "fn")}
    raw = {name: [sum(r["nab_raw"][name][i] for r in results) for i in range(3)] for name in nab.PROFILES}
    overall = {"files": len(results), "rows": sum(r["rows"] for r in results),
               "scored_rows": sum(r["scored_rows"] for r in results),
               "nab": {name: nab.normalize(*v) for name, v in raw.items()},
               **nab.pointwise(tot["tp"], tot["tn"], tot["fp"], tot["fn"])}
    seconds = time.perf_counter() - t0
    spec_d = dataclasses.asdict(spec)
    report = {
        "protocol": {
            "warmup_rows": args.warmup_rows,
            "warmup": f"the first {args.warmup_rows} rows of each file are learned only (no alerts) and excluded "
                      "from every metric; the detector is strictly online (each row scored before it is learned)",
            "nab": {"window_seconds": args.nab_window, "placement": "right of each true changepoint",
                    "overlap": "cut right window", "reward": "TSAD/SKAB scaled sigmoid (tanh), 1000 points",
                    "profiles": {k: dict(zip(("A_tp", "A_fp", "A_fn"), v)) for k, v in nab.PROFILES.items()},
                    "predicted_changepoints": "transitions of the alert column (|diff|)"},
            "pointwise": "alert vs anomaly; F1 = TP/(TP+(FP+FN)/2), FAR = FP/(FP+TN) %, MAR = FN/(FN+TP) %",
        },
        "spec": spec_d,
        "files": results,
        "overall": overall,
        "seconds": seconds,
    }
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    w = max(len(r["file"]) for r in results)
    print(f"{'file':<{w}}  {'F1':>5} {'FAR%':>6} {'MAR%':>6}  {'NAB':>7} {'lowFP':>7} {'lowFN':>7}")
    for r in results + [dict(overall, file="overall")]:
        n = r["nab"]
        print(f"{r['file']:<{w}}  {r['f1']:5.2f} {r['far']:6.2f} {r['mar']:6.2f}  {n['standard']:7.2f} "
              f"{n['reward_low_FP']:7.2f} {n['reward_low_FN']:7.2f}")
    print(f"{len(results)} files, {overall['rows']} rows in {seconds:.1f} s -> {args.report}", file=sys.stderr)
    return 0
