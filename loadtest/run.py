"""The load test: the service and two references on the same generated data, on the real broker.

Phases (each system in its own isolated deployment: own app id / consumer group, own topics):

1. **service, max rate** — one ``stream worker`` (spec ``loadtest``: ``group_by: [entity]``); the
   phase-1 messages are produced as fast as possible; throughput = samples / (time from the first
   produce to the moment the worker's group has committed every input *and* internal offset).
2. **service, fixed rate** — the same worker, the stream continued (more event time, more
   injections) at half the measured maximum (or ``--second-rate``) for ``--duration`` seconds;
   alert latency at that rate.
3. **ceiling** — :mod:`loadtest.ceiling` on its own copy of the phase-1 messages, same producer.
4. **naive** — :mod:`loadtest.naive` (Faust + river HST per sample), same.

Consumer lag (end − committed offsets) is sampled every 0.5 s in every phase.
"""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from loadtest.generate import KINDS, SPEC_NAME, Workload, spec_yaml

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Config:
    bootstrap: str = "127.0.0.1:9092"
    entities: int = 1000
    metrics: int = 5
    step: float = 30.0
    # 6 h: the service's measured max-rate phase lasts ~20 s here, so the up to one commit
    # interval it waits for its last commit (the time counts until everything is committed) is a
    # few per cent of it; with 3 h (~9 s) it was up to ~11 %
    hours: float = 6.0
    # share of the phase-1 scrapes every system processes first, unmeasured: series and models are
    # created there (river builds a HalfSpaceTrees per series on first sight: ~25 s for 500 series
    # in the naive pipeline), so samples/s is the sustained rate, not an average with start-up
    warmup: float = 0.1
    rate: float | None = None  # phase-1 messages/s; None = as fast as possible
    second_rate: float | None = None  # phase-2 messages/s; None = half the phase-1 rate
    duration: float = 60.0  # wall seconds of phase 2 (0: no phase 2)
    partitions: int = 4
    per_kind: int = 0  # injections per kind and phase (0: entities // 40, at least 2)
    kinds: tuple = KINDS
    durations: dict = field(default_factory=dict)  # per kind, event-time seconds (Workload defaults)
    offline: bool = True  # also score the phase-1 data with the engine in-process (no Kafka)
    tolerance_windows: float = 2.0
    window: float = 60.0
    quick: bool = False
    keep_topics: bool = False
    batch: int = 25  # entities per message (x metrics samples), as a collector batches
    references: bool = True
    timeout: float = 600.0  # per phase, to catch up
    worker_env: dict = field(default_factory=dict)  # extra STREAM_* settings for the service's worker
    # The feed keys each message by its batch, and an entity is always in the same batch (as a
    # collector sends the same hosts' scrapes), so every entity stays on one input partition: the
    # service runs with STREAM_COPARTITIONED_INPUT=true, detecting where it reads, as the naive
    # pipeline does. False (--repartition): through the internal topic, as for input keyed otherwise.
    copartitioned: bool = True
    # commit interval of the Faust systems (service and naive): throughput is measured to the moment
    # everything is committed, so a long interval adds up to one interval per hop to a short phase
    # (the ceiling commits every 0.1 s). 1 s for both keeps that error small and equal.
    commit_interval: float = 1.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_kib(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0.0 when it is gone.

    Wall-clock rates on a shared 2-core machine move with whatever else runs; CPU seconds per
    sample is the process's own cost, and comparable between runs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _cpu_figures(cpu_s: float, samples: int) -> dict:
    return {"cpu_seconds": round(cpu_s, 3), "cpu_us_per_sample": round(1e6 * cpu_s / samples, 2) if samples else None}


# --------------------------------------------------------------------------------- offsets
class Offsets:
    """Committed vs end offsets of a consumer group on some topics (as tests' ``_caught_up``)."""

    def __init__(self, bootstrap: str, group: str, topics: list[str], input_topic: str):
        from confluent_kafka import Consumer, TopicPartition

        self._tp = TopicPartition
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self.topics = topics
        self.input_topic = input_topic
        self.parts = {t: list(self.c.list_topics(t, timeout=10).topics[t].partitions) for t in topics}

    def sample(self) -> dict:
        lag = 0
        out = {}
        for t in self.topics:
            tps = [self._tp(t, p) for p in self.parts[t]]
            committed = end = 0
            for tp in self.c.committed(tps, timeout=10):
                hi = self.c.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                committed += max(tp.offset, 0)
                end += hi
            lag += end - committed
            if t == self.input_topic:
                out["committed"], out["end"] = committed, end
        out["lag"] = lag
        return out

    def close(self) -> None:
        self.c.close()


class Sampler(threading.Thread):
    """Samples lag every 0.5 s into ``series`` = [(t since produce start, committed, end, lag), ...]."""

    def __init__(self, offsets: Offsets, t0: float, label: str, progress):
        super().__init__(daemon=True)
        self.offsets, self.t0, self.label, self.progress = offsets, t0, label, progress
        self.series: list[tuple[float, int, int, int]] = []
        self.stop_ev = threading.Event()
        self.last: dict = {}
        self.base = 0  # committed input offsets before the phase

    def run(self) -> None:
        next_t = time.time()
        while not self.stop_ev.is_set():
            try:
                s = self.offsets.sample()
            except Exception as exc:  # noqa: BLE001 - a slow broker answer must not end the run
                log(f"[{self.label}] offsets: {exc}")
                s = None
            now = time.time()
            if s is not None:
                self.series.append((now - self.t0, s["committed"], s["end"], s["lag"]))
                self.last = {**s, "t": now}
            next_t += 0.5
            self.stop_ev.wait(max(0.0, next_t - time.time()))


# --------------------------------------------------------------------------------- produce
class Feed:
    """Pre-serialized messages of a range of scrapes (the same bytes for every system).

    ``batch`` entities' scrapes go into one message (``{"samples": [...]}`` of batch x M samples),
    as a collector or Prometheus remote-write batches series; keyed ``b<i>`` by the batch's index
    within the scrape, so batches spread over the partitions. ``batch=1``: one message per entity.
    """

    def __init__(self, wl: Workload, k0: int, k1: int, batch: int = 1):
        self.k0, self.k1 = k0, k1
        self.ent: list[int] = []  # per (scrape, entity) sent: the entity,
        self.step: list[int] = []  # the scrape,
        self.msg: list[int] = []  # and the index of the message that carries it
        self.keys: list[bytes] = []
        self.values: list[bytes] = []
        n_entity_msgs = 0
        for k, msgs in wl.messages(k0, k1):
            # an entity is always in batch e // batch (sent with key b<e // batch>), whether or not
            # others are missing from the scrape: its samples stay on one partition, in order
            groups: dict[int, list] = {}
            for item in msgs:
                groups.setdefault(item[0] // batch, []).append(item)
            for bi, chunk in groups.items():
                for e, _key, _val in chunk:
                    self.ent.append(e)
                    self.step.append(k)
                    self.msg.append(len(self.values))
                n_entity_msgs += len(chunk)
                if batch == 1:
                    self.keys.append(chunk[0][1])
                    self.values.append(chunk[0][2])
                else:  # join the sample arrays of {"samples":[...]} without re-encoding
                    inner = b",".join(v[len(b'{"samples":['):-2] for _e, _k, v in chunk)
                    self.keys.append(b"b%d" % bi)
                    self.values.append(b'{"samples":[' + inner + b"]}")
        self.samples = n_entity_msgs * wl.metrics

    def __len__(self) -> int:
        return len(self.values)


def produce(bootstrap: str, topic: str, feed: Feed, rate: float | None, label: str, sampler: Sampler | None = None,
            total_hint: int | None = None) -> tuple[np.ndarray, float]:
    """Send the feed (as fast as possible, or at ``rate`` messages/s); returns each message's
    produce wall time (= its CreateTime) and the wall time the last one was acknowledged."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 1_000_000,
                  "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
                  "compression.type": "lz4", "acks": "all"})
    n = len(feed)
    times = np.empty(n)
    errors: list[str] = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))

    t_start = time.time()
    last_print = t_start
    keys, values = feed.keys, feed.values
    for i in range(n):
        if rate:
            ahead = t_start + i / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        now = time.time()
        while True:
            try:
                p.produce(topic, values[i], keys[i], on_delivery=on_delivery, timestamp=int(now * 1000))
                break
            except BufferError:
                p.poll(0.01)
        times[i] = now
        if i % 500 == 0:
            p.poll(0)
            if now - last_print >= 2.0:
                last_print = now
                _progress(label, i, n, t_start, sampler)
    p.flush(120)
    if errors:
        raise RuntimeError(f"{len(errors)} produce errors, first: {errors[0]}")
    t_done = time.time()
    _progress(label, n, n, t_start, sampler)
    return times, t_done


def _progress(label: str, i: int, n: int, t0: float, sampler: Sampler | None) -> None:
    el = time.time() - t0
    line = f"[{label}] produced {i:,}/{n:,} msgs ({i / max(el, 1e-9):,.0f}/s)"
    if sampler is not None and sampler.last:
        s = sampler.last
        done = s["committed"] - sampler.base
        line += f"  committed {done:,}  lag {s['lag']:,}  consumed {done / max(el, 1e-9):,.0f} msgs/s"
    log(line)


def wait_caught_up(sampler: Sampler, offsets: Offsets, n_msgs: int, timeout: float, label: str, proc=None) -> float:
    """Wall time at which every message is committed (input and internal topics), polled every
    0.1 s with its own client (the 0.5 s lag series is only for the plots)."""
    deadline = time.time() + timeout
    last_print = 0.0
    while time.time() < deadline:
        s = offsets.sample()
        if s["end"] >= n_msgs and s["committed"] >= n_msgs and s["lag"] == 0:
            return time.time()
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"[{label}] process exited with {proc.returncode} before catching up")
        if time.time() - last_print >= 2.0 and sampler.last:
            last_print = time.time()
            s = sampler.last
            log(f"[{label}] catching up: committed {s['committed'] - sampler.base:,}/{n_msgs - sampler.base:,}  "
                f"lag {s['lag']:,}")
        time.sleep(0.1)
    peak = f"; worker peak RSS {_proc_kib(proc.pid, 'VmHWM') / 2 ** 20:,.0f} MiB" if proc is not None else ""
    raise RuntimeError(f"[{label}] not caught up within {timeout:.0f}s (--timeout): {sampler.last}{peak}")


# --------------------------------------------------------------------------------- deployments
class Deployment:
    """An isolated service deployment (as tests/conftest.py's StreamEnv): own app id and topics."""

    def __init__(self, cfg: Config, tmp: Path, tag: str):
        self.cfg, self.tmp, self.tag = cfg, tmp, tag
        specs = tmp / "specs"
        specs.mkdir(parents=True, exist_ok=True)
        (specs / f"{SPEC_NAME}.yaml").write_text(spec_yaml(cfg.window))
        self.app_id = f"lt-{tag}"
        self.web_port = _free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STREAM_")},
            "STREAM_BOOTSTRAP_SERVERS": cfg.bootstrap,
            "STREAM_APP_ID": self.app_id,
            "STREAM_TOPIC_METRICS": f"lt-metrics-{tag}",
            "STREAM_TOPIC_ALERTS": f"lt-alerts-{tag}",
            "STREAM_TOPIC_DEADLETTER": f"lt-deadletter-{tag}",
            "STREAM_TOPIC_INFERENCES": f"lt-inferences-{tag}",
            "STREAM_TOPIC_FEEDBACK": f"lt-feedback-{tag}",
            "STREAM_TOPIC_PARTITIONS": str(cfg.partitions),
            "STREAM_WEB_PORT": str(self.web_port),
            "STREAM_STATE_DIR": str(tmp / "state"),
            "STREAM_SPECS_DIR": str(specs),
            "STREAM_WINDOW_SECONDS": str(cfg.window),
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            "STREAM_COMMIT_INTERVAL_SECONDS": str(cfg.commit_interval),
            "STREAM_COPARTITIONED_INPUT": "true" if cfg.copartitioned else "false",
            **cfg.worker_env,
        }
        self.proc: subprocess.Popen | None = None

    @property
    def metrics_topic(self) -> str:
        return self.env["STREAM_TOPIC_METRICS"]

    @property
    def alerts_topic(self) -> str:
        return self.env["STREAM_TOPIC_ALERTS"]

    def setup(self) -> None:
        res = subprocess.run([sys.executable, "-m", "stream.cli", "topics", "apply"], env=self.env, cwd=self.tmp,
                             capture_output=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"stream topics apply failed:\n{res.stderr.decode()[-2000:]}")
        # alert latency is measured to the broker's append time of the alert
        from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

        admin = AdminClient({"bootstrap.servers": self.cfg.bootstrap})
        res = ConfigResource(ConfigResource.Type.TOPIC, self.alerts_topic, incremental_configs=[
            ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET)])
        for f in admin.incremental_alter_configs([res]).values():
            f.result(30)

    def start(self) -> None:
        self.logf = open(self.tmp / "worker.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", "--loglevel", "warning"],
                                     env=self.env, cwd=self.tmp, stdout=self.logf, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:  # noqa: BLE001 - 503 until assigned and recovered
                pass
            time.sleep(0.3)
        raise RuntimeError(f"worker not ready within {timeout}s:\n{self.log_tail()}")

    def prometheus(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=10) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith(("stream_state_bytes", "stream_entities_active", "stream_events_total",
                                         "stream_state_write", "stream_state_stored", "stream_gc_pause_seconds_sum",
                                         "stream_gc_pause_seconds_count")):
                        name, _, val = line.rpartition(" ")
                        out[name] = float(val)
        except Exception as exc:  # noqa: BLE001
            log(f"/metrics: {exc}")
        return out

    def log_tail(self) -> str:
        p = self.tmp / "worker.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self) -> None:
        _stop(self.proc)


def _stop(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(30)
    deadline = time.time() + 30
    while time.time() < deadline:  # metadata visible
        md = admin.list_topics(name, timeout=10).topics.get(name)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        time.sleep(0.2)


def _group_stable(bootstrap: str, group: str, timeout: float, proc=None) -> None:
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode} before joining its group")
        try:
            d = admin.describe_consumer_groups([group])[group].result(10)
            if d.state == ConsumerGroupState.STABLE and any(m.assignment.topic_partitions for m in d.members):
                return
        except Exception:  # noqa: BLE001 - the group does not exist yet
            pass
        time.sleep(0.3)
    raise RuntimeError(f"group {group} not stable within {timeout}s")


def _delete_topics(bootstrap: str, tag: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if tag in t]
    if names:
        for f in admin.delete_topics(names, operation_timeout=30).values():
            try:
                f.result(60)
            except Exception:  # noqa: BLE001
                pass


# --------------------------------------------------------------------------------- measuring
def _rates(feed: Feed, t_start: float, t_end: float, t_produced: float) -> dict:
    el = t_end - t_start
    return {"messages": len(feed), "samples": feed.samples, "seconds": round(el, 3),
            "produce_seconds": round(t_produced - t_start, 3),
            "samples_per_s": feed.samples / el, "messages_per_s": len(feed) / el}


def _warm_figures(warm: dict) -> dict:
    """The unmeasured warm-up run of a system, for the record (start-up cost, not throughput)."""
    return {k: warm[k] for k in ("messages", "samples", "seconds", "cpu_seconds", "cpu_us_per_sample")}


def _series(sampler: Sampler) -> list[list[float]]:
    return [[round(t, 3), c, e, l] for t, c, e, l in sampler.series]


def _produce_and_catch_up(bootstrap: str, group: str, topics: list[str], topic: str, feed: Feed,
                          rate: float | None, label: str, timeout: float, proc, base: int = 0):
    """Produce the feed to ``topic`` and wait until ``group`` has committed everything on ``topics``,
    sampling lag every 0.5 s; returns (produce times, wall time of the last ack, wall time caught
    up, start time, sampler)."""
    offsets = Offsets(bootstrap, group, topics, topic)
    fast = Offsets(bootstrap, group, topics, topic)
    t0 = time.time()
    sampler = Sampler(offsets, t0, label, None)
    sampler.base = base
    sampler.start()
    try:
        times, t_prod = produce(bootstrap, topic, feed, rate, label, sampler)
        t_end = wait_caught_up(sampler, fast, base + len(feed), timeout, label, proc)
    finally:
        sampler.stop_ev.set()
        sampler.join(5)
        offsets.close()
        fast.close()
    return times, t_prod, t_end, t0, sampler


def run_service_phase(dep: Deployment, feed: Feed, rate: float | None, label: str, timeout: float,
                      base_committed: int) -> tuple[dict, np.ndarray, list]:
    cfg = dep.cfg
    cpu0 = _proc_cpu_s(dep.proc.pid)
    times, t_prod, t_end, t0, sampler = _produce_and_catch_up(
        cfg.bootstrap, dep.app_id, [dep.metrics_topic, f"{dep.app_id}-entity-samples"], dep.metrics_topic, feed,
        rate, label, timeout, dep.proc, base_committed)
    res = _rates(feed, t0, t_end, t_prod)
    res.update(_cpu_figures(_proc_cpu_s(dep.proc.pid) - cpu0, feed.samples))
    res["offered_rate_messages_per_s"] = rate
    series = [[t, c - base_committed, e - base_committed, l] for t, c, e, l in _series(sampler)]
    log(f"[{label}] caught up: {res['samples_per_s']:,.0f} samples/s, {res['messages_per_s']:,.0f} msgs/s "
        f"({res['seconds']:.1f}s; produce took {res['produce_seconds']:.1f}s)")
    return res, times, series


def run_reference(kind: str, cfg: Config, tmp: Path, tag: str, feed: Feed,
                  warmup: Feed | None = None) -> tuple[dict, list]:
    """Run the ceiling or the naive pipeline on ``warmup`` (unmeasured, when given) and then on
    ``feed`` (measured), as the service is run."""
    topic, group = f"lt-{kind}-{tag}", f"lt-{kind}-{tag}"
    _create_topic(cfg.bootstrap, topic, cfg.partitions)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAM_")},
           "STREAM_BOOTSTRAP_SERVERS": cfg.bootstrap, "STREAM_TOPIC_PARTITIONS": str(cfg.partitions),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1",
           "LOADTEST_NAIVE_APP": group, "LOADTEST_NAIVE_TOPIC": topic,
           "STREAM_COMMIT_INTERVAL_SECONDS": str(cfg.commit_interval)}
    logf = open(tmp / f"{kind}.log", "wb")
    if kind == "ceiling":
        cmd = [sys.executable, "-m", "loadtest.ceiling", "--bootstrap", cfg.bootstrap, "--topic", topic,
               "--group", group]
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=logf)
        line = proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"ceiling consumer did not start: {(tmp / 'ceiling.log').read_text()[-2000:]}")
    else:
        cmd = [sys.executable, "-m", "loadtest.naive", "worker", "-l", "warn", "--web-port", str(_free_port()),
               "--web-host", "127.0.0.1"]
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=logf, stderr=subprocess.STDOUT)
        _group_stable(cfg.bootstrap, group, 180, proc)
        time.sleep(1.0)  # the agent's fetcher starts right after the assignment
    try:
        base = 0
        warm = None
        if warmup is not None:
            cpu0 = _proc_cpu_s(proc.pid)
            _times, t_prod, t_end, t0, _s = _produce_and_catch_up(
                cfg.bootstrap, group, [topic], topic, warmup, None, f"{kind} warm-up", cfg.timeout, proc)
            warm = _rates(warmup, t0, t_end, t_prod)
            warm.update(_cpu_figures(_proc_cpu_s(proc.pid) - cpu0, warmup.samples))
            log(f"[{kind} warm-up] caught up: {warm['seconds']:.1f}s")
            base = len(warmup)
        cpu0 = _proc_cpu_s(proc.pid)
        _times, t_prod, t_end, t0, sampler = _produce_and_catch_up(
            cfg.bootstrap, group, [topic], topic, feed, None, kind, cfg.timeout, proc, base)
        res = _rates(feed, t0, t_end, t_prod)
        res.update(_cpu_figures(_proc_cpu_s(proc.pid) - cpu0, feed.samples))
        if warm is not None:
            res["warmup"] = _warm_figures(warm)
        res["rss_peak_bytes"] = _proc_kib(proc.pid, "VmHWM")
        # the ceiling can only be as fast as the producer: flag it when that is what was measured
        res["bound_by_producer"] = res["seconds"] - res["produce_seconds"] < 0.3
        log(f"[{kind}] caught up: {res['samples_per_s']:,.0f} samples/s, {res['messages_per_s']:,.0f} msgs/s "
            f"({res['seconds']:.1f}s; produce took {res['produce_seconds']:.1f}s)")
        return res, [[t, c - base, e - base, lag] for t, c, e, lag in _series(sampler)]
    finally:
        _stop(proc)


