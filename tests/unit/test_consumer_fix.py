"""The fix for records Faust's consumer loses around a seek, and the stalled-commit watchdog
(stream.consumer_fix, stream.gaps.StallWatch): pure logic and a consumer double, no broker."""
from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from faust.types import TP
from intervaltree import IntervalTree

from stream.consumer_fix import seek_safe
from stream.gaps import StallWatch

A, B = TP("t", 0), TP("t", 1)


# --------------------------------------------------------------------------- StallWatch

def test_a_hole_below_acked_offsets_is_read_again_once_after_patience():
    w = StallWatch(patience=3)
    args = dict(committed=931, acked_min=941, read=1799, highwater=1800)
    assert [w.check(A, **args) for _ in range(5)] == [None, None, 931, None, None]
    # the re-read did not help (offsets without records): never again from the same offset
    assert [w.check(A, **args) for _ in range(5)] == [None] * 5
    # commits moved on and stopped again later: a new hole, one new re-read
    later = dict(committed=2000, acked_min=2005, read=2500, highwater=2600)
    assert [w.check(A, **later) for _ in range(3)] == [None, None, 2000]


def test_a_hole_at_the_tail_is_read_again():
    w = StallWatch(patience=2)
    assert [w.check(A, committed=900, acked_min=None, read=950, highwater=1000) for _ in range(2)] == [None, 900]


def test_idle_partitions_never_seek():
    w = StallWatch(patience=1)
    for _ in range(10):
        # at-least-once at rest: committed at the log end
        assert w.check(A, committed=1800, acked_min=None, read=1799, highwater=1800) is None
        # exactly_once at rest: a transaction marker after the last record (lag 1)
        assert w.check(B, committed=101, acked_min=None, read=100, highwater=102) is None
        # just seeked (read = the offset seeked to), nothing fetched yet
        assert w.check(TP("t", 2), committed=50, acked_min=None, read=50, highwater=80) is None
        # nothing committed yet
        assert w.check(TP("t", 3), committed=None, acked_min=5, read=9, highwater=80) is None


def test_progress_or_a_record_in_process_resets_the_patience():
    w = StallWatch(patience=3)
    assert w.check(A, committed=10, acked_min=20, read=30, highwater=40) is None
    assert w.check(A, committed=10, acked_min=20, read=31, highwater=40) is None  # still reading
    assert w.check(A, committed=10, acked_min=20, read=31, highwater=40, busy=True) is None
    assert w.check(A, committed=10, acked_min=20, read=31, highwater=40) is None
    assert w.check(A, committed=10, acked_min=20, read=31, highwater=40) is None
    assert w.check(A, committed=10, acked_min=20, read=31, highwater=40) == 10


def test_forget_starts_over_for_revoked_partitions():
    w = StallWatch(patience=1)
    assert w.check(A, committed=10, acked_min=20, read=30, highwater=40) == 10
    assert w.check(A, committed=10, acked_min=20, read=30, highwater=40) is None
    w.forget([A])
    assert w.check(A, committed=10, acked_min=20, read=30, highwater=40) == 10


# --------------------------------------------------------------------------- SeekSafeConsumer

