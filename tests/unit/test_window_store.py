"""WindowStore's per-entity index: export / drop touch only the entity's own windows."""
import time

import orjson
import pytest

from stream.detect.window import WindowStore


def test_export_and_drop_are_per_entity_and_keep_creation_order():
    s = WindowStore(60.0, lateness=120.0)
    for e in range(50):
        s.add(f"e{e}", "m", 130.0, 1.0)
    s.add("x", "m", 125.0, 1.0)   # window 120 first,
    s.add("x", "m", 5.0, 2.0)     # then an older one (out of order, within the lateness)
    s.add("x", "n", 65.0, 3.0)
    closed_until, wins = s.export_entity("x")
    assert closed_until is None
    assert [w[0] for w in wins] == [120.0, 0.0, 60.0]  # creation order (the serialized order)
    assert s.entities["x"].starts == [0.0, 60.0, 120.0]
    used = s.acc.used
    s.drop_entity("x")
    assert s.acc.used == used - 3 and "x" not in s.entities
    assert s.export_entity("x") == [None, []]
    # the dropped entity's heap entries are stale: closing skips them
    assert sorted(w.entity for w in s.close_until(1000.0)) == sorted(f"e{e}" for e in range(50))


def test_import_round_trip():
    a = WindowStore(60.0)
    for i in range(10):
        a.add("e", "m", 30.0 * i, float(i), offset=i, partition=2)
    a.close_entity("e", 200.0)
    b = WindowStore(60.0)
    b.import_entity("e", orjson.loads(orjson.dumps(a.export_entity("e"))))
    assert b.export_entity("e") == a.export_entity("e")
    assert [w.summary for w in b.close_until(1e9)] == [w.summary for w in a.close_until(1e9)]


def test_export_does_not_scan_other_entities():
    """O(own windows): exporting one entity among many costs about what it costs alone."""
    def per_export(n_entities):
        s = WindowStore(60.0)
        for e in range(n_entities):
            s.add(f"e{e}", "m", 1.0, 1.0)
        t = time.perf_counter()
        for _ in range(2000):
            s.export_entity("e0")
        return time.perf_counter() - t

    small, large = min(per_export(10) for _ in range(3)), min(per_export(20_000) for _ in range(3))
    assert large < 5 * small  # a scan of 20k open windows per export would be ~1000x


def _reference_close(open_windows: dict, watermark: float, size: float, lateness: float, may_close=None):
    """Brute force: every open (start, entity) with start + size + lateness <= watermark, oldest first."""
    limit = watermark - size - lateness
    due = sorted(k for k in open_windows if k[0] <= limit and (may_close is None or may_close(k[1])))
    for k in due:
        del open_windows[k]
    return due


def test_close_until_closes_what_a_brute_force_scan_closes_in_the_same_order_with_one_heap_entry_per_entity():
    """Random entities, out-of-order samples, windows closed by the entities' own event time and by
    lane watermarks (some vetoed), entities dropped and re-imported: the windows closed, and their
    order, equal a brute-force scan of the open windows; the heap keeps about one entry per entity
    (an entry per window stayed after its entity's samples closed the window: ~10 per entity)."""
    import random

    rng = random.Random(7)
    size, lateness = 60.0, 30.0
    store = WindowStore(size=size, lateness=lateness)
    open_windows: dict[tuple[float, str], bool] = {}
    ents = [f"e{i}" for i in range(40)]
    t = peak = 0.0
    for step in range(3000):
        t += rng.random() * 3
        e = rng.choice(ents)
        ts = t - rng.random() * 70  # up to a window behind: some late, some reopen older windows
        starts = store.add_sample(e, rng.choice("ab"), ts, rng.random(), -1, -1, 0)
        if starts is not None:
            open_windows[(store.window_start(ts), e)] = True
        if step % 7 == 0:  # the entity's own event time closes its old windows (as the engine does)
            for w in store.close_entity(e, ts):
                del open_windows[(w.start, e)]
        if step % 50 == 0:
            veto = set(rng.sample(ents, 5))
            may = (lambda x: x not in veto) if step % 100 == 0 else None
            got = [(w.start, w.entity) for w in store.close_until(t - 200, 0, may_close=may)]
            assert got == _reference_close(open_windows, t - 200, size, lateness, may)
        if step % 400 == 399:  # an entity leaves and comes back from its exported state
            e = rng.choice(ents)
            data = store.export_entity(e)
            store.drop_entity(e)
            store.import_entity(e, orjson.loads(orjson.dumps(data)))
        peak = max(peak, len(store.heaps.get(0, ())))
    # one live entry per entity, and a few stale ones (seen: 43 here; 146 with an entry per window)
    assert peak <= len(ents) + 10
    got = [(w.start, w.entity) for w in store.close_until(t + 10_000, 0)]
    assert got == _reference_close(open_windows, t + 10_000, size, lateness)
    assert not open_windows and not any(store.has_open(e) for e in ents)