def read_alerts(bootstrap: str, topic: str, timeout: float = 30) -> list[dict]:
    import orjson
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lt-read-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    pos = {p: 0 for p in parts}
    out = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and any(pos[p] < ends[p] for p in parts):
            for m in c.consume(1000, 0.5):
                if m.error():
                    continue
                a = orjson.loads(m.value())
                a["_append_ts"] = m.timestamp()[1] / 1000.0
                a["_ts_type"] = m.timestamp()[0]
                out.append(a)
                pos[m.partition()] = m.offset() + 1
    finally:
        c.close()
    return out


def close_times(wl: Workload, feeds: list[Feed], times: list[np.ndarray], total_steps: int) -> np.ndarray:
    """Produce wall time of each (scrape, entity) message; NaN where the message was lost."""
    pt = np.full((total_steps, wl.entities), np.nan)
    for feed, t in zip(feeds, times):
        pt[np.asarray(feed.step), np.asarray(feed.ent)] = t[np.asarray(feed.msg)]
    return pt


def latency(alerts: list[dict], wl: Workload, pt: np.ndarray, window: float, k_phase2: int) -> list[dict]:
    """For every alert: t_close = the wall time the window could close (the produce time of the
    entity's first message at or after the window's end, or of the first message of any entity
    10 windows past it — the quiet-entity watermark — whichever is earlier) and its latency to
    the alert's broker append time."""
    n_steps = pt.shape[0]
    first_any = np.nanmin(np.where(np.isnan(pt), np.inf, pt), axis=1)  # earliest produce per scrape
    out = []
    for a in alerts:
        eid = a["series"]["id"]
        try:
            e = int(eid.rsplit("=e", 1)[1])
        except (IndexError, ValueError):
            continue
        end = a["window"]["end"]
        k = max(0, math.ceil((end - wl.t0) / wl.step - 1e-9))
        cands = []
        col = pt[k:, e]
        ok = np.flatnonzero(~np.isnan(col))
        if len(ok):
            cands.append(col[ok[0]])
        kw = math.ceil((end + 10 * window - wl.t0) / wl.step - 1e-9)
        if kw < n_steps:
            cands.append(first_any[kw])
        if not cands:
            continue
        t_close = min(cands)
        out.append({"entity": e, "kind": a["kind"], "status": a["status"], "window_end": end,
                    "phase": 2 if k >= k_phase2 else 1, "t_close": float(t_close),
                    "latency_s": a["_append_ts"] - float(t_close)})
    return out