class FakeConsumer:
    """The parts of faust's Consumer that the fix's getmany / seeks / _new_offset use."""

    def __init__(self, batches, committed):
        self.batches = list(batches)  # what each fetch returns: {tp: [offsets]}
        self.committed = committed
        self.seeks: list[tuple[TP, int]] = []
        self.flow_active = True
        self.should_stop = False
        self._buffered_partitions = set()
        self._read_offset = defaultdict(lambda: None)
        self._committed_offset = defaultdict(lambda: None)
        self._acked = defaultdict(list)
        self._acked_index = defaultdict(set)
        self._gap = defaultdict(IntervalTree)
        self.app = SimpleNamespace(consumer_generation_id=1,
                                   conf=SimpleNamespace(consumer_auto_offset_reset="earliest"),
                                   monitor=SimpleNamespace(track_tp_end_offset=lambda tp, hw: None))
        self.scheduler = SimpleNamespace(iterate=lambda recs: ((tp, r) for tp, rs in recs.items() for r in rs))
        self.on_fetch = None

    def assignment(self):
        return {A, B}

    def _is_changelog_tp(self, tp):
        return False

    def highwater(self, tp):
        return 10_000

    def _to_message(self, tp, record):
        return (tp, record.offset)

    async def _wait_next_records(self, timeout):
        if self.on_fetch is not None:
            await self.on_fetch()
        batch = self.batches.pop(0) if self.batches else {}
        return {tp: [SimpleNamespace(offset=o) for o in offs] for tp, offs in batch.items()}, {A, B}

    async def seek_to_committed(self):
        await asyncio.sleep(0)
        for tp, off in self.committed.items():
            self.seeks.append((tp, off))
        return dict(self.committed)

    async def seek(self, partition, offset):
        self.seeks.append((partition, offset))
        self._read_offset[partition] = offset if offset else None


Consumer = seek_safe(FakeConsumer)


async def _drain(c, interleave=None):
    out = []
    async for tp, msg in c.getmany(timeout=1.0):
        out.append(msg)
        if interleave is not None:
            await interleave(msg)
    return out


def test_records_fetched_before_a_seek_are_not_delivered_and_the_partition_is_seeked_again():
    c = Consumer([{A: [940, 941, 942], B: [500, 501, 502]}], committed={})

    async def gapguard_seeks_back(msg):  # an agent seeks A back while the batch is being delivered
        if msg == (A, 940):
            await c.seek(A, 931)

    got = asyncio.run(_drain(c, gapguard_seeks_back))
    # A's rest of the stale batch is not delivered (before the fix: 941, 942 delivered, the read
    # offset moved to 942 and the re-fetched 931..941 were dropped); B is untouched
    assert got == [(A, 940), (B, 500), (B, 501), (B, 502)]
    # and A is seeked to the same target again from the drain loop (no fetch in flight)
    assert c.seeks == [(A, 931), (A, 931)]
    assert c._read_offset[A] == 931


def test_records_fetched_while_seeking_to_committed_offsets_wait_for_the_seek():
    c = Consumer([{A: [900, 901], B: [7, 8]}], committed={A: 900, B: None})

    async def recovery_seeks_meanwhile():  # Recovery's perform_seek runs while the fetch is in flight
        c.on_fetch = None
        task = asyncio.ensure_future(c.perform_seek())
        await asyncio.sleep(0)
        assert A in c._seeking  # the seek is in flight when the batch comes back
        c._task = task

    c.on_fetch = recovery_seeks_meanwhile
    got = asyncio.run(_run_then_finish(c))
    assert got == []  # neither partition delivered while its seek was in flight
    # afterwards: A (seeked to its committed offset) re-seeked there; B (no committed offset, not
    # seeked by aiokafka: its position moved past 7, 8) starts over from the beginning
    # (auto_offset_reset=earliest), so the records not delivered are read again
    assert sorted(c.seeks[-2:]) == [(A, 900), (B, 0)]
    assert c._committed_offset[A] == 900 and c._read_offset[A] == 900 and c._read_offset[B] is None


def test_a_partition_without_a_committed_offset_starts_over_after_a_batch_dropped_by_a_rebalance():
    # the failover stall: the survivor's fetch returned the killed worker's partitions (never
    # committed) to their end, the generation changed while the batch was delivered, Faust ended
    # the batch, and aiokafka's position had moved past it: nothing was ever read there again
    c = Consumer([{A: [0, 1, 2], B: [0, 1, 2]}], committed={A: None, B: 40})

    async def rebalance_mid_batch(msg):
        if msg == (A, 0):
            c.app.consumer_generation_id += 1

    got = asyncio.run(_drain(c, rebalance_mid_batch))
    assert got == [(A, 0)]  # the rest of the batch is dropped (Faust's rule, kept)
    asyncio.run(c.perform_seek())  # the new generation's seek to committed offsets
    assert (A, 0) in c.seeks and c._read_offset[A] is None  # A starts over: 1, 2 are fetched again
    assert (B, 40) in c.seeks and (B, 0) not in c.seeks  # B has a committed offset: seeked there only


