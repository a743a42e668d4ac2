"""Model-monitoring speed and memory: one worker's monitoring path vs plain numpy, same run.

1. **Worker path** (the headline figure): pre-encoded inference messages (``--features`` numeric
   features, ``--batch`` inferences per message, a fifth of the features shifting halfway) go
   through :meth:`stream.models_worker.MonitorProcessor.process` - exactly what the Faust agent
   runs per message: JSON decode and validation (:mod:`stream.inference_events`), the monitor
   core (:class:`stream.detect.monitor.Monitors`: baseline of the first 1000 inferences, sliding
   window of 500, comparison every 100 with PSI / JS / KS on every feature and the prediction,
   schema check, inference/feedback join store) and the state writes. At-least-once (the
   default, the headline): the processor marks models dirty and the loop calls
   :meth:`~stream.models_worker.MonitorProcessor.flush` where Faust commits offsets (every
   ``--commit-interval`` seconds, 2.8 by default, or every ``--commit-every`` messages, 10,000),
   so each commit serializes the model once (its frozen baseline is stored apart, once);
   exactly_once: a snapshot every 100 messages of a model, inside the processing (the table is
   a dict here).
   Side by side, on the same messages: a **plain numpy** monitor - the same decoder, rows
   appended to a raw ring, and at every comparison PSI / JS / KS statistic recomputed from the
   raw window (``np.searchsorted`` + ``np.bincount``, ``np.sort`` ECDFs), and the drift test
   (PSI over the threshold and ``scipy.stats.ks_2samp(sample, window).pvalue < 0.001``) for the
   features that need it. It does less than the worker path (no schema, prediction or
   performance monitoring, no snapshots); both must flag the same drifted features.
2. **Statistics core**: :class:`~stream.detect.baseline.SlidingWindow` updates + ``compare``
   against the numpy recompute of PSI / JS / KS statistic on a larger window (``--window``),
   values checked equal.
3. **Memory**: serialized monitor state per model version after ever longer streams (with
   labels joined, and without labels, when the join store fills up to its bound).

Both at ``--batch`` inferences per message (100) and at one per message (``--single-inferences``).

    .venv/bin/python benchmarks/bench_drift.py [--inferences N] [--json OUT]
"""
from __future__ import annotations

import argparse
import gc
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402
import scipy.stats  # noqa: E402

from stream.detect.baseline import Baseline, SlidingWindow, compare  # noqa: E402
from stream.detect.drift_stats import DEFAULT_EPS  # noqa: E402
from stream.detect.monitor import MIN_CURRENT, SIGNIFICANCE, Monitors  # noqa: E402
from stream.detect.monitor_spec import DEFAULT_MONITOR, MonitorSpec  # noqa: E402
from stream.inference_events import Feedback, Inference, decode_inferences  # noqa: E402
from stream.models_worker import MonitorProcessor  # noqa: E402
from stream.settings import Settings  # noqa: E402

TARGET = 20_000
T0 = 1_700_000_000.0


