"""`stream doctor`: is this deployment able to run? Broker, topics, compiled code, specs, settings."""
from __future__ import annotations

import importlib
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

EXTENSIONS = ("stream.detect._window", "stream.detect._hst", "stream.detect._binning", "stream.detect._standardize",
              "stream.detect._adwin", "stream.detect._close", "stream._route")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    items: list[dict[str, Any]] = field(default_factory=list)


def register(sub) -> None:
    p = sub.add_parser(
        "doctor", help="check the broker, topics, compiled extensions, specs and settings",
        description="Check that the Kafka broker answers (STREAM_BOOTSTRAP_SERVERS), that every declared topic "
        "exists with its declared partitions and configs, that the compiled extensions (stream.detect._window, "
        "_hst, _binning, _standardize, _adwin, _close, stream._route) are loaded from built .so files, and that the detector and monitor specs in "
        "STREAM_SPECS_DIR are valid (with STREAM_COPARTITIONED_INPUT, that the metrics topic has "
        "STREAM_TOPIC_PARTITIONS partitions); then print the settings with secrets masked.",
        epilog="Exit status: 0 when every check passes, 1 otherwise.")
    p.add_argument("--json", action="store_true", help="print one JSON object (checks and masked settings)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the broker (default 10)")
    p.set_defaults(func=run)


def check_extensions(modules: tuple[str, ...] = EXTENSIONS) -> Check:
    items, bad = [], []
    for name in modules:
        try:
            mod = importlib.import_module(name)
            path = getattr(mod, "__file__", None) or ""
            compiled = path.endswith((".so", ".pyd"))
            items.append({"module": name, "file": path, "compiled": compiled})
            if not compiled:
                bad.append(f"{name} is not a compiled extension ({path})")
        except ImportError as exc:
            items.append({"module": name, "file": None, "compiled": False, "error": str(exc)})
            bad.append(f"{name}: {exc}")
    if bad:
        return Check("extensions", False, "; ".join(bad) + " (build them: `pip install -e .` or "
                     "`python setup.py build_ext --inplace`)", items)
    return Check("extensions", True, f"{len(items)} compiled extensions loaded", items)


def check_specs(settings) -> Check:
    from stream.detect.monitor_spec import MonitorSpecError, load_monitor_specs
    from stream.detect.spec import SpecError, load_specs

    where = settings.specs_dir or "built-in default"
    try:
        dets = load_specs(settings.specs_dir or None, window=settings.window_seconds,
                          lateness=settings.allowed_lateness_seconds)
        mons = load_monitor_specs(settings.specs_dir or None)
    except (SpecError, MonitorSpecError, OSError) as exc:
        return Check("specs", False, f"STREAM_SPECS_DIR={where}: {exc}")
    items = [{"type": "detector", "name": d.name} for d in dets] + [{"type": "monitor", "name": m.name} for m in mons]
    return Check("specs", True, f"{len(dets)} detector spec(s), {len(mons)} monitor spec(s) from {where}", items)


def check_broker_and_topics(settings, timeout: float) -> list[Check]:
    import logging

    from confluent_kafka.admin import ConfigResource

    from stream.topics import internal_topics, load_topic_specs

    quiet = logging.getLogger("stream.doctor.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    from stream.kafka.errors import describe, list_topics_failfast

    admin, md, err = list_topics_failfast(settings, timeout, logger=quiet)
    if md is None:
        return [Check("broker", False, describe(settings, err)),
                Check("topics", False, "not checked: the broker is unreachable")]
    broker = Check("broker", True, f"{settings.bootstrap_servers}: {len(md.brokers)} broker(s), "
                   f"cluster {md.cluster_id}")
    items, problems = [], []
    specs = load_topic_specs(settings) + internal_topics(settings)
    present = [t for t in specs if t.name in md.topics and md.topics[t.name].error is None]
    configs: dict[str, dict] = {}
    if present:
        res = {t.name: ConfigResource(ConfigResource.Type.TOPIC, t.name) for t in present}
        futs = admin.describe_configs(list(res.values()), request_timeout=timeout)
        for r, fut in futs.items():
            try:
                configs[r.name] = {k: v.value for k, v in fut.result(timeout=timeout).items()}
            except Exception as exc:  # noqa: BLE001
                configs[r.name] = {"__error__": str(exc)}
    for t in specs:
        row: dict[str, Any] = {"topic": t.name, "declared_partitions": t.partitions, "file": t.file}
        if t not in present:
            row["status"] = "missing"
            problems.append(f"{t.name} missing")
        else:
            n = len(md.topics[t.name].partitions)
            row["partitions"] = n
            issues = []
            if n < t.partitions:
                issues.append(f"{n} partitions, declared {t.partitions}")
            problem = settings.copartition_mismatch(n) if t.name == settings.topic_metrics else None
            if problem:  # (the worker refuses to start on it)
                issues.append(f"{n} partitions: {problem}")
            cfg = configs.get(t.name, {})
            if "__error__" in cfg:
                issues.append(f"configs unreadable: {cfg['__error__']}")
            else:
                for k, v in t.config.items():
                    if cfg.get(k) != v:
                        issues.append(f"{k}={cfg.get(k)} (declared {v})")
            row["status"] = "ok" if not issues else "; ".join(issues)
            if issues:
                problems.append(f"{t.name}: " + "; ".join(issues))
        items.append(row)
    if problems:
        topics = Check("topics", False, "; ".join(problems) + " (run `stream topics apply`)", items)
    else:
        topics = Check("topics", True, f"{len(items)} topic(s) present as declared", items)
    return [broker, topics]


def run(args) -> int:
    import json

    from stream.settings import get_settings

    s = get_settings()
    checks = check_broker_and_topics(s, args.timeout) + [check_extensions(), check_specs(s)]
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks], "settings": s.masked()}, indent=2,
                         default=str))
        return 0 if ok else 1
    tty = sys.stdout.isatty()
    mark = {True: "\033[32mok\033[0m" if tty else "ok", False: "\033[1;31mFAIL\033[0m" if tty else "FAIL"}
    for c in checks:
        print(f"{mark[c.ok]:<4}  {c.name:<10} {c.detail}")
        if c.name == "topics":
            for r in c.items:
                if r.get("status") != "ok":
                    print(f"            {r['topic']}: {r.get('status')}")
    print("\nsettings (secrets masked):")
    for k, v in s.masked().items():
        print(f"  STREAM_{k.upper():<32} {v}")
    print("\nall checks passed" if ok else "\nsome checks failed")
    return 0 if ok else 1
