"""docker-compose.yml cannot run here (no Docker engine): check it agrees with the code instead."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import yaml

from stream.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_parses_and_has_the_services():
    services = _compose()["services"]
    assert {"kafka", "topics", "worker", "prometheus"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper


def test_compose_environment_names_are_real_settings():
    known = {PREFIX + f.name.upper() for f in fields(Settings)}
    for name, svc in _compose()["services"].items():
        for var in (svc.get("environment") or {}):
            if var.startswith(PREFIX):
                assert var in known, f"{name}: {var} is not a setting"


def test_compose_ports_match_settings_and_prometheus_scrapes_the_worker():
    services = _compose()["services"]
    worker = services["worker"]
    port = worker["environment"].get("STREAM_WEB_PORT", str(Settings().web_port))
    assert f"{port}:{port}" in worker["ports"]
    assert str(Settings().web_port) == port
    kafka_host = worker["environment"]["STREAM_BOOTSTRAP_SERVERS"]
    assert kafka_host.split(":")[0] == "kafka"
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://{kafka_host}" in listeners
    prom = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"worker:{port}" in targets
    assert all(cmd[0] == "stream" for s in ("topics", "worker") for cmd in [services[s]["command"]])
