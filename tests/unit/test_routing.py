"""Routing samples to internal-topic partitions, and the decoder's cached fast path."""
from __future__ import annotations

import math

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings as hsettings, strategies as st

from stream import events
from stream.detect.engine import Detector
from stream.detect.spec import DetectorSpec
from stream.events import Sample, decode_metrics
from stream.routing import Router, decode_payload, nested, partition_for


def _samples(n_hosts: int, metrics=("cpu", "mem"), ts=60.0):
    return [{"metric": m, "labels": {"host": f"h{h}", "dc": "x"}, "value": float(h), "ts": ts}
            for h in range(n_hosts) for m in metrics]


def test_partition_is_kafkas_default_partitioner_for_the_entity_key():
    part = DefaultPartitioner()
    for i in range(500):
        key = f"hosts/host=h{i}".encode()
        assert partition_for(key, 8) == part(key, list(range(8)), list(range(8)))


def test_one_internal_message_per_partition_holding_every_entity_of_it():
    hosts = Detector(DetectorSpec(name="hosts", group_by=("host",)))
    dcs = Detector(DetectorSpec(name="dcs", group_by=("dc",)))
    router = Router({"hosts": hosts, "dcs": dcs}, partitions=4)
    good, bad = decode_metrics(orjson.dumps({"samples": _samples(40)}), max_bytes=1 << 20, max_batch=1000)
    assert not bad
    out = router.route([(3, 99, good)])
    assert 1 <= len(out) <= 4
    seen: dict[str, list] = {}
    for part, raw in out.items():
        ents = decode_payload(raw, None)
        for eid, (labels, chunks) in ents.items():
            assert [(p, o) for p, o, _ in chunks] == [(3, 99)]
            rows = chunks[0][2]
            assert partition_for(eid.encode(), 4) == part  # each entity on its own partition
            assert eid not in seen  # and in exactly one message
            seen[eid] = rows
            if eid.startswith("hosts/"):
                assert labels == {"host": eid.split("=")[1]}
    assert len(seen) == 41  # 40 hosts + 1 dc
    assert sorted(map(tuple, seen["dcs/dc=x"])) == sorted((s.metric, s.ts, s.value) for s in good)
    assert [r[2] for r in seen["hosts/host=h7"]] == [7.0, 7.0]


def test_routing_is_the_same_from_the_cache():
    det = Detector(DetectorSpec(name="hosts", group_by=("host",)))
    router = Router({"hosts": det}, partitions=8)
    good, _ = decode_metrics(orjson.dumps({"samples": _samples(50)}), max_bytes=1 << 20, max_batch=1000)
    first = router.route([(0, 1, good)])
    again = router.route([(0, 1, good)])
    assert first == again and router._cache


def test_version_1_payloads_are_still_read():
    raw = orjson.dumps([["cpu", {"host": "a"}, 60.0, 1.5, 2, 41], ["mem", {"host": "a"}, 60.0, 2.5, 2, 41]])
    ents = decode_payload(raw, b"hosts/host=a")
    assert list(ents) == ["hosts/host=a"]
    labels, chunks = ents["hosts/host=a"]
    assert labels is None and [(p, o) for p, o, _ in chunks] == [(2, 41)] and chunks[0][2][1][3] == 2.5


def test_version_2_payloads_are_still_read():
    raw = orjson.dumps({"v": 2, "src": [1, 7], "e": {"hosts/host=a": [{"host": "a"}, [["cpu", 60.0, 1.5]]]}})
    assert decode_payload(raw, None) == {"hosts/host=a": ({"host": "a"}, [[1, 7, [["cpu", 60.0, 1.5]]]])}


def test_version_3_payloads_are_still_read():
    raw = orjson.dumps({"v": 3, "e": {"hosts/host=a": [{"host": "a"}, [[1, 7, [["cpu", 60.0, 1.5]]], [0, 9, [["mem", 61.0, 2.0]]]]]}})
    assert decode_payload(raw, None) == {"hosts/host=a": ({"host": "a"}, [[1, 7, [["cpu", 60.0, 1.5]]],
                                                                         [0, 9, [["mem", 61.0, 2.0]]]])}


