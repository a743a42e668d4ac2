"""WindowStore's per-entity index: export / drop touch only the entity's own windows."""
import time

import orjson

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
    assert pool.used == len(slots) and pool.buf.shape[0] == cap
    assert cap <= 1.25 * pool.used + 256  # slack: one growth step at most, not a doubling
    fresh = WindowAccumulators(buffer_size=8, capacity=len(slots))
    for s in slots:  # every open window still holds exactly what was folded into it
        n = int(pool.acc[s, 0])
        t = fresh.alloc()
        for k in range(n):
            fresh.add(t, float(k), pool.acc[s, 6] + k)  # first value + k, as added
        assert pool.summary(s) == fresh.summary(t)
        fresh.release(t)
