"""``stream drift`` end to end through ``stream.cli.main``."""
from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
import scipy.stats

from stream.cli import main
from stream.detect.drift_stats import js_distance, psi

pytestmark = pytest.mark.filterwarnings("ignore:ks_2samp. Exact calculation unsuccessful")


def write_csv(path, header, rows):
    with open(path, "w") as fh:
        fh.write(",".join(header) + "\n")
        for r in rows:
            fh.write(",".join("" if v is None else str(v) for v in r) + "\n")
    return str(path)


def write_jsonl(path, records):
    with open(path, "wb") as fh:
        for r in records:
            fh.write(orjson.dumps(r) + b"\n")
    return str(path)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(42)
    n_ref, n_cur = 1200, 800
    ref = {
        "age": np.round(rng.normal(40, 10, n_ref), 2),
        "score": rng.integers(0, 5, n_ref).astype(float),  # heavy ties
        "color": rng.choice(["red", "green", "blue"], n_ref, p=[.5, .3, .2]),
        "const": np.full(n_ref, 3.0),
    }
    cur = {
        "age": np.round(rng.normal(46, 10, n_cur), 2),
        "score": rng.integers(0, 5, n_cur).astype(float),
        "color": rng.choice(["red", "green", "blue", "pink"], n_cur, p=[.3, .3, .2, .2]),
        "const": np.full(n_cur, 3.0),
    }
    ref_path = write_csv(tmp_path / "ref.csv", ["age", "score", "color", "const", "id"],
                         [[ref["age"][i], ref["score"][i], ref["color"][i], ref["const"][i], i]
                          for i in range(n_ref)])
    cur_path = write_jsonl(tmp_path / "cur.jsonl", [
        {"age": float(cur["age"][i]), "score": float(cur["score"][i]),
         "color": str(cur["color"][i]), "const": 3.0, "extra": "x"} for i in range(n_cur)])
    return ref, cur, ref_path, cur_path


