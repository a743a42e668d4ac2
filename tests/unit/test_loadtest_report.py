"""The load test's markdown summary states the ratio targets without rounding across them."""
import pytest

from loadtest.report import _down, markdown

_CONFIG = {"tag": "t", "entities": 10, "metrics": 2, "batch": 1, "step": 30.0, "hours": 1.0, "partitions": 4,
           "cores": 2}


@pytest.mark.parametrize("ratio, shown, verdict", [(9.952, "9.95×", "not met"), (9.999, "9.99×", "not met"),
                                                    (10.0, "10.00×", "met"), (12.348, "12.34×", "met")])
def test_the_naive_ratio_is_rounded_down_and_judged(ratio, shown, verdict):
    text = markdown({"config": _CONFIG, "ratios": {"vs_ceiling": 0.4999, "vs_naive": ratio}}, [])
    line = next(x for x in text.splitlines() if x.startswith("**Ratios:**"))
    assert f"**{shown}** (target ≥ 10×: {verdict})" in line
    assert "**0.49** (target ≥ 0.5: not met)" in line  # (0.4999 is not shown as 0.50)


def test_round_down():
    assert [_down(x) for x in (0.5, 0.149, 0.29, 2.0, 9.9999)] == ["0.50", "0.14", "0.29", "2.00", "9.99"]


@pytest.mark.parametrize("config, path", [
    ({"copartitioned": True}, "co-partitioned"),
    ({"copartitioned": False}, "re-partitioned"),
    ({}, "re-partitioned"),  # a report from before the setting: the service always took the hop
    ({"copartitioned": True, "worker_env": {"STREAM_COPARTITIONED_INPUT": "false"}}, "re-partitioned"),
])
def test_the_summary_names_the_services_path(config, path):
    text = markdown({"config": {**_CONFIG, **config}}, [])
    line = next(x for x in text.splitlines() if x.startswith("Service path:"))
    assert line.startswith(f"Service path: {path}")
