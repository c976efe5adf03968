//! What every connection shares: the tubes, the limits, the counters, and
//! the `stats` bodies built from them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::Config;
use crate::proto::{OP_COUNT, Op};
use crate::tubes::{Registry, Tube};

/// Bytes of the header the server stores before each job body: TTR and
/// put delay (seconds, u32 little-endian each), then the put sequence
/// (u64 little-endian).
pub const JOB_HEADER_BYTES: usize = 16;

/// Encodes a job's stored header.
pub fn job_header(ttr_s: u32, delay_s: u32, put_seq: u64) -> [u8; JOB_HEADER_BYTES] {
    let mut h = [0u8; JOB_HEADER_BYTES];
    h[..4].copy_from_slice(&ttr_s.to_le_bytes());
    h[4..8].copy_from_slice(&delay_s.to_le_bytes());
    h[8..].copy_from_slice(&put_seq.to_le_bytes());
    h
}

/// The put sequence of a stored payload (0 without a header): orders
/// jobs of different tubes by when they were put, as beanstalkd's single
/// id counter does.
pub fn put_seq(p: &[u8]) -> u64 {
    match p.get(8..JOB_HEADER_BYTES) {
        Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
        None => 0,
    }
}

/// Splits a stored payload into (ttr seconds, put delay seconds, body).
/// A payload too short for the header (not written by the server) is all
/// body, with a TTR of 120 s.
pub fn split_payload(p: &[u8]) -> (u32, u32, &[u8]) {
    if p.len() < JOB_HEADER_BYTES {
        return (120, 0, p);
    }
    let ttr = u32::from_le_bytes(p[..4].try_into().expect("4 bytes"));
    let delay = u32::from_le_bytes(p[4..8].try_into().expect("4 bytes"));
    (ttr.max(1), delay, &p[JOB_HEADER_BYTES..])
}

/// Unix time, ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The shared state.
#[derive(Debug)]
pub struct Broker {
    /// The tubes.
    pub tubes: Registry,
    /// Limits.
    pub config: Config,
    /// Commands by op.
    pub ops: [AtomicU64; OP_COUNT],
    /// Error replies sent.
    pub errors: AtomicU64,
    /// Jobs inserted since start.
    pub puts_total: AtomicU64,
    /// Jobs deleted since start.
    pub deletes_total: AtomicU64,
    /// Reservations that ran out of time (seen by their connection).
    pub timeouts: AtomicU64,
    /// Open connections.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused for the connection limit.
    pub connections_refused: AtomicU64,
    /// Connections that have put.
    pub producers: AtomicU64,
    /// Connections that have reserved.
    pub workers: AtomicU64,
    /// Connections waiting in reserve.
    pub waiting: AtomicU64,
    /// Set on SIGUSR1 or shutdown: `put` answers `DRAINING`.
    pub draining: AtomicBool,
    /// The last put sequence handed out.
    put_seq: AtomicU64,
    next_connection_id: AtomicU64,
    started: Instant,
    instance: String,
}

impl Broker {
    /// A broker over `tubes`.
    pub fn new(tubes: Registry, config: Config) -> Broker {
        let seed = unix_ms() ^ (u64::from(std::process::id()) << 32);
        Broker {
            tubes,
            config,
            ops: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: AtomicU64::new(0),
            puts_total: AtomicU64::new(0),
            deletes_total: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            producers: AtomicU64::new(0),
            workers: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            put_seq: AtomicU64::new(0),
            next_connection_id: AtomicU64::new(1),
            started: Instant::now(),
            instance: format!("{:016x}", mix(seed)),
        }
    }

