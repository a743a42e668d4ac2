"""A fix for faust-streaming's consumer losing records around a seek (the "post-restart stall").

Root cause (faust-streaming 0.15.3, confirmed by instrumenting a reproduction of the clean-restart
test): after a rebalance, ``Recovery.on_recovery_completed`` resumes the stream partitions and then
awaits ``Consumer.perform_seek()`` (seek to the committed offsets) while the fetcher keeps running
(the flow was resumed for changelog recovery; faust-streaming#216 is the same window). So records
fetched *before* a seek are still being handed to the agents *after* it:

* ``perform_seek`` resets ``_read_offset`` to the committed offset underneath ``_drain_messages``,
  which then resumes the stale batch: it records a bogus "gap" over offsets it had just delivered
  (``_add_gap``), and advances ``_read_offset`` past the seek target again, so the records the
  seek re-fetches are dropped as "below the read offset" (``DROPPED MESSAGE ROFF``);
* the same happens to any later ``Consumer.seek`` made while a batch is being iterated (the
  agents' own re-read of a hole, ``stream.gaps``): observed dropping 868 re-fetched records per
  partition;
* the gap fill then puts offsets into ``_acked`` twice; ``consecutive_numbers`` stops at a
  duplicate, and the offset's ``_acked_index`` entry is cleared while a copy stays in ``_acked``.

A record dropped this way is never acked; ``Consumer._new_offset`` then commits past a one-record
hole (the record is lost) or never past a longer one (the committed offset stalls while later
records are processed, until the worker restarts).

:class:`SeekSafeConsumer` (installed on the app by :func:`install`) changes three things:

1. every seek is stamped per partition; records of a partition fetched before its latest seek
   (or while a ``perform_seek`` was in flight) are not delivered, and the drain loop (where no
   fetch is in flight) seeks that partition again to its target, so aiokafka fetches from there;
   records of a partition that was not active when its fetch returned (a rebalance assigned it
   meanwhile), which Faust drops silently after aiokafka moved past them, are fetched again the
   same way (seek back to the first of them) — without it a worker taking over a killed worker's
   partitions could read them to the end and process none (the failover test: 2 of 3 runs);
2. the read offset is not moved by a record whose partition was seeked while it was delivered;
3. ``_new_offset`` de-duplicates the acked offsets (and keeps ``_acked_index`` in step).

And, belt and braces, :func:`install` adds a timer (:class:`stream.gaps.StallWatch`) that seeks a
partition back to its committed offset when its commits stop although records beyond it were read
and none of them is still being processed: at most once per committed offset, so an idle
partition, or offsets holding no record (transaction markers under exactly_once), never make it
seek in a loop. Re-read records are skipped downstream (each entity's and model's stored source
offsets), so a re-read is always safe.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Dict, List, Optional, Set, Tuple

from aiokafka.errors import IllegalStateError
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP
from faust.utils.functional import consecutive_numbers

from stream.gaps import StallWatch

log = logging.getLogger("stream.consumer_fix")


def seek_safe(base: type) -> type:
    """A subclass of Faust's consumer class ``base`` with the fix (see the module docstring)."""

    class SeekSafeConsumer(base):  # type: ignore[misc, valid-type]
        # the three dicts are created lazily: Faust's __init__ is not overridden
        _seek_seq: int = 0

        def _seek_state(self) -> Tuple[Dict[TP, int], Dict[TP, Optional[int]], Set[TP]]:
            try:
                return self._seeked_at, self._seek_target, self._seeking
            except AttributeError:
                self._seeked_at: Dict[TP, int] = {}  # tp -> sequence number of its latest seek
                self._seek_target: Dict[TP, Optional[int]] = {}  # tp -> offset of its latest seek
                self._seeking: Set[TP] = set()  # a perform_seek is in flight for these
                return self._seeked_at, self._seek_target, self._seeking

        def _stamp(self, tp: TP, offset: Optional[int]) -> None:
            seeked_at, target, _ = self._seek_state()
            self._seek_seq += 1
            seeked_at[tp] = self._seek_seq
            target[tp] = offset

        async def seek(self, partition: TP, offset: int) -> None:
            try:
                await super().seek(partition, offset)  # synchronous inside: no fetch result interleaves
            except (IllegalStateError, AssertionError) as exc:
                # aiokafka refuses a seek of a partition not assigned at this instant (a rebalance
                # ran in aiokafka's thread since the caller looked). Raised inside the drain loop it
                # ended the fetcher for good: the worker stayed up and fetched nothing, the table
                # recovery of a failover waiting for ever (a CI run of the failover test). Nothing
                # is lost by skipping it: the next assignment seeks the partition to its committed
                # offset.
                if partition in self.assignment():
                    raise
                log.info("not seeking %s/%d to %d: not assigned now (%r)", partition.topic, partition.partition,
                         offset, exc)
                self._pending_reseek().pop(partition, None)
                return
            self._stamp(partition, offset)

        async def seek_wait(self, partitions: Any) -> None:
            # Faust's table recovery seeks the changelog partitions with this (not with seek).
            # Stamp them like any seek: a re-seek still pending from before (records of a
            # partition that was paused while its fetch was out, say a standby that became
            # active in this rebalance) would otherwise move the partition past the records the
            # recovery just asked for.
            pending = self._pending_reseek()
            for tp in partitions:
                pending.pop(tp, None)
            await super().seek_wait(partitions)
            for tp, offset in partitions.items():
                self._stamp(tp, offset)

        async def perform_seek(self) -> None:
            _, _, seeking = self._seek_state()
            tps = {tp for tp in self.assignment() if not self._is_changelog_tp(tp)}
            seeking.update(tps)
            try:
                committed = await self.seek_to_committed()
            finally:
                seeking.difference_update(tps)
            # as Faust's perform_seek
            self._read_offset.update({tp: off if off is not None and off >= 0 else None
                                      for tp, off in committed.items()})
            self._committed_offset.update({tp: off if off else None
                                           for tp, off in committed.items() if off is not None})
            for tp, off in committed.items():
                if off and off > 0:  # aiokafka seeks only these; the others kept their position
                    self._stamp(tp, off)
            # A partition without a committed offset keeps the position the fetcher reached, and
            # the records a fetch returned for it before this seek may have been dropped (Faust
            # ends a batch when the generation changes, or when the flow stops, after aiokafka
            # moved past the whole batch): a worker taking over a killed worker's partitions that
            # had never committed read them to the end and processed none (the failover test, 2 of
            # 3 runs). Start such partitions over, as auto_offset_reset=earliest says; records
            # already folded in are skipped downstream by each entity's source-offset cursor.
            if self.app.conf.consumer_auto_offset_reset == "earliest":
                for tp in tps:
                    off = committed.get(tp)
                    if off is None or off < 0:
                        await self.seek(tp, 0)  # (before the log start: reset to earliest)

        def _new_offset(self, tp: TP) -> Optional[int]:
            # Faust's, with the acked offsets de-duplicated after the gap fill (a duplicate ended
            # the first consecutive run early and left the offset's _acked_index entry cleared
            # while a copy stayed in _acked, so a later ack of it was ignored).
            acked = self._acked[tp]
            if not acked:
                return None
            gap_for_tp = self._gap[tp]
            if gap_for_tp:
                max_offset = max(acked)
                candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
                if candidates:
                    fill: List[int] = []
                    for entry in candidates:
                        fill.extend(range(entry.begin, entry.end))
                    acked.extend(fill)
                    gap_for_tp.chop(0, max(fill[-1], max_offset + 1))
            acked[:] = sorted(set(acked))
            committed = self._committed_offset[tp]
            if committed and acked[0] - committed > 1:
                return None  # Faust's rule: a hole at the head (StallWatch re-reads it)
            batch = next(consecutive_numbers(acked))
            acked[: len(batch)] = []
            self._acked_index[tp].difference_update(batch)
            return batch[-1] + 1

        def repair_acks(self, tp: TP) -> None:
            """Make ``_acked_index`` match ``_acked`` (before re-reading a hole: an index entry
            without its list entry would make the re-read record's ack be ignored)."""
            acked = self._acked.get(tp)
            self._acked_index[tp] = set(acked) if acked else set()

        async def _reseek(self, tp: TP, why: str) -> None:
            """Seek ``tp`` again to its latest target, from the drain loop (no fetch in flight)."""
            target = self._seek_state()[1].get(tp)
            if target is None:
                return
            log.info("re-seeking %s/%d to %d: %s", tp.topic, tp.partition, target, why)
            await self.seek(tp, target)

        async def getmany(self, timeout: float) -> AsyncIterator[Tuple[TP, Any]]:
            # Faust's getmany, plus: records of a partition seeked after this fetch began are
            # not delivered (aiokafka fetches that partition again from the seek target).
            seeked_at, _, seeking = self._seek_state()
            fetch_seq = self._seek_seq
            records, active_partitions = await self._wait_next_records(timeout)
            generation_id = self.app.consumer_generation_id
            if records is None or self.should_stop:
                return
            stale: Set[TP] = set()
            records_it = self.scheduler.iterate(records)
            to_message = self._to_message
            if self.flow_active:
                for tp, record in records_it:
                    if not self.flow_active:
                        break
                    if self.app.consumer_generation_id != generation_id:
                        break
                    if tp in seeking or seeked_at.get(tp, 0) > fetch_seq:
                        if tp not in stale:  # the first record of tp in this batch not delivered
                            stale.add(tp)
                            if tp in seeking:  # target unknown yet: the drain loop seeks once known
                                self._pending_reseek().setdefault(tp, (record.offset, self._seek_seq))
                            else:  # (this stamps tp again: the rest of the batch stays skipped)
                                await self._reseek(tp, f"records from offset {record.offset} were fetched "
                                                       f"before its latest seek")
                        continue
                    if (active_partitions is None or tp in active_partitions
                            or tp in self._buffered_partitions):
                        try:
                            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                        except (IllegalStateError, AssertionError):  # revoked meanwhile (aiokafka asserts)
                            pass
                        yield tp, to_message(tp, record)
                    elif tp not in stale:
                        # fetched for a partition not active when this fetch returned (one a
                        # rebalance assigned while it was in flight): Faust drops these records
                        # silently, and aiokafka's position has already moved past them, so the
                        # partition was never read there again (the failover stall: a survivor
                        # taking over a killed worker's partitions fetched them to the end,
                        # delivered nothing and stayed behind for good). The drain loop seeks
                        # it back to the first of them.
                        stale.add(tp)
                        self._pending_reseek().setdefault(tp, (record.offset, self._seek_seq))
            else:
                self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
                try:
                    await self.perform_seek()
                except Exception as ex:  # noqa: BLE001 - as Faust
                    self.log.warning(f"exception performing seek when flow not active {ex}")

        def _pending_reseek(self) -> Dict[TP, Tuple[int, int]]:
            # tp -> (first offset not delivered, seek sequence number then): records skipped
            # while a perform_seek was in flight
            try:
                return self._pending
            except AttributeError:
                self._pending: Dict[TP, Tuple[int, int]] = {}
                return self._pending

        async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
            # Faust's _drain_messages, plus: the read offset is not moved by a record whose
            # partition was seeked while it was being delivered, and partitions whose stale
            # records were dropped during a perform_seek are seeked again once it is done.
            callback = self.callback
            getmany = self.getmany
            consumer_should_stop = self._stopped.is_set
            fetcher_should_stop = fetcher._stopped.is_set
            get_read_offset = self._read_offset.__getitem__
            set_read_offset = self._read_offset.__setitem__
            set_flag = self.diag.set_flag
            unset_flag = self.diag.unset_flag
            commit_every = self._commit_every
            acks_enabled_for = self.app.topics.acks_enabled_for
            seeked_at, _, seeking = self._seek_state()
            pending = self._pending_reseek()
            yield_every = 100
            num_since_yield = 0
            sleep = asyncio.sleep
            create_task = asyncio.get_running_loop().create_task
            try:
                while not (consumer_should_stop() or fetcher_should_stop()):
                    set_flag(CONSUMER_FETCHING)
                    for tp in [tp for tp in pending if tp not in seeking]:
                        first, seq = pending.pop(tp)
                        if tp not in self.assignment():
                            continue
                        if seeked_at.get(tp, 0) > seq:  # it was seeked: fetch from its target
                            await self._reseek(tp, "records fetched while seeking to committed offsets "
                                                   "were not delivered")
                        else:  # not seeked (no committed offset, or not active): its position moved past them
                            log.info("seeking %s/%d back to %d: records fetched while seeking to committed "
                                     "offsets, or while it was not active, were not delivered",
                                     tp.topic, tp.partition, first)
                            await self.seek(tp, first)
                    ait = getmany(timeout=1.0)
                    await self.sleep(0)
                    if not self.should_stop:
                        async for tp, message in ait:
                            num_since_yield += 1
                            if num_since_yield > yield_every:
                                await sleep(0)
                                num_since_yield = 0
                            offset = message.offset
                            r_offset = get_read_offset(tp)
                            if r_offset is None or offset >= r_offset:
                                gap = offset - (r_offset or 0)
                                if gap > 1 and r_offset:
                                    if acks_enabled_for(message.topic):
                                        await self._add_gap(tp, r_offset + 1, offset)
                                if commit_every is not None:
                                    if self._n_acked >= commit_every:
                                        self._n_acked = 0
                                        await self.commit()
                                seq = seeked_at.get(tp, 0)
                                # Faust awaits wait_first(callback, suspend_flow.wait()) here:
                                # four tasks and an asyncio.wait per record (with stopped and
                                # crashed), ~5 % of the worker's main thread at the load test's
                                # max rate. A delivery into a stream buffer with room finishes in
                                # its task's first step: the callback's task runs one loop turn
                                # (the fast path) and only a delivery still blocked then (a full
                                # buffer) is raced against suspend_flow as Faust does
                                task = create_task(callback(message))
                                await sleep(0)
                                if task.done():
                                    task.result()  # (propagates its exception, as wait_first does)
                                else:
                                    await self.wait_first(task, self.suspend_flow.wait())
                                if seeked_at.get(tp, 0) == seq and tp not in seeking:
                                    set_read_offset(tp, offset)
                            else:
                                self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key,
                                             message.value)
                        unset_flag(CONSUMER_FETCHING)
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    self.log.info("Broker stopped consumer, shutting down...")
                    return
                raise
            except asyncio.CancelledError:
                if self.transport.app.should_stop:
                    self.log.info("Consumer shutting down for user cancel.")
                    return
                raise
            except Exception as exc:
                self.log.exception("Drain messages raised: %r", exc)
                raise
            finally:
                unset_flag(CONSUMER_FETCHING)

    return SeekSafeConsumer