def test_version_4_keeps_every_string_exact_and_rejects_a_damaged_message():
    out = Router.outbox()
    labels = {"host": "naïve-ü", "dc": "东京"}
    out.append(2, "hosts/host=naïve-ü", orjson.dumps(labels), "latency_µs", 1, 2**40, 1.5e9, -0.25)
    out.append(2, "hosts/host=naïve-ü", orjson.dumps(labels), "latency_µs", 1, 2**40, 1.5e9 + 30, float("nan"))
    out.append(2, "dcs/dc=东京", orjson.dumps({"dc": "东京"}), "latency_µs", 0, 5, 1.5e9, 7.0)
    assert len(out) == 1 and out.samples == 3
    raw = out.encode()[2]
    got = decode_payload(raw, None)
    assert list(got) == ["hosts/host=naïve-ü", "dcs/dc=东京"]
    lab, chunks = got["hosts/host=naïve-ü"]
    assert lab == labels and [(p, o) for p, o, _ in chunks] == [(1, 2**40)]
    assert chunks[0][2][0] == ("latency_µs", 1.5e9, -0.25) and math.isnan(chunks[0][2][1][2])
    assert got["dcs/dc=东京"] == ({"dc": "东京"}, [[0, 5, [("latency_µs", 1.5e9, 7.0)]]])
    for bad in (raw[:-1], raw[:20], raw + b"\0" * 8, b"\x04"):
        with pytest.raises(ValueError):
            decode_payload(bad, None)


def test_a_batch_of_input_messages_becomes_one_message_per_partition_with_each_source_kept_apart():
    det = Detector(DetectorSpec(name="hosts", group_by=("host",)))
    router = Router({"hosts": det}, partitions=4)
    batch = []
    for off in range(10):  # ten exporter messages from two input partitions, 30 hosts each
        good, _ = decode_metrics(orjson.dumps({"samples": _samples(30, ts=60.0 * off)}), max_bytes=1 << 20,
                                 max_batch=1000)
        batch.append((off % 2, 100 + off, good))
    out = router.route(batch)
    assert len(out) <= 4  # not 10 x 4
    got: dict[str, list] = {}
    for part, raw in out.items():
        for eid, (labels, chunks) in decode_payload(raw, None).items():
            assert partition_for(eid.encode(), 4) == part
            got[eid] = chunks
    assert len(got) == 30
    for eid, chunks in got.items():  # each source message is its own chunk, in arrival order
        assert [(p, o) for p, o, _ in chunks] == [(off % 2, 100 + off) for off in range(10)]
        h = float(eid.split("=h")[1])
        assert [rows for _, _, rows in chunks] == [[("cpu", 60.0 * off, h), ("mem", 60.0 * off, h)]
                                                   for off in range(10)]


_label_value = st.one_of(st.text(max_size=5), st.integers(), st.none(), st.lists(st.integers(), max_size=2))
_sample = st.fixed_dictionaries(
    {"metric": st.one_of(st.sampled_from(["cpu", "up", "bad name", ""]), st.integers(), st.lists(st.integers(), max_size=1),
                         st.dictionaries(st.text(max_size=1), st.integers(), max_size=1)),
     "value": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                        st.booleans(), st.text(max_size=3), st.none()),
     "ts": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10, max_value=2 ** 70),
                     st.booleans(), st.none())},
    optional={"labels": st.one_of(st.dictionaries(st.sampled_from(["host", "dc", "1bad", "a-b"]), _label_value, max_size=3),
                                  st.none(), st.lists(st.text(), max_size=1)),
              "extra": st.integers()})


