"""The topic contract (``topics/*.yaml``) and its idempotent application through the AdminClient."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.settings import Settings

TOPICS_DIR = Path(__file__).resolve().parent.parent / "topics"


class TopicSpecError(ValueError):
    pass


@dataclass(frozen=True)
class TopicSpec:
    file: str
    name: str
    partitions: int
    replication: int
    config: dict[str, str]
    key: str
    schema: str | None


def load_topic_specs(settings: Settings, directory: Path = TOPICS_DIR) -> list[TopicSpec]:
    import yaml

    out = []
    for f in sorted(directory.glob("*.yaml")):
        d = yaml.safe_load(f.read_text())
        if not isinstance(d, dict):
            raise TopicSpecError(f"{f}: must be a mapping")
        for fld in ("name", "partitions", "key"):
            if fld not in d:
                raise TopicSpecError(f"{f}: field '{fld}' is required")
        name = getattr(settings, d["setting"]) if d.get("setting") else d["name"]
        partitions = int(d["partitions"])
        if d.get("setting") in ("topic_metrics", "topic_inferences", "topic_feedback", "topic_alerts"):
            partitions = settings.topic_partitions if partitions == 8 else partitions
        replication = max(int(d.get("replication", 1)), settings.topic_replication)
        cfg = {k: str(v) for k, v in (d.get("config") or {}).items()}
        out.append(TopicSpec(str(f), name, partitions, replication, cfg, d["key"], d.get("schema")))
    return out


# Changelog-backed Faust tables of the worker (stream/worker.py, stream/models_worker.py).
TABLES = ("entity-state", "model-monitor-state")


def internal_topics(settings: Settings) -> list[TopicSpec]:
    """The worker's internal topics: the repartition topic and its tables' changelogs.

    They are created before the worker starts: Faust ignores for good an agent topic that does not
    exist at subscription, and checks a table's changelog against its source topics' partition
    counts at assignment, failing (PartitionsMismatch) if the changelog is not there yet.
    """
    n, r = settings.topic_partitions, settings.topic_replication
    out = [TopicSpec("<internal>", f"{settings.app_id}-entity-samples", n, r,
                     {"cleanup.policy": "delete", "retention.ms": "86400000"}, "entity id (detector/entity)", None)]
    for table in TABLES:
        out.append(TopicSpec("<internal>", f"{settings.app_id}-{table}-changelog", n, r,
                             {"cleanup.policy": "compact"}, "table key", None))
    return out


def apply_topics(settings: Settings, *, timeout: float = 30.0, log=print, internal: bool = True,
                 declared: bool = True) -> list[dict[str, Any]]:
    """Create missing topics, raise partition counts, update configs. Idempotent.

    Returns one row per topic: name and action (created / updated / unchanged).
    Partitions are never decreased (Kafka cannot); a topic with more partitions than declared is
    reported, not changed.
    """
    from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic

    from stream.kafka.errors import describe, list_topics_failfast

    specs = (load_topic_specs(settings) if declared else []) + (internal_topics(settings) if internal else [])
    admin, md, err = list_topics_failfast(settings, timeout)
    if md is None:
        raise RuntimeError(describe(settings, err)) from None
    rows = []
    to_create = [t for t in specs if t.name not in md.topics]
    if to_create:
        fs = admin.create_topics([NewTopic(t.name, t.partitions, t.replication, config=t.config) for t in to_create],
                                 operation_timeout=timeout)
        for name, fut in fs.items():
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise RuntimeError(f"creating topic {name}: {exc}") from None
            rows.append({"topic": name, "action": "created"})
    for t in specs:
        if t in to_create:
            continue
        actions = []
        current = len(md.topics[t.name].partitions)
        if current < t.partitions:
            admin.create_partitions([NewPartitions(t.name, t.partitions)])[t.name].result()
            actions.append(f"partitions {current}->{t.partitions}")
        elif current > t.partitions:
            actions.append(f"has {current} partitions (declared {t.partitions}; Kafka cannot shrink)")
        res = ConfigResource(ConfigResource.Type.TOPIC, t.name)
        described = admin.describe_configs([res])[res].result()
        changed = {k: v for k, v in t.config.items() if k not in described or described[k].value != v}
        if changed:
            for k, v in t.config.items():
                res.set_config(k, v)
            admin.alter_configs([res])[res].result()
            actions.append("config " + ", ".join(f"{k}={v}" for k, v in changed.items()))
        rows.append({"topic": t.name, "action": "updated: " + "; ".join(actions) if actions else "unchanged"})
    for r in rows:
        log(f"{r['topic']:<24} {r['action']}")
    return rows
