//! The batcher: takes events from the per-app queues, coalesces pairs, holds vacate events back,
//! writes what it accepted to the store, and turns each batch window into jobs.
//!
//! One task. Each wake-up takes a bounded share from every app with events (round robin, so a
//! flooding app cannot starve the others), applies them to the in-memory state, and commits the
//! difference to the store in one transaction (group commit): new events, events gone (cancelled
//! or made into jobs), new jobs. Only then are the new jobs handed to delivery and the events
//! counted as accepted. The hub never waits on any of this: while a commit runs, events collect
//! in the per-app queues.
//!
//! Rules, per app and channel, in the order events were submitted:
//! - a `channel_vacated` whose `channel_occupied` is still in the batch window cancels with it
//!   (the channel lived for milliseconds); likewise `member_removed` with its `member_added`
//!   (same user and channel). Other events of the channel in between are kept.
//! - otherwise `channel_vacated` and `member_removed` are held for `vacate_delay_ms`; a
//!   `channel_occupied` / `member_added` of the same channel (and user) meanwhile cancels with
//!   the held event (a quick return, as Pusher does).
//! - any other event of a channel releases what is held for that channel first, so per-channel
//!   order is the submission order.
//! - an event submitted late (held by a cluster's leader gate while no node led) takes part in
//!   no pair: events released together say nothing about how long apart they happened. (After
//!   a crash, the reload replays it as an ordinary event.)

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use plexus_core::webhook::WebhookEvent;
use plexus_core::AppStore;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::delivery::Deliveries;
use super::intake::{AppQueue, Queued, Signal, WebhookDispatcher};
use super::store::{Changes, Job, JobStore, StoreError, StoredEvent};
use super::{now_ms, WebhooksConfig};

/// Most events one app gives per wake-up: its share of a round.
const APP_SHARE: usize = 1024;
/// Most events taken in per wake-up, across apps: bounds one commit.
const WAKE_BUDGET: usize = 8192;

/// An accepted event.
struct Entry {
    seq: u64,
    app: Arc<AppQueue>,
    event: WebhookEvent,
    /// Held elsewhere before it came (a cluster's leader gate): it takes part in no pair.
    late: bool,
}

/// An app's channel.
type ChannelKey = (Arc<str>, String);

/// What cancels with a later closing event: an opening event in the batch window.
#[derive(Debug, PartialEq, Eq, Hash)]
enum PairKey {
    Channel(Arc<str>, String),
    Member(Arc<str>, String, String),
}

impl PairKey {
    /// The key of an opening (`opens`) or closing event; `None` for other events.
    fn of(app: &Arc<str>, event: &WebhookEvent) -> Option<(PairKey, bool)> {
        match event {
            WebhookEvent::ChannelOccupied { channel } => {
                Some((PairKey::Channel(app.clone(), channel.clone()), true))
            }
            WebhookEvent::ChannelVacated { channel } => {
                Some((PairKey::Channel(app.clone(), channel.clone()), false))
            }
            WebhookEvent::MemberAdded { channel, user_id } => {
                Some((PairKey::Member(app.clone(), channel.clone(), user_id.clone()), true))
            }
            WebhookEvent::MemberRemoved { channel, user_id } => {
                Some((PairKey::Member(app.clone(), channel.clone(), user_id.clone()), false))
            }
            _ => None,
        }
    }
}

/// Whether `held` is the closing event that `opening` (occupied / member added) cancels.
fn closes(held: &WebhookEvent, opening: &WebhookEvent) -> bool {
    match (held, opening) {
        (WebhookEvent::ChannelVacated { channel: a }, WebhookEvent::ChannelOccupied { channel: b }) => a == b,
        (
            WebhookEvent::MemberRemoved { channel: a, user_id: u },
            WebhookEvent::MemberAdded { channel: b, user_id: v },
        ) => a == b && u == v,
        _ => false,
    }
}

/// A held-back event and when it is due.
struct Held {
    entry: Entry,
    due: Instant,
}

/// Where an event comes from.
enum Origin {
    /// Just taken from its app's queue: written in this wake-up's commit.
    Fresh,
    /// Reloaded from the store at start; `hold_until` is what is left of its hold (`None`: over).
    Stored { hold_until: Option<Instant> },
}

