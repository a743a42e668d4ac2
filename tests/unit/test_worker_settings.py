"""Worker settings that reach Faust's Kafka clients (no broker: the clients are built, not started)."""
from __future__ import annotations

import asyncio

from stream.settings import Settings
from stream.worker import build_app


def _consumer(tmp_path, **env):
    async def build():
        app = build_app(Settings.load({"STREAM_STATE_DIR": str(tmp_path), "STREAM_APP_ID": "t-settings", **env}))
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        await consumer.stop()
        return app, consumer

    return asyncio.run(build())


def test_fetch_wait_replaces_fausts_fixed_one_and_a_half_seconds(tmp_path):
    _app, consumer = _consumer(tmp_path, STREAM_FETCH_WAIT_SECONDS="0.25")
    assert consumer._fetch_max_wait_ms == 250
    _app, consumer = _consumer(tmp_path)
    assert consumer._fetch_max_wait_ms == int(Settings().fetch_wait_seconds * 1000) != 1500


def test_commit_interval_reaches_faust(tmp_path):
    app, _consumer_ = _consumer(tmp_path, STREAM_COMMIT_INTERVAL_SECONDS="0.7")
    assert app.conf.broker_commit_interval == 0.7