def test_state_list_equals_the_arrays_state_for_empty_partly_filled_and_overflowing_buffers():
    # get_state_list (what export_entity stores) against its reference, get_state(slot).tolist()
    import random

    rng = random.Random(5)
    s = WindowStore(60.0)
    acc = s.acc
    for n in (0, 1, 7, acc.buffer_size, acc.buffer_size + 9):
        slot = acc.alloc()
        for i in range(n):
            acc.add(slot, float(i), rng.gauss(0, 1), i, 3)
        assert acc.get_state_list(slot) == acc.get_state(slot).tolist()
        assert all(type(v) is float for v in acc.get_state_list(slot))


def test_the_pool_grows_in_place_by_a_quarter_and_keeps_every_open_window():
    from stream.detect._window import WindowAccumulators

    pool = WindowAccumulators(buffer_size=8, capacity=4)
    acc_obj = pool.acc
    slots = []
    for i in range(5_000):
        s = pool.alloc()
        slots.append(s)
        for k in range(3 + i % 11):  # some buffers overflow into the reservoir
            pool.add(s, float(k), float(i * 100 + k))
        if i % 7 == 0:  # free slots are reused before the pool grows again
            pool.release(slots.pop(0))
    assert pool.acc is acc_obj  # the same array object, resized, not replaced
    cap = pool.acc.shape[0]
    assert pool.used == len(slots) and pool.inl.shape[0] == pool.ovf_of.shape[0] == cap
    assert cap <= 1.25 * pool.used + 256  # slack: one growth step at most, not a doubling
    fresh = WindowAccumulators(buffer_size=8, capacity=len(slots))
    for s in slots:  # every open window still holds exactly what was folded into it
        n = int(pool.acc[s, 0])
        t = fresh.alloc()
        for k in range(n):
            fresh.add(t, float(k), pool.acc[s, 6] + k)  # first value + k, as added
        assert pool.summary(s) == fresh.summary(t)
        fresh.release(t)


_M64 = (1 << 64) - 1


def _mix(x: int) -> int:  # splitmix64, as _window.pyx
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _reference_buffer(values: list[float], size: int) -> list[float]:
    """The value buffer as one flat row of ``size`` held it: the first ``size`` values, then the
    deterministic reservoir (value n replaces index mix(n) % n when that is below ``size``)."""
    buf: list[float] = []
    for n, v in enumerate(values, start=1):
        if n <= size:
            buf.append(v)
        else:
            j = _mix(n) % n
            if j < size:
                buf[j] = v
    return buf


