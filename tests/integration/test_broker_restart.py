"""The broker stops and comes back under load: the worker resumes by itself and loses no alert.

A broker of our own (``stream.kafka.launcher`` on free ports, a temporary state dir) serves one
worker. Part of the stream is produced; while the worker is working through it the broker is
stopped (``launcher.down``), stays down a few seconds and is started again on the same state dir
(same data, same committed offsets); then the rest is produced. Without any manual action the
worker must catch up and publish the same (alert_id, status) set as an uninterrupted worker on the
same data (the reference of test_failover, run on the shared broker).
"""
from __future__ import annotations

import time

import pytest

from tests.conftest import ROOT, StreamEnv, _free_port
from tests.integration.test_failover import (
    Reference, alerts_of, assert_injections_alerted, compare_with_reference, key, lines, processed, produce,
)
from tests.integration.test_restart import _caught_up

pytestmark = pytest.mark.kafka

DOWN_SECONDS = 5


def _alive(w, env: StreamEnv, when: str) -> None:
    # librdkafka's AdminClient can abort its process around a broker restart (#4605); the worker's
    # lag monitor makes those calls from a child process (stream/lag.py), so the worker itself must live
    if w.poll() is None:
        return
    raise AssertionError(f"worker exited {when} (code {w.returncode}):\n{env.worker_log()[-3000:]}")


@pytest.fixture
def own_broker(tmp_path_factory):
    from stream.kafka import launcher
    from stream.settings import Settings

    s = Settings.load({"STREAM_KAFKA_PORT": str(_free_port()), "STREAM_KAFKA_CONTROLLER_PORT": str(_free_port()),
                       "STREAM_STATE_DIR": str(tmp_path_factory.mktemp("restart-broker")),
                       "STREAM_KAFKA_HEAP": "384m"})
    jars = ROOT / ".var" / "kafka-jars"
    t = time.monotonic()
    info = launcher.up(s, jar_cache=jars, wait=120)
    print(f"\nown broker up in {time.monotonic() - t:.1f}s at {info.bootstrap}")
    try:
        yield s, info.bootstrap, lambda: launcher.up(s, jar_cache=jars, wait=120), lambda: launcher.down(s)
    finally:
        launcher.down(s)


def test_broker_down_and_up_under_load_loses_no_alert(own_broker, kafka_bootstrap, tmp_path_factory):
    with Reference(kafka_bootstrap, tmp_path_factory.mktemp("ref")) as ref:
        _restart(ref, own_broker, tmp_path_factory)


def _restart(ref: Reference, own_broker, tmp_path_factory) -> None:
    settings, bootstrap, up, down = own_broker
    tmp = tmp_path_factory.mktemp("restart")
    env = StreamEnv(bootstrap, tmp, STREAM_TOPIC_PARTITIONS="8")
    env.cli("topics", "apply")
    port = env.env["STREAM_WEB_PORT"]
    try:
        w = env.start_worker()
        data = lines()
        cut = int(len(data) * 0.5)
        produce(env, tmp / "a.jsonl", data[:cut])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and processed(port) < 0.15 * len(data):
            time.sleep(0.2)
        n_before = processed(port)
        assert n_before > 0, "worker processed nothing before the broker stop:\n" + env.worker_log()[-3000:]
        t_down = time.monotonic()
        res = down()
        assert res["stopped"], res
        print(f"broker stopped ({'clean' if res['clean'] else 'killed'}, {res['seconds']}s) after "
              f"{n_before:.0f} of {len(data)} samples processed")
        time.sleep(DOWN_SECONDS)
        _alive(w, env, "while the broker was down")
        t_up0 = time.monotonic()
        up()
        t_up = time.monotonic()
        print(f"broker up again in {t_up - t_up0:.1f}s ({t_up - t_down:.1f}s after the stop)")
        n_at_up = processed(port)
        produce(env, tmp / "b.jsonl", data[cut:])  # the rest of the stream, on the restarted broker
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and processed(port) <= n_at_up:
            time.sleep(0.2)
        resumed = time.monotonic() - t_up
        _alive(w, env, "after the broker came back")
        assert processed(port) > n_at_up, "worker did not resume after the broker came back:\n" + env.worker_log()[-3000:]
        deadline = time.monotonic() + 240
        while True:  # caught up, or the worker gone (fail at once instead of waiting out the timeout)
            _alive(w, env, "after the broker came back")
            try:
                _caught_up(env, 3)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        caught_up = time.monotonic() - t_up
        _alive(w, env, "after catching up")
        got = alerts_of(env)
        late = processed(port, "late")
        print(f"broker restart: worker processing again {resumed:.1f}s and caught up {caught_up:.1f}s after the "
              f"broker was back; alerts {len(got)} (distinct {len(key(got))}); processed {processed(port):.0f}, "
              f"late {late:.0f}")
    finally:
        env.stop()
    reference = ref.alerts()
    assert_injections_alerted(reference)
    assert_injections_alerted(got)
    compare_with_reference(got, reference, late)