@hsettings(max_examples=1500, deadline=None)
@given(st.lists(_sample, min_size=1, max_size=6))
def test_cached_fast_path_accepts_and_rejects_exactly_what_the_full_check_does(items):
    # warm the caches with valid samples of the same metric names and label sets
    for it in items:
        warm = {"metric": it["metric"], "value": 1.0, "ts": 1.0}
        if "labels" in it:
            warm["labels"] = it["labels"]
        events._check_sample(warm)
    for it in items:
        fast = events._check_sample(it)
        full = events._check_sample_full(it)
        if isinstance(full, Sample):
            assert isinstance(fast, Sample)
            assert (fast.metric, fast.labels, fast.series) == (full.metric, full.labels, full.series)
            assert fast.value == full.value and fast.ts == full.ts and math.isfinite(fast.value)
        else:
            assert fast == full


def test_a_future_timestamp_is_deadlettered_and_the_rest_of_the_batch_kept():
    batch = {"samples": [{"metric": "cpu", "value": 1.0, "ts": 100.0},
                         {"metric": "cpu", "value": 2.0, "ts": 5000.0},
                         {"metric": "cpu", "value": 3.0, "ts": 160.0}]}
    good, bad = decode_metrics(orjson.dumps(batch), max_bytes=1 << 20, max_batch=10, max_ts=1000.0)
    assert [s.value for s in good] == [1.0, 3.0]
    assert len(bad) == 1 and bad[0].reason == "future_timestamp" and bad[0].batch_index == 1
    assert orjson.loads(bad[0].original) == batch["samples"][1]
    assert "STREAM_MAX_FUTURE_SECONDS" in bad[0].error
    one = orjson.dumps({"metric": "cpu", "value": 2.0, "ts": 5000.0})
    good, bad = decode_metrics(one, max_bytes=1 << 20, max_batch=10, max_ts=1000.0)
    assert not good and bad[0].reason == "future_timestamp" and bad[0].original == one
    # without a horizon (offline tools) nothing is in the future
    good, bad = decode_metrics(one, max_bytes=1 << 20, max_batch=10)
    assert len(good) == 1 and not bad


def test_stored_entity_state_is_compressed_and_older_zstd_zlib_or_uncompressed_state_still_loads():
    import random
    import zlib

    import cramjam

    from stream.worker import pack_state, unpack_state

    det = Detector(DetectorSpec(name="hosts", group_by=("host",), window=60, warmup_windows=5))
    rng = random.Random(3)
    for i in range(60 * 40):
        det.ingest("cpu", {"host": "a"}, float(i), 10 + rng.gauss(0, 1))
    eid = next(iter(det.entities))
    raw = det.export_state(eid)
    stored = pack_state(raw)
    assert stored[:2] == b"\xb4\x01" and len(stored) < len(raw) / 2
    fast, slow, _slot = det.export_parts(eid)
    for part in (fast, slow):  # the records the worker writes
        assert unpack_state(pack_state(part)) == part
    # LZ4 (now), zstd (until 2026-12-07), zlib level 1 (before that), and before compression
    for blob in (stored, bytes(cramjam.zstd.compress(raw, level=1)), zlib.compress(raw, 1), raw):
        other = Detector(det.spec)
        other.import_state(eid, unpack_state(blob))
        assert other.export_state(eid) == raw


_valid = st.fixed_dictionaries(
    {"metric": st.sampled_from(["cpu", "up", "mem"]),
     "value": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-2 ** 60, 2 ** 60)),
     "ts": st.one_of(st.floats(min_value=0, max_value=1e12), st.integers(0, 2 ** 60))},
    optional={"labels": st.dictionaries(st.sampled_from(["host", "dc"]), st.sampled_from(["a", "b", "c"]), max_size=2)})
_message = st.one_of(
    st.lists(st.one_of(_valid, _valid, _sample, st.integers(), st.none()), min_size=1, max_size=8).map(lambda xs: {"samples": xs}),
    _valid, _sample,
    st.sampled_from([{"samples": []}, {"samples": 1}, {"samples": [1], "x": 1}, [1, 2], "text"]))


def _raw(msg) -> bytes:
    import json

    return json.dumps(msg, allow_nan=True).encode()  # NaN / Infinity literals and big ints, as clients send


