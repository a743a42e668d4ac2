"""Memory per active entity of the detection engine (issue 3: 100,000 entities within 2 GiB).

Feeds N entities (one series each with the default spec; ``--metrics M``: M series per entity
grouped into one vector, as the load test's entities) with enough windows to be warm (models
built, baselines, score history, ADWIN running), then reports RSS growth per entity and the
serialized state size. Prints figures and optionally writes JSON.

    python benchmarks/bench_entities.py --entities 100000 --json reports/entities.json
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import write_json  # noqa: E402  (benchmarks/, the script's folder)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=100_000, help="active entities (default 100000)")
    p.add_argument("--windows", type=int, default=40, help="windows per entity (default 40: past the 30-window warm-up)")
    p.add_argument("--samples-per-window", type=int, default=2)
    p.add_argument("--metrics", type=int, default=1,
                   help="series per entity (default 1, the default spec; M > 1: group_by [id], one M-metric "
                        "vector per window, 10 features per metric)")
    p.add_argument("--json", help="write the figures to this JSON file")
    args = p.parse_args(argv)

    import random

    from stream.detect.engine import Detector
    from stream.detect.spec import DetectorSpec

    # warm the imports (scipy's chi-square, river's ADWIN) before the baseline RSS is taken
    warm = Detector(DetectorSpec(warmup_windows=1))
    for i in range(400):
        warm.ingest("m", {}, 1_700_000_000.0 + i * 30, float(i % 7))
    del warm
    det = Detector(DetectorSpec() if args.metrics == 1 else DetectorSpec(group_by=("id",)))
    metrics = [f"m{j}" for j in range(args.metrics)] if args.metrics > 1 else ["m"]
    gc.collect()
    base = rss_bytes()
    rng = random.Random(1)
    t0 = time.perf_counter()
    step = 60.0 / args.samples_per_window
    n = 0
    for w in range(args.windows + 1):
        for k in range(args.samples_per_window):
            ts = 1_700_000_000.0 + w * 60 + k * step
            for e in range(args.entities):
                labels = {"id": str(e)}
                for m in metrics:
                    det.ingest(m, labels, ts, 100 + rng.gauss(0, 5))
                    n += 1
        det.advance(ts - 10 * 60)  # the worker's housekeeping: close quiet windows, prune the index
        print(f"\rwindow {w}/{args.windows}  {n:,} samples  {n / (time.perf_counter() - t0):,.0f}/s  "
              f"rss +{(rss_bytes() - base) / 2**20:,.0f} MiB", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    elapsed = time.perf_counter() - t0
    gc.collect()
    grown = rss_bytes() - base
    sample_ids = list(det.entities)[:1000]
    state = sum(len(det.export_state(e)) for e in sample_ids) / len(sample_ids)
    warm = sum(1 for e in det.entities.values() if e.n_normal >= det.spec.warmup_windows)
    out = {
        "entities": len(det.entities), "metrics_per_entity": args.metrics, "warm_entities": warm, "windows_per_entity": args.windows,
        "samples": n, "samples_per_s": n / elapsed,
        "rss_growth_bytes": grown, "bytes_per_entity": grown / len(det.entities),
        "projected_100k_bytes": grown / len(det.entities) * 100_000,
        "serialized_state_bytes_per_entity": state,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    for k, v in out.items():
        print(f"{k:>34}: {v:,.0f}" if isinstance(v, (int, float)) else f"{k:>34}: {v}")
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
