"""`stream topics apply|list`: the topic contract in topics/."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("topics", help="apply or list the declared topics",
                       description="Topics are declared in topics/*.yaml (name, partitions, replication, "
                       "retention, cleanup policy, key) with a JSON Schema per event type.")
    ts = p.add_subparsers(dest="topics_cmd", metavar="ACTION", required=True)
    a = ts.add_parser("apply", help="create or update the declared topics (idempotent)",
                      description="Create missing topics, raise partition counts and update configs to match "
                      "topics/*.yaml. Running it twice changes nothing the second time.")
    a.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker (default 30)")
    a.set_defaults(func=run_apply)
    ls = ts.add_parser("list", help="show the declared topics", description="Print the declared topics and keys.")
    ls.set_defaults(func=run_list)


def run_apply(args) -> int:
    import sys

    from stream.settings import get_settings
    from stream.topics import apply_topics

    try:
        apply_topics(get_settings(), timeout=args.timeout)
    except RuntimeError as exc:
        print(f"stream topics apply: {exc}", file=sys.stderr)
        return 1
    return 0


def run_list(args) -> int:
    from stream.settings import get_settings
    from stream.topics import load_topic_specs

    for t in load_topic_specs(get_settings()):
        print(f"{t.name:<16} partitions={t.partitions} replication={t.replication} key: {t.key}")
    return 0