@pytest.mark.parametrize("buffer_size", [32, 8, 5])
def test_two_tier_value_buffers_hold_what_one_flat_buffer_held(buffer_size):
    """Slots of 0 to 3 x buffer_size values, allocated and released interleaved: each slot's
    buffer (state list), median and IQR are the flat buffer's, and overflow rows are returned."""
    import random

    import numpy as np

    from stream.detect._window import WindowAccumulators

    rng = random.Random(buffer_size)
    pool = WindowAccumulators(buffer_size=buffer_size, capacity=4)
    live: dict[int, list[float]] = {}
    for step in range(3_000):
        if live and rng.random() < 0.3:  # close a window
            slot = rng.choice(list(live))
            values = live.pop(slot)
            expect = _reference_buffer(values, buffer_size)
            if values:
                s = pool.take_summary(slot)
                q1, med, q3 = np.quantile(expect, [0.25, 0.5, 0.75])
                assert s["count"] == len(values) and s["median"] == pytest.approx(med, rel=1e-12, abs=1e-12)
                assert s["iqr"] == pytest.approx(q3 - q1, rel=1e-12, abs=1e-12)
            else:
                pool.release(slot)
            continue
        slot = pool.alloc()
        n = rng.choice([0, 1, 2, 4, 7, 8, 9, 12, buffer_size, buffer_size + 1, 3 * buffer_size])
        values = [rng.gauss(0, 1) for _ in range(n)]
        for i, v in enumerate(values):
            pool.add(slot, float(i), v, i, 0)
        assert pool.get_state_list(slot)[15:] == _reference_buffer(values, buffer_size)
        live[slot] = values
        if step % 5 == 0:  # a state round trip into another slot keeps the buffer
            other = pool.alloc()
            pool.set_state(other, pool.get_state(slot))
            assert pool.get_state_list(other) == pool.get_state_list(slot)
            assert repr(pool.summary(other)) == repr(pool.summary(slot))  # (NaN for an empty one)
            pool.release(other)
    spilled = sum(len(v) > pool.ninl for v in live.values()) if buffer_size > pool.ninl else 0
    assert pool.overflow_rows == spilled  # one overflow row per slot holding more than 8 values (if it can)
    for slot in list(live):
        pool.release(slot)
    assert pool.used == 0 and pool.overflow_rows == 0
    if buffer_size <= 8:
        assert pool.ovf.shape[0] == 0  # small buffers never spill


class _PythonCloseStore(WindowStore):
    """WindowStore with the Python rule the compiled ``take_window`` replaced in ``_close``."""

    def _close(self, entity, rec, start):
        from stream.detect.window import ClosedWindow

        slots = rec.wins.pop(start)
        rec.starts.remove(start)
        take = self.acc.take_summary
        summary = {metric: take(slot) for metric, slot in slots.items()}
        end = start + self.size
        cu = rec.closed_until
        if cu is None or end > cu:
            rec.closed_until = end
        return ClosedWindow(entity, start, end, summary)


def test_compiled_window_close_equals_the_python_rule():
    """Random out-of-order samples (some late, some reopening older windows), closed by entity event
    time and by watermarks: every closed window (entity, start, end, each metric's summary field
    for field), each entity's open starts and closed_until, and the slots in use equal the Python
    rule's, step by step."""
    import random

    rng = random.Random(11)
    a, b = WindowStore(60.0, lateness=30.0), _PythonCloseStore(60.0, lateness=30.0)
    ents = [f"e{i}" for i in range(12)]
    t = 0.0
    closed = 0
    for step in range(4000):
        t += rng.random() * 3
        e, m = rng.choice(ents), rng.choice("abc")
        ts, v = t - rng.random() * 70, rng.gauss(0, 1)
        assert a.add_sample(e, m, ts, v, step, 1, 0) == b.add_sample(e, m, ts, v, step, 1, 0)
        if step % 5 == 0:
            wa, wb = a.close_entity(e, ts), b.close_entity(e, ts)
        elif step % 37 == 0:
            wa, wb = a.close_until(t - 150, 0), b.close_until(t - 150, 0)
        else:
            continue
        assert [(w.entity, w.start, w.end) for w in wa] == [(w.entity, w.start, w.end) for w in wb]
        for x, y in zip(wa, wb):
            assert type(x.end) is type(y.end) is float
            assert x.summary.keys() == y.summary.keys()
            assert all(x.summary[k].to_dict() == y.summary[k].to_dict() for k in x.summary)
        closed += len(wa)
        assert a.acc.used == b.acc.used
        for k in ents:
            ra, rb = a.entities.get(k), b.entities.get(k)
            assert (ra is None) == (rb is None)
            if ra is not None:
                assert (ra.starts, ra.closed_until, list(ra.wins)) == (rb.starts, rb.closed_until, list(rb.wins))
    assert closed > 500