def _route_like_the_reference(raws: list[bytes], max_ts: float, max_batch: int = 5) -> list[int]:
    """Route ``raws`` twice (the second time every valid series is cached) with
    :meth:`Router.add_message` and with the reference (``decode_metrics`` + :meth:`Router.group`),
    asserting the same rejections, samples, internal messages and decoded columns; returns how
    many messages the byte scanner routed in each round."""
    detectors = {"hosts": Detector(DetectorSpec(name="hosts", group_by=("host",))),
                 "dcs": Detector(DetectorSpec(name="dcs", group_by=("dc",)))}
    fast_router, ref_router = Router(detectors, partitions=4), Router(detectors, partitions=4)
    scanned = []
    for _round in range(2):  # the second round runs with every valid series cached
        out = fast_router.outbox()
        got_bad, ref_bad, ref_batch, n_fast = [], [], [], 0
        before = fast_router.scanned
        for off, raw in enumerate(raws):
            n, bad = fast_router.add_message(raw, off % 3, off, out, max_bytes=1 << 20, max_batch=max_batch,
                                             max_ts=max_ts)
            n_fast += n
            got_bad += [(off, r.reason, r.error, r.original, r.batch_index) for r in bad]
            good, rbad = decode_metrics(raw, max_bytes=1 << 20, max_batch=max_batch, max_ts=max_ts)
            ref_batch.append((off % 3, off, good))
            ref_bad += [(off, r.reason, r.error, r.original, r.batch_index) for r in rbad]
        assert got_bad == ref_bad
        assert n_fast == sum(len(g) for _p, _o, g in ref_batch)
        assert nested(out) == ref_router.group(ref_batch)
        assert Router.encode(out) == ref_router.route(ref_batch)  # the same bytes either way
        merged = {}
        for raw in Router.encode(out).values():  # the worker's columns hold the same rows
            cols = decode_payload(raw, None, columns=True)
            assert {eid: (orjson.loads(lab), [[p, o, list(rows)] for p, o, rows in chunks])
                    for eid, (lab, chunks) in cols.items()} \
                == decode_payload(raw, None)
            merged.update(cols)
        # the co-partitioned worker's columns, taken from the outbox without encoding: the same
        # entities, labels, chunks and rows as decoding every encoded message
        direct = out.columns()
        assert list(direct) == list(merged)
        assert all(type(eid) is str for eid in direct)
        assert {eid: (lab, [[p, o, list(rows)] for p, o, rows in chunks]) for eid, (lab, chunks) in direct.items()} \
            == {eid: (lab, [[p, o, list(rows)] for p, o, rows in chunks]) for eid, (lab, chunks) in merged.items()}
        scanned.append(fast_router.scanned - before)
    return scanned


@hsettings(max_examples=800, deadline=None)
@given(st.lists(_message, min_size=1, max_size=6), st.floats(min_value=0, max_value=2e12))
def test_compiled_decode_and_route_equals_decode_metrics_then_group(msgs, max_ts):
    _route_like_the_reference([_raw(m) for m in msgs], max_ts)


# --- texts as clients write them: the byte scanner's subset and everything around its edges.
# Messages are built from a few series that a seed message makes known valid (so the scanner is
# reached), rendered with varied whitespace, key orders and number forms, and half of them
# carry one defect or one form outside the subset.
_WS = ["", "", "", " ", "\n", "\t", " \r\n  "]
_SERIES = [(m, lab) for m in ("cpu", "mem", "ab", "a\\u0062")  # (the last: a backslash in the name)
           for lab in ({"host": "a"}, {"host": "b", "dc": "x"}, {}, None)]


def _num_text(rng, v) -> str:
    """A valid JSON number for ``v`` in one of the forms clients write."""
    if isinstance(v, int):
        return rng.choice([str(v), str(v), f"{v}.0", f"{v}e0", f"{v}E+0", f"{v}.000"])
    return rng.choice([repr(v), repr(v), f"{v:.17e}", f"{v:.17E}", f"{v:.17g}"])


def _str_text(rng, text: str) -> str:
    return orjson.dumps(text).decode()


