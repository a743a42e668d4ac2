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


# --- the operations stack: second worker, lag exporter, rules, Alertmanager, bridge, Grafana ---------

import json  # noqa: E402
import re  # noqa: E402

_NAME = re.compile(r"\b(stream_[a-zA-Z0-9_]+)\b")


def exported_metric_names() -> set[str]:
    """Every sample name the service exports: the worker's REGISTRY (which holds the lag gauges)
    and the lag exporter's own registry, expanded as Prometheus exposes them."""
    from prometheus_client import CollectorRegistry

    import stream.metrics as m
    from stream.lag import make_gauges

    from stream.alertmanager import bridge_metrics

    exporter, bridge = CollectorRegistry(), CollectorRegistry()
    make_gauges(exporter)
    bridge_metrics(bridge)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",),
                "gauge": ("",), "summary": ("_sum", "_count")}
    names = set()
    for reg in (m.REGISTRY, exporter, bridge):
        for fam in reg.collect():
            names |= {fam.name + s for s in suffixes[fam.type]}
    return names


def _rules():
    return yaml.safe_load((ROOT / "deploy/rules/stream.yml").read_text())


def _dashboard():
    return json.loads((ROOT / "deploy/grafana/dashboards/stream.json").read_text())


def test_lag_metrics_are_exported_by_worker_and_exporter():
    names = exported_metric_names()
    assert {"stream_consumer_lag_messages", "stream_consumer_lag_seconds", "stream_consumer_lag_up",
            "stream_events_total", "stream_event_processing_seconds_bucket"} <= names


def test_rules_reference_only_exported_metrics_and_defined_recordings():
    names = exported_metric_names()
    groups = _rules()["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert {"StreamConsumerLagHigh", "StreamConsumerLagSecondsHigh", "StreamWorkerDown", "StreamDeadLetterRateHigh",
            "StreamNoEventsProcessed"} <= alerts
    for g in groups:
        for r in g["rules"]:
            expr = r["expr"]
            for rec in re.findall(r"\b[a-z_]+:[a-zA-Z0-9_]+:[a-zA-Z0-9_]+\b", expr):
                assert rec in recorded, f"{r.get('alert') or r.get('record')}: {rec} is not recorded"
            bare = re.sub(r"\b[a-z_]+:[a-zA-Z0-9_]+:[a-zA-Z0-9_]+\b", "", expr)
            for n in _NAME.findall(bare):
                assert n in names, f"{r.get('alert') or r.get('record')}: {n} is not exported by the service"
            if "alert" in r:
                assert r["labels"]["severity"] in {"info", "warning", "critical"}
                assert r["annotations"]["summary"]


def test_dashboard_parses_and_references_only_exported_metrics():
    names = exported_metric_names()
    recorded = {r["record"] for g in _rules()["groups"] for r in g["rules"] if "record" in r}
    dash = _dashboard()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("lag (records)", "lag (seconds)", "throughput", "latency", "alerts"):
        assert word in titles, word
    for e in exprs:
        for rec in re.findall(r"\b[a-z_]+:[a-zA-Z0-9_]+:[a-zA-Z0-9_]+\b", e):
            assert rec in recorded, rec
        for n in _NAME.findall(re.sub(r"\b[a-z_]+:[a-zA-Z0-9_]+:[a-zA-Z0-9_]+\b", "", e)):
            assert n in names, f"dashboard: {n} is not exported"
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/stream.yml").read_text())
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in dash["panels"])
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    grafana = _compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts[prov["providers"][0]["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


def test_stack_services_are_wired_together():
    services = _compose()["services"]
    assert {"worker-2", "lag-exporter", "alertmanager", "alertmanager-bridge", "grafana"} <= set(services)
    app_id = services["topics"]["environment"]["STREAM_APP_ID"]
    # two workers in one group (same app id), each scraped
    assert services["worker-2"]["environment"]["STREAM_APP_ID"] == app_id
    prom = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]] for j in prom["scrape_configs"]}
    w2 = services["worker-2"]["environment"]["STREAM_WEB_PORT"]
    assert f"worker-2:{w2}" in jobs["stream-worker"]
    # the lag exporter watches the workers' group on the port Prometheus scrapes
    cmd = services["lag-exporter"]["command"]
    assert cmd[:2] == ["stream", "lag-exporter"] and cmd[cmd.index("--group") + 1] == app_id
    assert jobs["stream-lag-exporter"] == [f"lag-exporter:{cmd[cmd.index('--port') + 1]}"]
    # rules mounted where prometheus.yml loads them; alerts go to the stack's Alertmanager
    rules_mount = next(v for v in services["prometheus"]["volumes"] if v.startswith("./deploy/rules"))
    assert all(f.startswith(rules_mount.split(":")[1]) for f in prom["rule_files"])
    assert (ROOT / "deploy/rules" / Path(prom["rule_files"][0]).name).is_file()
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    bridge = services["alertmanager-bridge"]["command"]
    assert bridge[:2] == ["stream", "alertmanager-bridge"]
    assert bridge[bridge.index("--alertmanager-url") + 1] == "http://alertmanager:9093"
    assert jobs["stream-alertmanager-bridge"] == [f"alertmanager-bridge:{bridge[bridge.index('--metrics-port') + 1]}"]
    assert "--cluster.listen-address=" in services["alertmanager"]["command"]
    assert not any(p.startswith("9093:") for p in services["alertmanager"]["ports"])  # the local controller port
    am = yaml.safe_load((ROOT / "deploy/alertmanager.yml").read_text())
    assert am["route"]["receiver"] in {r["name"] for r in am["receivers"]}
    # every stream command used by the stack exists
    from stream.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, svc in services.items():
        if isinstance(svc.get("command"), list) and svc["command"][0] == "stream":
            assert svc["command"][1] in sub.choices, f"{name}: stream {svc['command'][1]} does not exist"
