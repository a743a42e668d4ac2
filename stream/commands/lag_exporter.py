"""`stream lag-exporter`: consumer lag of any consumer groups as Prometheus gauges."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "lag-exporter", help="serve consumer-group lag (messages, seconds) for Prometheus",
        description="Serve stream_consumer_lag_messages and stream_consumer_lag_seconds {group, topic, partition} "
        "for every partition the given consumer groups have committed offsets for (all topics, or --topic), "
        "at http://BIND:PORT/metrics. Lag in messages = log-end offset - committed offset; lag in seconds = "
        "age of the oldest record not yet processed (0 when caught up). stream_consumer_lag_up{group} is 0 "
        "while the broker cannot be asked. Unlike a worker's own /metrics it keeps reporting while the "
        "workers are stopped or stuck. Runs until Ctrl-C / SIGTERM; an unreachable broker is retried.",
        epilog="Exit status: 0 on Ctrl-C / SIGTERM; 2 when the port cannot be opened or on bad arguments.")
    p.add_argument("--group", action="append", required=True, metavar="G",
                   help="consumer group to watch (repeat for several), e.g. the workers' STREAM_APP_ID")
    p.add_argument("--topic", action="append", metavar="T", help="only these topics (repeatable; default: all)")
    p.add_argument("--port", type=int, default=9308, help="HTTP port of /metrics (default 9308)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    p.add_argument("--interval", type=float, default=5.0, metavar="S",
                   help="seconds between polls of the broker (default 5)")
    p.set_defaults(func=run)


def run(args) -> int:
    import signal
    import threading

    from prometheus_client import CollectorRegistry, start_http_server

    from stream.lag import LagMonitor, make_gauges
    from stream.settings import get_settings

    s = get_settings()
    if args.interval <= 0:
        print("stream lag-exporter: --interval must be positive", file=sys.stderr)
        return 2
    registry = CollectorRegistry(auto_describe=True)
    gauges = make_gauges(registry)
    try:
        server, _thread = start_http_server(args.port, addr=args.bind, registry=registry)
    except OSError as exc:
        print(f"stream lag-exporter: cannot listen on {args.bind}:{args.port}: {exc.strerror} "
              "(choose another --port, or --bind)", file=sys.stderr)
        return 2
    mon = LagMonitor(s, args.group, gauges=gauges, topics=args.topic, isolated=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"stream lag-exporter: serving lag of group(s) {', '.join(args.group)} at "
          f"http://{args.bind}:{args.port}/metrics (Kafka at {s.bootstrap_servers}, every {args.interval:g} s)",
          file=sys.stderr, flush=True)
    state = {"err": None, "first": True}

    def on_error(exc: Exception) -> None:
        msg = str(exc)
        if state["err"] != msg:
            print(f"stream lag-exporter: {msg}; retrying every {args.interval:g} s", file=sys.stderr, flush=True)
            state["err"] = msg

    def on_ok(rows) -> None:
        if state["err"] is not None:
            print("stream lag-exporter: Kafka reachable again", file=sys.stderr, flush=True)
            state["err"] = None
        if state["first"]:
            state["first"] = False
            print(f"stream lag-exporter: first poll: {len(rows)} partition(s), "
                  f"{sum(r.messages for r in rows)} message(s) of lag", file=sys.stderr, flush=True)

    try:
        mon.run_forever(args.interval, stop, on_error, on_ok)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0
