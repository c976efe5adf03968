//! Progress bars that appear only when an operation takes longer than a
//! second, on stderr, and only when stderr is a terminal (indicatif hides
//! them otherwise), so scripts and tests see clean output.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long an operation runs before its progress bar appears.
const SHOW_AFTER: Duration = Duration::from_secs(1);
/// How often a visible bar is redrawn without being advanced.
const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// A progress bar or spinner that shows itself after [`SHOW_AFTER`]; it is
/// cleared when dropped.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    stop: Option<mpsc::Sender<()>>,
    timer: Option<thread::JoinHandle<()>>,
}

impl Progress {
    /// A bar over `total` bytes.
    pub fn bytes(total: u64, prefix: &str) -> Progress {
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:24}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        Progress::start(ProgressBar::new(total).with_style(style), prefix)
    }

    /// A bar over `total` items.
    pub fn count(total: u64, prefix: &str) -> Progress {
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:24}] {human_pos}/{human_len} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        Progress::start(ProgressBar::new(total).with_style(style), prefix)
    }

    /// A spinner for work of unknown length.
    pub fn spinner(prefix: &str) -> Progress {
        let style = ProgressStyle::with_template("{spinner} {prefix} {elapsed} {msg}")
            .expect("valid template");
        Progress::start(ProgressBar::new_spinner().with_style(style), prefix)
    }

    fn start(bar: ProgressBar, prefix: &str) -> Progress {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        bar.set_prefix(prefix.to_owned());
        let (stop, stopped) = mpsc::channel::<()>();
        let shown = bar.clone();
        let timer = thread::Builder::new()
            .name("millpond-progress".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(SHOW_AFTER) {
                    shown.set_draw_target(ProgressDrawTarget::stderr());
                    shown.enable_steady_tick(TICK_INTERVAL);
                    let _ = stopped.recv();
                }
            })
            .ok();
        Progress {
            bar,
            stop: Some(stop),
            timer,
        }
    }

    /// Advances the bar.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the position.
    pub fn set_position(&self, n: u64) {
        self.bar.set_position(n);
    }

    /// Sets the text after the bar.
    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
        self.bar.finish_and_clear();
    }
}
