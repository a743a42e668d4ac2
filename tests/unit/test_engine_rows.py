"""Detector.ingest_rows (the worker's path: an entity's rows of one source message in one call)
gives the same alerts and the same state as Detector.ingest row by row.

Pure core only. The stream has what exercises every branch of the per-sample path: several
entities and metrics, a level shift (anomaly alerts), a long silence of one metric (missing_data
opened on its return, then resolved), late samples (out of order, some past their window), and
rows of one entity split over several source messages.
"""
from __future__ import annotations

import random

import orjson
import pytest

from stream.detect.engine import Detector
from stream.detect.spec import DetectorSpec

W = 60.0


def _messages(seed: int) -> list[tuple[int, int, list[tuple[str, str, float, float]]]]:
    """[(source partition, offset, [(host, metric, ts, value), ...]), ...] in arrival order."""
    rng = random.Random(seed)
    msgs = []
    off = 0
    for k in range(400):  # scrapes every 15 s: 4 per window
        rows = []
        for h in range(4):
            for m in ("a", "b", "c"):
                if h == 1 and m == "b" and 150 <= k < 190:
                    continue  # a long silence of one metric: missing_data on its return
                ts = 1_700_000_000.0 + k * 15.0 + rng.random()
                if rng.random() < 0.03:
                    ts -= rng.choice([20.0, 200.0])  # late: within its window or past it
                bump = 8.0 if (h == 2 and 300 <= k < 340) else 0.0  # a level shift
                rows.append((f"h{h}", m, ts, 10.0 + h + rng.gauss(0, 1) + bump))
        rng.shuffle(rows)
        msgs.append((k % 3, off, rows))
        off += 1
    return msgs


def _spec() -> DetectorSpec:
    return DetectorSpec(name="t", group_by=("host",), window=W, warmup_windows=15, missing_after_windows=3)


@pytest.mark.parametrize("seed", [1, 2])
def test_ingest_rows_equals_ingest_row_by_row(seed):
    msgs = _messages(seed)
    one, rows = Detector(_spec()), Detector(_spec())
    a_one: list[dict] = []
    a_rows: list[dict] = []
    for part, off, samples in msgs:
        for host, metric, ts, value in samples:
            a_one += one.ingest(metric, {"host": host}, ts, value, offset=off, partition=part, lane=part)
        by_entity: dict[str, tuple[dict, list]] = {}
        for host, metric, ts, value in samples:  # grouped per entity, order within it kept
            eid, elabels = rows.spec.entity_of(metric, {"host": host})
            by_entity.setdefault(eid, (elabels, []))[1].append((metric, ts, value))
        for eid, (elabels, rs) in by_entity.items():
            # split each entity's rows over two calls, as two chunks of one message would be
            cut = len(rs) // 2
            a_rows += rows.ingest_rows(eid, elabels, rs[:cut], offset=off, partition=part, lane=part)
            a_rows += rows.ingest_rows(eid, elabels, rs[cut:], offset=off, partition=part, lane=part)
    kinds = {(a["kind"], a["status"]) for a in a_one}
    # the stream exercised what it was built to exercise
    assert ("anomaly", "firing") in kinds and ("missing_data", "firing") in kinds, kinds
    assert one.late > 0
    # grouping per entity reorders rows *between* entities, never within one: per-entity
    # alert sequences and every entity's state are identical
    def per_entity(alerts):  # (created_at is the wall clock at emission)
        out: dict[str, list] = {}
        for a in alerts:
            out.setdefault(a["series"]["id"], []).append({k: v for k, v in a.items() if k != "created_at"})
        return out

    assert per_entity(a_rows) == per_entity(a_one)
    assert one.late == rows.late
    assert sorted(one.entities) == sorted(rows.entities)
    for eid in one.entities:
        assert rows.export_state(eid) == one.export_state(eid), eid