pub(super) struct Batcher {
    config: WebhooksConfig,
    apps: Arc<dyn AppStore>,
    store: Arc<JobStore>,
    deliveries: Arc<Deliveries>,
    /// Events in the batch window, in the order they go out; `None` where one was cancelled.
    pending: Vec<Option<Entry>>,
    /// The `Some`s in `pending`.
    live: usize,
    /// Where each opening event still in the window sits in `pending`.
    open: HashMap<PairKey, usize>,
    batch_due: Option<Instant>,
    /// Held-back events by sequence number; due times grow with it.
    held: BTreeMap<u64, Held>,
    /// The held events of each channel, oldest first.
    held_on: HashMap<ChannelKey, Vec<u64>>,
    /// What this wake-up changes on disk.
    changes: Changes,
    next_seq: u64,
    next_job_id: u64,
}

impl Batcher {
    pub(super) fn new(
        config: WebhooksConfig,
        apps: Arc<dyn AppStore>,
        store: Arc<JobStore>,
        deliveries: Arc<Deliveries>,
        next_job_id: u64,
    ) -> Batcher {
        Batcher {
            config,
            apps,
            store,
            deliveries,
            pending: Vec::new(),
            live: 0,
            open: HashMap::new(),
            batch_due: None,
            held: BTreeMap::new(),
            held_on: HashMap::new(),
            changes: Changes::default(),
            next_seq: 1,
            next_job_id,
        }
    }

    /// Takes back the events a previous run accepted but had not made into jobs, in the order
    /// they were accepted: held ones are held until their original due time (released now if it
    /// has passed), the others join the batch window. Replaying them through the same rules
    /// rebuilds the state they were in.
    pub(super) fn reload(&mut self, dispatcher: &Arc<WebhookDispatcher>, events: Vec<(u64, StoredEvent)>) {
        let (now, wall) = (Instant::now(), now_ms());
        let delay = self.config.vacate_delay_ms;
        for (seq, stored) in events {
            self.next_seq = self.next_seq.max(seq + 1);
            let hold_until = stored.hold_until_ms.and_then(|due_ms| {
                // Clamped to one delay from now, so a clock set back cannot hold an event longer.
                let left = due_ms.saturating_sub(wall).min(delay);
                (left > 0).then(|| now + Duration::from_millis(left))
            });
            let entry =
                Entry { seq, app: dispatcher.queue(&stored.app_id), event: stored.event, late: false };
            self.accept(entry, Origin::Stored { hold_until });
        }
        // Replaying could only cancel pairs the previous run would have cancelled; whatever it
        // changed is written with the first commit.
    }