def _sample_text(rng, metric, labels, value_text, ts_text, defect) -> str:
    ws = lambda: rng.choice(_WS)  # noqa: E731
    items = [("metric", _str_text(rng, metric)), ("value", value_text), ("ts", ts_text)]
    if labels is not None:
        items.append(("labels", "{" + ",".join(f"{ws()}{_str_text(rng, k)}{ws()}:{ws()}{_str_text(rng, v)}{ws()}"
                                               for k, v in labels.items()) + ws() + "}"))
    if defect == "extra_key":
        items.append(("extra", "1"))
    elif defect == "duplicate_key":
        items.append(rng.choice(items))
    elif defect == "missing_key":
        items.pop(rng.randrange(len(items)))
    elif defect == "labels_null":
        items = [it for it in items if it[0] != "labels"] + [("labels", "null")]
    elif defect == "labels_nested":
        items = [it for it in items if it[0] != "labels"] + [("labels", '{"host": {"a": 1}}')]
    elif defect == "escaped_metric":  # valid JSON for the same name (or the backslash name's look-alike)
        items[0] = ("metric", '"' + "".join(f"\\u{ord(c):04x}" if i == 0 else c for i, c in enumerate(metric)) + '"')
    elif defect == "metric_lookalike":  # "a\u0062" as an escape: the name "ab", not the backslash name
        items[0] = ("metric", '"a\\u0062"')
    elif defect == "utf8_label" and labels:
        k = next(iter(labels))
        items = [it for it in items if it[0] != "labels"] + [("labels", '{"' + k + '": "\u00e9"}')]
    elif defect == "labels_malformed":  # not JSON: the whole message is rejected (not_json)
        items = [it for it in items if it[0] != "labels"] + [("labels", rng.choice(
            ['{"host" "a"}', '{"host","a"}', '{"host":"a",}', '{"host":}', '{"host":"a" "dc":"x"}', '{,}', '{"host":"a"]']))]
    elif defect == "key_escape":
        items[1] = ('val\\u0075e', items[1][1])
    rng.shuffle(items)
    return "{" + ",".join(f'{ws()}"{k}"{ws()}:{ws()}{v}{ws()}' for k, v in items) + "}"


_DEFECTS = ["extra_key", "duplicate_key", "missing_key", "labels_null", "labels_nested", "escaped_metric",
            "metric_lookalike", "utf8_label", "labels_malformed", "key_escape", "bad_value", "bad_ts", "leading_zero", "big_int",
            "trailing", "not_batch", "empty", "too_many"]
_BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "null", "true", '"1"', "1e400", "-1e400", "1.", ".5", "+1", "-",
                "0x10", "1e", "--1"]


