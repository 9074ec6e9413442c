//! Micro-benchmarks of the hot path: codec, compression, SSE rendering, signatures, fan-out, presence. Run with
//! `cargo bench -p plexus-realtime-core`; CI only builds them (`--no-run`), they never assert a time.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use plexus_protocol::codec::{self, Data, ServerEvent};
use plexus_protocol::{signature, ChannelName};
use plexus_realtime_core::hub::presence::Presence;
use plexus_realtime_core::hub::AppHub;
use plexus_realtime_core::webhook::{WebhookEvent, WebhookSink};
use plexus_realtime_core::App;

#[derive(Debug)]
struct NoWebhooks;

impl WebhookSink for NoWebhooks {
    fn submit(&self, _: &str, _: WebhookEvent) {}
}

fn codec_benches(c: &mut Criterion) {
    let subscribe = r#"{"event":"pusher:subscribe","data":{"channel":"presence-room","auth":"278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80","channel_data":"{\"user_id\":10,\"user_info\":{\"name\":\"Mr. Channels\"}}"}}"#;
    let client_event = r#"{"event":"client-typing","channel":"private-chat","data":{"on":true,"who":"ann"}}"#;
    c.bench_function("decode subscribe", |b| b.iter(|| codec::decode_client_frame(black_box(subscribe))));
    c.bench_function("decode client event", |b| {
        b.iter(|| codec::decode_client_frame(black_box(client_event)))
    });
    let data = "x".repeat(100);
    c.bench_function("encode 100-byte event frame", |b| {
        b.iter(|| {
            ServerEvent::new("tick").channel(black_box("room")).data(Data::Str(black_box(&data))).to_frame()
        })
    });
    // What permessage-deflate costs per event (once per event, whatever the subscriber count).
    let rows: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"symbol":"SYM{i}","bid":{}.{},"ask":{}.{},"venue":"XNAS","ts":17650{i}3321}}"#,
                100 + i * 7,
                i * 13 % 100,
                101 + i * 7,
                i * 17 % 100
            )
        })
        .collect();
    let quote = format!("[{}]", rows.join(","));
    let frame = ServerEvent::new("quote").channel("prices").data(Data::Str(&quote)).to_frame();
    c.bench_function(&format!("compress a {}-byte event frame", frame.len()), |b| {
        b.iter(|| plexus_protocol::deflate::compress_frame(black_box(&frame)))
    });
    // What an SSE stream's form of an event costs (once per event, whatever the stream count).
    c.bench_function(&format!("render a {}-byte event frame as a server-sent event", frame.len()), |b| {
        b.iter(|| plexus_protocol::sse::event_from_frame(black_box(&frame)))
    });
}

fn signature_benches(c: &mut Criterion) {
    let sts = "1234.1234:private-foobar";
    let token = signature::auth_token("278d425bdf160c739803", "7ad3773142a6692b25b8", sts);
    c.bench_function("verify channel auth token", |b| {
        b.iter(|| {
            signature::verify_auth_token(
                "278d425bdf160c739803",
                "7ad3773142a6692b25b8",
                black_box(sts),
                black_box(&token),
            )
        })
    });
    let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    let query = signature::sign_api_query("k", "s", "POST", "/apps/3/events", body, 1_353_088_179, &[]);
    let params: Vec<(String, String)> = query
        .split('&')
        .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).unwrap())
        .collect();
    c.bench_function("verify HTTP API request", |b| {
        b.iter(|| {
            let request =
                signature::ApiRequest { method: "POST", path: "/apps/3/events", params: &params, body };
            request.verify("k", "s", 1_353_088_179)
        })
    });
}

fn fanout_benches(c: &mut Criterion) {
    let app = App::new("1", "k", "s");
    let channel = ChannelName::parse("room").unwrap();
    for subscribers in [100usize, 2_000] {
        let hub = AppHub::new("1", Arc::new(NoWebhooks));
        let connections: Vec<_> = (0..subscribers)
            .map(|_| {
                let conn = hub.connect(&app, usize::MAX).unwrap();
                hub.subscribe(&app, &conn, &channel, None).unwrap();
                conn
            })
            .collect();
        let frame = ServerEvent::new("tick").channel("room").data(Data::Str(&"x".repeat(100))).to_frame();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        c.bench_function(&format!("publish to {subscribers} queues"), |b| {
            b.iter_batched(
                || {
                    // Empty the queues outside the timed part so they do not grow without bound.
                    runtime.block_on(async {
                        let mut sink = Vec::new();
                        for conn in &connections {
                            if !conn.outbound.is_empty() {
                                conn.outbound.drain_into(&mut sink).await;
                                sink.clear();
                            }
                        }
                    })
                },
                |_| hub.publish_frame(&app, "room", &frame, None),
                BatchSize::SmallInput,
            )
        });
    }
}

fn presence_benches(c: &mut Criterion) {
    c.bench_function("presence join+leave among 100 members", |b| {
        let mut presence = Presence::default();
        for i in 0..100 {
            presence.join(&i.to_string(), Some(r#"{"name":"x"}"#));
        }
        b.iter(|| {
            presence.join(black_box("new-user"), Some(r#"{"name":"y"}"#));
            presence.leave(black_box("new-user"))
        })
    });
    c.bench_function("presence snapshot of 100 members", |b| {
        let mut presence = Presence::default();
        for i in 0..100 {
            presence.join(&i.to_string(), Some(r#"{"name":"x"}"#));
        }
        b.iter(|| presence.snapshot_json())
    });
}

criterion_group!(benches, codec_benches, signature_benches, fanout_benches, presence_benches);
criterion_main!(benches);
