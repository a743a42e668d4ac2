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