@hsettings(max_examples=500, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from([2e12, 2e12, 1e9]), st.sampled_from([4, 100]))
def test_the_byte_scanner_routes_exactly_what_decode_metrics_then_group_does(rng, max_ts, max_batch):
    seed = orjson.dumps({"samples": [{"metric": m, "value": 1.0, "ts": 1.0, **({} if lab is None else {"labels": lab})}
                                     for m, lab in _SERIES]})
    raws = [seed]
    for _ in range(6):
        n = rng.randint(1, 6)
        defect = rng.choice(_DEFECTS) if rng.random() < 0.5 else None
        bad_at = rng.randrange(n)
        parts = []
        for j in range(n):
            metric, labels = rng.choice(_SERIES[:12] if rng.random() < 0.9 else _SERIES[12:])
            value = rng.choice([rng.uniform(-1e6, 1e6), rng.randint(-10 ** 15 + 1, 10 ** 15 - 1), 0, -0.0,
                                rng.randint(-99, 99), 5e-324, 1.7976931348623157e308])
            ts = rng.choice([rng.uniform(0, 1.5e9), rng.randint(0, 2 * 10 ** 9), 0]
                            + ([rng.randint(0, 10 ** 15 - 1)] if rng.random() < 0.1 else []))
            vt, tt = _num_text(rng, value), _num_text(rng, ts)
            d = defect if j == bad_at else None
            if d == "bad_value":
                vt = rng.choice(_BAD_NUMBERS)
            elif d == "bad_ts":
                tt = rng.choice(_BAD_NUMBERS + ["-1", "-0.5", "2e12"])
            elif d == "leading_zero":
                vt = "0" + str(abs(int(value)) + 1)
            elif d == "big_int":
                vt = str(rng.choice([2 ** 53 + 1, 10 ** 15, -(10 ** 15), 2 ** 63, 10 ** 30]))
            parts.append(_sample_text(rng, metric, labels, vt, tt, d))
        if defect == "too_many":
            parts = parts * (max_batch // len(parts) + 1)
        body = "[" + ",".join(rng.choice(_WS) + p + rng.choice(_WS) for p in parts) + "]"
        if defect == "empty":
            body = "[" + rng.choice(_WS) + "]"
        text = "{" + rng.choice(_WS) + '"samples"' + rng.choice(_WS) + ":" + rng.choice(_WS) + body + rng.choice(_WS) + "}"
        if defect == "trailing":
            text += rng.choice(["x", "}", ",", " 1"])
        elif defect == "not_batch":
            text = parts[0]
        raws.append(text.encode())
    _route_like_the_reference(raws, max_ts, max_batch)


def test_the_byte_scanner_takes_the_common_texts():
    """Formatted as exporters and json.dumps / orjson do (whitespace, key orders, int and float
    forms, labels absent or empty), every message with known series is routed by the scanner,
    the same as the reference."""
    import random

    rng = random.Random(7)
    raws = []
    for k in range(300):
        batch = []
        for j in range(rng.randint(1, 8)):
            s = {"metric": rng.choice(["cpu", "mem"]), "value": rng.choice([rng.gauss(0, 1e3), rng.randint(-99, 99)]),
                 "ts": rng.choice([rng.uniform(0, 1e10), rng.randint(0, 10 ** 10)])}
            if rng.random() < 0.9:
                s["labels"] = {"host": rng.choice("ab"), "dc": rng.choice("xy")} if rng.random() < 0.9 else {}
            batch.append(s)
        text = ("{" + rng.choice([" ", ""]) + '"samples":' + rng.choice([" ", "\n", ""])
                + "[" + ",".join(_render_plain(rng, s) for s in batch) + "]}")
        raws.append(text.encode())
    first, second = _route_like_the_reference(raws, 2e12, 100)
    assert second == len(raws) and first > len(raws) / 2


def _decimal_texts(rng) -> list[str]:
    """Decimal number texts around the scanner's short-decimal path (at most 15 digits, no
    exponent: digits / 10 ** k) and its edges (16+ digits, long fractions, exponents, zeros)."""
    out = ["0.0", "-0.0", "0.1", "0.2", "0.3", "1.10", "1700000000.0", "1700000000.5", "-12.345",
           "0.00000000000001", "0.000000000000001", "999999999999999.0", "99999999999999.9",
           "9007199254740993.0", "123456789012345.6", "0.1234567890123456789012", "1.0e0", "5e-324",
           "2.2250738585072014e-308", "0.30000000000000004", "4.35", "80.15", "1.015"]
    for _ in range(300):
        whole = rng.choice(["0", str(rng.randint(1, 9)), str(rng.randint(10, 10 ** 9)), str(rng.randint(10 ** 9, 10 ** 13))])
        frac = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 17)))
        out.append(rng.choice(["", "-"]) + whole + "." + frac)
    return out