def test_without_earliest_reset_an_uncommitted_partition_is_left_where_it_is():
    c = Consumer([], committed={A: None})
    c.app.conf.consumer_auto_offset_reset = "latest"
    asyncio.run(c.perform_seek())
    assert c.seeks == [(A, None)]  # only seek_to_committed's (no reset to the beginning)


async def _run_then_finish(c):
    got = await _drain(c)
    await c._task
    for tp, (first, seq) in list(c._pending_reseek().items()):  # what _drain_messages does next
        c._pending_reseek().pop(tp)
        if c._seeked_at.get(tp, 0) > seq:
            await c._reseek(tp, "test")
        else:
            await c.seek(tp, first)
    return got


def test_new_offset_ignores_duplicate_acks_from_the_gap_fill():
    c = Consumer([], committed={})
    c._committed_offset[A] = 900
    c._acked[A] = [900, 901, 902, 903, 905]
    c._acked_index[A] = set(c._acked[A])
    c._gap[A].addi(901, 905)  # a bogus gap over offsets that were delivered and acked: 901..904
    assert c._new_offset(A) == 906  # Faust's stops at the first duplicate (returns 902)
    assert c._acked[A] == [] and c._acked_index[A] == set()


def test_new_offset_keeps_fausts_rule_for_holes():
    c = Consumer([], committed={})
    c._committed_offset[A] = 931
    c._acked[A] = [941, 942]
    c._acked_index[A] = {941, 942}
    assert c._new_offset(A) is None  # a hole of >= 2 at the head: not committed past (re-read)
    c._acked[A] = [932, 933]  # one offset (an exactly_once transaction marker): committed past
    assert c._new_offset(A) == 934


def test_repair_acks_drops_index_entries_without_an_acked_offset():
    c = Consumer([], committed={})
    c._acked[A] = [941]
    c._acked_index[A] = {931, 932, 941}  # 931, 932 would make their re-read acks be ignored
    c.repair_acks(A)
    assert c._acked_index[A] == {941}


def test_records_of_a_partition_not_active_when_fetched_are_fetched_again_not_dropped():
    # Faust yields only records of active partitions and drops the rest silently, after aiokafka
    # moved past them; the fix hands the partition to the drain loop to seek back to the first
    C = TP("t", 2)  # (the fake's fetch reports A and B active)
    c = Consumer([{A: [10], C: [5, 6]}], committed={})
    got = asyncio.run(_drain(c))
    assert got == [(A, 10)]
    assert c._pending_reseek()[C][0] == 5


class RebalancingConsumer(FakeConsumer):
    """aiokafka's seek of a partition not assigned at that instant raises IllegalStateError (a
    rebalance ran in aiokafka's thread after the caller looked at the assignment)."""

    assigned = {A, B}

    def assignment(self):
        return set(self.assigned)

    async def seek(self, partition, offset):
        from aiokafka.errors import IllegalStateError

        if partition not in self.assigned:
            raise IllegalStateError(f"No current assignment for partition {partition}")
        await super().seek(partition, offset)


def test_a_seek_of_a_partition_revoked_meanwhile_is_skipped_not_raised_into_the_drain_loop():
    # raised inside _drain_messages, it crashed Faust's fetcher for good (the worker fetched
    # nothing more; a failover's table recovery waited for ever)
    c = seek_safe(RebalancingConsumer)([{A: [940, 941], B: [500]}], committed={})

    async def revoke_then_seek(msg):  # a re-read seek of A while a rebalance took A away
        if msg == (A, 940):
            c.assigned = {B}
            await c.seek(A, 931)

    got = asyncio.run(_drain(c, revoke_then_seek))  # (before the fix: IllegalStateError here)
    assert got == [(A, 940), (A, 941), (B, 500)]  # the batch goes on (a generation change ends it)
    assert c.seeks == [] and A not in c._seeked_at  # no seek happened, none recorded as made
    assert A not in c._pending_reseek()


