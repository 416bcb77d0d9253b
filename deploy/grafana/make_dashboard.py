#!/usr/bin/env python3
"""Writes dashboards/ultramem.json, the Grafana dashboard of UltraMem Serve.

    python3 deploy/grafana/make_dashboard.py      # after editing the panels below

Every query names only metrics of docs/PROCESSES.md (tests/deploy_check.sh checks it)."""
import json
import os

DS = {"type": "prometheus", "uid": "prometheus"}
panels = []
_id = [0]
_y = [0]


def row(title):
    _id[0] += 1
    panels.append({"type": "row", "title": title, "id": _id[0], "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": _y[0]}, "panels": []})
    _y[0] += 1


_x = [0]


def panel(title, targets, unit="short", kind="timeseries", w=8, h=8, description="", extra=None):
    _id[0] += 1
    if _x[0] + w > 24:
        _x[0] = 0
        _y[0] += h
    p = {
        "type": kind, "title": title, "id": _id[0], "datasource": DS, "description": description,
        "gridPos": {"h": h, "w": w, "x": _x[0], "y": _y[0]},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}} if kind == "timeseries" else {},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                    for i, (e, l) in enumerate(targets)],
    }
    if extra:
        p.update(extra)
    panels.append(p)
    _x[0] += w


def end_row():
    _x[0] = 0
    _y[0] += 8


def q(metric, quantile, by=""):
    by_clause = "le" + (", " + by if by else "")
    return "histogram_quantile(%s, sum by (%s) (rate(%s_bucket[$__rate_interval])))" % (
        quantile, by_clause, metric)


# ---- gateway ----
row("Gateway (public endpoint)")
panel("Requests / s by status code",
      [("sum by (code) (rate(ultramem_gateway_requests_total[$__rate_interval]))", "{{code}}")], "reqps")
panel("Gateway latency", [(q("ultramem_gateway_request_latency_seconds", 0.5), "p50"),
                          (q("ultramem_gateway_request_latency_seconds", 0.95), "p95"),
                          (q("ultramem_gateway_request_latency_seconds", 0.99), "p99")], "s")
panel("Gateway time to first token", [(q("ultramem_gateway_time_to_first_token_seconds", 0.5), "p50"),
                                      (q("ultramem_gateway_time_to_first_token_seconds", 0.95), "p95")], "s")
end_row()
panel("In flight", [("sum(ultramem_gateway_requests_in_flight)", "in flight")])
panel("Backends (healthy, known)", [("min(ultramem_gateway_backends_healthy)", "healthy"),
                                    ("max(ultramem_gateway_backends_known)", "known")], kind="stat")
panel("Requests / s by backend",
      [("sum by (backend) (rate(ultramem_gateway_backend_requests_total[$__rate_interval]))", "{{backend}}")],
      "reqps")
end_row()

# ---- compute ----
row("Compute nodes (serving)")
panel("Time to first token", [(q("ultramem_time_to_first_token_seconds", 0.5), "p50"),
                              (q("ultramem_time_to_first_token_seconds", 0.95), "p95"),
                              (q("ultramem_time_to_first_token_seconds", 0.99), "p99")], "s")
panel("Inter-token latency", [(q("ultramem_inter_token_latency_seconds", 0.5), "p50"),
                              (q("ultramem_inter_token_latency_seconds", 0.95), "p95")], "s")
panel("End-to-end request latency", [(q("ultramem_e2e_request_latency_seconds", 0.5), "p50"),
                                     (q("ultramem_e2e_request_latency_seconds", 0.95), "p95")], "s")
end_row()
panel("Requests running / waiting", [("sum(ultramem_requests_running)", "running"),
                                     ("sum(ultramem_requests_waiting)", "waiting")])
panel("Tokens / s", [("sum(rate(ultramem_prompt_tokens_total[$__rate_interval]))", "prompt"),
                     ("sum(rate(ultramem_generation_tokens_total[$__rate_interval]))", "generation")])
panel("KV cache", [("max by (instance) (ultramem_kv_cache_usage_ratio)", "usage {{instance}}")],
      "percentunit")
