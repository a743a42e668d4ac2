"""Offline throughput of the worker's per-sample path: decode -> route -> detect -> commit-time export.

The worker's hot path without Kafka: every input message (a load-test batch of ``--batch``
entities' scrapes, pre-serialized by :class:`loadtest.run.Feed` from a
:class:`loadtest.generate.Workload`) is decoded (:func:`stream.events.decode_metrics`), routed
to its internal partitions (:class:`stream.routing.Router`), decoded again as the ingest agent
does (:func:`stream.routing.decode_payload`) and every sample is folded into its entity
(:meth:`stream.detect.engine.Detector.ingest`, closing and scoring windows); every
``--commit-every`` messages the entities touched since the last commit are serialized as the
worker writes them (:meth:`~stream.detect.engine.Detector.export_parts`, or ``export_state`` in
a checkout from before it, + ``stream.worker.pack_state``).
Prints samples/s (best of ``--repeat`` runs, a fresh detector each).

The code measured is the tree given by ``--repo`` (default: the current directory), so one copy
of this script compares two checkouts side by side::

    cd /work/main && .venv/bin/python /work/wt-engine/benchmarks/bench_worker_path.py
    cd /work/wt-engine && .venv/bin/python benchmarks/bench_worker_path.py

``--profile`` prints a cProfile of one run instead (sorted by own time).

``--gc``: the cyclic garbage collector as the worker sets it (``worker``, the default:
``gc.freeze()`` after start-up, then the young generation collected every ``STREAM_GC_THRESHOLD``
net allocations), Python's defaults (``python``: every 700), or ``both``, alternated run by run
and compared side by side::

    .venv/bin/python benchmarks/bench_worker_path.py --entities 1000 --scrapes 120 --gc both

Offline the two are equal (best 85.0k vs 80.0k samples/s, noise; Python's collector ran 381 young
collections, 0.2 s of a 8.9 s run): this path frees what it allocates at once. The worker's gain
is in what only the worker holds: fetched records, events and internal messages in flight, which
survive young collections and made each one rescan them (7,800 collections, 5.3-5.9 s of a 46 s
load-test phase; README, Load test).
"""
from __future__ import annotations