# =========================================================================== 1. worker path
def make_messages(n: int, F: int, batch: int, seed: int) -> tuple[list[bytes], list[str]]:
    rng = np.random.default_rng(seed)
    names = [f"f{i:02d}" for i in range(F)]
    X = rng.normal(size=(n, F))
    X[:, ::5] = np.round(X[:, ::5], 1)  # some tied, low-resolution features
    X[n // 2:, : F // 5] += 0.5  # a fifth of the features drift halfway through
    rows = X.tolist()
    msgs = []
    for s in range(0, n, batch):
        items = [{"model": "bench", "version": "1", "request_id": f"r{i}", "ts": T0 + i * 0.01,
                  "features": dict(zip(names, rows[i])), "prediction": float(rows[i][1] > 0),
                  "score": 1.0 / (1.0 + math.exp(-rows[i][1]))} for i in range(s, min(n, s + batch))]
        msgs.append(orjson.dumps({"inferences": items} if batch > 1 else items[0]))
    return msgs, names


def run_worker_path(msgs: list[bytes], spec: MonitorSpec, lazy: bool = True, commit_interval: float = 2.8,
                    commit_every: int = 10_000) -> dict:
    """``lazy``: at-least-once, a flush where Faust commits (every ``commit_interval`` seconds or
    ``commit_every`` messages, and at the end); otherwise exactly_once's snapshot every 100."""
    s = Settings(max_message_bytes=1 << 30, max_batch_samples=1 << 20)
    mons = Monitors([spec])
    table: dict = {}
    proc = MonitorProcessor(s, mons, table, lazy=lazy)
    alerts = []
    flushes = 0
    flush_s = 0.0
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    next_commit = t0 + commit_interval
    since = 0
    clock = time.perf_counter
    for off, raw in enumerate(msgs):
        dead, out = proc.process("inferences", 0, off, b"bench", raw)
        for a in out:
            orjson.dumps(a)  # the agent serialises every alert it sends
        alerts += out
        if lazy:
            since += 1
            now = clock()
            if since >= commit_every or now >= next_commit:
                proc.flush()
                f1 = clock()
                flushes += 1
                flush_s += f1 - now
                next_commit = f1 + commit_interval
                since = 0
    if lazy:  # the last commit (a clean stop commits too)
        f0 = clock()
        proc.flush()
        flush_s += clock() - f0
        flushes += 1
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    vm = mons.models["bench"].versions["1"]
    firing = [a for a in alerts if a["kind"] == "data_drift" and a["status"] == "firing"]
    return {"seconds": dt, "cpu_seconds": cpu, "alerts": [(a["kind"], a["status"]) for a in alerts],
            "drifted": firing[0]["drift"]["drifted"] if firing else [],
            "comparisons": vm.comparisons, "snapshot_bytes": len(table[b"bench"]),
            "stored_bytes": sum(len(v) for v in table.values()),  # with the baseline stored apart
            "flushes": flushes, "flush_seconds": flush_s, "snapshot_seconds": _snapshot_cost(proc)}


def _snapshot_cost(proc: MonitorProcessor, n: int = 20) -> float:
    """Seconds to serialize and write the model once (median of ``n``), at the end of the run."""
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc.snapshot("bench")
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


class NumpyMonitor:
    """The plain way: raw ring of the last W rows; statistics recomputed at every comparison."""

    def __init__(self, names: list[str], spec: MonitorSpec):
        self.names = names
        self.spec = spec
        self.base_rows: list[list[float]] = []
        self.ring = np.full((spec.window, len(names)), np.nan)
        self.pos = self.filled = self.since = 0
        self.fitted = False
        self.incident = None
        self.first_drifted: list[str] = []

    def fit(self) -> None:
        R = np.array(self.base_rows, dtype=np.float64)
        self.inner, self.ref_counts, self.samples = [], [], []
        bins = self.spec.bins
        for f in range(R.shape[1]):
            x = np.sort(R[:, f][~np.isnan(R[:, f])])
            inner = np.unique(np.quantile(x, np.arange(1, bins) / bins, method="inverted_cdf"))
            self.inner.append(inner)
            self.ref_counts.append(np.bincount(np.searchsorted(inner, x, side="left"),
                                               minlength=inner.size + 1))
            self.samples.append(x)
        self.fitted = True

    def observe(self, feats: dict) -> None:
        row = [feats.get(n, np.nan) for n in self.names]
        if not self.fitted:
            self.base_rows.append(row)
            if len(self.base_rows) >= self.spec.baseline_size:
                self.fit()
            return
        self.ring[self.pos] = row
        self.pos = (self.pos + 1) % self.spec.window
        self.filled = min(self.filled + 1, self.spec.window)
        self.since += 1
        if self.since >= self.spec.compare_every:
            self.since = 0
            if self.filled >= self.spec.window:
                self.compare()

    def statistics(self, eps: float = DEFAULT_EPS):
        W = self.ring[: self.filled]
        F = W.shape[1]
        psi_v, js_v, d_v = np.empty(F), np.empty(F), np.empty(F)
        cols = []
        srt = np.sort(W, axis=0)  # NaN sorts last
        for f in range(F):
            col = srt[:, f]
            col = col[: np.searchsorted(col, np.nan)] if np.isnan(col[-1]) else col
            cols.append(col)
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
        return psi_v, js_v, d_v, cols

    def compare(self) -> None:
        psi_v, _, _, cols = self.statistics()
        drifted = []
        for f, name in enumerate(self.names):
            if psi_v[f] >= self.spec.psi_drift and cols[f].size >= MIN_CURRENT:
                if scipy.stats.ks_2samp(self.samples[f], cols[f]).pvalue < SIGNIFICANCE:
                    drifted.append(name)
        if drifted and self.incident is None:
            self.incident = drifted
            self.first_drifted = drifted


def run_numpy_path(msgs: list[bytes], names: list[str], spec: MonitorSpec) -> dict:
    mon = NumpyMonitor(names, spec)
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    for raw in msgs:
        good, _ = decode_inferences(raw, max_bytes=1 << 30, max_batch=1 << 20)
        for item in good:
            mon.observe(item.features)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "drifted": mon.first_drifted}


