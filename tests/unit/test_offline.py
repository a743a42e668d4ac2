"""`stream score` / `stream eval`: strictly online, errors name the line, the shared core is used."""
from __future__ import annotations

import csv
import json
import random

import pytest

from stream.cli import main
from stream.detect.offline import DEFAULT_OFFLINE_SPEC, OfflineScorer, open_table, parse_time

SPEC = """\
name: t
window: 1
features: [mean]
warmup_windows: 50
drift: false
model: {n_trees: 10, height: 6, window_size: 100, seed: 7}
threshold: {grade: 0.5, score_floor: 0.0, distance_p: 1.0e-6, history: 50}
resolve_after: 5
cooldown_windows: 0
"""


def _write(path, rows, sep=";", header=("datetime", "a", "b", "anomaly", "changepoint")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=sep, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _series(n=300, spike_at=(220, 240), seed=1):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        inside = spike_at[0] <= i < spike_at[1]
        a = 10 + rng.gauss(0, 1) + (25 if inside else 0)
        b = 5 + rng.gauss(0, 0.5)
        cp = 1 if i in spike_at else 0
        rows.append([f"2020-03-09 10:{i // 60:02d}:{i % 60:02d}", f"{a:.4f}", f"{b:.4f}", int(inside), cp])
    return rows


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter=";"))


@pytest.fixture()
def spec_file(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC)
    return str(p)


def test_score_writes_every_row_with_score_and_alert(tmp_path, spec_file, capsys):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    rows = _series()
    _write(src, rows)
    assert main(["score", str(src), "--output", str(out), "--spec", spec_file]) == 0
    got = _read(out)
    assert len(got) == len(rows)
    assert list(got[0])[-2:] == ["anomaly_score", "alert"]
    assert [r["a"] for r in got] == [r[1] for r in rows]          # input repeated as is
    scores = [float(r["anomaly_score"]) for r in got]
    assert all(0.0 <= s <= 1.0 for s in scores)
    alert = [r["alert"] == "true" for r in got]
    assert not any(alert[:50])                                     # warm-up: never alerts
    assert alert[220]                                              # the spike fires on its first row
    assert sum(alert[220:240]) >= 18
    assert "1 incident" in capsys.readouterr().err


def test_score_is_strictly_online(tmp_path, spec_file):
    """The first k rows' outputs do not change when any later row is altered (or removed)."""
    rows = _series(n=260)
    k = 230
    base, changed, cut = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    _write(base, rows)
    alt = [list(r) for r in rows]
    for r in alt[k:]:
        r[1] = "1000.0"   # an enormous shift right after row k-1
        r[2] = "-50"
    _write(changed, alt)
    _write(cut, rows[:k])
    outs = []
    for src in (base, changed, cut):
        out = tmp_path / (src.stem + ".out.csv")
        assert main(["score", str(src), "-o", str(out), "--spec", spec_file, "--no-progress"]) == 0
        outs.append([(r["anomaly_score"], r["alert"]) for r in _read(out)])
    assert outs[0][:k] == outs[1][:k] == outs[2]
    assert outs[0][k:] != outs[1][k:]


def test_bad_row_is_reported_with_its_line_number(tmp_path, capsys):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    rows = _series(n=40)
    rows[9][1] = "12,x"           # data row 10 = file line 11 (line 1 is the header)
    _write(src, rows)
    assert main(["score", str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{src}:11:" in err and "'a'" in err and "not a number" in err
    assert not out.exists()       # no half-written output


@pytest.mark.parametrize("bad, what", [(["2020-03-09 10:00:05", "1"], "expected 5 fields"),
                                       (["yesterday", "1", "2", "0", "0"], "not a timestamp"),
                                       (["2020-03-09 10:00:05", "inf", "2", "0", "0"], "not a finite number")])
def test_other_bad_rows(tmp_path, capsys, bad, what):
    src = tmp_path / "in.csv"
    rows = _series(n=10)
    rows[4] = bad
    _write(src, rows)
    assert main(["score", str(src), "-o", str(tmp_path / "o.csv")]) == 1
    err = capsys.readouterr().err
    assert f"{src}:6:" in err and what in err


def test_columns_separator_and_timestamps(tmp_path):
    src = tmp_path / "in.csv"
    _write(src, [["1700000000", "1", "", "0", "0"], ["1700000001", "2", "3", "0", "0"]], sep=",")
    t = open_table(str(src))
    assert t.sep == "," and t.header[t.ts_col] == "datetime"
    assert t.value_names == ["a", "b"]                  # labels are not metrics
    assert open_table(str(src), value_cols=["b"]).value_names == ["b"]
    assert parse_time("2020-03-09 10:14:33") == parse_time("2020-03-09T10:14:33Z") == 1583748873.0
    assert parse_time("1583748873.5") == 1583748873.5


def test_default_offline_spec_uses_the_engine():
    sc = OfflineScorer(DEFAULT_OFFLINE_SPEC)
    out = [sc.step({"x": float(i % 7)}) for i in range(40)]
    assert len(sc.det.entities) == 1 and sc.rows == 40
    assert all(o["verdict"] is not None for o in out)
    assert not any(o["alert"] for o in out[:DEFAULT_OFFLINE_SPEC.warmup_windows])


def test_eval_reports_nab_and_pointwise(tmp_path, spec_file):
    d = tmp_path / "data"
    d.mkdir()
    # episodes longer than the 60 s NAB window, so the start's and the end's windows do not overlap
    _write(d / "1.csv", _series(n=280, seed=1, spike_at=(160, 240)))
    _write(d / "2.csv", _series(n=280, seed=2, spike_at=(130, 200)))
    rep, plots = tmp_path / "r.json", tmp_path / "plots"
    assert main(["eval", str(d), "--report", str(rep), "--plots", str(plots), "--warmup-rows", "100",
                 "--spec", spec_file, "--no-progress"]) == 0
    r = json.loads(rep.read_text())
    assert r["protocol"]["warmup_rows"] == 100 and r["spec"]["warmup_windows"] == 100
    assert len(r["files"]) == 2 and r["overall"]["scored_rows"] == 2 * 180
    for f in r["files"]:
        assert f["changepoints"] == 2
        assert set(f["nab"]) == {"standard", "reward_low_FP", "reward_low_FN"}
        assert f["f1"] > 0.8 and f["nab"]["standard"] > 80
        assert (plots / ("data_" + f["file"].rsplit("/", 1)[1].replace(".csv", ".png"))).stat().st_size > 1000
    assert r["overall"]["tp"] == sum(f["tp"] for f in r["files"])
