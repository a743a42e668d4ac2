"""Detector.ingest_rows (the worker's path: an entity's rows of one source message in one call)
gives the same alerts and the same state as Detector.ingest row by row.

Pure core only. The stream has what exercises every branch of the per-sample path: several
entities and metrics, a level shift (anomaly alerts), a long silence of one metric (missing_data
opened on its return, then resolved), late samples (out of order, some past their window), and
rows of one entity split over several source messages.
"""
from __future__ import annotations

import random

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