end_row()
panel("Finished requests / s by reason",
      [("sum by (finish_reason) (rate(ultramem_requests_finished_total[$__rate_interval]))",
        "{{finish_reason}}")], "reqps")
panel("Request errors / s by code",
      [("sum by (code) (rate(ultramem_request_errors_total[$__rate_interval]))", "{{code}}")], "reqps")
panel("Mean latency (from _sum / _count)",
      [("sum(rate(ultramem_e2e_request_latency_seconds_sum[$__rate_interval])) / "
        "sum(rate(ultramem_e2e_request_latency_seconds_count[$__rate_interval]))", "e2e mean"),
       ("sum(rate(ultramem_time_to_first_token_seconds_sum[$__rate_interval])) / "
        "sum(rate(ultramem_time_to_first_token_seconds_count[$__rate_interval]))", "TTFT mean")], "s")
end_row()
panel("KV cache bytes", [("sum by (instance) (ultramem_kv_cache_bytes)", "{{instance}}")], "bytes")
end_row()

# ---- compute -> memory ----
row("Compute → memory shards (client side)")
panel("Lookup latency p95 by shard",
      [(q("ultramem_memory_client_lookup_latency_seconds", 0.95, "shard"), "{{shard}}")], "s")
panel("Retries, hedges, failures / s by shard",
      [("sum by (shard) (rate(ultramem_memory_client_retries_total[$__rate_interval]))", "retries {{shard}}"),
       ("sum by (shard) (rate(ultramem_memory_client_hedges_total[$__rate_interval]))", "hedges {{shard}}"),
       ("sum by (shard) (rate(ultramem_memory_client_failures_total[$__rate_interval]))", "failures {{shard}}")])
panel("Share of lookup time the engine waited",
      [("sum(rate(ultramem_memory_wait_seconds_total[$__rate_interval])) / "
        "sum(rate(ultramem_memory_lookup_seconds_total[$__rate_interval]))", "waited / lookup time"),
       (q("ultramem_memory_wait_seconds", 0.95), "wait p95 (s)")], "short",
      description="How much of the memory lookup time was not hidden behind the dense blocks.")
end_row()

# ---- memory servers ----
row("Memory servers")
panel("Lookup latency p95 by instance",
      [(q("ultramem_memory_lookup_latency_seconds", 0.95, "instance"), "{{instance}}")], "s")
panel("Rows served / s by tier",
      [("sum by (tier) (rate(ultramem_memory_rows_served_total[$__rate_interval]))", "{{tier}}")])
panel("Hot-tier hit ratio", [("ultramem_memory_hot_hit_ratio", "{{instance}}")], "percentunit")
end_row()
panel("Hot tier bytes / capacity", [("sum by (instance) (ultramem_memory_hot_bytes)", "used {{instance}}"),
                                    ("sum by (instance) (ultramem_memory_hot_capacity_bytes)",
                                     "capacity {{instance}}")], "bytes")
panel("RocksDB read latency p95",
      [(q("ultramem_memory_rocksdb_read_latency_seconds", 0.95, "instance"), "{{instance}}")], "s")
panel("In flight and errors / s",
      [("sum by (instance) (ultramem_memory_requests_in_flight)", "in flight {{instance}}"),
       ("sum by (instance, code) (rate(ultramem_memory_errors_total[$__rate_interval]))",
        "errors {{code}} {{instance}}")])
end_row()
panel("Stores served", [("ultramem_memory_store_info", "")], kind="table", w=24, h=6,
      extra={"targets": [{"datasource": DS, "expr": "ultramem_memory_store_info", "format": "table",
                          "instant": True, "refId": "A"}]})

dashboard = {
    "uid": "ultramem-serve", "title": "UltraMem Serve", "tags": ["ultramem"], "timezone": "browser",
    "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1, "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"}, "templating": {"list": []}, "annotations": {"list": []},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "ultramem.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
print("wrote", out, "with", sum(1 for p in panels if p["type"] != "row"), "panels")
