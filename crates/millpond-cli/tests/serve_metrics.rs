//! `millpond serve --metrics-addr`: a Prometheus text endpoint whose figures
//! follow what clients did.

#[path = "common/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use server::Server;

/// `GET path` over plain HTTP/1.1; returns (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(server::READ_TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {response:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(body.len(), length, "body length of {path}");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// Parses Prometheus text format: `name{labels} value` lines, each name
/// declared by a `# TYPE` line before it.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut types = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(matches!(kind, "counter" | "gauge"), "{line:?}");
            types.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(types.iter().any(|t| t == name), "{name} has no # TYPE line");
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

#[test]
fn metrics_count_puts_deletes_errors_and_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("store"),
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let metrics = server.metrics_addr.expect("a `metrics on <addr>` line");
    let mut conn = server.connect();
    conn.expect("use mx", "USING mx");
    conn.expect("watch mx", "WATCHING 2");
    let ids: Vec<u64> = (0..3).map(|n| conn.put(0, 0, 60, &[n; 10])).collect();
    let (first, _) = conn.reserve(0);
    assert_eq!(first, ids[0]);
    conn.expect(&format!("delete {first}"), "DELETED");
    let (second, _) = conn.reserve(0);
    conn.expect(&format!("bury {second} 0"), "BURIED");
    conn.expect("no-such-command", "UNKNOWN_COMMAND");

    let (status, body) = get(metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let samples = parse(&body);
    let value = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
    };
    assert_eq!(value("millpond_puts_total"), 3.0);
    assert_eq!(value("millpond_deletes_total"), 1.0);
    assert_eq!(value("millpond_errors_total"), 1.0);
    assert_eq!(value("millpond_connections"), 1.0);
    assert_eq!(value("millpond_commands_total{command=\"put\"}"), 3.0);
    assert_eq!(value("millpond_jobs{tube=\"mx\",state=\"ready\"}"), 1.0);
    assert_eq!(value("millpond_jobs{tube=\"mx\",state=\"buried\"}"), 1.0);
    assert_eq!(value("millpond_jobs{tube=\"mx\",state=\"reserved\"}"), 0.0);

    let (status, _) = get(metrics, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
