"""`stream produce`: send JSON lines (or CSV rows) to a topic, one message per line."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "produce", help="send JSON lines or CSV rows to a topic",
        description="Send each line of FILE (or standard input, '-') as one message. Lines are sent as they are, "
        "so invalid input reaches the service (and its dead-letter topic) exactly as a broken producer would send "
        "it. For the metrics topic the key is the series id (metric name plus sorted labels; for a batch, that "
        "of its first sample). A .csv file is turned into metric samples: a 'ts' column (seconds since the "
        "epoch) and one metric per other column, unless --csv-metric-col/--csv-value-col say otherwise.")
    p.add_argument("file", metavar="FILE", help="JSON lines file, .csv file, or '-' for standard input")
    p.add_argument("--topic", required=True, help="topic name, e.g. metrics")
    p.add_argument("--key", help="fixed key for every message (default: the series id for metric events, else none)")
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (default: as fast as possible)")
    p.add_argument("--labels", default="", help="CSV only: labels for every sample, as k=v,k=v")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _key_of(line: bytes) -> bytes | None:
    import orjson

    from stream.events import series_id

    try:
        obj = orjson.loads(line)
        for batch_field in ("samples", "inferences"):  # a batch is keyed by its first item
            if isinstance(obj, dict) and isinstance(obj.get(batch_field), list) and obj[batch_field]:
                obj = obj[batch_field][0]
        if isinstance(obj, dict):
            if isinstance(obj.get("metric"), str):
                labels = obj.get("labels") if isinstance(obj.get("labels"), dict) else {}
                return series_id(obj["metric"], {str(k): str(v) for k, v in labels.items()}).encode()
            if isinstance(obj.get("model"), str):
                return obj["model"].encode()
    except Exception:  # noqa: BLE001 - an unparseable line is sent as is, without a key
        return None
    return None


def _csv_lines(path: str, labels: dict[str, str]):
    import csv

    import orjson

    with open(path, newline="") as fh:
        rows = csv.DictReader(fh)
        for row in rows:
            ts = float(row.pop("ts"))
            samples = [{"metric": k, "labels": labels, "value": float(v), "ts": ts} for k, v in row.items() if v != ""]
            yield orjson.dumps({"samples": samples})


def run(args) -> int:
    import os
    import time

    from confluent_kafka import Producer

    from stream.progress import Progress
    from stream.settings import get_settings

    from stream.kafka.errors import FailFast, describe

    s = get_settings()
    fatal = FailFast()  # a wrong password or a refused TLS handshake ends the command at once
    producer = Producer({**s.kafka_client_config(), "linger.ms": 20, "compression.type": "lz4",
                         "enable.idempotence": True, "message.max.bytes": max(s.max_message_bytes * 4, 1_048_576),
                         "error_cb": fatal})
    errors: list[str] = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))

    total = None
    if args.file == "-":
        lines = (l.rstrip(b"\r\n") for l in sys.stdin.buffer)
    elif args.file.endswith(".csv"):
        labels = dict(kv.split("=", 1) for kv in args.labels.split(",") if kv)
        lines = _csv_lines(args.file, labels)
    else:
        if not os.path.exists(args.file):
            print(f"stream produce: {args.file}: file not found", file=sys.stderr)
            return 2
        with open(args.file, "rb") as fh:
            total = sum(1 for _ in fh)
        lines = (l.rstrip(b"\r\n") for l in open(args.file, "rb"))
    fixed_key = args.key.encode() if args.key else None
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    next_t = time.monotonic()
    sent = 0
    with Progress(total, f"produce → {args.topic}", enabled=None if not args.no_progress else False, unit="msg") as bar:
        for line in lines:
            if not line.strip():
                continue
            key = fixed_key if fixed_key is not None else _key_of(line)
            while True:
                try:
                    producer.produce(args.topic, value=line, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            if fatal.error is not None:
                print(f"stream produce: {describe(s, fatal.error)}", file=sys.stderr)
                return 1
            sent += 1
            bar.update()
            if interval:
                next_t += interval
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    deadline = time.monotonic() + 60
    left = len(producer)
    while left and fatal.error is None and time.monotonic() < deadline:
        left = producer.flush(0.5)
    if fatal.error is not None:
        print(f"stream produce: {describe(s, fatal.error)}", file=sys.stderr)
        return 1
    if left or errors:
        print(f"stream produce: {len(errors) + left} message(s) not delivered: "
              f"{describe(s, errors[0] if errors else 'timed out after 60 s')}", file=sys.stderr)
        return 1
    print(f"produced {sent} message(s) to {args.topic}", file=sys.stderr)
    return 0