class FetcherWatch:
    """Says when Faust's fetcher has stayed crashed outside a rebalance for ``patience`` checks.

    The fetcher is the service whose drain loop hands every record (input and changelog) to the
    agents and the table recovery. When that loop raises, mode marks the fetcher crashed and
    nothing restarts it until the next rebalance: the worker stays up, answers /health, and
    processes nothing (nor finishes a table recovery). Faust also crashes it on purpose when a
    rebalance cancels it, and resets it right after, so only a crash that outlives ``patience``
    checks outside a rebalance counts.

    >>> w = FetcherWatch(patience=2)
    >>> [w.check(crashed=c, rebalancing=r, stopping=False) for c, r in
    ...  [(True, True), (True, False), (False, False), (True, False), (True, False)]]
    [False, False, False, False, True]
    """

    def __init__(self, patience: int = 3) -> None:
        self.patience = patience
        self.count = 0

    def check(self, *, crashed: bool, rebalancing: bool, stopping: bool) -> bool:
        self.count = self.count + 1 if crashed and not rebalancing and not stopping else 0
        return self.count >= self.patience


class RecoveryWatch:
    """Says which active changelog partitions a table recovery waits on without progress.

    Faust's recovery (``faust.tables.recovery.Recovery``) seeks each active changelog partition to
    the offset it needs, resumes it and waits until every one has delivered a record at its last
    offset (log end - 1). Two ways that wait lasts for ever:

    * the last offsets hold no record a consumer is given: transaction markers (a changelog written
      under ``exactly_once``; Faust only handles that when it runs ``exactly_once`` itself);
    * records that never arrive although they are there: in about 1 of 4 CI runs the survivor of
      the failover test waited on partitions holding 1 to 3 records, none of which ever came
      ("No event received for active tp ... since recovery start"). Its cause is not known.

    This class only decides *when* to act: a partition with records remaining whose recovery
    offset has not moved for ``patience`` seconds is returned with its attempt number (1, 2, ...
    up to ``max_attempts``); one more stall after that says give up. What to do is the caller's
    (see :func:`install`: seek again; then, if the consumer had fetched to the log end, accept it).

    >>> w = RecoveryWatch(patience=10, max_attempts=1)
    >>> w.check(0, recovery_id=1, remaining={"a": 3, "b": 0}, offsets={"a": -1, "b": 4})
    ([], False)
    >>> w.check(5, recovery_id=1, remaining={"a": 3, "b": 0}, offsets={"a": -1, "b": 4})
    ([], False)
    >>> w.check(11, recovery_id=1, remaining={"a": 3, "b": 0}, offsets={"a": -1, "b": 4})
    ([('a', 1)], False)
    >>> w.check(15, recovery_id=1, remaining={"a": 2}, offsets={"a": 0})  # progress: patience again
    ([], False)
    >>> w.check(26, recovery_id=1, remaining={"a": 2}, offsets={"a": 0})  # no attempt left
    ([], True)
    >>> w.check(27, recovery_id=2, remaining={"a": 2}, offsets={"a": 0})  # a new recovery starts over
    ([], False)
    """

    def __init__(self, patience: float = 15.0, max_attempts: int = 2) -> None:
        self.patience = patience
        self.max_attempts = max_attempts
        self._recovery_id: Any = None
        self._seen: Dict[Any, Tuple[Any, float]] = {}  # tp -> (recovery offset, since when)
        self._attempts: Dict[Any, int] = {}

    def check(self, now: float, *, recovery_id: Any, remaining: Dict[Any, int],
              offsets: Dict[Any, Any]) -> Tuple[List[Tuple[Any, int]], bool]:
        """Return ``([(partition, attempt), ...], give up)`` for one look at a recovery in progress."""
        if recovery_id != self._recovery_id:
            self._recovery_id = recovery_id
            self._seen.clear()
            self._attempts.clear()
        stalled: List[Tuple[Any, int]] = []
        give_up = False
        for tp, left in remaining.items():
            if left <= 0:
                self._seen.pop(tp, None)
                continue
            offset = offsets.get(tp)
            seen = self._seen.get(tp)
            if seen is None or seen[0] != offset:
                self._seen[tp] = (offset, now)
                continue
            if now - seen[1] < self.patience:
                continue
            attempt = self._attempts.get(tp, 0) + 1
            if attempt > self.max_attempts:
                give_up = True
                continue
            self._attempts[tp] = attempt
            self._seen[tp] = (offset, now)
            stalled.append((tp, attempt))
        return sorted(stalled), give_up


