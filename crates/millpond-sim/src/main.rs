//! `millpond-sim`: runs the seeded fault simulator over a range of seeds
//! and prints what failed (with a one-line replay command) and the totals.

use std::ops::Range;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

/// Seeded whole-engine fault simulation of millpond: mixed workloads over
/// several queues and groups on a fault-injecting file system (power cuts,
/// EIO, ENOSPC, bit flips), checked against an oracle after every fault.
#[derive(Parser, Debug)]
#[command(name = "millpond-sim", version)]
struct Args {
    /// Seeds to run, `A..B` (B excluded) or a count `N` (0..N).
    #[arg(long, value_parser = parse_range, conflicts_with = "seed")]
    seeds: Option<Range<u64>>,
    /// Run one seed (and with --trace, print every operation).
    #[arg(long)]
    seed: Option<u64>,
    /// Print every operation of the seed to stderr (with --seed).
    #[arg(long, requires = "seed")]
    trace: bool,
    /// Print only failures and the totals.
    #[arg(long)]
    quiet: bool,
    /// Print the totals as one JSON object on stdout (last line).
    #[arg(long)]
    json: bool,
    /// Let known engine bugs fail their seeds instead of stepping around
    /// the situations that show them: `all` or a comma-separated list of
    /// names (`millpond_sim::KNOWN_BUGS`; none at present).
    #[arg(long, value_name = "BUGS", num_args = 0..=1, default_missing_value = "all", value_parser = millpond_sim::known_bugs_mask)]
    show_known_bugs: Option<u32>,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// Seeds run in parallel; each seed stays single-threaded.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
}

fn parse_range(s: &str) -> Result<Range<u64>, String> {
    let num = |x: &str| {
        x.trim()
            .replace('_', "")
            .parse::<u64>()
            .map_err(|e| format!("{x:?}: {e}"))
    };
    match s.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("empty range {a}..{b}"));
            }
            Ok(a..b)
        }
        None => Ok(0..num(s)?),
    }
}

/// `println!` that gives up quietly when standard output is gone (piped
/// into `head`, say) instead of panicking: the seeds' verdict is the exit
/// code.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// When the run started, for the time to each failure.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let args = Args::parse();
    let started = *STARTED.get_or_init(Instant::now);
    let seeds = match (args.seed, &args.seeds) {
        (Some(s), _) => s..s + 1,
        (None, Some(r)) => r.clone(),
        (None, None) => 0..1000,
    };
    let count = seeds.end - seeds.start;
    let step = (count / 10).max(1);
    let mut failed = Vec::new();
    let options = millpond_sim::RunOptions {
        trace: args.trace,
        show_known_bugs: args.show_known_bugs.unwrap_or(0),
    };
    let total = if args.trace {
        let r = millpond_sim::run_seed(seeds.start, options);
        report(&r, options, &mut failed);
        r.totals
    } else {
        millpond_sim::run_seeds(seeds.clone(), args.jobs.max(1), options, |r| {
            report(r, options, &mut failed);
            let done = r.seed - seeds.start + 1;
            if !args.quiet && count >= 100 && done % step == 0 {
                eprintln!(
                    "  {done}/{count} seeds, {} failed, {:.1?}",
                    failed.len(),
                    started.elapsed()
                );
            }
            !(args.fail_fast && r.failure.is_some())
        })
    };
    let elapsed = started.elapsed();
    say!(
        "millpond-sim: seeds {}..{} ({} seeds) in {:.1?} ({:.2} ms/seed), {} failed",
        seeds.start,
        seeds.end,
        total.seeds,
        elapsed,
        elapsed.as_secs_f64() * 1000.0 / total.seeds.max(1) as f64,
        total.failures
    );
    say!("{}", total.text());
    if !failed.is_empty() {
        say!("  failed seeds: {failed:?}");
    }
    if args.json {
        let mut json = total.json();
        json.pop();
        say!(
            "{json},\"seed_start\":{},\"seed_end\":{},\"elapsed_ms\":{},\"failed_seeds\":{failed:?}}}",
            seeds.start,
            seeds.end,
            elapsed.as_millis()
        );
    }
    if total.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn report(r: &millpond_sim::SeedReport, options: millpond_sim::RunOptions, failed: &mut Vec<u64>) {
    if let Some(f) = &r.failure {
        failed.push(r.seed);
        say!(
            "FAIL seed {} (after {:.1?}): {f}",
            r.seed,
            STARTED.get().map(|t| t.elapsed()).unwrap_or_default()
        );
        say!(
            "  replay: {}",
            millpond_sim::replay_command(r.seed, options)
        );
    }
}
