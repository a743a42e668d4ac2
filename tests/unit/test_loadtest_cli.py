"""The load test's command line without a broker: a clear one-line error, no run started."""
from __future__ import annotations

import socket

from loadtest.__main__ import broker_problem, main


def _closed_port() -> int:
    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_broker_is_one_clear_line():
    err = broker_problem(f"127.0.0.1:{_closed_port()}", timeout=1.0)
    assert err is not None and err.startswith("cannot reach Kafka at 127.0.0.1:")
    assert "stream kafka up" in err and "--bootstrap" in err


def test_run_without_a_broker_exits_2_before_writing_anything(tmp_path, capsys, monkeypatch):
    import loadtest.__main__ as cli

    monkeypatch.setattr(cli, "broker_problem", lambda bootstrap: broker_problem(bootstrap, timeout=1.0))
    out = tmp_path / "r.json"
    assert main(["run", "--quick", "--bootstrap", f"127.0.0.1:{_closed_port()}", "--report", str(out)]) == 2
    assert "cannot reach Kafka" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_memory_target_is_judged_only_at_100k_entities():
    from loadtest.run import targets

    gib = 2 ** 30
    assert targets({"memory": {"entities": 100_000, "peak_rss_bytes": int(1.9 * gib)}})["entities_100k_within_2GiB"] is True
    assert targets({"memory": {"entities": 120_000, "peak_rss_bytes": int(2.1 * gib)}})["entities_100k_within_2GiB"] is False
    small = targets({"memory": {"entities": 1_000, "peak_rss_bytes": 300 * 2 ** 20}})["entities_100k_within_2GiB"]
    assert isinstance(small, str) and "not measured at 1,000 entities" in small
    r = targets({"ratios": {"vs_naive": 4.1, "vs_ceiling": 0.06}, "latency_s": {"fixed_rate": {"p99": 0.72}}})
    assert (r["ge_10x_naive"], r["ge_half_ceiling"], r["p99_latency_lt_1s_at_half_max"]) == (False, False, True)


def test_timeout_reaches_the_run_and_must_be_positive(tmp_path, monkeypatch, capsys):
    import pytest

    import loadtest.__main__ as cli
    import loadtest.run as lr

    seen = {}

    def fake_run(cfg, path):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(cli, "broker_problem", lambda bootstrap: None)
    monkeypatch.setattr(lr, "run", fake_run)
    with pytest.raises(SystemExit):
        main(["run", "--entities", "100000", "--timeout", "1800", "--report", str(tmp_path / "r.json")])
    assert seen["cfg"].timeout == 1800 and seen["cfg"].entities == 100_000
    seen.clear()
    with pytest.raises(SystemExit) as e:
        main(["run", "--timeout", "0", "--report", str(tmp_path / "r.json")])
    assert e.value.code == 2 and "--timeout must be > 0" in capsys.readouterr().err and not seen


def test_a_ratio_built_on_a_phase_under_two_seconds_is_not_judged():
    """--quick's phases last about a second: start-up, not a sustained rate. The ratio targets say
    so instead of met / not met; a full run's phases (the ceiling's ≈ 2.4 s, the service's ≈ 14 s)
    are judged."""
    from loadtest.report import markdown
    from loadtest.run import targets

    ratios = {"vs_naive": 20.7, "vs_ceiling": 0.51}
    quick = {"ratios": ratios, "service": {"seconds": 0.989}, "ceiling": {"seconds": 0.504}, "naive": {"seconds": 20.5}}
    t = targets(quick)
    assert isinstance(t["ge_half_ceiling"], str) and "service 1.0 s, ceiling 0.5 s" in t["ge_half_ceiling"]
    assert isinstance(t["ge_10x_naive"], str) and "service 1.0 s" in t["ge_10x_naive"] and "naive" not in t["ge_10x_naive"]
    full = {"ratios": ratios, "service": {"seconds": 14.1}, "ceiling": {"seconds": 2.4}, "naive": {"seconds": 187.4}}
    assert (targets(full)["ge_10x_naive"], targets(full)["ge_half_ceiling"]) == (True, True)
    slow_ceiling = {**full, "ceiling": {"seconds": 1.9}}
    assert targets(slow_ceiling)["ge_10x_naive"] is True and isinstance(targets(slow_ceiling)["ge_half_ceiling"], str)
    config = {"tag": "q", "entities": 100, "metrics": 5, "batch": 25, "step": 30.0, "hours": 6.0, "partitions": 4,
              "cores": 2}
    text = markdown({"config": config, **quick, "targets": t}, [])
    assert "target ≥ 0.5: not judged" in text and "target ≥ 10×: not judged" in text