def _exit_for_restart(reason: str) -> None:  # pragma: no cover - ends the process
    import os

    log.critical("%s: exiting (status 70) so the worker is restarted; its state and offsets are recovered "
                 "from Kafka (the state is written before the offsets, so nothing is lost)", reason)
    logging.shutdown()
    os._exit(70)


def install(app: Any, *, interval: float = 5.0, patience: int = 6, on_reread: Any = None,
            on_recovery_action: Any = None, on_stuck: Any = _exit_for_restart) -> StallWatch:
    """Make ``app`` use :class:`SeekSafeConsumer` and add the stall, recovery and fetcher watchdogs.

    Call right after creating the app (before anything creates its consumer). ``on_reread(tp,
    offset, reason)`` is called for each partition the stall watchdog seeks back (metrics), and
    ``on_recovery_action(tp, action)`` for each changelog partition the recovery watchdog seeks
    again (``"reseek"``) or finds read to its log end (``"log_end"``; :class:`RecoveryWatch`);
    ``on_stuck(reason)`` when the fetcher stayed crashed (:class:`FetcherWatch`) or a table
    recovery stayed stuck after its re-seeks: the default exits the process with status 70, as a
    SIGKILL would: crash-only, nothing is lost."""
    transport = app.transport
    if app._consumer is not None:  # created already: switch the instance's class
        app._consumer.__class__ = seek_safe(type(app._consumer))
    else:
        transport.Consumer = seek_safe(transport.Consumer)
    watch = StallWatch(patience=patience)
    last_progress: list = [None]

    @app.on_partitions_revoked.connect
    async def _forget_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        watch.forget(revoked)

    fetcher_watch = FetcherWatch(patience=3)

    def recovering() -> bool:
        """A table recovery is in progress, and no new rebalance is pending."""
        recovery = getattr(app.tables, "recovery", None)
        return (recovery is not None and bool(recovery.in_recovery)
                and not recovery.signal_recovery_start.is_set())

    async def fetcher_watchdog() -> None:
        """Exit when the fetcher stayed crashed outside a rebalance (see FetcherWatch)."""
        fetcher = app._fetcher
        # app.rebalancing stays true until the table recovery has completed, and a recovery reads
        # the changelogs through the fetcher (restarted when it resumes the flow): a fetcher
        # crashed while a recovery is in progress hangs the recovery for good, so it counts
        if fetcher_watch.check(crashed=fetcher.crashed, rebalancing=bool(app.rebalancing) and not recovering(),
                               stopping=bool(app.should_stop)):
            on_stuck(f"the fetcher crashed ({fetcher.crash_reason!r}) and stayed down for "
                            f"{fetcher_watch.count * interval:.0f} s outside a rebalance")

    @app.timer(interval=interval)
    async def stalled_partitions_watchdog() -> None:
        """Seek a partition back to its committed offset when its commits stopped with records
        beyond it read but never acked (see stream.gaps.StallWatch and this module)."""
        consumer = app.consumer
        if app.rebalancing or not consumer.flow_active or app.should_stop:
            return
        recovery = getattr(app.tables, "recovery", None)
        if recovery is not None and not recovery.completed.is_set():
            return
        unacked = {m.tp for m in list(consumer._unacked_messages) if not m.acked}
        progress = (sum(o or 0 for o in consumer._committed_offset.values()),
                    sum(len(a) for a in consumer._acked.values()))
        # nothing acked anywhere since the last check while records are in process: the agents are
        # slow or blocked, not the consumer: judge no partition now
        stalled_agents = bool(unacked) and progress == last_progress[0]
        last_progress[0] = progress
        if stalled_agents:
            return
        for tp in sorted(consumer.assignment()):
            if consumer._is_changelog_tp(tp) or not app.topics.acks_enabled_for(tp.topic):
                continue
            acked = consumer._acked.get(tp)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - not known yet
                highwater = None
            committed = consumer._committed_offset.get(tp)
            back = watch.check(tp, committed=committed, acked_min=min(acked) if acked else None,
                               read=consumer._read_offset.get(tp), highwater=highwater, busy=tp in unacked)
            if back is None:
                continue
            reason = (f"offsets {back}..{min(acked) - 1} were never acked" if acked
                      else f"offsets from {back} were read (to {consumer._read_offset.get(tp)}) but never acked")
            log.warning("partition %s/%d: commits stopped at %d (%s; log end %s): reading from %d again",
                        tp.topic, tp.partition, back, reason, highwater, back)
            if on_reread is not None:
                on_reread(tp, back, reason)
            if hasattr(consumer, "repair_acks"):
                consumer.repair_acks(tp)
            await consumer.seek(tp, back)

    recovery_watch = RecoveryWatch()

    async def recovery_watchdog() -> None:
        """Unstick a table recovery that waits on an active changelog partition without progress
        (see RecoveryWatch): seek the partition again to the offset the recovery needs; if that
        did not help and the consumer has fetched the partition to its log end, the offsets left
        hold no record (transaction markers): the partition is recovered. Otherwise exit for a
        restart (crash-only)."""
        # (app.rebalancing stays true until the recovery has completed: not a reason to wait)
        if not recovering() or app.should_stop:
            return
        recovery, consumer = app.tables.recovery, app.consumer
        remaining = dict(recovery.active_remaining())
        offsets = dict(recovery.active_offsets)
        stalled, give_up = recovery_watch.check(
            asyncio.get_running_loop().time(),
            recovery_id=(app.consumer_generation_id, getattr(recovery, "_recovery_started_at", None)),
            remaining=remaining, offsets=offsets)
        if not stalled and not give_up:
            return
        state = consumer_state(app)
        rows = {(r["topic"], r["partition"]): r for r in state.pop("partitions") if r.get("recovery")}
        if give_up:
            on_stuck(f"the table recovery made no progress for {recovery_watch.patience:.0f} s after "
                            f"{recovery_watch.max_attempts} attempts (consumer {state}, changelog partitions "
                            f"{list(rows.values())})")
            return
        reseek: Dict[TP, int] = {}
        for tp, attempt in stalled:
            name, row = f"{tp.topic}/{tp.partition}", rows.get((tp.topic, tp.partition), {})
            offset = offsets.get(tp)
            need = max((offset if offset is not None else -1) + 1, 0)
            highwater = recovery.active_highwaters.get(tp)
            position = (row.get("fetch") or {}).get("position")
            if attempt > 1 and position is not None and highwater is not None and position > highwater:
                # fetched to the log end, sought again and fetched to it again: offsets need..highwater
                # hold no record a consumer is given (transaction markers, as Faust's own
                # detect_aborted_tx assumes under exactly_once)
                log.warning("table recovery: %s fetched to its log end (%d) twice with no record from offset %d: "
                            "offsets %d..%d hold no record (transaction markers); the partition is recovered "
                            "(%s)", name, position, need, need, highwater, row)
                recovery.active_offsets[tp] = highwater
                if on_recovery_action is not None:
                    on_recovery_action(tp, "log_end")
                continue
            log.warning("table recovery: no record of %s arrived for %.0f s although %d remain (attempt %d); "
                        "seeking it again to %d (consumer %s, partition %s)", name, recovery_watch.patience,
                        remaining.get(tp, 0), attempt, need, state, row)
            reseek[tp] = need
            if on_recovery_action is not None:
                on_recovery_action(tp, "reseek")
        if reseek:
            consumer.resume_partitions(list(reseek))  # Faust's view: recovery resumed them; make sure
            try:
                await consumer.seek_wait(reseek)
            except Exception as exc:  # noqa: BLE001 - revoked meanwhile: the next rebalance recovers anew
                log.warning("table recovery: seeking %s again failed: %r", sorted(reseek), exc)

    # Not app timers: Faust starts those only once the first table recovery has completed, and a
    # worker whose first recovery hangs (or whose fetcher dies during it) is exactly the case.
    async def watchdogs() -> None:
        while not app.should_stop:
            await app.sleep(interval)
            for check in (fetcher_watchdog, recovery_watchdog):
                if app.should_stop:
                    return
                try:
                    await check()
                except Exception:  # noqa: BLE001 - a watchdog must not end the others
                    log.exception("%s failed", check.__name__)

    started: list = []

    @app.on_partitions_assigned.connect
    async def _start_watchdogs(sender: Any, assigned: Any, **kwargs: Any) -> None:
        if not started:
            started.append(app.add_future(watchdogs()))

    return watch