def test_the_byte_scanner_reads_decimals_as_orjson_does():
    """Every decimal text, short (the division path) or long (strtod), is routed by the scanner
    to the same double as the reference path (compared as bytes of the internal messages), and
    float() of the text agrees."""
    import random

    import struct

    rng = random.Random(3)
    texts = _decimal_texts(rng)
    times = [t for t in texts if 0 <= float(t) < 2e12]  # (a later time is rejected: not the scanner's)
    raws = []
    for i in range(0, len(texts), 5):
        parts = [f'{{"metric":"cpu","labels":{{"host":"a"}},"value":{t},"ts":{rng.choice(times)}}}'
                 for t in texts[i:i + 5]]
        raws.append(('{"samples":[' + ",".join(parts) + "]}").encode())
    first, second = _route_like_the_reference(raws, 2e12, 100)
    assert second == len(raws)  # all taken by the scanner once the series is known
    # and the doubles themselves, against Python's correctly rounded float()
    r = Router({"hosts": Detector(DetectorSpec(name="hosts", group_by=("host",)))}, partitions=1)
    for t in texts:
        raw = f'{{"samples":[{{"metric":"cpu","labels":{{"host":"a"}},"value":{t},"ts":1}}]}}'.encode()
        for _ in range(2):  # the first time by orjson (a new series), then by the scanner
            out = r.outbox()
            assert r.add_message(raw, 0, 0, out, max_bytes=1 << 20, max_batch=10)[0] == 1
        rows = next(iter(decode_payload(Router.encode(out)[0], None).values()))[1][0][2]
        assert struct.pack("<d", rows[0][2]) == struct.pack("<d", float(t)), t


def _render_plain(rng, sample: dict) -> str:
    items = list(sample.items())
    rng.shuffle(items)
    sep = rng.choice([":", ": ", " : "])
    return "{" + rng.choice([",", ", ", ",\n  "]).join(
        f'"{k}"{sep}' + (orjson.dumps(v).decode() if k != "value" or rng.random() < 0.5 else repr(v)) for k, v in items) + "}"


def test_samples_of_series_seen_valid_take_the_compiled_path(monkeypatch):
    import stream.routing as routing

    calls = []
    real = routing.route_items
    monkeypatch.setattr(routing, "route_items", lambda *a: calls.append(real(*a)) or calls[-1])
    router = Router({"hosts": Detector(DetectorSpec(name="hosts", group_by=("host",)))}, partitions=4)
    raw = orjson.dumps({"samples": _samples(20)})
    first, second = router.outbox(), router.outbox()
    assert router.add_message(raw, 0, 1, first, max_bytes=1 << 20, max_batch=100) == (40, [])
    assert router.add_message(raw, 0, 1, second, max_bytes=1 << 20, max_batch=100) == (40, [])
    # first sight: all by the Python path; then the byte scanner (no orjson objects, no route_items)
    assert calls == [0] and router.scanned == 1
    assert first.encode() == second.encode()
    # the same samples in a text outside the scanner's subset (an escaped character): orjson,
    # then all by route_items' compiled path
    third = router.outbox()
    escaped = raw.replace(b'"labels"', b'"\\u006cabels"')
    assert router.add_message(escaped, 0, 1, third, max_bytes=1 << 20, max_batch=100) == (40, [])
    assert calls == [0, 40] and router.scanned == 1
    assert third.encode() == first.encode()


def test_the_route_cache_is_per_label_set_and_metric_and_a_bad_sample_between_good_ones_is_rejected():
    router = Router({"hosts": Detector(DetectorSpec(name="hosts", group_by=("host",)))}, partitions=4)
    lab, rev = {"host": "a", "dc": "x"}, {"dc": "x", "host": "a"}
    first = {"samples": [{"metric": "cpu", "labels": lab, "value": 1.0, "ts": 60.0}]}
    assert router.add_message(orjson.dumps(first), 0, 1, router.outbox(), max_bytes=1 << 20, max_batch=10) == (1, [])
    assert router._fast_n == 1 and len(router._fast) == 1  # one label set, one metric
    batch = {"samples": [{"metric": "cpu", "labels": rev, "value": 2.0, "ts": 61.0},
                         {"metric": "cpu", "labels": lab, "value": "x", "ts": 62.0},  # same labels, bad value
                         {"metric": "mem", "labels": lab, "value": 3, "ts": 63},  # new metric, same labels
                         {"metric": "cpu", "labels": lab, "value": 4.0, "ts": 64.0}]}
    out = router.outbox()
    n, bad = router.add_message(orjson.dumps(batch), 0, 2, out, max_bytes=1 << 20, max_batch=10)
    assert n == 3 and [(r.reason, r.batch_index) for r in bad] == [("non_numeric", 1)]
    # the reversed order got its own key (same series, same targets), "mem" joined the first one
    assert router._fast_n == 3 and len(router._fast) == 2
    (part, ents), = nested(out).items()
    assert ents == {"hosts/host=a": [{"host": "a"}, [[0, 2, [("cpu", 61.0, 2.0), ("mem", 63.0, 3.0),
                                                              ("cpu", 64.0, 4.0)]]]]}


