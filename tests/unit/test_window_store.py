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
