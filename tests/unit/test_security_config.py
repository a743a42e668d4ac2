"""Security settings reach both Kafka clients; secrets stay masked; the web server binds loopback."""
from __future__ import annotations

import ssl

import pytest

from stream.settings import Settings, SettingsError

SECRET = "s3cr3t-Pa55word"


def _sasl(proto="SASL_PLAINTEXT", mech="SCRAM-SHA-512", **extra):
    return Settings.load({"STREAM_BOOTSTRAP_SERVERS": "b1:9093, b2:9093", "STREAM_SECURITY_PROTOCOL": proto,
                          "STREAM_SASL_MECHANISM": mech, "STREAM_SASL_USERNAME": "stream",
                          "STREAM_SASL_PASSWORD": SECRET, **extra})


def test_plaintext_client_config_carries_no_security_keys():
    cfg = Settings.load({}).kafka_client_config()
    assert cfg == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mech", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_reaches_librdkafka_config(mech):
    cfg = _sasl(mech=mech).kafka_client_config()
    assert cfg["security.protocol"] == "SASL_PLAINTEXT"
    assert cfg["sasl.mechanism"] == mech
    assert cfg["sasl.username"] == "stream" and cfg["sasl.password"] == SECRET
    assert not any(k.startswith("ssl.") for k in cfg)


def test_sasl_ssl_reaches_librdkafka_config(tmp_path):
    ca = tmp_path / "ca.pem"
    cfg = _sasl("SASL_SSL", STREAM_SSL_CAFILE=str(ca)).kafka_client_config()
    assert cfg["security.protocol"] == "SASL_SSL" and cfg["sasl.password"] == SECRET
    assert cfg["ssl.ca.location"] == str(ca)


def test_ssl_mutual_tls_reaches_librdkafka_config():
    s = Settings.load({"STREAM_SECURITY_PROTOCOL": "SSL", "STREAM_SSL_CAFILE": "/ca.pem",
                       "STREAM_SSL_CERTFILE": "/c.pem", "STREAM_SSL_KEYFILE": "/k.pem",
                       "STREAM_SSL_KEY_PASSWORD": SECRET})
    cfg = s.kafka_client_config()
    assert cfg == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SSL",
                   "ssl.ca.location": "/ca.pem", "ssl.certificate.location": "/c.pem",
                   "ssl.key.location": "/k.pem", "ssl.key.password": SECRET}
    assert "sasl.password" not in cfg


def test_bad_security_values_fail_naming_the_variable():
    with pytest.raises(SettingsError, match="STREAM_SECURITY_PROTOCOL"):
        Settings.load({"STREAM_SECURITY_PROTOCOL": "SASL"})
    with pytest.raises(SettingsError, match="STREAM_SASL_MECHANISM"):
        Settings.load({"STREAM_SASL_MECHANISM": "GSSAPI"})