def _pct(xs: list[float]) -> dict:
    if not xs:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(xs)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": len(xs)}


def offline_alerts(wl: Workload, feeds: list[Feed], window: float) -> list[dict]:
    import orjson
    import yaml

    from stream.detect.engine import Detector
    from stream.detect.spec import DetectorSpec

    det = Detector(DetectorSpec.from_dict(yaml.safe_load(spec_yaml(window)), source="loadtest.yaml"))
    out: list[dict] = []
    for val in (v for feed in feeds for v in feed.values):
        for s in orjson.loads(val)["samples"]:
            out += det.ingest(s["metric"], s["labels"], s["ts"], s["value"])
    return out


def detection(alerts: list[dict], wl: Workload, tol: float, anomalies=None) -> dict:
    """Precision / recall of firing alerts against the injections (same entity, alert window
    overlapping the injection interval widened by ``tol`` seconds on each side)."""
    firing = [a for a in alerts if a["status"] == "firing"]
    by_entity: dict[str, list] = {}
    for a in firing:
        by_entity.setdefault(a["series"]["id"], []).append(a)
    matched_alerts: set[str] = set()
    per_kind = {k: {"injected": 0, "detected": 0} for k in KINDS}
    inj_out = []
    anomalies = wl.anomalies if anomalies is None else anomalies
    for inj in anomalies:
        eid = inj.as_dict()["entity"]
        hits = [a for a in by_entity.get(eid, [])
                if a["window"]["start"] < inj.end + tol and a["window"]["end"] > inj.start - tol]
        per_kind[inj.kind]["injected"] += 1
        if hits:
            per_kind[inj.kind]["detected"] += 1
        for a in hits:
            matched_alerts.add(a["alert_id"])
        first = min((a["window"]["end"] for a in hits), default=None)
        inj_out.append({**inj.as_dict(), "detected": bool(hits), "alert_kinds": sorted({a["kind"] for a in hits}),
                        "detection_delay_event_s": (first - inj.start) if first is not None else None})
    n_inj = len(anomalies)
    tp_inj = sum(1 for i in inj_out if i["detected"])
    ids = {a["alert_id"] for a in firing}
    for k, v in per_kind.items():
        v["recall"] = v["detected"] / v["injected"] if v["injected"] else None
    return {
        "precision": len(matched_alerts) / len(ids) if ids else None,
        "recall": tp_inj / n_inj if n_inj else None,
        "per_kind": per_kind,
        "per_kind_recall": {k: v["recall"] for k, v in per_kind.items()},
        "firing_alerts": len(ids), "true_alerts": len(matched_alerts), "false_alerts": len(ids - matched_alerts),
        "alerts_by_kind": {k: sum(1 for a in firing if a["kind"] == k) for k in sorted({a["kind"] for a in firing})},
        "resolved_events": sum(1 for a in alerts if a["status"] == "resolved"),
        "injections": n_inj, "tolerance_s": tol,
        "injection_list": inj_out,
    }