def consumer_state(app: Any) -> Dict[str, Any]:
    """A snapshot of the worker's consumer and table recovery, per partition (the ``/debug/consumer``
    page): what a stalled partition needs to be diagnosed without attaching a debugger.

    Per assigned partition: Faust's view (paused, active, buffered, read and committed offsets,
    acked offsets pending, the latest seek of :class:`SeekSafeConsumer`), aiokafka's fetch state
    (position, paused, awaiting reset) and the log end; for table changelog partitions under
    recovery, the offset recovery has reached and the one it waits for. Read without locks from
    the event loop while aiokafka runs in its own thread: values can be a moment apart."""
    consumer = app.consumer
    out: Dict[str, Any] = {"generation_id": app.consumer_generation_id, "rebalancing": bool(app.rebalancing),
                           "flow_active": bool(getattr(consumer, "flow_active", False))}
    flow = getattr(app, "flow_control", None)
    out["flow_control_active"] = bool(flow.is_active()) if flow is not None else None
    out["suspend_flow"] = bool(consumer.suspend_flow.is_set()) if hasattr(consumer, "suspend_flow") else None
    fetcher = getattr(app, "_fetcher", None)
    if fetcher is not None:
        out["fetcher"] = {"state": str(getattr(fetcher, "state", "")), "crashed": bool(fetcher.crashed)}
    recovery = getattr(app.tables, "recovery", None)
    if recovery is not None:
        out["recovery"] = {"in_recovery": bool(recovery.in_recovery),
                           "completed_once": recovery.completed.is_set()}
        queue = getattr(app.tables, "_changelog_queue", None)
        out["recovery"]["changelog_queue"] = queue.qsize() if queue is not None else None
    try:
        kafka_consumer = consumer._thread._ensure_consumer()
        fetch_state = kafka_consumer._subscription.subscription.assignment.state_value
        fetched = kafka_consumer._fetcher._records  # records aiokafka fetched and nobody took yet
    except Exception:  # noqa: BLE001 - not subscribed yet
        fetch_state, fetched = None, {}
    paused = getattr(consumer, "_paused_partitions", set())
    active = getattr(consumer, "_active_partitions", None) or set()
    buffered = getattr(consumer, "_buffered_partitions", set())
    seeked_at = getattr(consumer, "_seeked_at", {})
    seek_target = getattr(consumer, "_seek_target", {})
    pending = getattr(consumer, "_pending", {})
    parts = []
    for tp in sorted(consumer.assignment()):
        row: Dict[str, Any] = {
            "topic": tp.topic, "partition": tp.partition, "changelog": bool(consumer._is_changelog_tp(tp)),
            "paused": tp in paused, "active": tp in active, "buffered": tp in buffered,
            "read_offset": consumer._read_offset.get(tp), "committed_offset": consumer._committed_offset.get(tp),
            "acked_pending": len(consumer._acked.get(tp) or ()),
            "last_seek": [seeked_at[tp], seek_target.get(tp)] if tp in seeked_at else None,
            "pending_reseek": list(pending[tp]) if tp in pending else None,
        }
        try:
            row["highwater"] = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not known yet
            row["highwater"] = None
        st = fetch_state(tp) if fetch_state is not None else None
        if st is not None:
            row["fetch"] = {"position": st.position if st.has_valid_position else None,
                            "paused": bool(st.paused), "awaiting_reset": bool(st.awaiting_reset),
                            "undelivered": type(fetched[tp]).__name__ if tp in fetched else None}
        if recovery is not None and tp in recovery.active_offsets:
            row["recovery"] = {"offset": recovery.active_offsets.get(tp),
                               "highwater": recovery.active_highwaters.get(tp),
                               "event_received": tp in recovery._active_events_received_at,
                               "active": tp in recovery.active_tps}
        parts.append(row)
    out["partitions"] = parts
    return out
