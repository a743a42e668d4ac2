"""The NAIVE reference: what a first Faust + river pipeline looks like.

One Faust agent on the input topic; for every sample, the series' own
``river.anomaly.HalfSpaceTrees`` (river's defaults) scores and learns a one-feature vector: the
sample value scaled to [0, 1] with the series' running min / max. It keeps no windows, publishes
nothing and only counts (samples scored, and those scoring above 0.9). Run as its own worker
process with its own app id (= consumer group):

    LOADTEST_NAIVE_APP=naive-x LOADTEST_NAIVE_TOPIC=T STREAM_BOOTSTRAP_SERVERS=127.0.0.1:9092 \\
        python -m loadtest.naive worker -l warn --web-port 6099
"""
from __future__ import annotations

import os
import sys

import faust
import orjson
from river.anomaly import HalfSpaceTrees

from stream.settings import get_settings
from stream.worker import faust_broker_kwargs

s = get_settings()
(s.state_path / "faust").mkdir(parents=True, exist_ok=True)
app = faust.App(
    os.environ.get("LOADTEST_NAIVE_APP", "loadtest-naive"),
    **faust_broker_kwargs(s),
    store="memory://",
    datadir=str(s.state_path / "faust" / os.environ.get("LOADTEST_NAIVE_APP", "loadtest-naive")),
    topic_partitions=s.topic_partitions,
    broker_commit_interval=s.commit_interval_seconds,
    web_bind="127.0.0.1",
    stream_wait_empty=False,
)
topic = app.topic(os.environ.get("LOADTEST_NAIVE_TOPIC", "metrics"), key_type=bytes, value_type=bytes,
                  key_serializer="raw", value_serializer="raw")
models: dict[str, list] = {}  # series -> [model, min, max]
counts = {"samples": 0, "high": 0}


@app.agent(topic)
async def score(stream):
    async for value in stream:
        obj = orjson.loads(value)
        for smp in obj["samples"] if "samples" in obj else (obj,):
            labels = smp.get("labels") or {}
            key = smp["metric"] + "|" + "|".join(f"{k}={labels[k]}" for k in sorted(labels))
            v = float(smp["value"])
            st = models.get(key)
            if st is None:
                st = models[key] = [HalfSpaceTrees(seed=42), v, v]
            st[1] = min(st[1], v)
            st[2] = max(st[2], v)
            span = st[2] - st[1]
            x = {"v": (v - st[1]) / span if span > 0 else 0.5}
            if st[0].score_one(x) > 0.9:
                counts["high"] += 1
            st[0].learn_one(x)
            counts["samples"] += 1


@app.page("/count")
async def count_page(web, request):
    return web.json({**counts, "series": len(models)})


if __name__ == "__main__":
    sys.argv[0] = "loadtest.naive"
    app.main()