import argparse
import functools
import inspect
import os
import pathlib
import sys
import tempfile
import time
import zlib


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=os.getcwd(), help="checkout whose code is measured (default: cwd)")
    ap.add_argument("--entities", type=int, default=200)
    ap.add_argument("--metrics", type=int, default=5)
    ap.add_argument("--scrapes", type=int, default=240, help="scrapes per entity (event-time steps)")
    ap.add_argument("--step", type=float, default=30.0, help="scrape interval, event-time seconds")
    ap.add_argument("--window", type=float, default=60.0, help="detector window, seconds")
    ap.add_argument("--batch", type=int, default=25, help="entities per input message")
    ap.add_argument("--lanes", type=int, default=8, help="internal partitions")
    ap.add_argument("--commit-every", type=int, default=200, help="messages between state exports")
    ap.add_argument("--anomalies", type=int, default=0, help="injections per kind (Workload.schedule)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--row-by-row", action="store_true",
                    help="Detector.ingest per sample instead of ingest_rows per entity chunk (the worker's path)")
    ap.add_argument("--profile", action="store_true", help="cProfile one run (top 30 by own time)")
    ap.add_argument("--gc", choices=("worker", "python", "both"), default="worker",
                    help="garbage collector thresholds: the worker's (STREAM_GC_THRESHOLD), Python's "
                         "defaults, or both alternated (default: worker)")
    args = ap.parse_args(argv)

    repo = str(pathlib.Path(args.repo).resolve())
    sys.path.insert(0, repo)
    from loadtest.generate import Workload, spec_yaml
    from loadtest.run import Feed
    from stream.detect import engine
    from stream.detect.engine import Detector
    from stream.detect.spec import load_specs
    from stream.events import decode_metrics
    from stream.routing import Router, decode_payload

    if not engine.__file__.startswith(repo):
        sys.exit(f"stream imported from {engine.__file__}, not from {repo}")
    d = tempfile.mkdtemp()
    pathlib.Path(d, "lt.yaml").write_text(spec_yaml(args.window))
    wl = Workload(entities=args.entities, metrics=args.metrics, step=args.step)
    if args.anomalies:
        wl.schedule(0, args.scrapes, per_kind=args.anomalies, seed=1)
    feed = Feed(wl, 0, args.scrapes, batch=args.batch)
    # the routing API: route(samples, src partition, src offset) (payload v2), or route(batch)
    # of (src partition, src offset, samples) per input message (payload v3)
    batched = len(inspect.signature(Router.route).parameters) == 2
    compiled = hasattr(Router, "add_message")
    rows_api = hasattr(Detector, "ingest_rows") and not args.row_by_row
    chunks_api = hasattr(Detector, "ingest_chunks") and not args.row_by_row
    parts_api = hasattr(Detector, "export_parts")
    try:
        from stream.worker import pack_state as pack
    except ImportError:
        pack = functools.partial(zlib.compress, level=1)

    def run() -> tuple[int, int]:
        specs = load_specs(d, window=args.window, lateness=0.0)
        dets = {s.name: Detector(s) for s in specs}
        router = Router(dets, args.lanes)
        dirty: dict = {}
        n_alerts = n_exports = 0
        for i, raw in enumerate(feed.values):
            sp, so = i % args.lanes, i
            if compiled:  # the worker's path: decode, validate and route in one (compiled) pass
                out = router.outbox() if hasattr(router, "outbox") else {}
                router.add_message(raw, sp, so, out, max_bytes=10**7, max_batch=10**5)
                routed = router.encode(out)
            else:
                good, _bad = decode_metrics(raw, max_bytes=10**7, max_batch=10**5)
                routed = router.route([(sp, so, good)]) if batched else router.route(good, sp, so)
            for lane, payload in routed.items():
                if chunks_api:  # the worker's path: columns, one call per entity and message
                    for eid, (labels, chunks) in decode_payload(payload, None, columns=True).items():
                        det = dets[eid.split("/", 1)[0]]
                        alerts, folded = det.ingest_chunks(eid, labels, chunks, lane)
                        n_alerts += len(alerts)
                        if folded:
                            dirty[eid] = det
                    continue
                if batched:
                    items = [(eid, labels, csp, cso, rows) for eid, (labels, chunks) in
                             decode_payload(payload, None).items() for csp, cso, rows in chunks]
                else:
                    psp, pso, ents = decode_payload(payload, None)
                    items = [(eid, labels, psp, pso, rows) for eid, (labels, rows) in ents.items()]
                for eid, labels, csp, cso, rows in items:
                    det = dets[eid.split("/", 1)[0]]
                    if det.seen(eid, csp, cso):
                        continue
                    if rows_api:  # the worker's path: an entity's rows of one source message in one call
                        n_alerts += len(det.ingest_rows(eid, labels, rows, offset=cso, partition=csp, lane=lane))
                    else:
                        hit = (eid, labels)
                        for metric, ts, value in rows:
                            n_alerts += len(det.ingest(metric, labels, ts, value, offset=cso, partition=csp,
                                                       lane=lane, entity=hit))
                    det.advance_cursor(eid, csp, cso)
                    dirty[eid] = det
            if i % args.commit_every == args.commit_every - 1:
                for eid, det in dirty.items():  # as the worker stores it
                    if parts_api:  # the sample part, and the window part when a window closed
                        fast, slow, _slot = det.export_parts(eid)
                        pack(fast)
                        if slow is not None:
                            pack(slow)
                    else:
                        pack(det.export_state(eid))
                    n_exports += 1
                dirty.clear()
        return n_alerts, n_exports

    print(f"code: {repo} | {args.entities} entities x {args.metrics} metrics, step {args.step:g} s, "
          f"window {args.window:g} s: {len(feed)} messages, {feed.samples:,} samples")
    import scipy.stats  # noqa: F401  (imported by the first decision: not part of the measure)

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(run)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    import gc

    python_gc = gc.get_threshold()
    try:  # the worker's own call (stream.metrics.tune_gc) with its default threshold
        from stream.metrics import tune_gc
        from stream.settings import Settings

        def worker_gc() -> None:
            tune_gc(Settings.load({}).gc_threshold)
    except ImportError:  # a checkout from before the setting: Python's thresholds
        def worker_gc() -> None:
            gc.set_threshold(*python_gc)
    gc.collect()
    gc.freeze()  # as the worker does after start-up (both modes)
    modes = {"worker": ["worker"], "python": ["python"], "both": ["python", "worker"]}[args.gc]
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for mode in modes:
            if mode == "worker":
                worker_gc()
            else:
                gc.set_threshold(*python_gc)
            t = time.perf_counter()
            n_alerts, n_exports = run()
            el = time.perf_counter() - t
            best[mode] = min(best.get(mode, el), el)
            print(f"  [gc {mode} {gc.get_threshold()[0]}] {feed.samples / el:,.0f} samples/s ({el:.2f} s, "
                  f"{n_alerts} alerts, {n_exports} exports)")
    for mode, el in best.items():
        print(f"best, gc {mode}: {feed.samples / el:,.0f} samples/s ({1e6 * el / feed.samples:.2f} us per sample)")
    if len(best) == 2:
        print(f"worker gc / python gc: {best['python'] / best['worker']:.2f}x")


if __name__ == "__main__":
    main()
