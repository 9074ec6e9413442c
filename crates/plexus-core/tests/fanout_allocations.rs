//! Regression guard for the hot path: fan-out allocates per event, never per subscriber.
//!
//! A counting global allocator makes this deterministic (no timing): after a warm-up that lets
//! every queue reach its working size, publishing one event to 1,000 subscribers may allocate
//! for the encoded frame only. This file holds a single test so no other test's allocations are
//! counted.
#![allow(unsafe_code)] // a GlobalAlloc impl is unsafe by definition; it only forwards to System.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use plexus_protocol::codec::{Data, ServerEvent};
use plexus_protocol::ChannelName;
use plexus_realtime_core::hub::AppHub;
use plexus_realtime_core::webhook::{WebhookEvent, WebhookSink};
use plexus_realtime_core::App;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug)]
struct NoWebhooks;

impl WebhookSink for NoWebhooks {
    fn submit(&self, _: &str, _: WebhookEvent) {}
}

fn count<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f();
    COUNTING.store(false, Ordering::SeqCst);
    (out, ALLOCATIONS.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "current_thread")]
async fn publishing_allocates_per_event_not_per_subscriber() {
    const SUBSCRIBERS: usize = 1_000;
    const EVENTS: usize = 50;
    let app = App::new("1", "k", "s");
    let hub = AppHub::new("1", Arc::new(NoWebhooks));
    let channel = ChannelName::parse("room").unwrap();
    let connections: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let c = hub.connect(&app, 1 << 20).unwrap();
            hub.subscribe(&app, &c, &channel, None).unwrap();
            c
        })
        .collect();
    let mut drained = Vec::with_capacity(EVENTS + 8);
    let data = "x".repeat(100);
    let encode = || ServerEvent::new("tick").channel("room").data(Data::Str(&data)).to_frame();

    // Warm-up: queues grow to the size a burst of EVENTS needs, then are drained.
    for _ in 0..EVENTS {
        hub.publish_frame(&app, "room", &encode(), None);
    }
    for c in &connections {
        drained.clear();
        c.outbound.drain_into(&mut drained).await;
    }
    drained.clear();

    let frames: Vec<_> = (0..EVENTS).map(|_| encode()).collect();
    let (delivered, fanout_allocations) =
        count(|| frames.iter().map(|f| hub.publish_frame(&app, "room", f, None)).sum::<usize>());
    assert_eq!(delivered, SUBSCRIBERS * EVENTS);
    // The first clone of a frame may turn its buffer into a shared one: at most one per event.
    assert!(
        fanout_allocations <= EVENTS,
        "{fanout_allocations} allocations for {delivered} deliveries: fan-out must not allocate per subscriber"
    );

    // The frame buffer, plus the refcount header `Bytes` puts beside a buffer with spare capacity.
    let (_, encode_allocations) = count(encode);
    assert!(encode_allocations <= 2, "encoding an event took {encode_allocations} allocations");
}
