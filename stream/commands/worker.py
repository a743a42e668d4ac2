"""`stream worker`: run one detection worker (a Faust worker in the app's consumer group)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "worker",
        help="run a detection worker",
        description="Run one worker: consume metrics, keep event-time windowed features per entity, score them and "
        "publish alerts. Start several (with different STREAM_WEB_PORT) to share the partitions. "
        "Stops cleanly on Ctrl-C / SIGTERM.",
    )
    p.add_argument("--loglevel", choices=("debug", "info", "warning", "error"),
                   help="log level (default: STREAM_WORKER_LOG_LEVEL)")
    p.add_argument("--web-port", type=int, help="web server port for /metrics, /health, /ready (default: STREAM_WEB_PORT)")
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses

    from stream.settings import get_settings
    from stream.worker import run_worker

    s = get_settings()
    if args.web_port is not None:
        s = dataclasses.replace(s, web_port=args.web_port)
    return run_worker(s, args.loglevel)
