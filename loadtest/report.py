"""Outputs of a load-test run: the JSON report, a markdown summary beside it, PNG plots."""
from __future__ import annotations

import json
import math
from pathlib import Path


def _f(v, fmt="{:,.0f}", none="–"):
    return none if v is None else fmt.format(v)


def _down(x: float) -> str:
    """``x`` to two decimals, rounded down: a ratio just under a target never reads as reaching it
    (9.952 is 9.95, not 10.0)."""
    return f"{math.floor(x * 100 + 1e-9) / 100:.2f}"  # (1e-9: 0.29 * 100 is 28.999999999999996)


def _path(c: dict) -> str:
    """How the service's worker ran: co-partitioned (no internal topic) or through the hop."""
    env = c.get("worker_env") or {}
    copart = str(env.get("STREAM_COPARTITIONED_INPUT", c.get("copartitioned", False))).lower() in ("true", "1", "yes", "on")
    if copart:
        return ("Service path: co-partitioned input (`STREAM_COPARTITIONED_INPUT=true`): the input is keyed by "
                "collector batch, each entity stays on one partition, and the worker detects where it reads.")
    return ("Service path: re-partitioned (`STREAM_COPARTITIONED_INPUT=false`, `--repartition`): every sample "
            "goes through the internal topic to its entity's partition.")


