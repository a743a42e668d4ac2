"""SKAB evaluation: ``stream eval`` on the 34 labeled SKAB files, printed as README table rows.

    .venv/bin/python benchmarks/skab_eval.py [--data ../shared/data/skab] [--spec specs/offline/skab.yaml]

Reads the data where it lies (never copied into the repo), uses the first 400 rows of each file
as warm-up (learned, never alerted on, excluded from the metrics: SKAB's leaderboard fits its
models on the same rows), writes ``reports/skab.json`` and one PNG per file in
``reports/skab/``, and prints the markdown rows to paste beside the leaderboard.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "skab"))
    ap.add_argument("--spec", default=str(ROOT / "specs" / "offline" / "skab.yaml"))
    ap.add_argument("--report", default=str(ROOT / "reports" / "skab.json"))
    ap.add_argument("--plots", default=str(ROOT / "reports" / "skab"))
    ap.add_argument("--warmup-rows", type=int, default=400)
    a = ap.parse_args()
    from stream.cli import main as stream

    dirs = [str(Path(a.data) / d) for d in ("valve1", "valve2", "other")]
    t0 = time.perf_counter()
    rc = stream(["eval", *dirs, "--report", a.report, "--plots", a.plots, "--spec", a.spec,
                 "--warmup-rows", str(a.warmup_rows)])
    if rc:
        return rc
    wall = time.perf_counter() - t0
    r = json.loads(Path(a.report).read_text())

    def row(name: str, m: dict) -> str:
        n = m["nab"]
        return (f"| {name} | {m['f1']:.2f} | {m['far']:.2f} | {m['mar']:.2f} | {n['standard']:.2f} | "
                f"{n['reward_low_FP']:.2f} | {n['reward_low_FN']:.2f} |")

    print()
    print("| ours (stream, Half-Space Trees, strictly online) | F1 | FAR % | MAR % | NAB standard | NAB low FP | NAB low FN |")
    print("|---|---|---|---|---|---|---|")
    for group in ("valve1", "valve2", "other"):
        fs = [f for f in r["files"] if Path(f["file"]).parent.name == group]
        tot = {k: sum(f[k] for f in fs) for k in ("tp", "tn", "fp", "fn")}
        raw = {p: [sum(f["nab_raw"][p][i] for f in fs) for i in range(3)] for p in fs[0]["nab_raw"]}
        from stream.detect import nab

        m = dict(nab.pointwise(**tot), nab={p: nab.normalize(*v) for p, v in raw.items()})
        print(row(f"{group} ({len(fs)} files)", m))
    print(row(f"**all {len(r['files'])} files**", r["overall"]))
    print(f"\n{r['overall']['rows']} rows, eval {r['seconds']:.1f} s (wall with start-up {wall:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
