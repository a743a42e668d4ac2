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


def test_copartitioned_input_refuses_exactly_once_naming_both_settings_and_the_file(tmp_path):
    import pytest

    from stream.settings import SettingsError

    assert Settings.load({"STREAM_COPARTITIONED_INPUT": "true"}).copartitioned_input is True
    with pytest.raises(SettingsError, match="STREAM_COPARTITIONED_INPUT=true needs STREAM_PROCESSING_GUARANTEE=at_least_once"):
        Settings.load({"STREAM_COPARTITIONED_INPUT": "true", "STREAM_PROCESSING_GUARANTEE": "exactly_once"})
    conf = tmp_path / "worker.yaml"
    conf.write_text("copartitioned_input: true\nprocessing_guarantee: exactly_once\n")
    with pytest.raises(SettingsError, match=str(conf)):
        Settings.load({}, file=str(conf))
