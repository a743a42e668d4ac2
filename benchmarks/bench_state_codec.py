"""Codecs for entity state in the changelog, side by side, on states of the load test's data.

Every entity a commit interval changed is written at the commit: its sample part, and its window
part when a window closed (``Detector.export_parts``), each packed by ``stream.worker.pack_state``.
This runs ``--entities`` load-test entities (``--metrics`` each, scraped every 30 s, 60 s windows,
the load test's detector spec) through the engine for ``--scrapes`` scrapes, exports every
entity's two parts and times each codec on them, alternating codecs ``--repeat`` times (best of):
µs per part, compression ratio and bytes out. The worker's codec is ``pack_state``; ``zstd-1`` is
the codec before it.

    python benchmarks/bench_state_codec.py
    python benchmarks/bench_state_codec.py --entities 200 --scrapes 400 --json reports/codec.json
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def states(entities: int, metrics: int, scrapes: int) -> tuple[list[bytes], list[bytes]]:
    """The sample parts and window parts of every entity after ``scrapes`` scrapes."""
    from loadtest.generate import Workload, spec_yaml
    from loadtest.run import Feed
    from stream.detect.engine import Detector
    from stream.detect.spec import load_specs
    from stream.routing import Router, decode_payload

    d = tempfile.mkdtemp()
    pathlib.Path(d, "lt.yaml").write_text(spec_yaml(60.0))
    wl = Workload(entities=entities, metrics=metrics, step=30.0)
    feed = Feed(wl, 0, scrapes, batch=25)
    dets = {s.name: Detector(s) for s in load_specs(d, window=60.0, lateness=0.0)}
    router = Router(dets, 8)
    for i, raw in enumerate(feed.values):
        out = router.outbox()
        router.add_message(raw, i % 8, i, out, max_bytes=10**7, max_batch=10**5)
        for lane, payload in router.encode(out).items():
            for eid, (labels, chunks) in decode_payload(payload, None, columns=True).items():
                dets[eid.split("/", 1)[0]].ingest_chunks(eid, labels, chunks, lane)
    fast: list[bytes] = []
    slow: list[bytes] = []
    for det in dets.values():
        for eid in list(det.entities):
            f, s, _slot = det.export_parts(eid)
            fast.append(f)
            if s is not None:
                slow.append(s)
    return fast, slow


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--entities", type=int, default=100)
    ap.add_argument("--metrics", type=int, default=5)
    ap.add_argument("--scrapes", type=int, default=300, help="scrapes per entity before the export (default 300)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds, codecs alternated (best of; default 5)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    import cramjam

    from stream.worker import pack_state, unpack_state

    codecs = {
        "pack_state (worker)": (pack_state, unpack_state),
        "zstd-1 (before)": (lambda b: bytes(cramjam.zstd.compress(b, level=1)), lambda b: bytes(cramjam.zstd.decompress(b))),
    }
    print(f"{args.entities} entities x {args.metrics} metrics, {args.scrapes} scrapes ...", file=sys.stderr)
    parts = dict(zip(("sample part", "window part"), states(args.entities, args.metrics, args.scrapes)))
    best: dict[tuple[str, str, str], float] = {}
    out_bytes: dict[tuple[str, str], int] = {}
    for r in range(args.repeat):
        print(f"round {r + 1}/{args.repeat}", file=sys.stderr)
        for part, blobs in parts.items():
            for name, (enc, dec) in codecs.items():
                t = time.perf_counter()
                packed = [enc(b) for b in blobs]
                te = (time.perf_counter() - t) / len(blobs)
                t = time.perf_counter()
                back = [dec(b) for b in packed]
                td = (time.perf_counter() - t) / len(blobs)
                if back != blobs:
                    sys.exit(f"{name}: round trip differs")
                best[(part, name, "enc")] = min(best.get((part, name, "enc"), te), te)
                best[(part, name, "dec")] = min(best.get((part, name, "dec"), td), td)
                out_bytes[(part, name)] = sum(map(len, packed))
    rows = []
    print(f"{'part':12s} {'codec':22s} {'in B':>7s} {'out B':>7s} {'ratio':>6s} {'pack us':>8s} {'unpack us':>9s}")
    for part, blobs in parts.items():
        size = sum(map(len, blobs))
        for name in codecs:
            o = out_bytes[(part, name)]
            row = {"part": part, "codec": name, "parts": len(blobs), "in_bytes": size / len(blobs),
                   "out_bytes": o / len(blobs), "ratio": size / o,
                   "pack_us": 1e6 * best[(part, name, "enc")], "unpack_us": 1e6 * best[(part, name, "dec")]}
            rows.append(row)
            print(f"{part:12s} {name:22s} {row['in_bytes']:7.0f} {row['out_bytes']:7.0f} {row['ratio']:6.2f} "
                  f"{row['pack_us']:8.1f} {row['unpack_us']:9.1f}")
    if args.json:
        from _common import write_json

        write_json(args.json, {"config": vars(args), "rows": rows})
        print(f"wrote {os.path.abspath(args.json)}", file=sys.stderr)


if __name__ == "__main__":
    main()
