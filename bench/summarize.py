#!/usr/bin/env python3
"""Median of the headline figures of each scenario over its runs; for `hostile` runs, a readable
report of each run (honest figures without and with attackers, the server's descriptors and
memory, what each attack got, the targets)."""
import json
import statistics
import sys

FIGURES = {
    "broadcast": ["deliveries_per_sec", "delivery_secs", "latency_ms.p50", "latency_ms.p99",
                  "latency_ms.max", "loss", "bench_cpu_measure", "server_cpu_measure"],
    "fanout": ["publish_rate_achieved", "latency_ms.p50", "latency_ms.p90", "latency_ms.p99",
               "latency_ms.p999", "latency_ms.max", "loss", "duplicates", "reordered",
               "bench_cpu_measure", "server_cpu_measure"],
    "connections": ["connections_subscribed", "connect_latency_ms.p50", "connect_latency_ms.p99",
                    "connect_latency_ms.max", "server_rss.per_connection_bytes",
                    "server_rss.with_all_open_kib", "server_rss.after_close_kib", "bench_cpu_ramp",
                    "server_cpu_ramp"],
    "client-events": ["send_rate_achieved", "latency_ms.p50", "latency_ms.p99", "latency_ms.max",
                      "loss", "events_rejected", "bench_cpu_measure", "server_cpu_measure"],
    "publish": ["requests_per_sec", "latency_ms.p50", "latency_ms.p99", "latency_ms.max",
                "bench_cpu_measure", "server_cpu_measure"],
}


