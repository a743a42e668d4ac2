"""Prometheus metrics of a worker (served at /metrics on the worker's web server).

Names follow Prometheus conventions: ``stream_`` prefix, base units, ``_total`` for counters.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from stream import __version__
from stream.lag import make_gauges

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter("stream_events", "Input events by topic and outcome (processed, deadlettered, late)",
                 ["topic", "outcome"], registry=REGISTRY)
DEADLETTER = Counter("stream_deadletter", "Dead-lettered input by reason", ["reason"], registry=REGISTRY)
ALERTS = Counter("stream_alerts", "Alerts published", ["kind", "severity", "detector"], registry=REGISTRY)
PROCESSING = Histogram("stream_event_processing_seconds",
                       "Time to process one input message (decode, dead-letter, route; averaged over its ingest batch)",
                       buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0), registry=REGISTRY)
ENTITIES = Gauge("stream_entities_active", "Entities with state in this worker", ["detector"], registry=REGISTRY)
STATE_BYTES = Gauge("stream_state_bytes", "Serialized state bytes last written, summed over entities",
                    ["detector"], registry=REGISTRY)
STATE_STORED = Gauge("stream_state_stored_entities",
                     "Entity state records held serialized in the table's local store (two per entity: its "
                     "sample part and its window part): restored from the changelog (restart, rebalance, "
                     "standby) and not yet loaded by the engine, which holds live ones",
                     registry=REGISTRY)
STATE_WRITE = Histogram("stream_state_write_seconds",
                        "Time each offset commit spent writing changed entity state to the changelog before "
                        "committing (the detect agent waits meanwhile: a direct share of alert latency)",
                        buckets=(1e-3, 5e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=REGISTRY)
STATE_WRITTEN = Counter("stream_state_writes", "State records written to the changelog at commits: per changed "
                        "entity its sample part, plus its window part when a window closed; model states",
                        registry=REGISTRY)
COPARTITION_VIOLATIONS = Counter("stream_copartition_violations", "Entity batches that arrived on a metrics "
                                 "partition other than the one the entity's state lives on, with "
                                 "STREAM_COPARTITIONED_INPUT=true (the input is not keyed by entity: in a "
                                 "rebalance, two workers may then hold parts of the entity's state)",
                                 registry=REGISTRY)
STALE_EVENTS = Counter("stream_stale_events_skipped", "Input events taken before a rebalance and reaching an "
                       "agent after it (their partition revoked, or fetched in an earlier group generation): "
                       "set aside unprocessed and never committed, so the partition's owner reads them again "
                       "(stream.rebalance)", ["topic"], registry=REGISTRY)
REBALANCES = Counter("stream_rebalances", "Consumer group rebalances seen by this worker", registry=REGISTRY)
REREADS = Counter("stream_input_rereads", "Holes in a partition's offsets the consumer skipped, read again "
                  "(stream.gaps)", ["topic"], registry=REGISTRY)
RECOVERY_UNSTUCK = Counter("stream_recovery_unstuck", "Table changelog partitions a recovery waited on without "
                           "progress, by what the recovery watchdog did: reseek (sought again to the offset the "
                           "recovery needs) or log_end (read to its log end: the rest holds no record) "
                           "(stream.consumer_fix.RecoveryWatch)", ["topic", "action"], registry=REGISTRY)
GC_PAUSE = Histogram("stream_gc_pause_seconds", "Pauses of Python's cyclic garbage collector by generation "
                     "(STREAM_GC_THRESHOLD sets how often they come)", ["generation"],
                     buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5), registry=REGISTRY)
BUILD = Info("stream_build", "Build information", registry=REGISTRY)
BUILD.info({"version": __version__})
# consumer lag of the worker's input partitions (set by stream.lag.LagMonitor in a background thread)
LAG_MESSAGES, LAG_SECONDS, LAG_UP = make_gauges(REGISTRY)


def exposition() -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def tune_gc(threshold: int) -> None:
    """Collect young objects every ``threshold`` net allocations (the older generations keep
    Python's thresholds: 10 collections of the one below) and time every pause into
    ``stream_gc_pause_seconds``.

    Python's default (700, 10, 10) suits short scripts: a worker allocating ~10 container objects
    per sample (decoded JSON, rows, alerts) and freeing them by reference counting ran the
    collector thousands of times a minute for almost nothing to collect. The count is of *net*
    allocations (allocations minus frees), so uncollected cyclic garbage stays below ``threshold``
    young objects: it counts too, and triggers the next collection. Installs its callback once.

    >>> import gc
    >>> old = gc.get_threshold()
    >>> tune_gc(50_000); gc.get_threshold()
    (50000, 10, 10)
    >>> gc.collect(0) >= 0 and GC_PAUSE.labels("0")._sum.get() > 0
    True
    >>> gc.set_threshold(*old)
    """
    import gc
    import time

    gc.set_threshold(threshold, 10, 10)
    if any(getattr(cb, "_stream_gc", False) for cb in gc.callbacks):
        return
    started = [0.0]
    pauses = [GC_PAUSE.labels(str(g)) for g in range(3)]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].observe(time.perf_counter() - started[0])

    on_gc._stream_gc = True  # type: ignore[attr-defined]
    gc.callbacks.append(on_gc)
