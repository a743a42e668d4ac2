"""Streaming drift monitoring: compiled sliding windows vs a plain numpy recompute, one run.

A baseline is fitted on ``--reference-rows`` rows x ``--features`` numeric features; then
``--inferences`` rows arrive in batches of ``--batch``; after every batch the window (last
``--window`` rows) is updated and compared with the baseline: PSI, JS distance and KS (statistic
against the bounded reference sample + p-value) for every feature.

* streaming: :class:`stream.detect.baseline.SlidingWindow` (incremental counts in Cython) and
  :func:`stream.detect.baseline.compare`;
* numpy: the same statistics recomputed from the raw window every batch (``np.searchsorted``
  + ``np.bincount`` for the bins, ``np.sort`` + ``np.searchsorted`` ECDFs for KS, the same
  p-value function), the plain way to do it.

Both see the same stream; their PSI/JS/KS values are checked equal at every ``--check-every``
batch. Rates are inferences (rows) per second of update + compare. A third figure times the
streaming path fed with dict records (``update_records``), as a Faust agent would.

    .venv/bin/python benchmarks/bench_drift.py [--inferences N] [--json OUT]
"""
from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from stream.detect.baseline import Baseline, SlidingWindow, compare  # noqa: E402
from stream.detect.drift_stats import DEFAULT_EPS, ks_pvalues, severity  # noqa: E402

TARGET = 20_000


def make_stream(args):
    rng = np.random.default_rng(args.seed)
    F = args.features
    ref = rng.normal(size=(args.reference_rows, F))
    ref[:, ::5] = np.round(ref[:, ::5], 1)  # some tied, low-resolution features
    cur = rng.normal(size=(args.inferences, F))
    cur[:, ::5] = np.round(cur[:, ::5], 1)
    half = args.inferences // 2
    cur[half:, :F // 5] += 0.5  # a fifth of the features drift halfway through
    cur[rng.random(cur.shape) < 0.01] = np.nan  # 1% nulls
    return ref, cur


# --------------------------------------------------------------------------- numpy reference
class NumpyWindow:
    """Raw ring of the last W rows; every statistic recomputed from it on demand."""

    def __init__(self, base: Baseline, size: int):
        self.base = base
        self.size = size
        self.ring = np.full((size, len(base.numeric)), np.nan)
        self.pos = 0
        self.filled = 0
        self.inner = [b.inner_edges for b in base.numeric]
        self.ref_counts = [b.counts for b in base.numeric]
        self.samples = [b.sample for b in base.numeric]

    def update(self, X):
        for row in np.array_split(X, max(1, -(-X.shape[0] // self.size))):
            n = row.shape[0]
            end = self.pos + n
            if end <= self.size:
                self.ring[self.pos:end] = row
            else:
                k = self.size - self.pos
                self.ring[self.pos:] = row[:k]
                self.ring[: n - k] = row[k:]
            self.pos = end % self.size
            self.filled = min(self.size, self.filled + n)

    def compare(self, ks_method, eps=DEFAULT_EPS):
        W = self.ring[: self.filled]
        F = W.shape[1]
        psi_v, js_v, d_v = np.empty(F), np.empty(F), np.empty(F)
        n_cur = np.empty(F)
        srt = np.sort(W, axis=0)  # NaN sorts last
        for f in range(F):
            col = srt[:, f]
            col = col[: np.searchsorted(col, np.nan)] if np.isnan(col[-1]) else col
            n_cur[f] = col.size
            c = np.bincount(np.searchsorted(self.inner[f], col, side="left"),
                            minlength=self.inner[f].size + 1)
            r = self.ref_counts[f]
            k = r.size
            p = (r / r.sum() + eps) / (1 + k * eps)
            q = (c / c.sum() + eps) / (1 + k * eps)
            psi_v[f] = np.sum((q - p) * np.log(q / p))
            pp, qq = r / r.sum(), c / c.sum()
            m = 0.5 * (pp + qq)
            with np.errstate(divide="ignore", invalid="ignore"):
                js = np.sum(np.where(pp > 0, 0.5 * pp * np.log(pp / m), 0.0)
                            + np.where(qq > 0, 0.5 * qq * np.log(qq / m), 0.0)) / np.log(2)
            js_v[f] = np.sqrt(min(max(js, 0.0), 1.0))
            s = self.samples[f]
            allv = np.concatenate([s, col])
            d_v[f] = np.max(np.abs(np.searchsorted(s, allv, side="right") / s.size
                                   - np.searchsorted(col, allv, side="right") / col.size))
        n_ref = np.array([s.size for s in self.samples], dtype=float)
        d_v, p_v = ks_pvalues(d_v, n_ref, n_cur, ks_method)
        return [{"feature": b.name, "psi": psi_v[f], "js": js_v[f], "ks_stat": d_v[f],
                 "ks_pvalue": p_v[f], "severity": severity(psi_v[f])}
                for f, b in enumerate(self.base.numeric)], psi_v, js_v, d_v


# --------------------------------------------------------------------------- runs
def run_streaming(base, stream, args, checks):
    win = SlidingWindow(base, size=args.window)
    t_update = t_compare = 0.0
    report = None
    gc.collect()
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, stream.shape[0], args.batch)):
        a = time.perf_counter()
        win.update(stream[start:start + args.batch])
        b = time.perf_counter()
        report = compare(base, win, ks_method=args.ks_method)
        c = time.perf_counter()
        t_update += b - a
        t_compare += c - b
        if i in checks:
            checks[i] = np.array([[f.psi, f.js, f.ks_stat] for f in report.features])
    total = time.perf_counter() - t0
    return {"seconds": total, "update_seconds": t_update, "compare_seconds": t_compare,
            "inferences_per_s": stream.shape[0] / total,
            "drifted_at_end": report.n_drifted,
            "window_bytes": sum(v.nbytes for v in vars(win).values()
                                if isinstance(v, np.ndarray)),
            "window_serialised_bytes": len(win.to_bytes())}


def run_numpy(base, stream, args, checks):
    win = NumpyWindow(base, args.window)
    gc.collect()
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, stream.shape[0], args.batch)):
        win.update(stream[start:start + args.batch])
        _, psi_v, js_v, d_v = win.compare(args.ks_method)
        if i in checks:
            checks[i] = np.column_stack([psi_v, js_v, d_v])
    total = time.perf_counter() - t0
    return {"seconds": total, "inferences_per_s": stream.shape[0] / total}


