"""`stream alertmanager-bridge`: forward alert events to Prometheus Alertmanager (API v2)."""
from __future__ import annotations

import sys
import time


def register(sub) -> None:
    p = sub.add_parser(
        "alertmanager-bridge", help="forward firing and resolved alerts to Alertmanager",
        description="Consume the alerts topic in its own consumer group and POST each alert to Alertmanager's "
        "/api/v2/alerts: labels alertname (= kind), detector, severity, series, incident and the entity's labels; "
        "annotations summary, attribution, alert_id, window, score. A resolved event ends its incident's alert "
        "(endsAt = now). Offsets are committed only after Alertmanager accepted the batch: while it is down the "
        "bridge retries with exponential backoff and loses nothing (delivery is at least once; Alertmanager "
        "merges repeats). Runs until Ctrl-C / SIGTERM.",
        epilog="Exit status: 0 on Ctrl-C / SIGTERM; 2 on bad arguments.")
    p.add_argument("--alertmanager-url", required=True, metavar="URL",
                   help="Alertmanager base URL, e.g. http://alertmanager:9093 (no default: locally 9093 is the "
                   "`stream kafka up` broker's controller port)")
    p.add_argument("--group", metavar="G", help="consumer group (default: <STREAM_APP_ID>-alertmanager-bridge)")
    p.add_argument("--topic", help="alerts topic (default: STREAM_TOPIC_ALERTS)")
    p.add_argument("--firing-ttl", type=float, default=86400.0, metavar="S",
                   help="a firing alert without a resolved event ends in Alertmanager after S seconds (default 86400)")
    p.add_argument("--batch", type=int, default=100, metavar="N", help="alerts per POST at most (default 100)")
    p.add_argument("--max-backoff", type=float, default=30.0, metavar="S",
                   help="longest wait between retries while Alertmanager is unreachable (default 30)")
    p.add_argument("--metrics-port", type=int, metavar="P",
                   help="serve the bridge's counters (delivered, failures, rejected) at http://BIND:P/metrics")
    p.add_argument("--metrics-bind", default="127.0.0.1", metavar="ADDR", help="address for --metrics-port")
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(f"stream alertmanager-bridge: {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    import logging
    import signal
    import threading

    import orjson
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from stream.alertmanager import AlertmanagerClient, to_alertmanager
    from stream.settings import get_settings

    s = get_settings()
    if not args.alertmanager_url.startswith(("http://", "https://")):
        _say(f"--alertmanager-url must start with http:// or https://, got {args.alertmanager_url!r}")
        return 2
    topic = args.topic or s.topic_alerts
    group = args.group or f"{s.app_id}-alertmanager-bridge"
    quiet = logging.getLogger("stream.alertmanager_bridge.librdkafka")  # we name the broker ourselves
    quiet.setLevel(logging.CRITICAL)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    metrics = None
    if args.metrics_port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        from stream.alertmanager import bridge_metrics

        registry = CollectorRegistry(auto_describe=True)
        metrics = bridge_metrics(registry)
        try:
            start_http_server(args.metrics_port, addr=args.metrics_bind, registry=registry)
        except OSError as exc:
            _say(f"cannot listen on {args.metrics_bind}:{args.metrics_port}: {exc.strerror} "
                 "(choose another --metrics-port, or --metrics-bind)")
            return 2
    am = AlertmanagerClient(args.alertmanager_url, max_backoff=args.max_backoff, log=_say, stop=stop.is_set,
                            sleep=stop.wait, metrics=metrics)
    c = Consumer({**s.kafka_client_config(), "group.id": group, "enable.auto.commit": False,
                  "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                  # a long Alertmanager outage keeps us retrying without polling: stay in the group
                  "max.poll.interval.ms": 86_400_000}, logger=quiet)
    # wait for the broker and the topic (retrying: a bridge started before Kafka must not crash)
    delay, said = 1.0, None
    while not stop.is_set():
        try:
            md = c.list_topics(topic, timeout=10)
            if topic in md.topics and md.topics[topic].error is None:
                break
            msg = f"topic {topic!r} not found on {s.bootstrap_servers} (run `stream topics apply`)"
        except KafkaException as exc:
            from stream.kafka.errors import describe

            msg = describe(s, exc)
        if msg != said:
            _say(f"{msg}; retrying")
            said = msg
        stop.wait(delay)
        delay = min(delay * 2, 30.0)
    if stop.is_set():
        c.close()
        return 0
    c.subscribe([topic])
    _say(f"forwarding {topic} (group {group}, Kafka {s.bootstrap_servers}) to {am.url}/api/v2/alerts")
    try:
        while not stop.is_set():
            msgs = c.consume(num_messages=args.batch, timeout=1.0)
            if not msgs:
                continue
            batch, ends = [], {}
            for m in msgs:
                if m.error():
                    continue
                ends[(m.topic(), m.partition())] = m.offset() + 1
                try:
                    a = orjson.loads(m.value())
                    if not isinstance(a, dict):
                        raise ValueError("not an object")
                    batch.append(to_alertmanager(a, firing_ttl=args.firing_ttl))
                except Exception as exc:  # noqa: BLE001 - a bad record is reported and skipped
                    _say(f"skipping record {m.topic()}/{m.partition()}@{m.offset()}: not an alert event ({exc})")
            if not am.deliver(batch):
                break  # stopped while Alertmanager was down: nothing committed, the batch comes again
            if ends:
                tps = [TopicPartition(t, p, o) for (t, p), o in ends.items()]
                for attempt in range(5):
                    try:
                        c.commit(offsets=tps, asynchronous=False)
                        break
                    except KafkaException as exc:
                        _say(f"commit failed ({exc}); retrying" if attempt < 4 else
                             f"commit failed ({exc}); these alerts may be sent again (Alertmanager merges them)")
                        time.sleep(min(2 ** attempt, 10))
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
    _say(f"stopped; {am.delivered} alert(s) delivered")
    return 0