def run_json(capsys, *argv):
    rc = main(["drift", *argv, "--format", "json"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = orjson.loads(out)
    return {r["feature"]: r for r in rows}, rows


def test_json_report_matches_scipy_and_numpy(data, capsys):
    ref, cur, ref_path, cur_path = data
    by, rows = run_json(capsys, "--reference", ref_path, "--current", cur_path)
    assert [r["feature"] for r in rows] == ["age", "score", "color", "const", "id", "extra"]
    for name in ("age", "score", "const"):
        r = by[name]
        assert r["type"] == "numeric"
        assert set(r) >= {"feature", "type", "psi", "js", "ks_stat", "ks_pvalue", "drift",
                          "severity"}
        ks = scipy.stats.ks_2samp(ref[name], cur[name])
        assert abs(r["ks_stat"] - ks.statistic) <= 1e-9
        assert abs(r["ks_pvalue"] - ks.pvalue) <= 1e-9
        # PSI / JS on 10 reference-quantile bins, recomputed with numpy
        inner = np.unique(np.quantile(ref[name], np.arange(1, 10) / 10, method="inverted_cdf"))
        rc_ = np.bincount(np.searchsorted(inner, ref[name], side="left"), minlength=inner.size + 1)
        cc_ = np.bincount(np.searchsorted(inner, cur[name], side="left"), minlength=inner.size + 1)
        assert abs(r["psi"] - psi(rc_, cc_)) <= 1e-12
        assert abs(r["js"] - js_distance(rc_, cc_)) <= 1e-12
    assert by["age"]["drift"] is True and by["age"]["severity"] == "drift"
    assert by["score"]["drift"] is False and by["score"]["severity"] == "none"
    assert by["const"]["ks_stat"] == 0.0 and by["const"]["psi"] == 0.0  # constant column
    c = by["color"]
    assert c["type"] == "categorical" and {"psi", "chi2", "chi2_pvalue"} <= set(c)
    labels = ["red", "green", "blue"]
    table = np.array([[np.sum(ref["color"] == k) for k in labels] + [0],
                      [np.sum(cur["color"] == k) for k in labels]
                      + [np.sum(cur["color"] == "pink")]])
    res = scipy.stats.chi2_contingency(table, correction=False)
    assert abs(c["chi2"] - res.statistic) <= 1e-9 * res.statistic
    assert abs(c["chi2_pvalue"] - res.pvalue) <= 1e-9
    assert c["drift"] is True
    # schema differences are reported, not fatal
    assert by["id"]["type"] == "schema" and "reference" in by["id"]["reason"]
    assert by["extra"]["type"] == "schema" and "current" in by["extra"]["reason"]
    assert by["id"]["drift"] is False


def test_text_table_is_aligned(data, capsys, tmp_path):
    _, _, ref_path, cur_path = data
    assert main(["drift", "--reference", ref_path, "--current", cur_path]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header, rule = lines[0], lines[1]
    assert header.split()[:4] == ["feature", "type", "psi", "js"]
    assert set(rule.replace(" ", "")) == {"-"}
    body = lines[2:8]
    # every column starts at the same offset on every row: the rule's dash runs
    starts = [i for i in range(len(rule)) if rule[i] == "-" and (i == 0 or rule[i - 1] == " ")]
    for row in body:
        for s in starts[1:]:
            assert row[s - 1] == " "  # a gap before every column
    assert any("age" in ln and "drift" in ln for ln in body)
    assert "features drifted" in out and "schema difference" in out
    # --output writes the same report to a file
    target = tmp_path / "report.txt"
    assert main(["drift", "-r", ref_path, "-c", cur_path, "--output", str(target)]) == 0
    assert capsys.readouterr().out == ""
    assert target.read_text() == out


def test_declared_types_and_bins(data, capsys):
    ref, cur, ref_path, cur_path = data
    by, _ = run_json(capsys, "-r", ref_path, "-c", cur_path, "--categorical", "score",
                     "--bins", "4")
    assert by["score"]["type"] == "categorical"
    res = scipy.stats.chi2_contingency(np.array(
        [[np.sum(ref["score"] == k) for k in range(5)],
         [np.sum(cur["score"] == k) for k in range(5)]]), correction=False)
    assert abs(by["score"]["chi2"] - res.statistic) <= 1e-9 * max(1, res.statistic)
    inner = np.unique(np.quantile(ref["age"], [.25, .5, .75], method="inverted_cdf"))
    rc_ = np.bincount(np.searchsorted(inner, ref["age"]), minlength=inner.size + 1)
    cc_ = np.bincount(np.searchsorted(inner, cur["age"]), minlength=inner.size + 1)
    assert abs(by["age"]["psi"] - psi(rc_, cc_)) <= 1e-12


def test_nulls_all_null_column_and_content_detection(tmp_path, capsys):
    ref = write_csv(tmp_path / "ref.data", ["x", "empty", "k"],
                    [[i, None, "a" if i % 2 else "b"] for i in range(50)] + [[None, "NA", None]])
    cur = tmp_path / "cur.data"  # no extension: JSON lines detected from content
    write_jsonl(cur, [{"x": i + 0.5, "empty": None, "k": None} for i in range(30)]
                + [{"x": None, "k": "a"}])
    by, _ = run_json(capsys, "-r", ref, "-c", str(cur))
    ks = scipy.stats.ks_2samp(np.arange(50.0), np.arange(30) + 0.5)
    assert abs(by["x"]["ks_stat"] - ks.statistic) <= 1e-12
    assert by["x"]["n_reference"] == 50 and by["x"]["n_current"] == 30
    e = by["empty"]
    assert e["psi"] is None and e["ks_stat"] is None and e["drift"] is False
    assert e["severity"] == "none" and "no non-null values" in e["reason"]
    assert by["k"]["n_current"] == 1


def test_one_row_files(tmp_path, capsys):
    ref = write_csv(tmp_path / "r.csv", ["x"], [[1.5]])
    cur = write_csv(tmp_path / "c.csv", ["x"], [[2.5]])
    by, _ = run_json(capsys, "-r", ref, "-c", cur)
    assert by["x"]["ks_stat"] == 1.0 and by["x"]["ks_pvalue"] == pytest.approx(
        scipy.stats.ks_2samp([1.5], [2.5]).pvalue)


def test_errors_are_clear(tmp_path, capsys):
    good = write_csv(tmp_path / "good.csv", ["a", "b"], [[1, 2], [3, 4]])
    assert main(["drift", "-r", str(tmp_path / "missing.csv"), "-c", good]) == 1
    assert "missing.csv: file not found" in capsys.readouterr().err

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4,5\n")
    assert main(["drift", "-r", good, "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.csv:3" in err and "expected 2 fields, got 3" in err

    badj = tmp_path / "bad.jsonl"
    badj.write_text('{"a": 1, "b": 2}\n\n{"a": 3, "b":\n')
    assert main(["drift", "-r", good, "-c", str(badj)]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl:3" in err and "invalid JSON" in err

    notobj = tmp_path / "list.jsonl"
    notobj.write_text('{"a": 1}\n[1, 2]\n')
    assert main(["drift", "-r", good, "-c", str(notobj)]) == 1
    assert "list.jsonl:2" in capsys.readouterr().err

    text = write_csv(tmp_path / "text.csv", ["a", "b"], [[1, 2], ["oops", 4]])
    assert main(["drift", "-r", good, "-c", text, "--numeric", "a"]) == 1
    err = capsys.readouterr().err
    assert "text.csv:3" in err and "'oops'" in err

    assert main(["drift", "-r", good, "-c", good, "--numeric", "nope"]) == 1
    assert "nope" in capsys.readouterr().err

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["drift", "-r", str(empty), "-c", good]) == 1
    assert "empty" in capsys.readouterr().err


def test_mixed_column_becomes_categorical(tmp_path, capsys):
    ref = write_csv(tmp_path / "r.csv", ["v"], [[1], [2], [3]])
    cur = write_csv(tmp_path / "c.csv", ["v"], [[1], ["two"], [3]])
    by, _ = run_json(capsys, "-r", ref, "-c", cur)
    assert by["v"]["type"] == "categorical"


def test_help_lists_drift(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["drift", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--reference", "--current", "--format", "--categorical", "--numeric",
                "--bins", "--output"):
        assert opt in out


def test_json_output_has_no_nan_tokens(tmp_path, capsys):
    ref = write_csv(tmp_path / "r.csv", ["x"], [[None], [None]])
    cur = write_csv(tmp_path / "c.csv", ["x"], [[1.0]])
    assert main(["drift", "-r", ref, "-c", cur, "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out
    row = orjson.loads(out)[0]
    assert row["psi"] is None and not row["drift"] and math.isnan(float("nan"))


def test_category_labels_are_canonical():
    from stream.commands.drift import _cat_label

    assert _cat_label(2) == _cat_label(2.0) == _cat_label("2.0") == _cat_label("2") == "2"
    assert _cat_label("007") == "007" and _cat_label("red") == "red" and _cat_label(None) is None
    assert _cat_label(0.5) == _cat_label("0.50") == "0.5"
