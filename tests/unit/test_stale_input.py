"""stream.rebalance.StaleInput: which input is stale after a rebalance, and that setting it aside
keeps Faust from recording its offset. The behaviour on the broker: tests/integration/test_rebalance.py
(test files need unique basenames across tests/: the directories are not packages)."""
from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream import metrics as m
from stream.rebalance import StaleInput


def _msg(partition: int, offset: int, generation: int) -> ConsumerMessage:
    return ConsumerMessage("metrics", partition, offset, 0.0, 0, None, b"k", b"v", None,
                           tp=TP("metrics", partition), generation_id=generation)


class _RecordingConsumer:
    """Stands in for Faust's consumer at the one call Message.ack makes into it (its final ack)."""

    def __init__(self):
        self.recorded: list[int] = []

    def ack(self, message) -> bool:
        self.recorded.append(message.offset)
        return True


def test_stale_means_an_earlier_generation_or_revoked_in_its_own():
    app = SimpleNamespace(consumer_generation_id=3)
    stale = StaleInput(app)
    assert not stale(_msg(0, 10, 3))
    assert stale(_msg(0, 10, 2))  # fetched before the latest rebalance
    stale.revoke({TP("metrics", 0)})  # revoked in generation 3, not assigned again yet
    assert stale(_msg(0, 11, 3))
    assert not stale(_msg(1, 11, 3))  # another partition, still held
    app.consumer_generation_id = 4  # assigned again: what is fetched now is the new owner's input
    assert not stale(_msg(0, 11, 4))
    assert stale(_msg(0, 11, 3))
    stale.revoke({TP("metrics", 0)})  # revoked again in generation 4
    assert stale(_msg(0, 12, 4))


def test_set_aside_messages_are_never_recorded_for_commit():
    consumer = _RecordingConsumer()
    kept, aside = _msg(0, 1, 1), _msg(0, 2, 1)
    for msg in (kept, aside):
        msg.incref()  # as when Faust delivers a message to one stream
    before = m.STALE_EVENTS.labels("metrics")._value.get()
    assert StaleInput.set_aside([SimpleNamespace(message=aside)]) == 1
    assert m.STALE_EVENTS.labels("metrics")._value.get() == before + 1
    assert kept.ack(consumer) is True
    assert aside.ack(consumer) is False  # Faust's ack after the batch: nothing reaches the consumer
    assert consumer.recorded == [1]


def test_set_aside_if_stale_judges_a_partition_batch_by_its_first_event():
    app = SimpleNamespace(consumer_generation_id=5)
    stale = StaleInput(app)
    fresh = [SimpleNamespace(message=_msg(1, o, 5)) for o in (1, 2)]
    assert stale.set_aside_if_stale(fresh) is False
    assert not any(e.message.acked for e in fresh)
    stale.revoke({TP("metrics", 1)})
    assert stale.set_aside_if_stale(fresh) is True
    assert all(e.message.acked for e in fresh)
