//! Measuring: the clock events carry, latency samples and their percentiles, error tallies by
//! reason, the bench's own CPU use and a process's resident memory.
//!
//! Everything here is cheap on the hot path: a latency is one `u32` pushed onto a vector, an error
//! is a map increment on a rare path. Sorting and summarising happen once, at the end of a run.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the first call in this process: the timestamp embedded in every event.
/// Publisher and receivers live in the same process, so one monotonic clock serves both.
pub fn clock_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Microseconds elapsed since a timestamp taken with [`clock_us`] (0 if it lies in the future).
pub fn since_us(stamp_us: u64) -> u64 {
    clock_us().saturating_sub(stamp_us)
}

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    us: Vec<u32>,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Self {
        Latencies { us: Vec::with_capacity(n) }
    }

    pub fn record_us(&mut self, us: u64) {
        self.us.push(us.min(u32::MAX as u64) as u32);
    }

    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros() as u64);
    }

    pub fn merge(&mut self, other: Latencies) {
        if self.us.is_empty() {
            self.us = other.us;
        } else {
            self.us.extend_from_slice(&other.us);
        }
    }

    pub fn len(&self) -> usize {
        self.us.len()
    }

    /// Percentiles in milliseconds: `{samples, mean, p50, p90, p99, p999, max}` (values are null
    /// when there are no samples).
    pub fn summary(mut self) -> Value {
        self.us.sort_unstable();
        let s = &self.us;
        let ms = |v: Option<u32>| v.map(|us| round3(us as f64 / 1000.0));
        let mean = if s.is_empty() {
            None
        } else {
            Some(round3(s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64 / 1000.0))
        };
        json!({
            "samples": s.len(),
            "mean": mean,
            "p50": ms(percentile(s, 50.0)),
            "p90": ms(percentile(s, 90.0)),
            "p99": ms(percentile(s, 99.0)),
            "p999": ms(percentile(s, 99.9)),
            "max": ms(s.last().copied()),
        })
    }
}

/// Nearest-rank percentile of sorted samples: the smallest value with at least `p`% of the
/// samples at or below it.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    // The epsilon keeps float noise (99.9 / 100 * 1000 = 999.0000000000001) from adding a rank.
    let rank = (p * sorted.len() as f64 / 100.0 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Rounds to three decimals for output.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Error counts by reason (`"connect_refused"`, `"http_401"`, `"pusher_error_4301"`, …).
#[derive(Debug, Default, Clone)]
pub struct Errors(BTreeMap<String, u64>);

impl Errors {
    pub fn add(&mut self, reason: impl Into<String>) {
        self.add_n(reason, 1);
    }

    pub fn add_n(&mut self, reason: impl Into<String>, n: u64) {
        if n > 0 {
            *self.0.entry(reason.into()).or_default() += n;
        }
    }

    pub fn merge(&mut self, other: Errors) {
        for (reason, n) in other.0 {
            self.add_n(reason, n);
        }
    }

    pub fn to_json(&self) -> Value {
        json!(self.0)
    }
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/{pid}/stat` (`None` =
/// this process).
///
/// Assumes the kernel's `USER_HZ` of 100, which is what Linux exports on every common
/// architecture.
pub fn process_cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_cpu_secs(&std::fs::read_to_string(path).ok()?)
}

fn parse_cpu_secs(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Wall time and a process's CPU time since a starting point; CPU as a fraction of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: Option<u32>,
    wall: Instant,
    cpu: Option<f64>,
}

impl CpuMeter {
    /// Measures this process.
    pub fn start() -> Self {
        Self::start_for(None)
    }

    /// Measures process `pid` (`None` = this process).
    pub fn start_for(pid: Option<u32>) -> Self {
        CpuMeter { pid, wall: Instant::now(), cpu: process_cpu_secs(pid) }
    }

    pub fn wall_secs(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }

    /// CPU seconds used since the start divided by wall seconds (1.0 = one core saturated);
    /// `None` when the process cannot be read.
    pub fn fraction(&self) -> Option<f64> {
        let wall = self.wall_secs();
        let cpu = process_cpu_secs(self.pid)? - self.cpu?;
        Some(if wall > 0.0 { round3(cpu / wall) } else { 0.0 })
    }
}

/// `VmRSS` of a process in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&status, "VmRSS:")
}

/// The bench's own peak resident memory (`VmHWM`) in KiB.
pub fn own_peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_field_kib(&status, "VmHWM:")
}

fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&s, 50.0), Some(50));
        assert_eq!(percentile(&s, 90.0), Some(90));
        assert_eq!(percentile(&s, 99.0), Some(99));
        assert_eq!(percentile(&s, 99.9), Some(100));
        assert_eq!(percentile(&s, 100.0), Some(100));
        assert_eq!(percentile(&s, 0.0), Some(1));
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        let s: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&s, 99.9), Some(999));
    }

    #[test]
    fn summary_is_in_milliseconds() {
        let mut l = Latencies::default();
        for us in [1000, 2000, 3000, 4000] {
            l.record_us(us);
        }
        let s = l.summary();
        assert_eq!(s["samples"], 4);
        assert_eq!(s["p50"], 2.0);
        assert_eq!(s["max"], 4.0);
        assert_eq!(s["mean"], 2.5);
        assert!(Latencies::default().summary()["p50"].is_null());
    }

    #[test]
    fn cpu_fields_are_found_after_the_command_name() {
        let stat = "1234 (a) b c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1";
        assert_eq!(parse_cpu_secs(stat), Some(3.0));
        assert!(process_cpu_secs(None).is_some());
        assert!(CpuMeter::start().fraction().is_some());
    }

    #[test]
    fn status_fields_parse() {
        let status = "Name:\tplexus\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(2048));
    }

    #[test]
    fn errors_merge_by_reason() {
        let mut a = Errors::default();
        a.add("x");
        let mut b = Errors::default();
        b.add_n("x", 2);
        b.add("y");
        b.add_n("z", 0);
        a.merge(b);
        assert_eq!(a.to_json(), json!({"x": 3, "y": 1}));
    }
}