def run_records(base, stream, args):
    names = base.numeric_names
    records = [dict(zip(names, row)) for row in stream.tolist()]
    win = SlidingWindow(base, size=args.window)
    gc.collect()
    t0 = time.perf_counter()
    for start in range(0, len(records), args.batch):
        win.update_records(records[start:start + args.batch])
        compare(base, win, ks_method=args.ks_method)
    total = time.perf_counter() - t0
    return {"seconds": total, "inferences_per_s": len(records) / total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--reference-rows", type=int, default=5000)
    p.add_argument("--inferences", type=int, default=200_000)
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--window", type=int, default=5000, help="rows in the sliding window")
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--sample-size", type=int, default=2000,
                   help="bounded reference sample for KS")
    p.add_argument("--ks-method", default="auto",
                   choices=["auto", "exact", "asymp"],
                   help="KS p-value method (both sides use the same)")
    p.add_argument("--numpy-inferences", type=int, default=None,
                   help="rows for the numpy recompute (default: all)")
    p.add_argument("--records-inferences", type=int, default=50_000,
                   help="rows for the dict-records variant (0 to skip)")
    p.add_argument("--check-every", type=int, default=40, help="compare results every N batches")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = p.parse_args(argv)

    ref, stream = make_stream(args)
    t0 = time.perf_counter()
    base = Baseline.fit(ref, bins=args.bins, sample_size=args.sample_size)
    fit_s = time.perf_counter() - t0
    n_np = min(args.numpy_inferences or stream.shape[0], stream.shape[0])
    n_batches_np = -(-n_np // args.batch)
    check_at = set(range(0, n_batches_np, args.check_every)) | {n_batches_np - 1}

    checks_s = dict.fromkeys(check_at)
    streaming = run_streaming(base, stream, args, checks_s)
    checks_n = dict.fromkeys(check_at)
    numpy_ = run_numpy(base, stream[:n_np], args, checks_n)
    diffs = [np.nanmax(np.abs(checks_s[i] - checks_n[i])) for i in sorted(check_at)]
    max_diff = float(np.nanmax(diffs)) if diffs else float("nan")
    records = (run_records(base, stream[: args.records_inferences], args)
               if args.records_inferences else None)

    ratio = streaming["inferences_per_s"] / numpy_["inferences_per_s"]
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "platform": platform.platform()},
        "baseline_fit_seconds": fit_s,
        "baseline_serialised_bytes": len(base.to_bytes()),
        "streaming": streaming,
        "numpy": dict(numpy_, inferences=n_np),
        "records": records,
        "speedup": ratio,
        "max_abs_diff_psi_js_ks": max_diff,
        "target_inferences_per_s": TARGET,
        "target_met": streaming["inferences_per_s"] >= TARGET,
    }
    F = args.features
    print(f"drift: {F} numeric features, window {args.window}, batch {args.batch}, "
          f"compare every batch, KS p-value {args.ks_method}")
    print(f"  baseline fit ({args.reference_rows} rows): {fit_s * 1e3:.1f} ms, "
          f"{result['baseline_serialised_bytes'] / 1024:.0f} KiB serialised")
    print(f"  streaming (Cython windows): {streaming['inferences_per_s']:>12,.0f} inferences/s "
          f"({stream.shape[0]} rows in {streaming['seconds']:.2f} s; update "
          f"{streaming['update_seconds']:.2f} s, compare {streaming['compare_seconds']:.2f} s)")
    print(f"  numpy recompute:            {numpy_['inferences_per_s']:>12,.0f} inferences/s "
          f"({n_np} rows in {numpy_['seconds']:.2f} s)")
    if records:
        print(f"  streaming from dict records:{records['inferences_per_s']:>12,.0f} inferences/s "
              f"({args.records_inferences} rows)")
    print(f"  speedup: {ratio:.1f}x; max |diff| of PSI/JS/KS between the two: {max_diff:.2e}")
    print(f"  target {TARGET:,} inferences/s: {'met' if result['target_met'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2
                                                 | orjson.OPT_SERIALIZE_NUMPY))
    return 0 if max_diff <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
