//! CPU time of a process, all its threads, from `/proc/<pid>/stat`
//! (Linux): user plus system time, in clock ticks.

use std::io;
use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`): fixed
/// at 100 by the Linux ABI on every architecture the project runs on, so
/// a resolution of 10 ms.
const TICKS_PER_SECOND: u64 = 100;

/// The CPU time (user plus system, every thread) of process `pid`, or of
/// this process for `None`.
///
/// # Errors
///
/// The process does not exist (or not on Linux); a stat line in another
/// layout than `proc(5)` documents.
pub fn cpu_time(pid: Option<u32>) -> io::Result<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {path}: {e}")))?;
    let ticks = ticks_of_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path} is not in the layout proc(5) documents: {text:?}"),
        )
    })?;
    Ok(Duration::from_millis(ticks * (1000 / TICKS_PER_SECOND)))
}

/// `utime + stime` of a stat line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are
/// counted after its last `)`: `utime` and `stime` are fields 14 and 15.
fn ticks_of_stat(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    731 269 0 0 20 0 3 0 123 4567 89 18446744073709551615";
        assert_eq!(ticks_of_stat(line), Some(1000));
        assert_eq!(ticks_of_stat("4242 (x) S 1 2"), None);
        assert_eq!(ticks_of_stat("no parentheses"), None);
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let before = cpu_time(None).unwrap();
        // Spin until the counter moves at least two ticks (on a busy
        // machine that may take longer than 20 ms of wall time).
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after < before + Duration::from_millis(20)
            && started.elapsed() < Duration::from_secs(20)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            after = cpu_time(None).unwrap();
        }
        assert!(
            after >= before + Duration::from_millis(20),
            "{before:?} -> {after:?}"
        );
        assert!(cpu_time(Some(std::process::id())).unwrap() >= after);
        assert_eq!(
            cpu_time(Some(u32::MAX)).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
