//! The server's health as the operating system sees it: open file descriptors
//! (`/proc/PID/fd`) and resident memory (`/proc/PID/status` VmRSS), sampled a few times a second
//! by one task that remembers the highest values since it was last asked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::stats::rss_kib;

/// Open descriptors of process `pid` (`None` when `/proc/PID/fd` cannot be read).
pub fn fd_count(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|entries| entries.count() as u64)
}

/// Seconds the threads of process `pid` (`None` = this process) have spent runnable but waiting
/// for a CPU: the second field of each `/proc/PID/task/TID/schedstat`, summed. On a shared
/// machine this tells a server that is slow because it works apart from one that is slow
/// because something else has its core. Threads that exited are no longer counted.
pub fn runqueue_wait_secs(pid: Option<u32>) -> Option<f64> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/task"),
        None => "/proc/self/task".to_owned(),
    };
    let mut total_ns = 0u64;
    for task in std::fs::read_dir(dir).ok()?.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total_ns += stat.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Some(total_ns as f64 / 1e9)
}

/// Waiting for a CPU as a fraction of wall time since a starting point.
#[derive(Debug, Clone, Copy)]
pub struct WaitMeter {
    pid: Option<u32>,
    wall: Instant,
    waited: Option<f64>,
}

impl WaitMeter {
    pub fn start(pid: Option<u32>) -> WaitMeter {
        WaitMeter { pid, wall: Instant::now(), waited: runqueue_wait_secs(pid) }
    }

    /// Seconds spent waiting for a CPU per second of wall time (summed over threads, so it can
    /// exceed 1 with several runnable threads).
    pub fn fraction(&self) -> Option<f64> {
        let waited = runqueue_wait_secs(self.pid)? - self.waited?;
        let wall = self.wall.elapsed().as_secs_f64();
        Some(if wall > 0.0 { (waited.max(0.0) / wall * 1000.0).round() / 1000.0 } else { 0.0 })
    }
}

/// The 1-, 5- and 15-minute load averages of the machine.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut v = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([v.next()??, v.next()??, v.next()??])
}

/// One reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub fds: Option<u64>,
    pub rss_kib: Option<u64>,
}

impl Sample {
    pub fn take(pid: Option<u32>) -> Sample {
        match pid {
            Some(pid) => Sample { fds: fd_count(pid), rss_kib: rss_kib(pid) },
            None => Sample::default(),
        }
    }

    fn max(self, other: Sample) -> Sample {
        Sample { fds: self.fds.max(other.fds), rss_kib: self.rss_kib.max(other.rss_kib) }
    }
}

/// Samples the server every `every` until dropped, keeping the maximum since the last
/// [`Sampler::take_max`].
#[derive(Debug)]
pub struct Sampler {
    pid: Option<u32>,
    max: Arc<Mutex<Sample>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: Option<u32>, every: Duration) -> Sampler {
        let max = Arc::new(Mutex::new(Sample::take(pid)));
        let (stop, mut stopped) = watch::channel(false);
        let task = pid.map(|_| {
            let max = max.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    let now = Sample::take(pid);
                    let mut m = max.lock().unwrap_or_else(|p| p.into_inner());
                    *m = m.max(now);
                }
            })
        });
        Sampler { pid, max, stop, task }
    }

    /// A reading now.
    pub fn now(&self) -> Sample {
        Sample::take(self.pid)
    }

    /// The highest values seen since the previous call (or the start), then starts over from now.
    pub fn take_max(&self) -> Sample {
        let now = self.now();
        let mut m = self.max.lock().unwrap_or_else(|p| p.into_inner());
        let seen = m.max(now);
        *m = now;
        seen
    }

    /// Waits (polling every 250 ms, until `until` at the latest) for the server's descriptors
    /// to come back to `before` + `fd_slack` and its RSS to `before` × `rss_factor`.
    pub async fn settle(&self, before: Sample, fd_slack: u64, rss_factor: f64, until: Instant) -> Settled {
        let start = Instant::now();
        let mut settled = Settled { last: self.now(), fds_back_after: None, rss_back_after: None };
        loop {
            let now = self.now();
            settled.last = now;
            let fds_back = match (now.fds, before.fds) {
                (Some(n), Some(b)) => n <= b + fd_slack,
                _ => true,
            };
            let rss_back = match (now.rss_kib, before.rss_kib) {
                (Some(n), Some(b)) => n as f64 <= b as f64 * rss_factor,
                _ => true,
            };
            // The first time each came back (descriptors may come back long before memory).
            if fds_back && settled.fds_back_after.is_none() {
                settled.fds_back_after = Some(start.elapsed());
            }
            if rss_back && settled.rss_back_after.is_none() {
                settled.rss_back_after = Some(start.elapsed());
            }
            if (fds_back && rss_back) || Instant::now() >= until {
                return settled;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// How the server came back after the attack.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    /// The last reading.
    pub last: Sample,
    /// When the descriptors were first back (`None`: not within the wait).
    pub fds_back_after: Option<Duration>,
    pub rss_back_after: Option<Duration>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `{"fds": …, "rss_kib": …}`.
pub fn sample_json(s: Sample) -> Value {
    json!({"fds": s.fds, "rss_kib": s.rss_kib})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_waits_and_load() {
        assert!(runqueue_wait_secs(None).is_some());
        assert!(WaitMeter::start(None).fraction().is_some());
        assert!(load_average().is_some());
    }

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        let s = Sample::take(Some(me));
        assert!(s.fds.unwrap() >= 3);
        assert!(s.rss_kib.unwrap() > 0);
        assert_eq!(Sample::take(None), Sample::default());
    }
}
