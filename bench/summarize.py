#!/usr/bin/env python3
"""Median of the headline figures of each scenario over its runs."""
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


runs = {}
with open(sys.argv[1]) as f:
    for line in f:
        row = json.loads(line)
        runs.setdefault(row["name"], []).append(row["result"])

print("\n# median over runs", file=sys.stderr)
for name, results in runs.items():
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