def test_a_seek_of_an_assigned_partition_that_fails_still_raises():
    c = seek_safe(RebalancingConsumer)([], committed={})
    c.assigned = {B}
    c.assignment = lambda: {A, B}  # assigned as far as the consumer knows: a real error

    import pytest
    from aiokafka.errors import IllegalStateError

    with pytest.raises(IllegalStateError):
        asyncio.run(c.seek(A, 1))


def test_fetcher_watch_ignores_crashes_during_rebalances_and_stops():
    from stream.consumer_fix import FetcherWatch

    w = FetcherWatch(patience=3)
    # Faust crashes the fetcher on purpose when a rebalance cancels it, and resets it after
    assert not any(w.check(crashed=True, rebalancing=True, stopping=False) for _ in range(10))
    assert not any(w.check(crashed=True, rebalancing=False, stopping=True) for _ in range(10))
    # a crash outside a rebalance: reported after 3 checks in a row, not before
    assert [w.check(crashed=True, rebalancing=False, stopping=False) for _ in range(4)] == [False, False, True, True]
    # recovered (reset by a rebalance): counting starts over
    assert not w.check(crashed=False, rebalancing=False, stopping=False)
    assert not w.check(crashed=True, rebalancing=False, stopping=False)


# --------------------------------------------------------------------------- table recovery

C = TP("t-changelog", 0)  # a changelog partition: recovery seeks it with seek_wait


class RecoveringConsumer(FakeConsumer):
    def __init__(self, batches, active):
        super().__init__(batches, committed={})
        self.active = active

    def assignment(self):
        return {A, B, C}

    async def _wait_next_records(self, timeout):
        records, _ = await super()._wait_next_records(timeout)
        return records, self.active

    async def seek_wait(self, partitions):
        self.seeks.extend(partitions.items())


def test_a_recovery_seek_cancels_a_reseek_pending_from_before_it():
    # C's records came back from a fetch after C was paused (a standby becoming active in a
    # rebalance): the drain loop would seek C back to 7 ... after the recovery sought C to 0,
    # moving it past the 7 records the recovery waits for
    c = seek_safe(RecoveringConsumer)([{C: [7, 8]}], active={A, B})
    assert asyncio.run(_drain(c)) == []
    assert c._pending_reseek() == {C: (7, 0)}
    asyncio.run(c.seek_wait({C: 0}))
    assert C not in c._pending_reseek() and c.seeks == [(C, 0)]
    assert c._seek_target[C] == 0  # stamped: records fetched before it are not delivered
    c.batches, c.active = [{C: [0, 1]}], {A, B, C}
    assert asyncio.run(_drain(c)) == [(C, 0), (C, 1)]  # fetched after it: delivered


def test_recovery_watch_leaves_a_slow_recovery_alone_and_reports_a_stalled_one():
    from stream.consumer_fix import RecoveryWatch

    w = RecoveryWatch(patience=20, max_attempts=2)
    # a big changelog read slowly: the offset moves between every look, for minutes
    for t in range(0, 600, 5):
        assert w.check(t, recovery_id=1, remaining={C: 10_000 - t}, offsets={C: t}) == ([], False)
    # it stops moving with records left: attempt 1 after 20 s, attempt 2 after 20 s more, then give up
    looks = [w.check(t, recovery_id=1, remaining={C: 5}, offsets={C: 600}) for t in range(600, 700, 5)]
    assert [(600 + 5 * i, tps) for i, (tps, _) in enumerate(looks) if tps] == [(620, [(C, 1)]), (640, [(C, 2)])]
    assert [give_up for _, give_up in looks].index(True) == (660 - 600) // 5
    # nothing remaining (or a partition without records): never reported
    w2 = RecoveryWatch(patience=1)
    assert all(w2.check(t, recovery_id=1, remaining={C: 0, A: -1}, offsets={C: 3, A: -1}) == ([], False)
               for t in range(100))
