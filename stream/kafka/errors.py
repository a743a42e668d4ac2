"""Kafka client errors said in terms of what the user should check.

librdkafka reports a wrong password, a refused TLS handshake and a broker that is down through the
same "failed to connect / timed out" path, which is how `cannot reach Kafka` used to be printed for
all three. :func:`describe` tells them apart from the error text and code and names the settings
to check; :class:`FailFast` is an ``error_cb`` that remembers the first authentication, authorization
or TLS error so a command can stop at once instead of waiting out its timeout.

>>> from stream.settings import Settings
>>> s = Settings.load({"STREAM_BOOTSTRAP_SERVERS": "k:9093", "STREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
...                    "STREAM_SASL_USERNAME": "svc", "STREAM_SASL_PASSWORD": "pw"})
>>> print(describe(s, "SASL authentication error: Authentication failed during authentication due to invalid "
...                   "credentials with SASL mechanism SCRAM-SHA-512"))  # doctest: +ELLIPSIS
authentication failed at Kafka k:9093 (user 'svc', mechanism PLAIN...
>>> describe(s, "Failed to resolve 'k:9093'").startswith("cannot reach Kafka at k:9093")
True
"""
from __future__ import annotations

import re

from stream.settings import Settings

_AUTHN = re.compile(r"authenticat|sasl|invalid credentials|_AUTHENTICATION|SASL_AUTHENTICATION_FAILED", re.I)
_AUTHZ = re.compile(r"not authorized|authorization failed|AUTHORIZATION_FAILED", re.I)
_TLS = re.compile(r"ssl handshake|certificate verify|SSL_HANDSHAKE|_SSL\b|ssl.ca.location", re.I)


def kind(error: object) -> str:
    """``"authentication"``, ``"authorization"``, ``"tls"`` or ``"unreachable"``."""
    text = str(error)
    if _AUTHZ.search(text):
        return "authorization"
    if _AUTHN.search(text):
        return "authentication"
    if _TLS.search(text):
        return "tls"
    return "unreachable"


def describe(settings: Settings, error: object) -> str:
    """One line naming the address, what went wrong and which settings to check (never a secret)."""
    addr = settings.bootstrap_servers
    k = kind(error)
    if k == "authentication":
        head = (f"authentication failed at Kafka {addr} (user {settings.sasl_username!r}, mechanism "
                f"{settings.sasl_mechanism}, {settings.security_protocol}; check STREAM_SASL_USERNAME, "
                "STREAM_SASL_PASSWORD and STREAM_SASL_MECHANISM)")
    elif k == "authorization":
        head = (f"Kafka at {addr} refused an operation: not authorized (user {settings.sasl_username!r}; check the "
                "broker's ACLs for this user)")
    elif k == "tls":
        head = (f"TLS handshake with Kafka at {addr} failed (check STREAM_SSL_CAFILE, STREAM_SSL_CERTFILE, "
                "STREAM_SSL_KEYFILE and STREAM_SECURITY_PROTOCOL)")
    else:
        head = (f"cannot reach Kafka at {addr} (STREAM_BOOTSTRAP_SERVERS; is the broker running, are the address "
                "and STREAM_SECURITY_PROTOCOL right?)")
    return f"{head}: {error}"


class FailFast:
    """A librdkafka ``error_cb``: remembers the first error that waiting will not cure.

    >>> ff = FailFast()
    >>> ff("Connection refused"); ff.error is None
    True
    >>> ff("SASL authentication error: Authentication failed"); ff.error is not None
    True
    """

    def __init__(self) -> None:
        self.error: object | None = None

    def __call__(self, err: object) -> None:
        if self.error is None and kind(err) != "unreachable":
            self.error = err


def list_topics_failfast(settings: Settings, timeout: float, logger=None):
    """``(admin client, cluster metadata or None, error)``: asks for metadata in 1-second tries until
    ``timeout``, stopping at once on an authentication, authorization or TLS error."""
    import time

    from confluent_kafka.admin import AdminClient

    fatal = FailFast()
    conf = {**settings.kafka_client_config(), "socket.timeout.ms": max(1000, int(timeout * 1000)), "error_cb": fatal}
    admin = AdminClient(conf, logger=logger) if logger is not None else AdminClient(conf)
    deadline = time.monotonic() + timeout
    err: object = f"no answer within {timeout:g} s"
    while True:
        try:
            return admin, admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic()))), None
        except Exception as exc:  # noqa: BLE001 - KafkaException: timeouts, transport failures
            err = exc
        admin.poll(0)  # serves error_cb
        if fatal.error is not None:
            return admin, None, fatal.error
        if time.monotonic() >= deadline:
            return admin, None, err
