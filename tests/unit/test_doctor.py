"""`stream doctor`: masking, the compiled-extension check, specs, and (kafka) the broker and topics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.commands.doctor import check_extensions, check_specs
from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _doctor(env: dict, *args: str):
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    return subprocess.run([sys.executable, "-m", "stream.cli", "doctor", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_masked_hides_secrets_and_keeps_the_rest():
    s = Settings.load({"STREAM_SASL_PASSWORD": "hunter2", "STREAM_SSL_KEY_PASSWORD": "k3y",
                       "STREAM_SASL_USERNAME": "stream"})
    m = s.masked()
    assert m["sasl_password"] == "***" and m["ssl_key_password"] == "***"
    assert m["sasl_username"] == "stream" and m["bootstrap_servers"] == s.bootstrap_servers
    assert "hunter2" not in json.dumps(m) and "k3y" not in json.dumps(m)


def test_compiled_extensions_are_loaded_from_shared_objects():
    c = check_extensions()
    assert c.ok, c.detail
    assert [i["module"] for i in c.items] == ["stream.detect._window", "stream.detect._hst", "stream.detect._binning",
                                                 "stream.detect._standardize", "stream.detect._adwin", "stream.detect._close", "stream._route"]
    assert all(i["file"].endswith(".so") for i in c.items)


def test_a_pure_python_or_missing_extension_fails():
    c = check_extensions(("stream.detect.window", "stream.detect._nope"))
    assert not c.ok
    assert "stream.detect.window is not a compiled extension" in c.detail
    assert "stream.detect._nope" in c.detail and "build_ext" in c.detail


def test_specs_valid_and_invalid(tmp_path):
    assert check_specs(Settings()).ok
    (tmp_path / "bad.yaml").write_text("name: x\nwindow: -5\n")
    c = check_specs(Settings.load({"STREAM_SPECS_DIR": str(tmp_path)}))
    assert not c.ok and str(tmp_path) in c.detail


def test_unreachable_broker_is_named_secrets_masked_and_exit_1():
    res = _doctor({"STREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STREAM_SASL_PASSWORD": "hunter2"}, "--timeout", "2")
    assert res.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:1 (STREAM_BOOTSTRAP_SERVERS" in res.stdout
    assert "hunter2" not in res.stdout + res.stderr and "***" in res.stdout
    res = _doctor({"STREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STREAM_SASL_PASSWORD": "hunter2"}, "--json",
                  "--timeout", "2")
    out = json.loads(res.stdout)
    assert res.returncode == 1 and out["ok"] is False and out["settings"]["sasl_password"] == "***"
    assert {c["name"]: c["ok"] for c in out["checks"]} == {"broker": False, "topics": False, "extensions": True,
                                                          "specs": True}


@pytest.mark.kafka
def test_doctor_against_the_broker(stream_env):
    env = stream_env
    res = _doctor(env.env, "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(c["ok"] for c in out["checks"])
    topics = {r["topic"]: r for r in next(c for c in out["checks"] if c["name"] == "topics")["items"]}
    assert topics[env.env["STREAM_TOPIC_METRICS"]]["partitions"] == 4
    # co-partitioned input needs the metrics topic at the changelog's partition count
    copart = {**env.env, "STREAM_COPARTITIONED_INPUT": "true"}
    assert _doctor(copart).returncode == 0
    res = _doctor({**copart, "STREAM_TOPIC_PARTITIONS": "2"})
    assert res.returncode == 1
    assert (f"{env.env['STREAM_TOPIC_METRICS']}: 4 partitions: STREAM_COPARTITIONED_INPUT=true needs the "
            f"metrics topic '{env.env['STREAM_TOPIC_METRICS']}' to have STREAM_TOPIC_PARTITIONS=2 partitions") in res.stdout, res.stdout
    # a config changed behind the contract's back, and a missing topic, are both reported
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": env.env["STREAM_BOOTSTRAP_SERVERS"]})
    r = ConfigResource(ConfigResource.Type.TOPIC, env.env["STREAM_TOPIC_DEADLETTER"], incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([r])[r].result()
    res = _doctor({**env.env, "STREAM_TOPIC_FEEDBACK": env.env["STREAM_TOPIC_FEEDBACK"] + "-absent"})
    assert res.returncode == 1
    assert "retention.ms=1000 (declared 2592000000)" in res.stdout
    assert env.env["STREAM_TOPIC_FEEDBACK"] + "-absent missing" in res.stdout
    assert "stream topics apply" in res.stdout
