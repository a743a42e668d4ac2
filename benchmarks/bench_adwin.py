"""The compact ADWIN (stream.detect.adwin) vs river's, same run: update speed, memory, pickle size.

1. **Speed**: the same stream (Gaussian noise with level shifts, so cuts and resets happen) fed
   value by value, best of ``--repeats``: river's public ``ADWIN.update`` against ours, and the
   engine's per-window step (:func:`stream.detect.engine._adwin_step`: river's helper called
   directly, as the engine did, against ours). The detections are checked identical.
2. **Memory**: ``--instances`` detectors, each fed ``--updates`` values (36: an entity's ADWIN
   after the bench_entities run), kept alive; RSS growth per instance measured in a fresh
   subprocess per kind (river's buckets are Rust allocations, invisible to tracemalloc), and for
   ours also tracemalloc's count (the object and its PyMem block are traced).
3. **State**: pickled bytes per instance (protocol 5, as the engine's entity state).

    .venv/bin/python benchmarks/bench_adwin.py [--values 200000] [--instances 100000] [--json OUT]
"""
from __future__ import annotations

import argparse
import gc
import os
import pickle
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import best_of, write_json  # noqa: E402  (benchmarks/, the script's folder)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_stream(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    level, out = 0.0, []
    for _ in range(n):
        if rng.random() < 0.002:
            level += rng.choice([-1, 1]) * rng.uniform(0.5, 4.0)
        out.append(level + rng.gauss(0, 1))
    return out


def feed_river(values):
    from river.drift import ADWIN

    ad = ADWIN()
    update = ad.update
    out = []
    for v in values:
        update(v)
        out.append(ad.drift_detected)
    return out


def feed_ours(values):
    from stream.detect.adwin import ADWIN

    update = ADWIN().update
    return [update(v) for v in values]


def step_river(values):
    from river.drift import ADWIN

    from stream.detect.engine import _adwin_step

    ad = ADWIN()
    return [_adwin_step(ad, v) for v in values]


def step_ours(values):
    from stream.detect.adwin import ADWIN
    from stream.detect.engine import _adwin_step

    ad = ADWIN()
    return [_adwin_step(ad, v) for v in values]


def memory_child(kind: str, instances: int, updates: int) -> None:
    """Runs in a fresh process: print RSS growth (or, for "ours-traced", tracemalloc's count:
    tracemalloc's own records would inflate the RSS) per instance, and the pickle size."""
    import tracemalloc

    traced_run = kind == "ours-traced"
    if kind == "river":
        from river.drift import ADWIN
    else:
        from stream.detect.adwin import ADWIN
    rng = random.Random(1)
    values = [100 + rng.gauss(0, 5) for _ in range(updates * 64)]
    warm = [ADWIN() for _ in range(100)]  # first-use allocations out of the baseline
    for ad in warm:
        for v in values[:updates]:
            ad.update(v)
    holder = [None] * instances
    gc.collect()
    if traced_run:
        tracemalloc.start()
    base = rss_bytes()
    traced0 = tracemalloc.get_traced_memory()[0] if traced_run else 0
    for i in range(instances):
        ad = ADWIN()
        off = (i * 7) % (len(values) - updates)
        for v in values[off:off + updates]:
            ad.update(v)
        holder[i] = ad
    gc.collect()
    grown = rss_bytes() - base
    traced = tracemalloc.get_traced_memory()[0] - traced0 if traced_run else 0
    size = len(pickle.dumps(holder[0], protocol=5))
    print(f"{grown / instances} {traced / instances} {size}")


def memory(kind: str, instances: int, updates: int) -> tuple[float, float, int]:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_memory-child", kind,
                          "--instances", str(instances), "--updates", str(updates)],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--values", type=int, default=200_000, help="stream length for the speed runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--instances", type=int, default=100_000, help="detectors kept alive for the memory figure")
    p.add_argument("--updates", type=int, default=36, help="values fed to each of them")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--_memory-child", dest="child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        memory_child(args.child, args.instances, args.updates)
        return 0

    values = make_stream(args.values, args.seed)
    res: dict = {"values": args.values, "instances": args.instances, "updates_per_instance": args.updates}
    t_r, det_r = best_of(args.repeats, lambda: feed_river(values))
    t_o, det_o = best_of(args.repeats, lambda: feed_ours(values))
    assert det_r == det_o, "detections differ"
    ts_r, st_r = best_of(args.repeats, lambda: step_river(values))
    ts_o, st_o = best_of(args.repeats, lambda: step_ours(values))
    assert st_r == st_o, "engine steps differ"
    res.update(detections=sum(det_o), identical=True,
               river_update_per_s=args.values / t_r, ours_update_per_s=args.values / t_o, update_speedup=t_r / t_o,
               river_engine_step_per_s=args.values / ts_r, ours_engine_step_per_s=args.values / ts_o,
               engine_step_speedup=ts_r / ts_o)
    rss_r, _, pk_r = memory("river", args.instances, args.updates)
    rss_o, _, pk_o = memory("ours", args.instances, args.updates)
    _, tm_o, _ = memory("ours-traced", args.instances, args.updates)
    res.update(river_rss_bytes_per_instance=rss_r, ours_rss_bytes_per_instance=rss_o,
               ours_tracemalloc_bytes_per_instance=tm_o, memory_ratio=rss_r / rss_o,
               river_pickle_bytes=pk_r, ours_pickle_bytes=pk_o)

    print(f"stream of {args.values:,} values, {sum(det_o)} detections, identical: yes")
    print(f"{'':>34} {'river':>12} {'ours':>12} {'ratio':>8}")
    print(f"{'ADWIN.update (values/s)':>34} {res['river_update_per_s']:>12,.0f} {res['ours_update_per_s']:>12,.0f} "
          f"{res['update_speedup']:>7.1f}x")
    print(f"{'engine _adwin_step (values/s)':>34} {res['river_engine_step_per_s']:>12,.0f} "
          f"{res['ours_engine_step_per_s']:>12,.0f} {res['engine_step_speedup']:>7.1f}x")
    print(f"{f'RSS bytes/instance ({args.updates} upd.)':>34} {rss_r:>12,.0f} {rss_o:>12,.0f} {rss_r / rss_o:>7.1f}x")
    print(f"{'tracemalloc bytes/instance':>34} {'-':>12} {tm_o:>12,.0f}")
    print(f"{'pickled bytes/instance':>34} {pk_r:>12,} {pk_o:>12,} {pk_r / pk_o:>7.1f}x")
    if args.json:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