def _ingest_rows_python(det: Detector, eid: str, elabels: dict, rows: list, **kw) -> list[dict]:
    """ingest_rows with every sample on the Python loop (the compiled loop's reference)."""
    from stream.detect.engine import _Entity

    ent = det.entities.get(eid)
    if ent is None:
        ent = det.entities[eid] = _Entity(eid, elabels, kw["lane"], det._score_type)
    return det._fold_py(ent, rows, 0, len(rows), kw["offset"], kw["partition"], kw["lane"])


@pytest.mark.parametrize("seed", [3, 4])
def test_the_compiled_sample_loop_equals_the_python_loop(seed, monkeypatch):
    msgs = _messages(seed)
    fast, ref = Detector(_spec()), Detector(_spec())
    calls = {"py": 0, "rows": 0}
    real = fast._fold_py

    def counted(ent, rows, i, j, *a):
        calls["py"] += j - i
        return real(ent, rows, i, j, *a)

    monkeypatch.setattr(fast, "_fold_py", counted)
    a_fast: list[dict] = []
    a_ref: list[dict] = []
    for part, off, samples in msgs:
        by_entity: dict[str, tuple[dict, list]] = {}
        for host, metric, ts, value in samples:
            eid, elabels = fast.spec.entity_of(metric, {"host": host})
            by_entity.setdefault(eid, (elabels, []))[1].append((metric, ts, value))
        for eid, (elabels, rs) in by_entity.items():
            calls["rows"] += len(rs)
            a_fast += fast.ingest_rows(eid, elabels, rs, offset=off, partition=part, lane=part)
            a_ref += _ingest_rows_python(ref, eid, elabels, rs, offset=off, partition=part, lane=part)
    strip = [{k: v for k, v in a.items() if k != "created_at"} for a in a_fast]
    assert strip == [{k: v for k, v in a.items() if k != "created_at"} for a in a_ref]
    kinds = {(a["kind"], a["status"]) for a in a_ref}
    assert {("anomaly", "firing"), ("missing_data", "firing"), ("missing_data", "resolved")} <= kinds, kinds
    assert fast.late == ref.late > 0 and fast.windows.late == ref.windows.late
    for eid in ref.entities:
        assert fast.export_state(eid) == ref.export_state(eid), eid
        assert fast.entities[eid].last_seen == ref.entities[eid].last_seen
        assert fast.entities[eid].watch == ref.entities[eid].watch
    # most samples took the compiled loop; the Python one only the few that needed it
    assert 0 < calls["py"] < calls["rows"] // 20, calls


def test_ingest_chunks_of_decoded_columns_equals_rows_with_the_cursor_by_hand():
    """The worker's path (internal message -> columns -> ingest_chunks) against lists of rows,
    with seen / advance_cursor called by hand; a replayed message changes nothing."""
    from stream.routing import Router, decode_payload

    msgs = _messages(5)
    fast, ref = Detector(_spec()), Detector(_spec())
    a_fast: list[dict] = []
    a_ref: list[dict] = []
    replayed = 0
    for k, (part, off, samples) in enumerate(msgs):
        out = Router.outbox()
        for host, metric, ts, value in samples:
            eid, elabels = fast.spec.entity_of(metric, {"host": host})
            out.append(0, eid, orjson.dumps(elabels), metric, part, off, ts, value)
        (raw,) = out.encode().values()
        rounds = 2 if k % 50 == 7 else 1  # now and then the same message twice (a replay)
        for _ in range(rounds):
            for eid, (elabels, chunks) in decode_payload(raw, None, columns=True).items():
                alerts, folded = fast.ingest_chunks(eid, elabels, chunks, lane=part)
                a_fast += alerts
                replayed += not folded
            for eid, (elabels, chunks) in decode_payload(raw, None).items():
                for src_p, src_o, rows in chunks:
                    if ref.seen(eid, src_p, src_o):
                        continue
                    a_ref += ref.ingest_rows(eid, elabels, rows, offset=src_o, partition=src_p, lane=part)
                    ref.advance_cursor(eid, src_p, src_o)
    assert replayed >= 8  # 4 entities x the replayed messages: skipped whole
    strip = [{k: v for k, v in a.items() if k != "created_at"} for a in a_fast]
    assert strip == [{k: v for k, v in a.items() if k != "created_at"} for a in a_ref]
    assert {a["kind"] for a in a_ref} >= {"anomaly", "missing_data"}
    for eid in ref.entities:
        assert fast.export_state(eid) == ref.export_state(eid), eid


