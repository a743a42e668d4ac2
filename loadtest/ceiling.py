"""The CEILING reference: a bare confluent-kafka consumer that only reads and decodes.

Reads every message of a topic from the beginning (partitions assigned explicitly, no group
rebalance), decodes it with orjson, counts messages and samples, and commits its positions to its
own consumer group every 0.5 s, so the load test measures it exactly as it measures the service:
by committed offsets against end offsets. Stops on SIGTERM and prints its counts as JSON.

    python -m loadtest.ceiling --bootstrap 127.0.0.1:9092 --topic T --group G
"""
from __future__ import annotations

import argparse
import signal
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.ceiling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    args = p.parse_args(argv)

    import orjson
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * 1024 * 1024})
    parts = c.list_topics(args.topic, timeout=10).topics[args.topic].partitions
    c.assign([TopicPartition(args.topic, p, 0) for p in parts])
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print("ready", flush=True)
    msgs = samples = 0
    pos: dict[int, int] = {}
    last_commit = time.monotonic()
    while not stop:
        batch = c.consume(10_000, 0.2)
        for m in batch:
            if m.error():
                continue
            obj = orjson.loads(m.value())
            samples += len(obj["samples"]) if isinstance(obj, dict) and "samples" in obj else 1
            msgs += 1
            pos[m.partition()] = m.offset() + 1
        now = time.monotonic()
        if pos and now - last_commit >= 0.1:
            c.commit(offsets=[TopicPartition(args.topic, p, o) for p, o in pos.items()], asynchronous=False)
            last_commit = now
    if pos:
        c.commit(offsets=[TopicPartition(args.topic, p, o) for p, o in pos.items()], asynchronous=False)
    c.close()
    print(orjson.dumps({"messages": msgs, "samples": samples}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