    pub(super) async fn run(mut self, mut signals: mpsc::UnboundedReceiver<Signal>) {
        // Apps with events, in round-robin order.
        let mut ready: std::collections::VecDeque<Arc<AppQueue>> = Default::default();
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut taken: Vec<Queued> = Vec::new();
        let mut closed = false;
        // The first round commits what the reload changed.
        let mut work = true;
        loop {
            if !ready.is_empty() || !flushes.is_empty() || work || closed {
                // Busy (an app with more than one share waiting, say): let the hub's tasks run
                // before the next round even when this one had nothing to commit.
                tokio::task::yield_now().await;
            } else {
                let wake = match (self.batch_due, self.held.first_key_value().map(|(_, h)| h.due)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                tokio::select! {
                    signal = signals.recv() => match signal {
                        Some(Signal::Ready(queue)) => ready.push_back(queue),
                        Some(Signal::Flush(done)) => flushes.push(done),
                        None => closed = true,
                    },
                    () = sleep_until_some(wake) => {}
                }
            }
            work = false;
            loop {
                match signals.try_recv() {
                    Ok(Signal::Ready(queue)) => ready.push_back(queue),
                    Ok(Signal::Flush(done)) => flushes.push(done),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }

            // A flush (shutdown) takes everything queued; otherwise each ready app gives up to
            // its share, within the wake-up's budget.
            let draining = !flushes.is_empty() || closed;
            let mut budget = if draining { usize::MAX } else { WAKE_BUDGET };
            let mut accepted: Vec<(Arc<AppQueue>, u64)> = Vec::new();
            for _ in 0..ready.len() {
                if budget == 0 {
                    break;
                }
                let queue = ready.pop_front().expect("counted");
                // Draining, one queue's worth per round: a queue still filling (an app flooding
                // through shutdown) cannot keep the batcher in one round.
                let share = if draining { queue.capacity() } else { APP_SHARE.min(budget) };
                queue.unschedule();
                taken.clear();
                let n = queue.take(share, &mut taken);
                budget -= n;
                for Queued { event, late } in taken.drain(..) {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.accept(Entry { seq, app: queue.clone(), event, late }, Origin::Fresh);
                }
                if n > 0 {
                    accepted.push((queue.clone(), n as u64));
                }
                if n == share && queue.reschedule() {
                    // More than one share waiting: back at the end of the round.
                    ready.push_back(queue);
                }
            }

            let now = Instant::now();
            while self.held.first_key_value().is_some_and(|(_, h)| h.due <= now) {
                let (_, held) = self.held.pop_first().expect("checked");
                self.unindex_held(&held.entry);
                self.push(held.entry);
            }
            let drained = draining && ready.is_empty();
            if drained {
                self.release_all();
            }
            if drained
                || self.batch_due.is_some_and(|due| due <= now)
                || self.live >= self.config.max_batch_events
            {
                self.flush();
            }
            self.commit(accepted).await;
            if drained {
                for done in flushes.drain(..) {
                    let _ = done.send(());
                }
                if closed {
                    return;
                }
            }
        }
    }

    fn accept(&mut self, entry: Entry, origin: Origin) {
        let app_id = entry.app.app_id.clone();
        let fresh = matches!(origin, Origin::Fresh);
        let pair = if entry.late { None } else { PairKey::of(&app_id, &entry.event) };
        match pair {
            Some((key, false)) => {
                // Closing: its opening event still in the batch window means neither is sent.
                if let Some(index) = self.open.remove(&key) {
                    let opening = self.pending[index].take().expect("indexed events are live");
                    self.live -= 1;
                    self.changes.forget(opening.seq);
                    if !fresh {
                        self.changes.forget(entry.seq);
                    }
                    entry.app.counters.coalesced(2);
                    return;
                }
                let hold_until = match origin {
                    Origin::Fresh if self.config.vacate_delay_ms > 0 => {
                        let delay = self.config.vacate_delay_ms;
                        self.record(&entry, Some(now_ms() + delay));
                        Some(Instant::now() + Duration::from_millis(delay))
                    }
                    Origin::Fresh => None,
                    Origin::Stored { hold_until } => hold_until,
                };
                if let Some(due) = hold_until {
                    let channel = (app_id, entry.event.channel().to_owned());
                    self.held_on.entry(channel).or_default().push(entry.seq);
                    self.held.insert(entry.seq, Held { entry, due });
                    return;
                }
            }
            Some((_, true)) => {
                // Opening: a held closing event of the same channel (and user) is a quick return.
                let channel = (app_id.clone(), entry.event.channel().to_owned());
                let partner = self.held_on.get(&channel).and_then(|seqs| {
                    seqs.iter().copied().find(|seq| closes(&self.held[seq].entry.event, &entry.event))
                });
                if let Some(seq) = partner {
                    let held = self.held.remove(&seq).expect("indexed events are held");
                    self.unindex_held(&held.entry);
                    self.changes.forget(seq);
                    if !fresh {
                        self.changes.forget(entry.seq);
                    }
                    entry.app.counters.coalesced(2);
                    return;
                }
            }
            None => {}
        }
        // Per-channel order: anything still held for this channel goes out first.
        if let Some(seqs) = self.held_on.remove(&(app_id, entry.event.channel().to_owned())) {
            for seq in seqs {
                let held = self.held.remove(&seq).expect("indexed events are held");
                self.push(held.entry);
            }
        }
        if fresh {
            self.record(&entry, None);
        }
        self.push(entry);
    }

    /// Writes a fresh event with this wake-up's commit.
    fn record(&mut self, entry: &Entry, hold_until_ms: Option<u64>) {
        self.changes.insert.insert(
            entry.seq,
            StoredEvent { app_id: entry.app.app_id.to_string(), event: entry.event.clone(), hold_until_ms },
        );
    }

    fn unindex_held(&mut self, entry: &Entry) {
        let channel = (entry.app.app_id.clone(), entry.event.channel().to_owned());
        if let Some(seqs) = self.held_on.get_mut(&channel) {
            seqs.retain(|&seq| seq != entry.seq);
            if seqs.is_empty() {
                self.held_on.remove(&channel);
            }
        }
    }

    fn release_all(&mut self) {
        self.held_on.clear();
        while let Some((_, held)) = self.held.pop_first() {
            self.push(held.entry);
        }
    }

    /// Adds an event to the batch window.
    fn push(&mut self, entry: Entry) {
        if self.batch_due.is_none() {
            self.batch_due = Some(Instant::now() + Duration::from_millis(self.config.batch_window_ms));
        }
        if let Some((key, true)) = PairKey::of(&entry.app.app_id, &entry.event).filter(|_| !entry.late) {
            self.open.insert(key, self.pending.len());
        }
        self.pending.push(Some(entry));
        self.live += 1;
    }

    /// Turns the batch window into one job per app endpoint (and per `max_batch_events`); the
    /// events leave the store and the jobs enter it in the same commit.
    fn flush(&mut self) {
        self.batch_due = None;
        self.open.clear();
        self.live = 0;
        let events: Vec<Entry> = std::mem::take(&mut self.pending).into_iter().flatten().collect();
        if events.is_empty() {
            return;
        }
        for entry in &events {
            self.changes.forget(entry.seq);
        }
        let created_ms = now_ms();
        let mut apps_seen: Vec<&Arc<str>> = Vec::new();
        for entry in &events {
            if !apps_seen.contains(&&entry.app.app_id) {
                apps_seen.push(&entry.app.app_id);
            }
        }
        for app_id in apps_seen {
            let Some(app) = self.apps.by_id(app_id) else { continue };
            for target in &app.webhooks {
                let selected: Vec<serde_json::Value> = events
                    .iter()
                    .filter(|e| e.app.app_id == *app_id && target.events.contains(&e.event.kind()))
                    .map(|e| e.event.to_json())
                    .collect();
                for chunk in selected.chunks(self.config.max_batch_events.max(1)) {
                    let body = json!({"time_ms": created_ms, "events": chunk}).to_string();
                    self.changes.jobs.push(Job {
                        id: self.next_job_id,
                        app_id: app.id.clone(),
                        url: target.url.clone(),
                        body,
                        created_ms,
                    });
                    self.next_job_id += 1;
                }
            }
        }
    }

    /// Writes this wake-up's changes in one transaction, then counts the accepted events and
    /// hands the new jobs to delivery.
    async fn commit(&mut self, accepted: Vec<(Arc<AppQueue>, u64)>) {
        let changes = Arc::new(std::mem::take(&mut self.changes));
        let outcome = if changes.is_empty() {
            Ok(())
        } else {
            let (store, to_write) = (self.store.clone(), changes.clone());
            match tokio::task::spawn_blocking(move || store.commit(&to_write)).await {
                Ok(outcome) => outcome.map_err(CommitError::Store),
                Err(error) => Err(CommitError::Task(error)),
            }
        };
        match outcome {
            Ok(()) => {
                for (queue, n) in accepted {
                    queue.counters.accepted(n);
                }
            }
            Err(error) => {
                tracing::error!(%error, "webhook events and jobs not persisted; delivering from memory only")
            }
        }
        // The blocking task has finished (or unwound), so this is the only reference left.
        let jobs = Arc::into_inner(changes).map(|changes| changes.jobs).unwrap_or_default();
        for job in jobs {
            self.deliveries.enqueue(job);
        }
    }
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
enum CommitError {
    #[error(transparent)]
    Store(StoreError),
    #[error("webhook store task failed: {0}")]
    Task(tokio::task::JoinError),
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