def test_state_parts_write_the_window_part_only_when_a_window_closed_and_load_the_same_state():
    msgs = _messages(6)
    det = Detector(_spec())
    windows_written = samples_written = 0
    table: dict[tuple[str, str], bytes] = {}  # (eid, "s" | "w0" | "w1") -> the record as last written
    for k, (part, off, samples) in enumerate(msgs):
        by_entity: dict[str, tuple[dict, list]] = {}
        for host, metric, ts, value in samples:
            eid, elabels = det.spec.entity_of(metric, {"host": host})
            by_entity.setdefault(eid, (elabels, []))[1].append((metric, ts, value))
        for eid, (elabels, rs) in by_entity.items():
            before = det.entities[eid].n_windows if eid in det.entities else None
            det.ingest_chunks(eid, elabels, [(part, off, rs)], lane=part)
            fast, slow, slot = det.export_parts(eid)  # a commit after every message
            samples_written += 1
            closed = before is None or det.entities[eid].n_windows != before
            assert (slow is not None) == closed  # the window part only when a window closed (or new)
            if slow is not None:
                windows_written += 1
                prev = table.get((eid, "s"))
                if prev is not None:  # it goes to the slot the last sample part does not name
                    assert orjson.loads(prev[1:])["wslot"] != slot
                table[(eid, f"w{slot}")] = slow
            table[(eid, "s")] = fast
        if k % 97 == 50:  # the records as last written load into the same state as the whole export
            for eid in det.entities:
                again = Detector(_spec())
                again.import_parts(eid, table[(eid, "s")], [table.get((eid, "w0")), table.get((eid, "w1"))])
                assert again.export_state(eid) == det.export_state(eid), eid
                assert again.export_parts(eid)[1] is None  # nothing changed since: no window part
                whole = Detector(_spec())
                whole.import_state(eid, det.export_state(eid))
                slot = det.entities[eid].wslot
                w_fast, w_slow, _ = whole.export_parts(eid, full=True)
                d_fast, d_slow, _ = det.export_parts(eid, full=True)
                det.entities[eid].wslot = slot  # (a full export moves the slot: put it back)
                assert w_slow == d_slow
                assert {**orjson.loads(w_fast[1:]), "wslot": 0} == {**orjson.loads(d_fast[1:]), "wslot": 0}
    # samples of 4 hosts every 15 s, 60 s windows: one window part in ~4 commits
    assert samples_written > 3 * windows_written > 0, (samples_written, windows_written)
    fast, slow, _ = det.export_parts("t/host=h0", full=True)
    assert len(slow) > 4 * len(fast)  # the window part is the bulk of the state
    assert Detector.is_state_part(fast) and not Detector.is_state_part(det.export_state("t/host=h0"))


