"""python -m loadtest run [--quick] --report OUT.json [...]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def broker_problem(bootstrap: str, timeout: float = 10.0) -> str | None:
    """None if a broker answers at ``bootstrap``, else one line saying what is wrong and what to do
    (before the run starts anything: no minutes of client errors and a traceback at the end)."""
    import logging
    import os

    from stream.kafka.errors import describe, list_topics_failfast
    from stream.settings import Settings

    quiet = logging.getLogger("loadtest.preflight")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    settings = Settings.load({**os.environ, "STREAM_BOOTSTRAP_SERVERS": bootstrap})
    _, md, err = list_topics_failfast(settings, timeout, logger=quiet)
    if md is not None:
        return None
    hint = " (a local one: `stream kafka up`; another: --bootstrap HOST:PORT)"
    return describe(settings, err) + hint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest", description="Load test of the stream service.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser(
        "run", help="run the load test and write a report",
        description="Generate N entities x M metrics (daily pattern + noise; --batch entities' scrapes per message, "
        "as a collector sends them; injected anomalies of six kinds), run one `stream worker` in an isolated "
        "deployment against the "
        "broker at max rate and then at a fixed rate, run the ceiling (bare consumer) and the naive pipeline "
        "(Faust + river HST per sample) on the same data, and write OUT.json, OUT.md and OUT-*.png. "
        "Event time is a history replay: it runs much faster than wall time, so windows close quickly.")
    r.add_argument("--report", required=True, type=Path, help="output JSON path (OUT.md and OUT-*.png beside it)")
    r.add_argument("--quick", action="store_true",
                   help="small run (< 5 min): 100 entities x 5 metrics scraped every 30 s, 6 h of event time (shorter "
                   "injections), 3 injections per kind, 30 s fixed-rate phase")
    r.add_argument("--bootstrap", default=None, help="Kafka bootstrap HOST:PORT (default STREAM_BOOTSTRAP_SERVERS "
                   "or 127.0.0.1:9092)")
    r.add_argument("--entities", type=int, help="entities (default 1000; quick 100)")
    r.add_argument("--metrics", type=int, help="metrics per entity (default 5)")
    r.add_argument("--batch", type=int, help="entities per input message, i.e. batch x metrics samples per message "
                   "(default 25: 125 samples, a small collector / remote-write batch; 1: one message per entity)")
    r.add_argument("--step", type=float, help="scrape interval in event-time seconds (default 30)")
    r.add_argument("--hours", type=float, help="event time replayed in the max-rate phase (default 6, the same for --quick)")
    r.add_argument("--warmup", type=float, metavar="FRACTION",
                   help="share of the max-rate phase's scrapes every system processes first, unmeasured, so "
                   "samples/s is the sustained rate and not an average with start-up (series and models are "
                   "created there) (default 0.1; 0: none)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, help="messages/s of the service's first phase (default: as fast as possible)")
    g.add_argument("--max-rate", action="store_true", help="first phase as fast as possible (the default)")
    r.add_argument("--second-rate", type=float,
                   help="messages/s of the fixed-rate phase (default: half the first phase's measured rate)")
    r.add_argument("--duration", type=float, help="wall seconds of the fixed-rate phase (default 60; quick 30; 0: skip)")
    r.add_argument("--partitions", type=int, help="partitions of the input topics (default 4)")
    r.add_argument("--per-kind", type=int, help="injections per anomaly kind in phase 1 (default entities/40, >= 2; quick 3); the fixed-rate phase gets at least entities/10")
    r.add_argument("--kinds", help="comma-separated anomaly kinds to inject (default all: spike,level_shift,variance,"
                   "drift,correlated,missing)")
    r.add_argument("--no-offline", action="store_true", help="skip scoring the data with the engine in-process")
    r.add_argument("--no-references", action="store_true", help="skip the ceiling and naive runs")
    r.add_argument("--keep-topics", action="store_true", help="do not delete the run's topics at the end")
    r.add_argument("--commit-interval", type=float, default=1.0,
                   help="commit interval (s) of the service and the naive Faust app (default 1; throughput is "
                        "measured to the moment everything is committed)")
    r.add_argument("--repartition", action="store_true",
                   help="run the service through its internal re-partitioning topic (STREAM_COPARTITIONED_INPUT="
                        "false). Default: co-partitioned, since the generated input is keyed by collector batch "
                        "and every entity stays in one batch, hence on one partition")
    r.add_argument("--timeout", type=float,
                   help="wall seconds each phase may take to catch up before the run fails (default 600; a run "
                        "at 100,000 entities needs more: its commits write every changed entity's state)")
    r.add_argument("--worker-env", action="append", default=[], metavar="STREAM_NAME=VALUE",
                   help="a setting for the service's worker (repeatable), e.g. STREAM_INGEST_BATCH_MESSAGES=1 "
                        "to compare worker settings on the same data")
    args = p.parse_args(argv)

    import os

    from loadtest.run import Config, run

    cfg = Config(quick=args.quick)
    if args.quick:
        cfg.entities, cfg.hours, cfg.duration, cfg.step, cfg.per_kind = 100, 6.0, 30.0, 30.0, 3
        cfg.durations = {"level": 1200.0, "variance": 900.0, "drift": 2400.0, "missing": 900.0}
    cfg.bootstrap = args.bootstrap or os.environ.get("STREAM_BOOTSTRAP_SERVERS", cfg.bootstrap)
    for name in ("entities", "metrics", "batch", "step", "hours", "warmup", "rate", "second_rate", "duration", "partitions", "per_kind",
                 "timeout"):
        v = getattr(args, name)
        if v is not None:
            setattr(cfg, name, v)
    cfg.references = not args.no_references
    cfg.offline = not args.no_offline
    if args.kinds:
        cfg.kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    cfg.keep_topics = args.keep_topics
    cfg.commit_interval = args.commit_interval
    cfg.copartitioned = not args.repartition
    for item in args.worker_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("STREAM_"):
            p.error(f"--worker-env takes STREAM_NAME=VALUE, got {item!r}")
        cfg.worker_env[name] = value
    if cfg.batch < 1:
        p.error("--batch must be >= 1")
    if not cfg.timeout > 0:
        p.error("--timeout must be > 0")
    if not 0.0 <= cfg.warmup < 1.0:
        p.error("--warmup must be in [0, 1)")
    err = broker_problem(cfg.bootstrap)
    if err:
        print(f"python -m loadtest: {err}", file=sys.stderr)
        return 2
    report = run(cfg, args.report)
    print(args.report.with_suffix(".md").read_text())
    return 0 if report else 1


if __name__ == "__main__":
    sys.exit(main())
