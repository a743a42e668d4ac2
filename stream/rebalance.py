"""Input from before a rebalance: set aside, never processed by a worker that no longer owns it.

The worker runs Faust with ``stream_wait_empty=False`` (``stream.worker.build_app``): at a
revocation Faust does not wait for the agents to finish what they hold. Faust clears the agents'
queues, but not what an agent has already taken: the ingest agent's take buffer holds up to
``STREAM_INGEST_BATCH_MESSAGES`` events until it is full or ``STREAM_INGEST_LINGER_SECONDS`` have
passed, and any agent may be in the middle of a message, awaiting a send. Such a batch then reaches
the detectors after ``on_partitions_revoked`` wrote and dropped its partitions' entities, or after
the partitions were assigned again. Processed there, it would

* re-create the entities from the table and write their state, at the next commit, to changelog
  partitions another worker now owns: a stale record after the new owner's own, which the new
  owner would recover if it restarted before writing that entity again (the samples it had folded
  in between would be missing from the state, and not read again);
* publish its alerts a second time (the ids deduplicate, but consumers see the repeat);
* and, once the partition is this worker's again, it could run before table recovery has restored
  the entities.

So an event is **stale** when it was fetched in an earlier consumer-group generation than the
current one (``Message.generation_id``: every rebalance starts a new generation, and Faust's eager
protocol revokes every partition at each), or when its partition was revoked in the generation it
was fetched in (between a revocation and the next assignment the generation has not changed yet).
A stale event is set aside unprocessed and marked acknowledged *without* recording its offset:
Faust commits only recorded offsets, so it is never committed and the partition's owner, this
worker too when it gets the partition back, reads it again from the committed offset. Nothing is lost and nothing is
processed twice by two owners. ``stream_stale_events_skipped_total{topic}`` counts them.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

from stream import metrics as m

log = logging.getLogger("stream.rebalance")


async def flush_before_rejoin(app: Any) -> None:
    """Wait until the state a revocation handler wrote has reached the broker.

    Faust flushes its producer *before* it sends ``on_partitions_revoked``, and the consumer rejoins
    the group as soon as the handlers return; the records they write (the revoked partitions'
    changed state) would otherwise still be in the producer's buffer while the new owner's table
    recovery reads the changelog to its end, and land after it: a state older than the new owner's
    own, recovered on its next restart. Call it last in the handler (after the state is dropped:
    what runs during the await finds the partitions revoked)."""
    try:
        await app.producer.flush()
    except Exception as exc:  # noqa: BLE001 - a failed flush must not crash the rebalance
        log.warning("flushing the revoked partitions' state before rejoining failed: %r", exc)


class StaleInput:
    """Decides whether an input message still belongs to this worker's current assignment, and
    sets aside the ones that do not (see the module docstring)."""

    def __init__(self, app: Any):
        self.app = app
        # TP -> the group generation it was revoked in; its messages of that generation are stale
        # (those fetched after it is assigned again carry the next generation)
        self.revoked: dict = {}

    def revoke(self, tps: Iterable) -> None:
        """Call first thing in the revocation handler (before its state is written and dropped)."""
        gen = self.app.consumer_generation_id
        for tp in tps:
            self.revoked[tp] = gen

    def __call__(self, msg: Any) -> bool:
        """True if ``msg`` (a Faust message) was fetched in an earlier generation than the group's
        current one, or belongs to a partition revoked in its generation."""
        gen = msg.generation_id
        return gen != self.app.consumer_generation_id or self.revoked.get(msg.tp) == gen

    @staticmethod
    def set_aside(events: Iterable) -> int:
        """Mark the events' messages acknowledged without recording their offsets (so they are never
        committed and are read again by the partition's owner); returns how many."""
        n = 0
        for event in events:
            msg = event.message
            # Faust's ack (Message.ack and the compiled stream iterator alike) records the offset only
            # for a message not yet acked: set beforehand, the final ack records nothing
            msg.acked = True
            m.STALE_EVENTS.labels(msg.topic).inc()
            n += 1
        return n

    def set_aside_if_stale(self, events: Sequence) -> bool:
        """Set the events aside if they are stale (judged by the first: an agent's events of one
        partition, fetched in one generation); returns whether they were."""
        if not self(events[0].message):
            return False
        self.set_aside(events)
        return True
