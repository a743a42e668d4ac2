"""The project's own local Kafka broker: ``stream kafka up|down|status`` (see launcher.py)."""
from stream.kafka.launcher import (  # noqa: F401
    BrokerInfo,
    LauncherError,
    Listener,
    down,
    ensure_jars,
    ensure_running,
    status,
    up,
)