# --------------------------------------------------------------------------------- main
def run(cfg: Config, report_path: Path) -> dict:
    bad = set(cfg.kinds) - set(KINDS)
    if bad:
        raise SystemExit(f"unknown anomaly kind(s) {', '.join(sorted(bad))} (known: {', '.join(KINDS)})")
    t_run = time.time()
    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix=f"loadtest-{tag}-"))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    per_kind = cfg.per_kind or max(2, cfg.entities // 40)
    t0_evt = 1_699_999_200.0  # history replay from a fixed hour: the same data in every run
    wl = Workload(entities=cfg.entities, metrics=cfg.metrics, step=cfg.step, t0=t0_evt,
                  **{f"{k}_s": v for k, v in cfg.durations.items()})
    k1 = int(cfg.hours * 3600 / cfg.step)
    est = k1 * cfg.entities * (90 + 75 * cfg.metrics)
    if est > 3 * 2 ** 30:
        raise SystemExit(f"phase 1 would hold ~{est / 2**30:.1f} GiB of messages in memory: fewer --entities or --hours")
    wl.schedule(0, k1, per_kind, seed=1, kinds=cfg.kinds)
    log(f"load test {tag}: {cfg.entities} entities x {cfg.metrics} metrics, scrape every {cfg.step:g}s, "
        f"{cfg.hours:g} h of event time; {len(wl.anomalies)} injections; tmp {tmp}")
    t = time.time()
    kw = min(k1 - 1, math.ceil(cfg.warmup * k1)) if cfg.warmup > 0 else 0
    feed_w = Feed(wl, 0, kw, cfg.batch) if kw > 0 else None
    feed1 = Feed(wl, kw, k1, cfg.batch)
    n_w = len(feed_w) if feed_w is not None else 0
    log(f"generated {n_w + len(feed1):,} messages / {(feed_w.samples if feed_w else 0) + feed1.samples:,} samples "
        f"in {time.time() - t:.1f}s (warm-up: the first {kw} of {k1} scrapes, {n_w:,} messages, not measured)")
    report: dict = {"config": {**asdict(cfg), "tag": tag, "scrape_interval_s": cfg.step,
                               "event_time_start": t0_evt, "spec": spec_yaml(cfg.window),
                               "spec_note": "temp spec: group_by [entity], every metric of an entity in one vector",
                               "injections_per_kind_and_phase": per_kind, "cores": os.cpu_count()}}
    dep = Deployment(cfg, tmp, tag)
    feeds, times = ([feed_w] if feed_w is not None else []) + [feed1], []
    lat: list[dict] = []
    try:
        dep.setup()
        dep.start()
        dep.wait_ready()
        time.sleep(2.0)
        rss_idle = _proc_kib(dep.proc.pid, "VmRSS")
        log(f"[service] worker ready (pid {dep.proc.pid}, RSS {rss_idle / 2**20:.0f} MiB)")
        if feed_w is not None:
            warm, tmw, _ = run_service_phase(dep, feed_w, cfg.rate, "service warm-up", cfg.timeout, 0)
            times.append(tmw)
        svc, tm1, ser1 = run_service_phase(dep, feed1, cfg.rate, "service", cfg.timeout, n_w)
        times.append(tm1)
        report["service"] = {**svc, "timeseries": ser1}
        if feed_w is not None:
            report["service"]["warmup"] = _warm_figures(warm)
        rss_after1 = _proc_kib(dep.proc.pid, "VmHWM")
        phase2 = None
        if cfg.duration > 0:
            rate2 = cfg.second_rate or 0.5 * svc["messages_per_s"]
            n2 = int(rate2 * cfg.duration)
            per_scrape = math.ceil(cfg.entities / cfg.batch)  # messages per scrape
            k2 = k1 + max(1, math.ceil(n2 / per_scrape))
            # more injections in the short fixed-rate phase: its alerts are the latency sample
            wl.schedule(k1, k2, max(per_kind, cfg.entities // 10), seed=2, kinds=cfg.kinds)
            feed2 = Feed(wl, k1, k2, cfg.batch)
            log(f"[fixed-rate] {len(feed2):,} messages at {rate2:,.0f} msgs/s "
                f"({(k2 - k1) * cfg.step / 60:.0f} min of event time)")
            p2, tm2, ser2 = run_service_phase(dep, feed2, rate2, "fixed-rate", cfg.timeout, n_w + len(feed1))
            feeds.append(feed2)
            times.append(tm2)
            phase2 = {**p2, "timeseries": ser2}
        time.sleep(1.0)
        prom = dep.prometheus()
        peak = _proc_kib(dep.proc.pid, "VmHWM")
        rss_end = _proc_kib(dep.proc.pid, "VmRSS")  # every entity held, nothing in flight
        state_bytes = prom.get('stream_state_bytes{detector="all"}')
        ents = prom.get(f'stream_entities_active{{detector="{SPEC_NAME}"}}') or cfg.entities
        report["memory"] = {
            "peak_rss_bytes": peak, "rss_idle_bytes": rss_idle, "peak_rss_after_max_rate_bytes": rss_after1,
            "bytes_per_entity": (peak - rss_idle) / cfg.entities,
            "rss_end_bytes": rss_end,
            "bytes_per_entity_at_end": (rss_end - rss_idle) / cfg.entities,
            "entities": int(ents),
            "stored_entities": prom.get("stream_state_stored_entities"),
            "serialized_state_bytes_per_entity": state_bytes / ents if state_bytes else None,
            "worker_counters": {k: v for k, v in prom.items()
                                if k.startswith(("stream_events_total", "stream_state_write", "stream_gc_pause"))},
            "note": "bytes_per_entity = (peak RSS - RSS of the idle ready worker) / entities; at small N it is "
                    "dominated by client buffers. bytes_per_entity_at_end: the same from the RSS after the run "
                    "(every entity held, nothing in flight). stored_entities: entity state records the table's store "
                    "still holds serialized (0 once the engine has loaded them). Engine-only figure: "
                    "benchmarks/bench_entities.py",
        }
        dep.stop()
        report["fixed_rate"] = phase2
        if cfg.references:
            c, cser = run_reference("ceiling", cfg, tmp, tag, feed1, feed_w)
            report["ceiling"] = {**c, "timeseries": cser}
            nv, nser = run_reference("naive", cfg, tmp, tag, feed1, feed_w)
            report["naive"] = {**nv, "timeseries": nser}
        alerts = read_alerts(cfg.bootstrap, dep.alerts_topic)
        ts_types = {a["_ts_type"] for a in alerts}
        total_steps = max(f.k1 for f in feeds)
        pt = close_times(wl, feeds, times, total_steps)
        lat = latency(alerts, wl, pt, cfg.window, k1)
        l2 = [x["latency_s"] for x in lat if x["phase"] == 2]
        l1 = [x["latency_s"] for x in lat if x["phase"] == 1]
        report["latency_s"] = {**_pct(l2 if l2 else l1),
                               "phase": "fixed_rate" if l2 else "max_rate",
                               "fixed_rate": _pct(l2), "max_rate": _pct(l1),
                               "alert_timestamp_type": "LogAppendTime" if ts_types == {2} else str(ts_types)}
        t_ref = report["service"]
        report["latency_samples"] = [[round(x["t_close"] - t_run, 3),
                                      round(x["latency_s"], 4), x["phase"], f'{x["kind"]}/{x["status"]}']
                                     for x in lat]
        tol = cfg.tolerance_windows * cfg.window
        report["detection"] = detection(alerts, wl, tol)
        p1 = [a for a in wl.anomalies if a.start < wl.ts(k1)]
        d1 = detection([a for a in alerts if a["window"]["end"] <= wl.ts(k1) + tol], wl, tol, anomalies=p1)
        d1.pop("injection_list")
        report["detection"]["max_rate_phase"] = d1
        if cfg.offline:
            t = time.time()
            off = offline_alerts(wl, feeds[:2] if feed_w is not None else [feed1], cfg.window)
            d = detection(off, wl, tol, anomalies=p1)
            d.pop("injection_list")
            d["seconds"] = round(time.time() - t, 1)
            d["note"] = ("the phase-1 messages through stream.detect.engine.Detector in this process, in produce "
                         "order (no Kafka): detection quality of the engine itself, for comparison")
            report["detection_engine_offline"] = d
            log(f"[offline] engine alone on the phase-1 data: precision {d['precision']}, recall {d['recall']}")
        report["alerts_total"] = len(alerts)
        report["alerts"] = [[a["series"]["id"], a["kind"], a["status"], a["window"]["start"], a["window"]["end"],
                             a.get("score"), a.get("grade"), a["_append_ts"]] for a in alerts]
        ratios = {}
        if cfg.references:
            ratios["vs_ceiling"] = t_ref["samples_per_s"] / report["ceiling"]["samples_per_s"]
            ratios["vs_naive"] = t_ref["samples_per_s"] / report["naive"]["samples_per_s"]
        report["ratios"] = ratios
        report["targets"] = targets(report)
        report["wall_seconds"] = round(time.time() - t_run, 1)
    except BaseException:
        log(f"worker log tail:\n{dep.log_tail()}")
        raise
    finally:
        dep.stop()
        if not cfg.keep_topics:
            _delete_topics(cfg.bootstrap, tag)
    from loadtest.report import write_outputs

    write_outputs(report, report_path)
    return report


#: a measured phase shorter than this is start-up, not a sustained rate: a ratio built on it is not
#: judged (--quick's 100 entities: the ceiling reads its 0.3M samples in ≈ 0.5 s, the service in ≈ 1 s)
MIN_JUDGED_PHASE_SECONDS = 2.0


def _short_phases(r: dict, systems: tuple[str, ...]) -> list[str]:
    """The systems among ``systems`` whose measured phase lasted under MIN_JUDGED_PHASE_SECONDS."""
    out = []
    for k in systems:
        sec = (r.get(k) or {}).get("seconds")
        if sec is not None and sec < MIN_JUDGED_PHASE_SECONDS:
            out.append(f"{k} {sec:.1f} s")
    return out


def ratio_verdict(r: dict, other: str, ok: bool):
    """True / False for a ratio target (service against ``other``), or why it is not judged."""
    short = _short_phases(r, ("service", other))
    if short:
        return (f"not judged: measured phase under {MIN_JUDGED_PHASE_SECONDS:g} s ({', '.join(short)}), "
                "too short for a sustained rate; run without --quick")
    return ok


def targets(r: dict) -> dict:
    out = {}
    ratios = r.get("ratios", {})
    if "vs_naive" in ratios:
        out["ge_10x_naive"] = ratio_verdict(r, "naive", ratios["vs_naive"] >= 10)
        out["ge_half_ceiling"] = ratio_verdict(r, "ceiling", ratios["vs_ceiling"] >= 0.5)
    p99 = (r.get("latency_s") or {}).get("fixed_rate", {}).get("p99")
    out["p99_latency_lt_1s_at_half_max"] = (p99 < 1.0) if p99 is not None else None
    mem = r.get("memory") or {}
    n, peak = mem.get("entities") or 0, mem.get("peak_rss_bytes")
    if n >= 100_000 and peak:
        out["entities_100k_within_2GiB"] = peak <= 2 * 2 ** 30  # the worker process's VmHWM
    else:
        out["entities_100k_within_2GiB"] = (
            f"not measured at {n:,} entities: --entities 100000 --hours 0.55 --duration 0 "
            f"--no-references --no-offline measures it (the worker's peak RSS)")
    return out
