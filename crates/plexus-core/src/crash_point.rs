//! Crash points: places where a crash test needs this process to die at one exact moment (the
//! history store took an event, but nothing was delivered yet). Started with
//! `PLEXUS_CRASH_POINT=<name>`, the process stops making progress at that point the first time
//! it gets there, and says so on stderr (`plexus stopped at crash point <name>`); the test waits
//! for that line and SIGKILLs it. Without the variable (any real deployment) a check is one
//! load of a value read once.

use std::sync::OnceLock;

/// A moment a crash test can stop this process at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// An event for the history store was accepted, and is about to be appended.
    BeforeHistoryAppend,
    /// The history store took an event, which is about to be delivered.
    AfterHistoryAppend,
}

impl CrashPoint {
    const ALL: [CrashPoint; 2] = [CrashPoint::BeforeHistoryAppend, CrashPoint::AfterHistoryAppend];

    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::BeforeHistoryAppend => "before-history-append",
            CrashPoint::AfterHistoryAppend => "after-history-append",
        }
    }
}

fn armed() -> Option<CrashPoint> {
    static ARMED: OnceLock<Option<CrashPoint>> = OnceLock::new();
    *ARMED.get_or_init(|| {
        let name = std::env::var("PLEXUS_CRASH_POINT").ok()?;
        let point = CrashPoint::ALL.into_iter().find(|point| point.name() == name);
        if point.is_none() {
            tracing::warn!(%name, "PLEXUS_CRASH_POINT names no crash point; ignored");
        }
        point
    })
}

/// Never returns when this process was started to stop at `point`; returns at once otherwise.
pub async fn reached(point: CrashPoint) {
    if armed() == Some(point) {
        eprintln!("plexus stopped at crash point {}", point.name());
        std::future::pending::<()>().await;
    }
}