def get(obj, path):
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def hostile_report(r):
    """Readable summary of one `plexus-bench hostile` result line."""
    out = []
    b, a = r.get("baseline") or {}, r.get("attacked") or {}
    hb, ha = b.get("honest") or {}, a.get("honest") or {}
    out.append(f"# hostile: {fmt(r.get('subscribers_ready'))} honest subscribers, "
               f"{fmt(get(r, 'parameters.attackers'))} attackers for {fmt(get(r, 'parameters.duration_secs'))} s")
    out.append(f"{'honest (app A)':34}{'baseline':>28}{'attacked':>28}")
    rows = [
        ("latency p50 / p99 / max ms", lambda h: f"{fmt(get(h, 'latency_ms.p50'))} / {fmt(get(h, 'latency_ms.p99'))} / {fmt(get(h, 'latency_ms.max'))}"),
        ("events published / accepted", lambda h: f"{fmt(h.get('events_published'))} / {fmt(h.get('events_accepted'))}"),
        ("deliveries expected", lambda h: fmt(h.get("deliveries_expected"))),
        ("lost / duplicated / reordered", lambda h: f"{fmt(h.get('lost'))} / {fmt(h.get('duplicates'))} / {fmt(h.get('reordered'))}"),
        ("publishes refused", lambda h: fmt(h.get("publish_refused"))),
        ("subscribers disconnected", lambda h: fmt(h.get("disconnected"))),
    ]
    for label, f in rows:
        out.append(f"  {label:32}{f(hb):>28}{f(ha):>28}")
    pb, pa = b.get("presence_b") or {}, a.get("presence_b") or {}
    for kind in ("member_added", "member_removed"):
        f = lambda p: f"{fmt(get(p, f'webhooks.{kind}.received'))} of {fmt(get(p, f'webhooks.{kind}.expected'))}"
        out.append(f"  {'B ' + kind + ' webhooks':32}{f(pb):>28}{f(pa):>28}")
    f = lambda p: f"{fmt(get(p, 'join_latency_ms.p50'))} / {fmt(get(p, 'join_latency_ms.p99'))}"
    out.append(f"  {'B join p50 / p99 ms':32}{f(pb):>28}{f(pa):>28}")
    f = lambda p: fmt(sum((p.get("join_failures") or {}).values()))
    out.append(f"  {'B join failures':32}{f(pb):>28}{f(pa):>28}")
    f = lambda ph: f"{fmt(get(ph, 'health_probe.ok'))} ok, {fmt(sum((get(ph, 'health_probe.failed') or {}).values()))} failed"
    out.append(f"  {'GET /health probes':32}{f(b):>28}{f(a):>28}")
    f = lambda ph: f"{fmt(ph.get('server_cpu'))} / {fmt(ph.get('bench_cpu'))}"
    out.append(f"  {'cpu server / bench':32}{f(b):>28}{f(a):>28}")
    f = lambda ph: f"{fmt(ph.get('server_cpu_wait'))} / {fmt(ph.get('bench_cpu_wait'))}"
    out.append(f"  {'waiting for a cpu server / bench':32}{f(b):>28}{f(a):>28}")
    load = r.get("load_average") or {}
    out.append(f"machine     load average at start {load.get('start')}, at end {load.get('end')}")
    s = r.get("server") or {}
    out.append("server      " + "  ".join(
        f"{k}: {fmt(get(s, k + '.fds'))} fds, {fmt(get(s, k + '.rss_kib'))} KiB"
        for k in ("initial", "before", "during_max", "after")))
    out.append(f"            after the attack, descriptors back after {fmt(s.get('fds_back_after_secs'))} s, "
               f"memory after {fmt(s.get('rss_back_after_secs'))} s (waited at most {fmt(s.get('settle_limit_secs'))} s)")
    log = r.get("server_log") or {}
    if log:
        out.append(f"server log  panics: {fmt(log.get('panics'))} {log.get('panic_sites') or ''}  "
                   f"forged lines: {fmt(log.get('forged_lines'))}  WARN: {fmt(log.get('warn'))}  "
                   f"ERROR: {fmt(log.get('error'))}  alive at end: {fmt(log.get('alive_at_end'))}")
    m = r.get("server_metrics_at_end") or {}
    if m:
        out.append("metrics     " + ", ".join(f"{k} {fmt(v)}" for k, v in sorted(m.items())
                                              if not k.startswith("plexus_connections ")))
    wa, wb = r.get("webhooks_a") or {}, r.get("webhooks_b") or {}
    out.append(f"webhooks    A: {fmt(wa.get('requests'))} requests {wa.get('events') or {}}, bad signatures {fmt(wa.get('bad_signature'))}; "
               f"B: {fmt(wb.get('requests'))} requests, bad signatures {fmt(wb.get('bad_signature'))}, duplicates {fmt(wb.get('duplicates'))}")
    out.append("attacks     (outcome: count; reaction p50/max ms; what a hardened server does)")
    for name, t in (r.get("attacks") or {}).items():
        outcomes = sorted((t.get("outcomes") or {}).items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k}: {v}" for k, v in outcomes[:4]) + (" …" if len(outcomes) > 4 else "")
        extra = {**(t.get("counters") or {}), **(t.get("maxima") or {})}
        extra_s = ("  " + ", ".join(f"{k} {v}" for k, v in extra.items())) if extra else ""
        out.append(f"  {name:24} {fmt(t.get('runs')):>6} runs  {shown}")
        out.append(f"  {'':24} {'':>6}       {fmt(get(t, 'reaction_ms.p50'))}/{fmt(get(t, 'reaction_ms.max'))} ms{extra_s}  | expect: {t.get('expect')}")
    if r.get("attacks_skipped"):
        out.append(f"  skipped: {', '.join(r['attacks_skipped'])}")
    out.append("targets     " + ", ".join(f"{k}: {fmt(v)}" for k, v in (r.get("targets") or {}).items()))
    if r.get("errors"):
        out.append(f"errors      {r['errors']}")
    return "\n".join(out)


runs = {}
with open(sys.argv[1]) as f:
    for line in f:
        row = json.loads(line)
        runs.setdefault(row["name"], []).append(row["result"])

print("\n# median over runs", file=sys.stderr)
for name, results in runs.items():
    if results[0].get("scenario") == "hostile":
        for r in results:
            print(hostile_report(r))
        continue
    figures = FIGURES.get(results[0].get("scenario"), [])
    summary = {"name": name, "runs": len(results)}
    for fig in figures:
        values = [v for v in (get(r, fig) for r in results) if isinstance(v, (int, float))]
        summary[fig] = statistics.median(values) if values else None
    errors = {}
    for r in results:
        for reason, n in (r.get("errors") or {}).items():
            errors[reason] = errors.get(reason, 0) + n
    summary["errors_total"] = errors
    print(json.dumps({"summary": summary}))