# =========================================================================== 2. statistics core
def run_core(args) -> dict:
    rng = np.random.default_rng(args.seed)
    F = args.features
    ref = rng.normal(size=(5000, F))
    ref[:, ::5] = np.round(ref[:, ::5], 1)
    cur = rng.normal(size=(args.core_inferences, F))
    cur[:, ::5] = np.round(cur[:, ::5], 1)
    cur[cur.shape[0] // 2:, : F // 5] += 0.5
    cur[rng.random(cur.shape) < 0.01] = np.nan
    base = Baseline.fit(ref, sample_size=2000)
    names = list(base.numeric_names)
    spec = MonitorSpec(window=args.window, baseline_size=5000)
    win = SlidingWindow(base, size=args.window)
    npm = NumpyMonitor(names, spec)
    npm.base_rows = ref.tolist()
    npm.fit()
    npm.samples = [b.sample for b in base.numeric]  # the same bounded sample as the baseline
    B = args.core_batch
    t_s = t_n = 0.0
    max_diff = 0.0
    for i, start in enumerate(range(0, cur.shape[0], B)):
        X = cur[start:start + B]
        a = time.perf_counter()
        win.update(X)
        rep = compare(base, win, ks_method=None)
        b = time.perf_counter()
        for row in X:  # numpy side: raw ring, recompute
            npm.ring[npm.pos] = row
            npm.pos = (npm.pos + 1) % spec.window
            npm.filled = min(npm.filled + 1, spec.window)
        psi_v, js_v, d_v, _ = npm.statistics()
        c = time.perf_counter()
        t_s += b - a
        t_n += c - b
        if i % 20 == 0:
            got = np.array([[f.psi, f.js, f.ks_stat] for f in rep.features])
            max_diff = max(max_diff, float(np.nanmax(np.abs(got - np.column_stack([psi_v, js_v, d_v])))))
    n = cur.shape[0]
    return {"window": args.window, "batch": B, "streaming_per_s": n / t_s, "numpy_per_s": n / t_n,
            "speedup": t_n / t_s, "max_abs_diff_psi_js_ks": max_diff,
            "window_bytes": sum(v.nbytes for v in vars(win).values() if isinstance(v, np.ndarray))}


# =========================================================================== 3. memory
def run_memory(args) -> dict:
    rng = np.random.default_rng(args.seed)
    F = args.features
    names = [f"f{i:02d}" for i in range(F)]
    out = {}
    for labelled in (True, False):
        mons = Monitors([DEFAULT_MONITOR])
        sizes = []
        done = 0
        for upto in args.memory_points:
            X = rng.normal(size=(upto - done, F)).tolist()
            for j, row in enumerate(X):
                i = done + j
                p = float(row[0] > 0)
                mons.observe(Inference("mem", "1", f"r{i:08d}", T0 + i, dict(zip(names, row)), p, None, None))
                if labelled:
                    mons.feedback(Feedback("mem", "1", f"r{i:08d}", p if rng.random() > 0.1 else 1 - p, T0 + i + 1))
            done = upto
            sizes.append((upto, len(mons.export_state("mem"))))
        out["labelled" if labelled else "unlabelled"] = sizes
    return out


# =========================================================================== main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--inferences", type=int, default=200_000, help="inferences through the worker path")
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--batch", type=int, default=100, help="inferences per message")
    p.add_argument("--single-inferences", type=int, default=30_000,
                   help="inferences for the one-inference-per-message variant (0 to skip)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each timed path (the best is reported)")
    p.add_argument("--commit-interval", type=float, default=2.8,
                   help="seconds between offset commits (Faust's broker_commit_interval)")
    p.add_argument("--commit-every", type=int, default=10_000,
                   help="messages between offset commits (Faust's broker_commit_every)")
    p.add_argument("--window", type=int, default=5000, help="statistics core: rows in the window")
    p.add_argument("--core-batch", type=int, default=500, help="statistics core: rows per update")
    p.add_argument("--core-inferences", type=int, default=100_000)
    p.add_argument("--memory-points", type=lambda s: [int(x) for x in s.split(",")],
                   default=[10_000, 50_000, 100_000, 150_000],
                   help="stream lengths at which the state is measured")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = p.parse_args(argv)
    spec = DEFAULT_MONITOR
    F = args.features

    def best(ms, lazy=True):
        return min((run_worker_path(ms, spec, lazy, args.commit_interval, args.commit_every)
                    for _ in range(args.repeat)), key=lambda r: r["seconds"])

    msgs, names = make_messages(args.inferences, F, args.batch, args.seed)
    worker = best(msgs)
    eos = best(msgs, lazy=False)
    numpy_ = min((run_numpy_path(msgs, names, spec) for _ in range(args.repeat)), key=lambda r: r["seconds"])
    w_rate = args.inferences / worker["seconds"]
    n_rate = args.inferences / numpy_["seconds"]
    single = None
    if args.single_inferences:
        smsgs, _ = make_messages(args.single_inferences, F, 1, args.seed)
        sr = best(smsgs)
        se = best(smsgs, lazy=False)
        single = {"inferences": args.single_inferences, "inferences_per_s": args.single_inferences / sr["seconds"],
                  "cpu_inferences_per_s": args.single_inferences / sr["cpu_seconds"],
                  "flushes": sr["flushes"], "flush_seconds": sr["flush_seconds"],
                  "snapshot_bytes": sr["snapshot_bytes"], "snapshot_seconds": sr["snapshot_seconds"],
                  "exactly_once_inferences_per_s": args.single_inferences / se["seconds"]}
    core = run_core(args)
    memory = run_memory(args)
    same = sorted(worker["drifted"]) == sorted(numpy_["drifted"])

    result = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "platform": platform.platform()},
        "worker_path": {"inferences_per_s": w_rate, **worker},
        "numpy_path": {"inferences_per_s": n_rate, **numpy_},
        "exactly_once_path": {"inferences_per_s": args.inferences / eos["seconds"], **eos},
        "ratio_vs_numpy": w_rate / n_rate,
        "same_drifted_features": same,
        "single_inference_messages": single,
        "statistics_core": core,
        "state_bytes_per_version": memory,
        "target_inferences_per_s": TARGET,
        "target_met": w_rate >= TARGET,
    }
    print(f"model monitoring, {F} numeric features; spec: baseline {spec.baseline_size}, window {spec.window}, "
          f"compare every {spec.compare_every}; {args.inferences:,} inferences, {args.batch} per message, "
          f"best of {args.repeat}")
    print(f"  worker path (decode + monitor + state writes at commits): {w_rate:>10,.0f} inferences/s "
          f"({worker['seconds']:.2f} s, {worker['comparisons']} comparisons, alerts {worker['alerts']})")
    print(f"    {worker['flushes']} commits wrote the state in {worker['flush_seconds'] * 1e3:.0f} ms in all; "
          f"one snapshot: {worker['snapshot_bytes']:,} bytes, {worker['snapshot_seconds'] * 1e3:.1f} ms "
          f"(stored with the baseline, written once apart: {worker['stored_bytes']:,} bytes)")
    print(f"  exactly_once (snapshot every 100 messages):  {args.inferences / eos['seconds']:>10,.0f} inferences/s")
    print(f"  plain numpy monitor (decode + recompute):   {n_rate:>10,.0f} inferences/s "
          f"({numpy_['seconds']:.2f} s)")
    print(f"  per CPU-second (process time, less sensitive to other load): worker path "
          f"{args.inferences / worker['cpu_seconds']:,.0f}, numpy {args.inferences / numpy_['cpu_seconds']:,.0f}")
    print(f"  ratio worker path / numpy: {w_rate / n_rate:.2f}x; same drifted features: {same} "
          f"({sorted(worker['drifted'])})")
    if single:
        print(f"  one inference per message:                  {single['inferences_per_s']:>10,.0f} inferences/s "
              f"({single['inferences']:,} inferences; {single['cpu_inferences_per_s']:,.0f} per CPU-second; "
              f"{single['flushes']} commits, {single['flush_seconds'] * 1e3:.0f} ms writing state; one snapshot "
              f"{single['snapshot_bytes']:,} bytes, {single['snapshot_seconds'] * 1e3:.1f} ms)")
        print(f"  one inference per message, exactly_once:    "
              f"{single['exactly_once_inferences_per_s']:>10,.0f} inferences/s")
    print(f"  target {TARGET:,} inferences/s at {F} features: {'met' if result['target_met'] else 'NOT met'}")
    print(f"statistics core, window {core['window']}, {core['batch']} rows per update: "
          f"{core['streaming_per_s']:,.0f} rows/s compiled vs {core['numpy_per_s']:,.0f} numpy "
          f"({core['speedup']:.1f}x), max |diff| PSI/JS/KS {core['max_abs_diff_psi_js_ks']:.1e}")
    for k, pts in memory.items():
        print(f"state bytes per model version, {k}: " + ", ".join(f"{n:,}: {b:,}" for n, b in pts))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return 0 if (same and core["max_abs_diff_psi_js_ks"] <= 1e-9) else 1


if __name__ == "__main__":
    sys.exit(main())
