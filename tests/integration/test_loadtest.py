"""Smoke run of the load test (python -m loadtest): a tiny configuration end to end on the broker.

Six entities with one metric each (a single-metric entity is where a one-scrape spike stands
out), an hour and a half of event time with spikes only, both references, a short fixed-rate
phase. Checks the report's shape and that the service caught at least one spike.
"""
from __future__ import annotations

import json

import pytest

from loadtest.run import Config, run

pytestmark = pytest.mark.kafka


def test_loadtest_smoke(kafka_bootstrap, tmp_path):
    out = tmp_path / "lt.json"
    cfg = Config(bootstrap=kafka_bootstrap, entities=6, metrics=1, step=30.0, hours=1.5, duration=4.0,
                 per_kind=3, kinds=("spike",), timeout=60.0)
    run(cfg, out)
    r = json.loads(out.read_text())
    for key in ("service", "ceiling", "naive"):
        assert r[key]["samples_per_s"] > 0 and r[key]["messages_per_s"] > 0, key
    # every system first takes the same unmeasured warm-up (10 % of the 180 scrapes: 18 messages of
    # one batch each), then the measured rest; samples/s is the rate over the rest only
    for key in ("service", "ceiling", "naive"):
        assert r[key]["warmup"]["messages"] == 18, key
        assert r[key]["messages"] == 180 - 18, key
        assert r[key]["samples"] == 6 * (180 - 18), key
    assert set(r["ratios"]) >= {"vs_ceiling", "vs_naive"}
    assert set(r["latency_s"]) >= {"p50", "p95", "p99"}
    assert set(r["detection"]) >= {"precision", "recall", "per_kind_recall"}
    assert set(r["memory"]) >= {"peak_rss_bytes", "bytes_per_entity"} and r["memory"]["peak_rss_bytes"] > 0
    assert r["config"]["entities"] == 6
    # the worker's RSS after the run, with every entity loaded into the engine (none left serialized
    # in the table's store)
    assert r["memory"]["rss_end_bytes"] > 0 and r["memory"]["stored_entities"] == 0, r["memory"]
    assert r["detection"]["per_kind"]["spike"]["injected"] >= 2
    assert r["detection"]["per_kind_recall"]["spike"] > 0, r["detection"]["injection_list"]
    # the worker's state writes at its commits are reported (every entity written at least once)
    wc = r["memory"]["worker_counters"]
    assert wc["stream_state_write_seconds_count"] >= 1 and wc["stream_state_writes_total"] >= 6, wc
    assert all(f'stream_gc_pause_seconds_count{{generation="{g}"}}' in wc for g in "012"), wc  # GC pauses too
    assert out.with_suffix(".md").exists()
    assert "**State writes**" in out.with_suffix(".md").read_text()
    assert all((tmp_path / p).exists() for p in r["plots"]) and len(r["plots"]) == 3
