//! A real client no one here wrote: Python's `greenstalk` (PyPI) runs every
//! command it offers against `millpond serve` (`tests/greenstalk/`), then
//! sees `DrainingError` once the server got SIGUSR1.
//!
//! The interpreter is `$MILLPOND_PYTHON` (`.ci/run` points it at a venv
//! with greenstalk installed), else `python3`. Without greenstalk the test
//! fails and says how to install it.

#[path = "common/server.rs"]
mod server;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use server::Server;

fn python() -> String {
    std::env::var("MILLPOND_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Panics with install instructions unless `python` can import greenstalk.
fn require_greenstalk(python: &str) {
    let out = Command::new(python)
        .args(["-c", "import greenstalk; print(greenstalk.__version__)"])
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{python} cannot import greenstalk ({}).\nInstall it: \
             `python3 -m venv target/ci-venv && target/ci-venv/bin/pip install greenstalk` \
             and set MILLPOND_PYTHON=target/ci-venv/bin/python \
             (or `python3 -m pip install --user greenstalk`); .ci/run does this.",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run {python} ({e}): the greenstalk test needs Python 3 with greenstalk \
             (set MILLPOND_PYTHON to such an interpreter; .ci/run sets one up)"
        ),
    }
}

#[test]
fn greenstalk_client_runs_every_command() {
    let python = python();
    require_greenstalk(&python);
    let store = tempfile::tempdir().unwrap();
    let mut server = Server::start(&store.path().join("store"), &["--max-job-size", "65536"]);
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/greenstalk/test_greenstalk.py");
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("output");
    let out_file = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .stdin(Stdio::null())
        .stdout(out_file.try_clone().unwrap())
        .stderr(out_file)
        .spawn()
        .unwrap_or_else(|e| panic!("run {python}: {e}"));
    // The script sets a timeout on its socket; this is the backstop.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "greenstalk script did not finish in 120 s; output:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "greenstalk script failed ({status}):\n{output}\nserver stderr:\n{}",
        server.stderr()
    );
    assert!(
        output.contains("ok: 15 steps"),
        "greenstalk script did not run all its steps:\n{output}"
    );
    server.assert_running();

    // DrainingError: after SIGUSR1 a put is refused, other commands work.
    server.signal(rustix::process::Signal::USR1);
    std::thread::sleep(Duration::from_millis(200));
    let snippet = "import sys, greenstalk\n\
        c = greenstalk.Client((sys.argv[1], int(sys.argv[2])))\n\
        c._sock.settimeout(15)\n\
        try:\n    c.put('late')\n    sys.exit('put while draining was not refused')\n\
        except greenstalk.DrainingError:\n    pass\n\
        assert c.stats()['draining'] == 'true'\n\
        print('draining ok')\n";
    let out = Command::new(&python)
        .args(["-c", snippet])
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("draining ok"),
        "greenstalk while draining: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
