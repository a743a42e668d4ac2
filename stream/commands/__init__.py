"""Sub-commands of the ``stream`` CLI. Each module exposes ``register(subparsers)``."""