def test_the_series_of_one_entity_share_its_targets_and_the_cache_stays_bounded():
    dets = {"hosts": Detector(DetectorSpec(name="hosts", group_by=("host",))),
            "dcs": Detector(DetectorSpec(name="dcs", group_by=("dc",)))}
    router = Router(dets, partitions=4, cache_max=6)
    samples = [{"metric": m, "labels": {"host": h, "dc": "x"}, "value": 1.0, "ts": 60.0}
               for h in ("a", "b") for m in ("cpu", "mem", "disk")]
    out = router.outbox()
    assert router.add_message(orjson.dumps({"samples": samples}), 0, 1, out, max_bytes=1 << 20,
                              max_batch=100) == (6, [])
    by_metric = router._fast[(("host", "a"), ("dc", "x"))]
    # one targets list per entity pair (host, dc), the same object for each of its series, and one
    # (entity, labels, partition) tuple per entity whichever series resolved it
    assert len({id(t) for t in by_metric.values()}) == 1
    h_a, d_a = by_metric["cpu"]
    h_b, d_b = router._fast[(("host", "b"), ("dc", "x"))]["cpu"]
    assert d_a is d_b and h_a is not h_b and h_a[0] == "hosts/host=a" and d_a[0] == "dcs/dc=x"
    assert router.resolve("cpu", {"host": "a", "dc": "x"}) is by_metric["cpu"]
    # the 7th series clears the cache (bounded: a label-cardinality explosion must not grow it);
    # routing stays right, and the series is cached again
    seventh = {"samples": [{"metric": "net", "labels": {"host": "c", "dc": "x"}, "value": 2.0, "ts": 61.0}]}
    out = router.outbox()
    assert router.add_message(orjson.dumps(seventh), 0, 2, out, max_bytes=1 << 20, max_batch=10) == (1, [])
    assert router._fast_n == 1 and len(router._hit) == 2
    assert sorted(e for ents in nested(out).values() for e in ents) == ["dcs/dc=x", "hosts/host=c"]


_ROUTE_CACHE_PROBE = """
import gc, tracemalloc
import orjson
from stream.detect.engine import Detector
from stream.detect.spec import DetectorSpec
from stream.routing import Router

router = Router({"hosts": Detector(DetectorSpec(name="hosts", group_by=("host",)))}, partitions=8)
raws = [orjson.dumps({"samples": [{"metric": m, "labels": {"host": f"h{i}", "dc": "x"}, "value": 1.0, "ts": 60.0}
                                  for m in ("cpu", "mem") for i in range(k, k + 100)]}) for k in range(0, 2000, 100)]
gc.collect()
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
for off, raw in enumerate(raws):
    assert router.add_message(raw, 0, off, router.outbox(), max_bytes=1 << 20, max_batch=1000)[0] == 200
gc.collect()
assert len(router._hit) == 2000
print((tracemalloc.get_traced_memory()[0] - before) / 2000)
"""


def test_the_route_cache_costs_well_under_4_kb_per_entity():
    """Regression: orjson's bytes keep the 4 KB buffer they were written into; the router caches
    each entity's labels as JSON, and at 100,000 entities that was 400 MB of the worker's RSS.

    Measured in a fresh interpreter: tracemalloc counts every thread's allocations, and in the full
    suite threads that earlier integration tests leave behind once made it read 3.7 KB per entity."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _ROUTE_CACHE_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    per_entity = float(done.stdout.strip().splitlines()[-1])
    print(f"{per_entity:.0f} bytes per entity")
    assert per_entity < 3000, per_entity  # (≈ 1.9 KB: the fast cache, the labels; ≈ 6 KB with the 4 KB buffers)
