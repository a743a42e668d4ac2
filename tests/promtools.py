"""Real Prometheus and Alertmanager for the tests: Debian's packages, our own instances on free ports.

``need(binary, package)`` returns the binary's path, installing the Debian package with apt-get
when it is missing (with a policy-rc.d that stops the package from starting its system daemon:
port 9093, Alertmanager's default, is also the local Kafka controller's). Outside CI an install
that is impossible skips the test; with ``CI=true`` it fails.

``Prometheus`` / ``Alertmanager`` start an instance on free loopback ports with a temporary
config and storage, wait until it answers, and stop it (only the process they started).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str):
    if CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def need(binary: str, package: str) -> str:
    found = shutil.which(binary) or (f"/usr/bin/{binary}" if os.access(f"/usr/bin/{binary}", os.X_OK) else None)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        _unavailable(f"{binary} is missing and Debian's {package} cannot be installed here (needs apt-get as root)")
    wrote_policy = False
    try:
        if not POLICY_RC.exists():  # keep the package's service from starting (and taking port 9090/9093)
            POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC.chmod(0o755)
            wrote_policy = True
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        res = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True, timeout=600)
        if res.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            res = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True,
                                 timeout=600)
        if res.returncode != 0:
            _unavailable(f"apt-get install {package} failed: {res.stderr.decode()[-500:]}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"apt-get install {package} failed: {exc}")
    finally:
        if wrote_policy:
            POLICY_RC.unlink(missing_ok=True)
    found = shutil.which(binary) or f"/usr/bin/{binary}"
    if not os.access(found, os.X_OK):
        _unavailable(f"{package} installed but {binary} not found")
    return found


def http_json(url: str, data: bytes | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


class _Server:
    name = "server"

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = tmp / f"{self.name}.log"

    def _start(self, cmd: list[str], ready_path: str, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, cwd=self.tmp)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + ready_path, timeout=2).read()
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        raise AssertionError(f"{self.name} not ready within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Prometheus(_Server):
    name = "prometheus"

    def start(self, targets: dict[str, list[str]], rule_files: list[str] = (), interval: str = "1s") -> "Prometheus":
        binary = need("prometheus", "prometheus")
        import yaml

        cfg = {"global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": "900ms"},
               "rule_files": [str(Path(f).resolve()) for f in rule_files],
               "scrape_configs": [{"job_name": job, "static_configs": [{"targets": t}]} for job, t in targets.items()]}
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self._start([binary, f"--config.file={self.tmp / 'prometheus.yml'}",
                     f"--storage.tsdb.path={self.tmp / 'prom-data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                     "--storage.tsdb.retention.time=1h"], "/-/ready")
        return self

    def query(self, promql: str) -> list[dict]:
        res = http_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert res["status"] == "success", res
        return res["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The single value of an instant query (None when the result is empty)."""
        r = self.query(promql)
        return float(r[0]["value"][1]) if r else None


class Alertmanager(_Server):
    name = "alertmanager"

    def start(self, config: str | None = None) -> "Alertmanager":
        binary = need("prometheus-alertmanager", "prometheus-alertmanager")
        cfg = self.tmp / "alertmanager.yml"
        cfg.write_text(config or "route:\n  receiver: 'null'\n  group_wait: 1s\nreceivers:\n  - name: 'null'\n")
        self._start([binary, f"--config.file={cfg}", f"--storage.path={self.tmp / 'am-data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="], "/-/ready")
        return self

    def alerts(self, **filters: str) -> list[dict]:
        q = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in filters.items()])
        return http_json(f"{self.url}/api/v2/alerts" + (f"?{q}" if q else ""))