    /// The next put sequence: unix time in ns, made strictly increasing, so
    /// it also grows across restarts (unless the clock goes back).
    pub fn next_put_seq(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut prev = self.put_seq.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.put_seq.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// A new connection id.
    pub fn connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts one command.
    pub fn count(&self, op: Op) {
        self.ops[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The body of `stats`.
    pub fn stats_yaml(&self) -> String {
        let tubes: Vec<Arc<Tube>> = self.tubes.all();
        let (mut ready, mut reserved, mut delayed, mut buried, mut live) = (0, 0, 0, 0, 0);
        for t in &tubes {
            if let Ok(s) = t.group.stats() {
                ready += s.ready;
                reserved += s.reserved;
                delayed += s.delayed;
                buried += s.buried;
            }
            if t.is_live() {
                live += 1;
            }
        }
        let op = |o: Op| self.ops[o as usize].load(Ordering::Relaxed);
        let (utime, stime) = rusage();
        let mut s = String::with_capacity(1500);
        let _ = write!(
            s,
            "---\ncurrent-jobs-urgent: {urgent}\ncurrent-jobs-ready: {ready}\n\
             current-jobs-reserved: {reserved}\ncurrent-jobs-delayed: {delayed}\n\
             current-jobs-buried: {buried}\n",
            urgent = 0,
        );
        for (name, o) in [
            ("cmd-put", Op::Put),
            ("cmd-peek", Op::Peek),
            ("cmd-peek-ready", Op::PeekReady),
            ("cmd-peek-delayed", Op::PeekDelayed),
            ("cmd-peek-buried", Op::PeekBuried),
            ("cmd-reserve", Op::Reserve),
            ("cmd-reserve-with-timeout", Op::ReserveWithTimeout),
            ("cmd-delete", Op::Delete),
            ("cmd-release", Op::Release),
            ("cmd-use", Op::Use),
            ("cmd-watch", Op::Watch),
            ("cmd-ignore", Op::Ignore),
            ("cmd-bury", Op::Bury),
            ("cmd-kick", Op::Kick),
            ("cmd-touch", Op::Touch),
            ("cmd-stats", Op::Stats),
            ("cmd-stats-job", Op::StatsJob),
            ("cmd-stats-tube", Op::StatsTube),
            ("cmd-list-tubes", Op::ListTubes),
            ("cmd-list-tube-used", Op::ListTubeUsed),
            ("cmd-list-tubes-watched", Op::ListTubesWatched),
            ("cmd-pause-tube", Op::PauseTube),
        ] {
            let _ = writeln!(s, "{name}: {}", op(o));
        }
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = write!(
            s,
            "job-timeouts: {}\ntotal-jobs: {}\nmax-job-size: {}\ncurrent-tubes: {}\n\
             current-connections: {}\ncurrent-producers: {}\ncurrent-workers: {}\n\
             current-waiting: {}\ntotal-connections: {}\npid: {}\nversion: \"{}\"\n\
             rusage-utime: {}.{:06}\nrusage-stime: {}.{:06}\nuptime: {}\n\
             binlog-oldest-index: 0\nbinlog-current-index: 0\n\
             binlog-records-migrated: 0\nbinlog-records-written: 0\n\
             binlog-max-size: 0\ndraining: {}\nid: {}\nhostname: {}\nos: {}\n\
             platform: {}\n",
            ld(&self.timeouts),
            ld(&self.puts_total),
            self.config.max_job_bytes,
            live,
            ld(&self.connections),
            ld(&self.producers),
            ld(&self.workers),
            ld(&self.waiting),
            ld(&self.connections_total),
            std::process::id(),
            concat!("millpond ", env!("CARGO_PKG_VERSION")),
            utime / 1_000_000,
            utime % 1_000_000,
            stime / 1_000_000,
            stime % 1_000_000,
            self.started.elapsed().as_secs(),
            self.draining.load(Ordering::Relaxed),
            self.instance,
            proc_text("/proc/sys/kernel/hostname"),
            // uname's version, as beanstalkd 1.12 prints it.
            proc_text("/proc/sys/kernel/version"),
            std::env::consts::ARCH,
        );
        s
    }

    /// The body of `stats-tube`.
    pub fn tube_yaml(&self, t: &Tube) -> String {
        let s = t.group.stats().unwrap_or_default();
        let now = Instant::now();
        let (pause_s, left_s) = match *t.paused.lock().expect("pause lock") {
            Some((until, d)) if until > now => (d.as_secs(), (until - now).as_secs()),
            _ => (0, 0),
        };
        let ld = |a: &std::sync::atomic::AtomicU32| a.load(Ordering::Relaxed);
        format!(
            "---\nname: {}\ncurrent-jobs-urgent: 0\ncurrent-jobs-ready: {}\n\
             current-jobs-reserved: {}\ncurrent-jobs-delayed: {}\ncurrent-jobs-buried: {}\n\
             total-jobs: {}\ncurrent-using: {}\ncurrent-watching: {}\ncurrent-waiting: {}\n\
             cmd-delete: {}\ncmd-pause-tube: {}\npause: {}\npause-time-left: {}\n",
            t.name,
            s.ready,
            s.reserved,
            s.delayed,
            s.buried,
            s.pushed_total,
            ld(&t.using),
            ld(&t.watching),
            ld(&t.waiting),
            t.deletes.load(Ordering::Relaxed),
            t.pauses.load(Ordering::Relaxed),
            pause_s,
            left_s,
        )
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x.wrapping_mul(0xc4ce_b9fe_1a85_ec53) ^ (x >> 33)
}

fn proc_text(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// User and system CPU time of this process, µs, from `/proc/self/stat`
/// (clock ticks of 10 ms); zeros where that is not available.
fn rusage() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0, 0);
    };
    // Fields after the command name (which may hold spaces) in parens.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return (0, 0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 10_000;
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12
    // after the state field.
    (tick(11), tick(12))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_header_round_trips() {
        let mut p = job_header(30, 5, 77).to_vec();
        p.extend_from_slice(b"body");
        assert_eq!(split_payload(&p), (30, 5, &b"body"[..]));
        assert_eq!(put_seq(&p), 77);
        assert_eq!(put_seq(b"short"), 0);
        assert_eq!(split_payload(b"abc"), (120, 0, &b"abc"[..]));
    }
}
