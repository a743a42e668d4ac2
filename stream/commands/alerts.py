"""`stream alerts tail`: read the alerts topic."""
from __future__ import annotations

import sys
import time


def register(sub) -> None:
    p = sub.add_parser("alerts", help="read alerts", description="Read the alerts topic.")
    a = p.add_subparsers(dest="alerts_cmd", metavar="ACTION", required=True)
    t = a.add_parser("tail", help="print alerts as they arrive",
                     description="Print alerts as they arrive: readable (colored on a terminal) by default, one JSON "
                     "object per line with --json. Reads without a consumer group (commits nothing).")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument("--from-beginning", action="store_true", help="start at the oldest alert (default: new ones only)")
    t.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop after this many seconds (default: run until Ctrl-C)")
    t.add_argument("--max", type=int, default=None, metavar="N", help="stop after N alerts")
    t.add_argument("--topic", help="topic to read (default: STREAM_TOPIC_ALERTS)")
    t.set_defaults(func=run_tail)


_COLORS = {"firing": "\033[1;31m", "resolved": "\033[32m", "data_drift": "\033[1;33m"}


def format_alert(a: dict, color: bool = False) -> str:
    ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.get("window", {}).get("start", 0)))
    status = a.get("status", "?").upper()
    head = f"{status:<8} {a.get('kind', '?'):<17} {a.get('severity', ''):<8} {a.get('series', {}).get('id', '?')}"
    parts = [f"window {ts}Z +{a['window']['end'] - a['window']['start']:g}s"]
    if isinstance(a.get("score"), (int, float)):
        parts.append(f"score {a['score']:.3f}")
    if isinstance(a.get("grade"), (int, float)):
        parts.append(f"grade {a['grade']:.2f}")
    top = (a.get("attribution") or [])[:2]
    if top:
        parts.append("top: " + ", ".join(
            f"{t['feature']} {t['direction']} ({t['value']:.4g} vs {t['baseline']['mean']:.4g})"
            if t.get("baseline", {}).get("mean") is not None else f"{t['feature']} {t['direction']}" for t in top))
    if a.get("drift"):
        ch = a["drift"].get("changes") or []
        if ch:
            parts.append("change: " + ", ".join(f"{c.get('metric', c.get('feature', '?'))} "
                                                f"{c.get('before_mean', float('nan')):.4g}→{c.get('after_mean', float('nan')):.4g}"
                                                for c in ch[:3]))
    line = head + "  " + " · ".join(parts)
    if color:
        c = _COLORS.get(a.get("kind")) if a.get("status") == "firing" and a.get("kind") != "anomaly" else _COLORS.get(a.get("status"))
        if c:
            line = c + line + "\033[0m"
    return line


def run_tail(args) -> int:
    import uuid

    import orjson
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

    from stream.settings import get_settings

    s = get_settings()
    topic = args.topic or s.topic_alerts
    c = Consumer({**s.kafka_client_config(), "group.id": f"stream-alerts-tail-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest" if args.from_beginning else "latest"})
    try:
        md = c.list_topics(topic, timeout=10)
    except KafkaException as exc:
        from stream.kafka.errors import describe

        print(f"stream alerts tail: {describe(s, exc)}", file=sys.stderr)
        return 1
    if topic not in md.topics or md.topics[topic].error is not None:
        print(f"stream alerts tail: topic {topic!r} not found (run `stream topics apply`)", file=sys.stderr)
        return 1
    start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
    c.assign([TopicPartition(topic, p, start) for p in md.topics[topic].partitions])
    color = sys.stdout.isatty() and not args.json
    deadline = time.monotonic() + args.timeout if args.timeout is not None else None
    n = 0
    try:
        while args.max is None or n < args.max:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            msg = c.poll(0.5 if remaining is None else min(0.5, remaining))
            if msg is None:
                continue
            if msg.error():
                continue
            if args.json:
                sys.stdout.write(msg.value().decode() + "\n")
            else:
                try:
                    sys.stdout.write(format_alert(orjson.loads(msg.value()), color) + "\n")
                except Exception:  # noqa: BLE001 - a foreign message on the topic is shown raw
                    sys.stdout.write(msg.value().decode(errors="replace") + "\n")
            sys.stdout.flush()
            n += 1
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
    return 0