def markdown(r: dict, plots: list[str]) -> str:
    c = r["config"]
    svc, ceil, naive = r.get("service", {}), r.get("ceiling") or {}, r.get("naive") or {}
    fr = r.get("fixed_rate") or {}
    lat, det, mem, rat = r.get("latency_s", {}), r.get("detection", {}), r.get("memory", {}), r.get("ratios", {})
    lines = [
        f"# Load test {c['tag']}{' (--quick)' if c.get('quick') else ''}",
        "",
        f"{c['entities']:,} entities × {c['metrics']} metrics, {c.get('batch', 1)} entities' scrapes "
        f"({c.get('batch', 1) * c['metrics']} samples) per message "
        f"(every {c['step']:g} s of event time), {c['hours']:g} h of event time replayed; spec `loadtest` "
        f"(`group_by: [entity]`), {c['partitions']} partitions, one worker, {c.get('cores')} cores (shared). "
        f"Run took {r.get('wall_seconds', 0):.0f} s.",
        "",
        _path(c),
        "",
        "| system | samples/s | messages/s | seconds to catch up | produce seconds | CPU µs per sample "
        "| warm-up seconds | warm-up CPU µs per sample |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    r1 = svc.get("offered_rate_messages_per_s")
    p1name = f"service (phase 1, {r1:,.0f} msgs/s offered)" if r1 else "service (max rate)"
    for name, d in ((p1name, svc), ("ceiling (read + decode)", ceil), ("naive (Faust + river HST)", naive)):
        if d:
            lines.append(f"| {name} | {_f(d.get('samples_per_s'))} | {_f(d.get('messages_per_s'))} | "
                         f"{_f(d.get('seconds'), '{:.1f}')} | {_f(d.get('produce_seconds'), '{:.1f}')} | "
                         f"{_f(d.get('cpu_us_per_sample'), '{:.1f}')} | {_f((d.get('warmup') or {}).get('seconds'), '{:.1f}')} | "
                         f"{_f((d.get('warmup') or {}).get('cpu_us_per_sample'), '{:.1f}')} |")
    if fr:
        lines.append(f"| service (phase 2, fixed rate {_f(fr.get('offered_rate_messages_per_s'))} msgs/s) | "
                     f"{_f(fr.get('samples_per_s'))} | {_f(fr.get('messages_per_s'))} | {_f(fr.get('seconds'), '{:.1f}')} | "
                     f"{_f(fr.get('produce_seconds'), '{:.1f}')} | {_f(fr.get('cpu_us_per_sample'), '{:.1f}')} | – | – |")
    lines += ["", "CPU µs per sample: the process's own CPU time (user + system) over the phase, per sample; "
              "unlike samples/s it does not move with the other load on the shared cores.", ""]
    w = svc.get("warmup")
    if w:
        lines += [f"Warm-up: each system first processed the same first {w['messages']:,} messages "
                  f"({w['samples']:,} samples, {c.get('warmup', 0):.0%} of the scrapes) unmeasured — series, "
                  "entities and models are created there (the naive pipeline builds a river HalfSpaceTrees per "
                  "series) — so samples/s above is the sustained rate; the warm-up columns are the start-up "
                  "cost.", ""]
    if rat:
        vc, vn = rat["vs_ceiling"], rat["vs_naive"]
        tg = r.get("targets") or {}

        def verdict(key, ok):
            v = tg.get(key, ok)
            return "not judged (a measured phase under 2 s: not a sustained rate)" if isinstance(v, str) else (
                "met" if v else "not met")

        lines.append(f"**Ratios:** service / ceiling = **{_down(vc)}** (target ≥ 0.5: {verdict('ge_half_ceiling', vc >= 0.5)}), "
                     f"service / naive = **{_down(vn)}×** (target ≥ 10×: {verdict('ge_10x_naive', vn >= 10)}).")
        if ceil.get("bound_by_producer"):
            lines.append("The ceiling kept up with the producer: its figure is a lower bound (the producer was the limit).")
        lines.append("")
    fx, mx = lat.get("fixed_rate", {}), lat.get("max_rate", {})
    lines += [
        "**Alert latency** (window closable → alert appended on the alerts topic), seconds:",
        "",
        "| phase | alerts | p50 | p95 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|",
        f"| phase 2: fixed rate ({_f(fr.get('offered_rate_messages_per_s'))} msgs/s offered) | {fx.get('n', 0)} | {_f(fx.get('p50'), '{:.3f}')} | {_f(fx.get('p95'), '{:.3f}')} | "
        f"{_f(fx.get('p99'), '{:.3f}')} | {_f(fx.get('max'), '{:.3f}')} |",
        f"| phase 1: {'%s msgs/s offered' % _f(r1) if r1 else 'max rate (backlog)'} | {mx.get('n', 0)} | {_f(mx.get('p50'), '{:.3f}')} | {_f(mx.get('p95'), '{:.3f}')} | "
        f"{_f(mx.get('p99'), '{:.3f}')} | {_f(mx.get('max'), '{:.3f}')} |",
        "",
        f"**Detection** ({det.get('injections', 0)} injections, tolerance ±{det.get('tolerance_s', 0):g} s): "
        f"precision **{_f(det.get('precision'), '{:.2f}')}** ({det.get('true_alerts', 0)} of {det.get('firing_alerts', 0)} "
        f"firing alerts match an injection; by kind {det.get('alerts_by_kind', {})}), "
        f"recall **{_f(det.get('recall'), '{:.2f}')}**.",
        "",
        "| injected kind | injected | detected | recall |",
        "|---|---:|---:|---:|",
    ]
    for k, v in det.get("per_kind", {}).items():
        lines.append(f"| {k} | {v['injected']} | {v['detected']} | {_f(v.get('recall'), '{:.2f}')} |")
    d1, off = det.get("max_rate_phase"), r.get("detection_engine_offline")
    if d1 and off:
        lines += [
            "",
            "Same phase-1 data (max-rate replay, phase-1 injections only), service vs the engine alone "
            "(`stream.detect.engine.Detector` in-process, no Kafka):",
            "",
            "| | firing alerts | precision | recall | " + " | ".join(d1["per_kind_recall"]) + " |",
            "|---|---:|---:|---:|" + "---:|" * len(d1["per_kind_recall"]),
        ]
        for name, d in (("service", d1), ("engine alone", off)):
            lines.append(f"| {name} | {d['firing_alerts']} | {_f(d.get('precision'), '{:.2f}')} | "
                         f"{_f(d.get('recall'), '{:.2f}')} | "
                         + " | ".join(_f(v, '{:.2f}') for v in d["per_kind_recall"].values()) + " |")
    wc = mem.get("worker_counters") or {}
    late = sum(v for k, v in wc.items() if 'outcome="late"' in k)
    proc = sum(v for k, v in wc.items() if 'outcome="processed"' in k)
    if proc:
        lines += ["", f"The worker counted **{late:,.0f} late samples** of {proc:,.0f} processed "
                      f"({100 * late / proc:.1f} %): samples arriving after their window was already closed."]
    commits, spent = wc.get("stream_state_write_seconds_count"), wc.get("stream_state_write_seconds_sum")
    if commits:
        lines += ["", f"**State writes** (worker, whole run): {commits:,.0f} commits wrote "
                      f"{wc.get('stream_state_writes_total', 0):,.0f} state records (an entity: one, two when a window closed), {spent / commits:.3f} s per commit "
                      "on average, the detect agent held meanwhile (`stream_state_write_seconds`)."]
    gc_n = {g: wc.get(f'stream_gc_pause_seconds_count{{generation="{g}"}}') for g in "012"}
    if any(gc_n.values()):
        gc_s = sum(wc.get(f'stream_gc_pause_seconds_sum{{generation="{g}"}}', 0.0) for g in "012")
        lines += ["", f"**Garbage collector** (worker, whole run): {gc_s:.2f} s in "
                      + ", ".join(f"{gc_n[g] or 0:,.0f}" for g in "012")
                      + " collections of generations 0, 1, 2 (`stream_gc_pause_seconds`, `STREAM_GC_THRESHOLD`)."]
    lines += [
        "",
        f"**Memory** (worker): peak RSS {mem.get('peak_rss_bytes', 0) / 2**20:,.0f} MiB (idle ready worker "
        f"{mem.get('rss_idle_bytes', 0) / 2**20:,.0f} MiB) → {_f(mem.get('bytes_per_entity'))} bytes per entity "
        f"over {c['entities']:,} entities"
        + (f"; RSS after the run {mem['rss_end_bytes'] / 2**20:,.0f} MiB → {_f(mem.get('bytes_per_entity_at_end'))} "
           "bytes per entity held" if mem.get("rss_end_bytes") else "")
        + f"; serialized state {_f(mem.get('serialized_state_bytes_per_entity'))} bytes "
        "per entity (100k entities in 2 GiB: `entities_100k_within_2GiB` under Targets; the engine alone: "
        "`benchmarks/bench_entities.py`)."
        + (f" Peak RSS of the references: ceiling {(ceil.get('rss_peak_bytes') or 0) / 2**20:,.0f} MiB, "
           f"naive {(naive.get('rss_peak_bytes') or 0) / 2**20:,.0f} MiB." if ceil and naive else ""),
        "",
        "**Targets:** " + ", ".join(f"{k}: {v}" for k, v in r.get("targets", {}).items()),
        "",
    ]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plots(r: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = out.with_suffix("")
    names = []
    systems = [(k, r[k]) for k in ("service", "ceiling", "naive") if r.get(k)]

    # throughput over time: cumulative samples committed (slope = throughput) and a 3 s rate
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    fr = r.get("fixed_rate")
    curves = list(systems)
    if fr and fr.get("timeseries"):
        curves.append(("service, fixed rate", fr))
    for name, d in curves:
        ts = d.get("timeseries") or []
        if not ts:
            continue
        m = d["samples"] / max(1, d["messages"])  # samples per message (batched: entities x metrics)
        a1.plot([x[0] for x in ts], [x[1] * m for x in ts], label=name, lw=1.2)
        xs, ys, j = [], [], 0
        for i, x in enumerate(ts):  # rate over the trailing 3 s (Faust commits every 2.8 s)
            while ts[j][0] < x[0] - 3.0:
                j += 1
            if x[0] > ts[j][0]:
                xs.append(x[0])
                ys.append((x[1] - ts[j][1]) * m / (x[0] - ts[j][0]))
        a2.plot(xs, ys, label=name, lw=1)
    a1.set_xlabel("seconds since produce start")
    a1.set_ylabel("samples committed")
    a1.set_title("Committed samples (slope = throughput)")
    a1.legend()
    a2.set_xlabel("seconds since produce start")
    a2.set_ylabel("samples/s (trailing 3 s)")
    a2.set_yscale("symlog", linthresh=100)
    a2.set_title("Throughput over time")
    fig.tight_layout()
    p = Path(f"{stem}-throughput.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    names.append(p.name)

    # lag over time
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, d in systems:
        ts = d.get("timeseries") or []
        ax.plot([x[0] for x in ts], [x[3] for x in ts], label=name, lw=1)
    if fr and fr.get("timeseries"):
        ts = fr["timeseries"]
        ax.plot([x[0] for x in ts], [x[3] for x in ts], label="service, fixed rate", lw=1)
    ax.set_xlabel("seconds since produce start")
    ax.set_ylabel("lag (messages, input + internal)")
    ax.set_title("Consumer lag")
    ax.legend()
    fig.tight_layout()
    p = Path(f"{stem}-lag.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    names.append(p.name)

    # latency distribution and over time
    lat = r.get("latency_samples") or []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    import numpy as np

    allv = [max(x[1], 1e-3) for x in lat]
    bins = np.logspace(np.log10(min(allv)), np.log10(max(allv)) + 0.01, 40) if allv else 10
    for phase, label in ((2, "fixed rate"), (1, "max rate")):
        ys = [x[1] for x in lat if x[2] == phase]
        if ys:
            a1.hist([max(y, 1e-3) for y in ys], bins=bins, alpha=0.6, label=f"{label} (n={len(ys)})")
            a2.plot([x[0] for x in lat if x[2] == phase], ys, ".", ms=3, label=label)
    a1.set_xscale("log")
    a1.set_xlabel("alert latency (s, log)")
    a1.set_ylabel("alerts")
    a1.set_title("Alert latency distribution")
    a1.legend()
    a2.set_xlabel("window closable at (s since run start)")
    a2.set_ylabel("latency (s)")
    a2.set_yscale("symlog", linthresh=0.1)
    a2.set_title("Alert latency over time")
    a2.legend()
    fig.tight_layout()
    p = Path(f"{stem}-latency.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    names.append(p.name)
    return names


def write_outputs(r: dict, out: Path) -> None:
    out = Path(out)
    try:
        names = plots(r, out)
    except Exception as exc:  # noqa: BLE001 - the figures matter more than the pictures
        print(f"plots failed: {exc}")
        names = []
    r["plots"] = names
    out.write_text(json.dumps(r, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(r, names))
