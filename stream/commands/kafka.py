"""``stream kafka up|down|status``: the project's own local Kafka broker (no Docker)."""
from __future__ import annotations

import argparse
import json
import sys
import time

DESCRIPTION = """\
Run a local single-node Apache Kafka broker (KRaft mode, broker and controller in one JVM)
for development, demos and the tests. Its jars come from Maven Central via `mvn` (cached in
<STREAM_STATE_DIR>/kafka-jars/<STREAM_KAFKA_VERSION>/) or from an unpacked distribution
(STREAM_KAFKA_HOME). Data, log and pid file live in <STREAM_STATE_DIR>/kafka/<port>/.
Ports: STREAM_KAFKA_PORT (clients) and STREAM_KAFKA_CONTROLLER_PORT; heap: STREAM_KAFKA_HEAP.
"""

UP_DESCRIPTION = """\
Start the broker in the background and wait until it accepts clients (metadata and consumer
groups work). Does nothing if it already runs. The first start resolves the jars with mvn
(about 45 MB) and formats the data folder; later starts take a few seconds. Prints the
bootstrap address and the log file; exits 1 with the reason if the broker cannot start
(e.g. the port is taken).
"""

DOWN_DESCRIPTION = """\
Stop the broker: SIGTERM, wait for a clean shutdown, SIGKILL after --timeout seconds.
Data is kept (the next `up` starts with the same topics). Does nothing if it is not running.
"""

STATUS_DESCRIPTION = """\
Show whether the broker runs, its pid, bootstrap address, version, uptime, data folder and
log file. Exit code 0 if it runs, 3 if not.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "kafka",
        help="start/stop/inspect the local Kafka broker (up, down, status)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="kafka_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _no_action(parser))

    p_up = sub.add_parser("up", help="start the broker (idempotent)", description=UP_DESCRIPTION,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p_up.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                      help="give up when the broker neither answers nor writes to its log for this "
                           "long; one still loading a large data dir keeps logging and is waited for "
                           "(up to 10x this) (default: %(default)s)")
    p_up.add_argument("--jar-cache", metavar="DIR", default=None,
                      help="folder of cached jars (default: <STREAM_STATE_DIR>/kafka-jars)")
    p_up.set_defaults(func=cmd_up)

    p_down = sub.add_parser("down", help="stop the broker (idempotent)", description=DOWN_DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p_down.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="seconds to wait for a clean shutdown before SIGKILL (default: %(default)s)")
    p_down.set_defaults(func=cmd_down)

    p_status = sub.add_parser("status", help="show whether the broker runs, where, and since when",
                              description=STATUS_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p_status.add_argument("--json", action="store_true", help="print the status as one JSON object")
    p_status.set_defaults(func=cmd_status)


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _settings():
    from stream.settings import get_settings

    return get_settings()


def _bootstrap_hint(settings, bootstrap: str) -> None:
    if settings.bootstrap_servers != bootstrap:
        print(f"note: clients use STREAM_BOOTSTRAP_SERVERS={settings.bootstrap_servers}; "
              f"set STREAM_BOOTSTRAP_SERVERS={bootstrap} to use this broker")


def cmd_up(args: argparse.Namespace) -> int:
    from stream.kafka.launcher import LauncherError, up

    settings = _settings()
    t0 = time.monotonic()
    try:
        info = up(settings, wait=args.wait, jar_cache=args.jar_cache,
                  progress=lambda s: print(f"  still starting after {s:.0f} s (loading its data; "
                                           "see the broker log)", file=sys.stderr, flush=True))
    except LauncherError as exc:
        print(f"stream kafka up: {exc}", file=sys.stderr)
        return 1
    if info.already_running:
        print(f"Kafka {info.version} already running (pid {info.pid}) at {info.bootstrap}")
    else:
        print(f"Kafka {info.version} started (pid {info.pid}) at {info.bootstrap} "
              f"in {time.monotonic() - t0:.1f} s")
    print(f"  bootstrap: {info.bootstrap}")
    print(f"  log:       {info.log_file}")
    print(f"  data:      {info.data_dir}")
    print("  stop with: stream kafka down")
    _bootstrap_hint(settings, info.bootstrap)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from stream.kafka.launcher import LauncherError, bootstrap_of, down

    settings = _settings()
    try:
        result = down(settings, timeout=args.timeout)
    except LauncherError as exc:  # pragma: no cover - down raises only on odd OS errors
        print(f"stream kafka down: {exc}", file=sys.stderr)
        return 1
    if not result["stopped"]:
        print(f"Kafka broker at {bootstrap_of(settings)} is not running")
    elif result["clean"]:
        print(f"Kafka broker (pid {result['pid']}) stopped in {result['seconds']:.1f} s")
    else:
        print(f"Kafka broker (pid {result['pid']}) did not stop within {args.timeout:.0f} s "
              "and was killed (SIGKILL)")
    return 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + (f"{h}h " if d or h else "") + f"{m}m {s}s"


def cmd_status(args: argparse.Namespace) -> int:
    from stream.kafka.launcher import status

    settings = _settings()
    st = status(settings)
    code = 0 if st["running"] else 3
    if args.json:
        print(json.dumps(st, indent=2))
        return code
    if st["running"]:
        answering = "" if st["answering"] else " (not answering on its port yet)"
        print(f"Kafka {st['version']}: running{answering}")
        print(f"  pid:       {st['pid']}")
        print(f"  uptime:    {_duration(st['uptime_seconds'])}")
    else:
        print(f"Kafka {st['version']}: not running (start it with `stream kafka up`)")
    print(f"  bootstrap: {st['bootstrap']}")
    print(f"  data:      {st['data_dir']}")
    print(f"  log:       {st['log_file']}")
    if st["running"]:
        _bootstrap_hint(settings, st["bootstrap"])
    return code