def test_a_write_interrupted_between_the_window_part_and_the_sample_part_leaves_a_consistent_state():
    """A crash after an entity's new window part was written and before its sample part: the last
    sample part still names the slot holding the window part it goes with."""
    msgs = _messages(7)
    det = Detector(_spec())
    eid = "t/host=h1"
    table: dict[str, bytes] = {}
    interrupted = 0
    for k, (part, off, samples) in enumerate(msgs):
        rs = [(m, ts, v) for h, m, ts, v in samples if h == "h1"]
        if not rs:
            continue
        snapshot = det.export_state(eid) if eid in det.entities else None
        det.ingest_chunks(eid, {"host": "h1"}, [(part, off, rs)], lane=0)
        fast, slow, slot = det.export_parts(eid)
        if slow is not None:
            table[f"w{slot}"] = slow
            if snapshot is not None and k % 5 == 0:  # crash now: this sample part is never written
                interrupted += 1
                again = Detector(_spec())
                again.import_parts(eid, table["s"], [table.get("w0"), table.get("w1")])
                assert again.export_state(eid) == snapshot  # the state of the last complete write
        table["s"] = fast
    assert interrupted >= 3
    early = dict(table)
    with pytest.raises(ValueError, match="disagree"):  # a slot that does not go with the sample part
        Detector(_spec()).import_parts(eid, early["s"], [early.get("w1"), early.get("w0")])
    with pytest.raises(ValueError, match="missing"):
        Detector(_spec()).import_parts(eid, early["s"], [None, None])


@pytest.mark.parametrize("seed", [6, 7])
def test_the_compiled_chunk_loop_equals_the_python_chunk_loop(seed):
    """ingest_chunks (chunks, rows and cursor in one compiled loop: _window.fold_chunks) against
    _ingest_chunks_py (a Python loop over ingest_rows), on internal messages of several source
    messages each, from three partitions, some replayed in part (chunks at or below the cursor
    skipped, the others folded), entities appearing in the middle: the same alerts, folded
    flags, late counts and state."""
    from stream.routing import Router, decode_payload

    rng = random.Random(seed)
    msgs = _messages(seed)
    fast, ref = Detector(_spec()), Detector(_spec())
    a_fast: list[dict] = []
    a_ref: list[dict] = []
    flags_fast: list[bool] = []
    flags_ref: list[bool] = []
    k = 0
    n_multi = n_skipped = 0
    while k < len(msgs):
        take = rng.randint(1, 4)
        start = k
        if k > 3 and rng.random() < 0.1:
            start = k - rng.randint(1, 3)  # a replay of the last few source messages, then new ones
        batch = msgs[start:k + take]
        k += take
        if k > 10 and rng.random() < 0.05:
            batch = msgs[k - 3:k]  # a replay of old source messages only
            k -= take
        out = Router.outbox()
        for part, off, samples in batch:
            for host, metric, ts, value in samples:
                if k < 60 and host == "h3":
                    continue  # an entity that appears later
                eid, elabels = fast.spec.entity_of(metric, {"host": host})
                out.append(0, eid, orjson.dumps(elabels), metric, part, off, ts, value)
        for raw in out.encode().values():
            for eid, (elabels, chunks) in decode_payload(raw, None, columns=True).items():
                n_multi += len(chunks) > 1
                n_skipped += sum(eid in ref.entities and ref.seen(eid, p, o) for p, o, _ in chunks)
                alerts, folded = fast.ingest_chunks(eid, elabels, chunks, lane=0)
                a_fast += alerts
                flags_fast.append(folded)
            for eid, (elabels, chunks) in decode_payload(raw, None, columns=True).items():
                alerts, folded = ref._ingest_chunks_py(eid, elabels, chunks, lane=0)
                a_ref += alerts
                flags_ref.append(folded)
    assert n_multi > 100 and n_skipped > 10 and not all(flags_ref)
    strip = [{k: v for k, v in a.items() if k != "created_at"} for a in a_fast]
    assert strip == [{k: v for k, v in a.items() if k != "created_at"} for a in a_ref]
    assert {(a["kind"], a["status"]) for a in a_ref} >= {("anomaly", "firing"), ("missing_data", "firing")}
    assert flags_fast == flags_ref
    assert fast.late == ref.late > 0 and fast.windows.late == ref.windows.late
    assert sorted(fast.entities) == sorted(ref.entities)
    for eid in ref.entities:
        assert fast.export_state(eid) == ref.export_state(eid), eid
        f, r = fast.entities[eid], ref.entities[eid]
        assert (f.last_seen, f.watch, f.cursor) == (r.last_seen, r.watch, r.cursor)
