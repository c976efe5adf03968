//! Running the real `millpond` binary against a store in a temporary
//! directory.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// A store directory that is removed at the end of the test.
pub struct TestStore {
    pub dir: tempfile::TempDir,
}

impl TestStore {
    pub fn new() -> TestStore {
        TestStore {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The store directory (a sub-directory, so tests can also see a
    /// missing store).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Runs `millpond --store <path> args...`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None)
    }

    /// Runs with `stdin` piped in.
    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let path = self.path();
        let mut all = vec!["--store", path.to_str().unwrap()];
        all.extend_from_slice(args);
        run(&all, stdin)
    }

    /// Runs and expects exit code 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args).expect_code(0).stdout
    }

    /// Runs with `--json` and parses stdout as one JSON document.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all).expect_code(0);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{}", out.stdout))
    }

    /// Runs with `--json` and parses every line of stdout.
    pub fn json_lines(&self, args: &[&str], code: i32) -> Vec<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all).expect_code(code);
        out.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Pushes one message per line into `queue`; returns their ids.
    pub fn push_lines(&self, queue: &str, lines: &[&str]) -> Vec<u64> {
        let input = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        let out = self
            .run_with_stdin(&["push", "--stdin", "-q", queue], Some(input.as_bytes()))
            .expect_code(0);
        out.stdout.lines().map(|l| l.parse().unwrap()).collect()
    }

    /// The segment files of `queue`, by first id.
    pub fn segments(&self, queue: &str) -> Vec<PathBuf> {
        let dir = self.path().join("queues").join(queue);
        let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segs.sort();
        segs
    }
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs the binary with `args`.
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_millpond"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run the millpond binary");
    // Fed from another thread while this one reads the output: a child
    // that answers each line (`push --stdin` prints every id) fills the
    // stdout pipe long before a large input is all written.
    let feeder = stdin.map(|input| {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || pipe.write_all(&input))
    });
    let out: Output = child.wait_with_output().unwrap();
    if let Some(feeder) = feeder {
        feeder.join().unwrap().unwrap();
    }
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Flips the bits of `mask` in byte `offset` of `path`.
pub fn flip(path: &Path, offset: u64, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= mask;
    std::fs::write(path, bytes).unwrap();
}
