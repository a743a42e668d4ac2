"""`stream demo`: produce demo metric streams with injected anomalies."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="produce demo series with injected anomalies",
        description="Produce a few demo series to the metrics topic: first --history hours of event time replayed "
        "in seconds (models warm up on it; one series gets a x10 spike and one a level shift near its end), then "
        "live samples with event time running --speed times faster than the clock and a new anomaly every few "
        "minutes of event time. Runs until Ctrl-C or --live-minutes.")
    p.add_argument("--series", type=int, default=4, help="number of series (default 4)")
    p.add_argument("--history", type=float, default=6.0, help="hours of history to replay first (default 6)")
    p.add_argument("--speed", type=float, default=60.0, help="event seconds per wall second when live (default 60)")
    p.add_argument("--live-minutes", type=float, default=None, help="stop after this many wall minutes live")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    import time

    import orjson
    from confluent_kafka import Producer

    from stream.demo import Injection, generate, sample_value
    from stream.events import series_id
    from stream.settings import get_settings

    s = get_settings()
    prod = Producer({**s.kafka_client_config(), "linger.ms": 20, "compression.type": "lz4"})
    now = time.time()
    step = 10.0
    start = now - args.history * 3600
    start -= start % 60
    hist_end = start + args.history * 3600
    injections = (Injection(min(1, args.series - 1), "spike", hist_end - 1800, 60),
                  Injection(min(2, args.series - 1), "level_shift", hist_end - 900, 600))

    def send(ev):
        key = series_id(ev["metric"], ev["labels"]).encode()
        while True:
            try:
                prod.produce(s.topic_metrics, key=key, value=orjson.dumps(ev))
                break
            except BufferError:
                prod.poll(0.1)
        prod.poll(0)

    n = 0
    for ev in generate(args.series, start, args.history, step, injections=injections):
        send(ev)
        n += 1
    prod.flush(30)
    print(f"demo: replayed {n} samples ({args.history:g} h of event time); injected: "
          + ", ".join(f"{i.kind} on h{i.series} at {time.strftime('%H:%M', time.gmtime(i.start))}Z" for i in injections),
          file=sys.stderr, flush=True)
    # live: event time runs `speed` times faster; a new anomaly every 20 minutes of event time
    import random

    rng = random.Random(11)
    t_event = hist_end
    wall0 = time.monotonic()
    kinds = ("spike", "level_shift", "spike", "creep")
    live_inj: list[Injection] = []
    k = 0
    try:
        while args.live_minutes is None or time.monotonic() - wall0 < args.live_minutes * 60:
            if int((t_event - hist_end) // 1200) >= len(live_inj):
                inj = Injection(k % args.series, kinds[k % len(kinds)], t_event + 300, 60 if kinds[k % 4] == "spike" else 600)
                live_inj.append(inj)
                print(f"demo: injecting {inj.kind} on h{inj.series} at {time.strftime('%H:%M', time.gmtime(inj.start))}Z",
                      file=sys.stderr, flush=True)
                k += 1
            for sidx in range(args.series):
                send({"metric": "http_latency_ms", "labels": {"host": f"h{sidx}"},
                      "value": sample_value(sidx, t_event, rng, tuple(live_inj)), "ts": t_event})
            prod.poll(0)
            t_event += step
            time.sleep(step / args.speed)
    except KeyboardInterrupt:
        pass
    prod.flush(10)
    return 0