@pytest.mark.parametrize("mech", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_faust_broker_kwargs_carry_sasl(mech):
    import faust

    from stream.worker import faust_broker_kwargs

    kw = faust_broker_kwargs(_sasl(mech=mech))
    assert kw["broker"] == "kafka://b1:9093;kafka://b2:9093"
    cred = kw["broker_credentials"]
    assert isinstance(cred, faust.SASLCredentials)
    assert cred.username == "stream" and cred.password == SECRET
    assert cred.mechanism.value == mech and cred.ssl_context is None
    assert SECRET not in repr(cred)
    # what faust hands to aiokafka
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(cred)
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["sasl_mechanism"] == mech
    assert auth["sasl_plain_username"] == "stream" and auth["sasl_plain_password"] == SECRET


def test_faust_broker_kwargs_carry_sasl_ssl():
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from stream.worker import faust_broker_kwargs

    cred = faust_broker_kwargs(_sasl("SASL_SSL"))["broker_credentials"]
    assert isinstance(cred.ssl_context, ssl.SSLContext)
    assert credentials_to_aiokafka_auth(cred)["security_protocol"] == "SASL_SSL"


def _client_cert(tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=stream",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_sasl_ssl_with_a_client_certificate_is_mutual_tls_in_both_clients(tmp_path):
    """SASL_SSL plus STREAM_SSL_CERTFILE: librdkafka presents the certificate, and so must aiokafka."""
    from stream.worker import faust_broker_kwargs, ssl_context

    cert, key = _client_cert(tmp_path)
    s = _sasl("SASL_SSL", STREAM_SSL_CERTFILE=str(cert), STREAM_SSL_KEYFILE=str(key))
    assert s.kafka_client_config()["ssl.certificate.location"] == str(cert)
    cred = faust_broker_kwargs(s)["broker_credentials"]
    assert isinstance(cred.ssl_context, ssl.SSLContext)
    # the certificate really is loaded: the same settings with its key missing fail to load
    missing = _sasl("SASL_SSL", STREAM_SSL_CERTFILE=str(cert), STREAM_SSL_KEYFILE=str(tmp_path / "nope.key"))
    with pytest.raises(OSError):
        faust_broker_kwargs(missing)
    with pytest.raises(OSError):
        ssl_context(missing)


def test_faust_broker_kwargs_carry_ssl():
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from stream.worker import faust_broker_kwargs

    kw = faust_broker_kwargs(Settings.load({"STREAM_SECURITY_PROTOCOL": "SSL"}))
    auth = credentials_to_aiokafka_auth(kw["broker_credentials"])
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)


def test_faust_broker_kwargs_plaintext_has_no_credentials():
    from stream.worker import faust_broker_kwargs

    assert faust_broker_kwargs(Settings.load({})) == {"broker": "kafka://127.0.0.1:9092"}


def test_masked_hides_secrets_and_keeps_the_rest():
    s = _sasl(STREAM_SSL_KEY_PASSWORD="keypass-xyz")
    m = s.masked()
    assert m["sasl_password"] == "***" and m["ssl_key_password"] == "***"
    assert m["sasl_username"] == "stream" and m["security_protocol"] == "SASL_PLAINTEXT"
    text = repr(m)
    assert SECRET not in text and "keypass-xyz" not in text
    # empty secrets stay empty (nothing to hide, and '' shows they are unset)
    assert Settings.load({}).masked()["sasl_password"] == ""


def test_web_server_binds_loopback_by_default():
    from stream.worker import build_app

    s = Settings.load({})
    assert s.web_bind == "127.0.0.1"
    app = build_app(s)
    assert app.conf.web_bind == "127.0.0.1" and app.conf.web_host == "127.0.0.1"
    assert app.conf.broker_credentials is None


def test_build_app_carries_sasl_credentials():
    from stream.worker import build_app

    app = build_app(_sasl())
    cred = app.conf.broker_credentials
    assert cred.username == "stream" and cred.password == SECRET
    assert [str(u) for u in app.conf.broker] == ["kafka://b1:9093", "kafka://b2:9093"]


@pytest.mark.parametrize("text, kind", [
    ("SASL authentication error: Authentication failed during authentication due to invalid credentials "
     "with SASL mechanism SCRAM-SHA-512", "authentication"),
    ("KafkaError{code=TOPIC_AUTHORIZATION_FAILED,val=29,str=\"Not authorized to access topics\"}", "authorization"),
    ("ssl.ca.location failed: error:80000002:system library::No such file or directory", "tls"),
    ("SSL handshake failed: error:0A000086:SSL routines::certificate verify failed", "tls"),
    ("KafkaError{code=_TRANSPORT,val=-195,str=\"Failed to get metadata: Local: Broker transport failure\"}",
     "unreachable"),
    ("Connection refused", "unreachable"),
])
def test_kafka_errors_are_told_apart_and_name_what_to_check(text, kind):
    from stream.kafka.errors import FailFast, describe, kind as kind_of

    assert kind_of(text) == kind
    msg = describe(_sasl(), text)
    assert "b1:9093" in msg and SECRET not in msg
    want = {"authentication": "STREAM_SASL_PASSWORD", "authorization": "ACLs", "tls": "STREAM_SSL_CAFILE",
            "unreachable": "STREAM_BOOTSTRAP_SERVERS"}[kind]
    assert want in msg
    ff = FailFast()
    ff(text)
    assert (ff.error is not None) == (kind != "unreachable")
