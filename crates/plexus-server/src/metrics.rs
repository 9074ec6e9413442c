//! Prometheus metrics: the recorder, the `/metrics` listener and HTTP API timings.
//!
//! Counters and gauges are recorded where the work happens through the `metrics` facade (the hub
//! in `plexus-core` keeps per-app handles; the WebSocket endpoint counts frames and bytes). This
//! module installs the Prometheus recorder once per process and serves its text on a separate
//! listener, with the `process_*` family (CPU, memory, file descriptors, threads, start time)
//! read from the OS at each scrape. Without a recorder (tests that embed the server) every metric
//! is a no-op.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::MetricsConfig;

/// Latency buckets (seconds) for the HTTP API: sub-millisecond publishes up to slow queries.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Installs the global recorder and serves `GET /metrics` on `config.host:config.port`.
/// Returns the bound address.
pub async fn start(config: &MetricsConfig) -> anyhow::Result<SocketAddr> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    // Webhook health per endpoint (issue 18): described beside the code that records it.
    crate::webhooks::health::describe_metrics();
    let process = metrics_process::Collector::default();
    process.describe();
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
    let addr = listener.local_addr()?;
    let router = Router::new().route("/metrics", get(move || render(handle.clone(), process.clone())));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "metrics listener stopped");
        }
    });
    Ok(addr)
}

async fn render(handle: PrometheusHandle, process: metrics_process::Collector) -> String {
    // Read at scrape time, so the figures are as fresh as the scrape and cost nothing between.
    process.collect();
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("plexus_connections", "Open connections (WebSocket and event streams)");
    describe_counter!("plexus_connections_opened_total", "Connections accepted into an app");
    describe_counter!("plexus_connections_closed_total", "Connections that left an app, for whatever reason");
    describe_gauge!("plexus_subscriptions", "Channel subscriptions held by open connections");
    describe_gauge!("plexus_channels_occupied", "Channels with at least one subscriber");
    describe_counter!(
        "plexus_events_published_total",
        "Events fanned out (HTTP API and client events), per channel"
    );
    describe_counter!("plexus_messages_delivered_total", "Event frames queued to subscribers");
    describe_counter!(
        "plexus_slow_consumer_closes_total",
        "Connections closed with 4100 because their queue overflowed"
    );
    describe_counter!("plexus_ws_frames_received_total", "WebSocket messages received from clients");
    describe_counter!("plexus_ws_bytes_sent_total", Unit::Bytes, "Bytes written to WebSocket clients");
    describe_counter!(
        "plexus_ws_bytes_received_total",
        Unit::Bytes,
        "Message payload bytes received from WebSocket clients (after unmasking, without frame headers)"
    );
    describe_counter!(
        "plexus_http_received_bytes_total",
        Unit::Bytes,
        "Request body bytes declared by Content-Length on HTTP API requests"
    );
    describe_counter!(
        "plexus_http_sent_bytes_total",
        Unit::Bytes,
        "Response body bytes the HTTP API answered with (streams such as SSE are not counted)"
    );
    describe_counter!(
        "plexus_connections_refused_total",
        "Connections refused at the handshake, by close code"
    );
    describe_counter!(
        "plexus_rate_limited_total",
        "Requests and connections refused by [server.rate_limits], by limit"
    );
    describe_gauge!("plexus_open_sockets", "Accepted TCP sockets open now (HTTP and WebSocket)");
    describe_counter!(
        "plexus_sockets_refused_total",
        "Sockets refused over [server] max_connections or max_connections_per_ip, by limit"
    );
    describe_counter!(
        "plexus_http_timeouts_total",
        "HTTP connections closed for taking too long, by phase (tls_handshake, request_header)"
    );
    describe_counter!(
        "plexus_request_bodies_refused_total",
        "HTTP API bodies refused because the budget of bodies in flight was spent, by limit"
    );
    describe_gauge!("plexus_sse_streams", "Open server-sent event streams");
    describe_counter!(
        "plexus_webhook_events_accepted_total",
        "Webhook events written to the durable queue, per app"
    );
    describe_counter!(
        "plexus_webhook_events_dropped_total",
        "Webhook events dropped because the app's queue was full, per app"
    );
    describe_counter!(
        "plexus_webhook_events_coalesced_total",
        "Webhook events cancelled with their pair (a channel or member that came and went), per app"
    );
    describe_histogram!(
        "plexus_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP API request latency by route and status"
    );
}

/// Middleware: times every HTTP request under its route pattern (never the raw path, which would
/// make one series per channel name).
pub async fn record_http(request: Request, next: Next) -> Response {
    use axum::body::HttpBody as _;
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let declared_length = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    if route != "/app/{key}" {
        metrics::counter!("plexus_http_received_bytes_total").increment(declared_length.unwrap_or(0));
        if let Some(sent) = response.body().size_hint().exact() {
            metrics::counter!("plexus_http_sent_bytes_total").increment(sent);
        }
        let status = response.status().as_u16().to_string();
        metrics::histogram!("plexus_http_request_duration_seconds", "route" => route, "status" => status)
            .record(started.elapsed().as_secs_f64());
    }
    response
}
