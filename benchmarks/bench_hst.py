"""Half-Space Trees: river vs stream.detect.hst, side by side in one process, same stream.

Rates are events/s of score-then-learn over a stream of dicts (per event) or one 2-D array
(batch), excluding tree construction (timed separately). River runs on the first
``--river-events`` events (it is slow at 25 trees / height 15: ~13 s to build, then window
pivots of 1.6M Python nodes); its scores are checked equal to ours on those events.

    .venv/bin/python benchmarks/bench_hst.py [--events N] [--json OUT]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import best_of  # noqa: E402  (benchmarks/, the script's folder)

from river.anomaly import HalfSpaceTrees as RiverHST  # noqa: E402

from stream.detect import _hst  # noqa: E402
from stream.detect.hst import HalfSpaceTrees, build_structure  # noqa: E402

CONFIGS = [
    {"n_trees": 10, "height": 8},
    {"n_trees": 25, "height": 15},
]


def make_stream(n, n_features, seed):
    rng = np.random.default_rng(seed)
    X = rng.random((n, n_features))
    X[::101] = rng.normal(2.0, 1.0, size=X[::101].shape)  # a few outliers
    names = [f"f{i:03d}" for i in range(n_features)]  # sorted order == column order (the batch path's)
    events = [dict(zip(names, row)) for row in X.tolist()]
    return names, X, events


def per_event(model, events):
    score, learn = model.score_one, model.learn_one
    out = []
    append = out.append
    for x in events:
        append(score(x))
        learn(x)
    return out


def per_event_fused(model, events):
    sl = model.score_learn_one
    return [sl(x) for x in events]


def memory_per_model(params, names, x, n_models=500):
    """Measured with tracemalloc: n_models models (shared structure), one event learned each."""
    build_structure(names, params["n_trees"], params["height"], None, 1)  # warm the cache
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    models = []
    for _ in range(n_models):
        m = HalfSpaceTrees(**params, seed=1)
        m.learn_one(x)
        models.append(m)
    used = tracemalloc.get_traced_memory()[0] - base - sys.getsizeof(models)
    tracemalloc.stop()
    return used / n_models, models[0].nbytes, len(models[0].to_bytes())


def run_config(params, args):
    names, X, events = make_stream(args.events, args.features, args.seed)
    n_river = min(args.river_events, args.events)
    seed = args.seed
    res = {"params": params, "events": args.events, "river_events": n_river,
           "features": args.features}

    # -- river ---------------------------------------------------------------------------------
    ref = RiverHST(**params, seed=seed)
    t0 = time.perf_counter()
    ref.learn_one(events[0])  # builds the trees
    res["river_build_s"] = time.perf_counter() - t0
    t_river, r_scores = best_of(1, lambda: per_event(ref, events[1:n_river]))
    res["river_per_event_eps"] = (n_river - 1) / t_river

    # -- ours ----------------------------------------------------------------------------------
    def fresh():
        m = HalfSpaceTrees(**params, seed=seed)
        m.learn_one(events[0])
        return m

    t0 = time.perf_counter()
    build_structure(names, params["n_trees"], params["height"], None, seed)
    res["ours_build_s"] = time.perf_counter() - t0

    # parity on the river-timed prefix
    ours = fresh()
    o_scores = per_event(ours, events[1:n_river])
    res["max_abs_diff_vs_river"] = float(np.max(np.abs(np.subtract(r_scores, o_scores))))
    res["bit_identical"] = bool(r_scores == o_scores)

    def timed(fn):
        best = float("inf")
        out = None
        for _ in range(args.repeats):
            mod = fresh()
            gc.collect()
            t0 = time.perf_counter()
            out = fn(mod)
            best = min(best, time.perf_counter() - t0)
        return best, out

    rest = events[1:]
    t, s_pe = timed(lambda mod: per_event(mod, rest))
    res["ours_per_event_eps"] = len(rest) / t
    t, s_fused = timed(lambda mod: per_event_fused(mod, rest))
    res["ours_score_learn_one_eps"] = len(rest) / t
    Xr = X[1:]
    t, s_batch = timed(lambda mod: mod.score_learn_many(Xr))
    res["ours_batch_eps"] = len(Xr) / t
    res["per_event_equals_batch"] = bool(np.array_equal(s_pe, s_batch)
                                         and np.array_equal(s_pe, s_fused))

    rv = res["river_per_event_eps"]
    res["ratio_per_event"] = res["ours_per_event_eps"] / rv
    res["ratio_score_learn_one"] = res["ours_score_learn_one_eps"] / rv
    res["ratio_batch"] = res["ours_batch_eps"] / rv

    measured, nbytes, blob = memory_per_model(params, names, events[0],
                                              n_models=500 if params["height"] <= 10 else 20)
    res["model_nbytes"] = nbytes
    res["model_measured_bytes"] = measured
    res["to_bytes_len"] = blob
    res["shared_structure_bytes"] = build_structure(names, params["n_trees"], params["height"],
                                                    None, seed).nbytes
    return res


def fmt_table(results):
    rows = [("", *[f"{r['params']['n_trees']} trees, h={r['params']['height']}"
                   for r in results])]

    def add(label, key, f):
        rows.append((label, *[f(r[key]) for r in results]))

    add("river score_one+learn_one (ev/s)", "river_per_event_eps", lambda v: f"{v:,.0f}")
    add("ours  score_one+learn_one (ev/s)", "ours_per_event_eps", lambda v: f"{v:,.0f}")
    add("  ratio vs river", "ratio_per_event", lambda v: f"{v:,.1f}x")
    add("ours  score_learn_one     (ev/s)", "ours_score_learn_one_eps", lambda v: f"{v:,.0f}")
    add("  ratio vs river", "ratio_score_learn_one", lambda v: f"{v:,.1f}x")
    add("ours  score_learn_many    (ev/s)", "ours_batch_eps", lambda v: f"{v:,.0f}")
    add("  ratio vs river", "ratio_batch", lambda v: f"{v:,.1f}x")
    add("max |score - river|", "max_abs_diff_vs_river", lambda v: f"{v:.1e}")
    add("per-event == batch == fused", "per_event_equals_batch", str)
    add("tree build: river (s)", "river_build_s", lambda v: f"{v:.2f}")
    add("tree build: ours, shared (s)", "ours_build_s", lambda v: f"{v:.2f}")
    add("memory per model: nbytes", "model_nbytes", lambda v: f"{v:,}")
    add("memory per model: tracemalloc", "model_measured_bytes", lambda v: f"{v:,.0f}")
    add("to_bytes() length", "to_bytes_len", lambda v: f"{v:,}")
    add("shared structure (once)", "shared_structure_bytes", lambda v: f"{v:,}")
    add("events (ours / river)", "events", str)
    rows[-1] = ("events (ours / river)",
                *[f"{r['events']:,} / {r['river_events']:,}" for r in results])
    w0 = max(len(r[0]) for r in rows)
    ws = [max(len(r[i]) for r in rows) for i in range(1, len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append(f"{r[0]:<{w0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(r[1:], ws)))
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=50_000, help="stream length for ours "
                   "(default 50000)")
    p.add_argument("--river-events", type=int, nargs=2, default=[10_000, 2_000],
                   metavar=("DEFAULT", "DEEP"),
                   help="events river runs at (10, 8) and (25, 15) (default 10000 2000)")
    p.add_argument("--features", type=int, default=3, help="features per event (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="best of N for ours (default 3)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = p.parse_args(argv)
    if args.events < 2:
        p.error("--events must be >= 2")

    results = []
    river_caps = args.river_events
    for params, cap in zip(CONFIGS, river_caps):
        args.river_events = cap
        print(f"running {params} ...", file=sys.stderr, flush=True)
        results.append(run_config(params, args))
    args.river_events = river_caps
    print(fmt_table(results))
    if args.json:
        doc = {"benchmark": "hst", "compiled_module": _hst.__file__,
               "python": platform.python_version(), "machine": platform.machine(),
               "args": vars(args), "results": results}
        Path(args.json).write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
