//! The Prometheus text endpoint: `GET /metrics` on its own address.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::broker::Broker;
use crate::proto::Op;

/// Renders every metric.
pub fn render(b: &Broker) -> String {
    let mut s = String::with_capacity(4096);
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(s, "# HELP millpond_connections Open client connections.");
    let _ = writeln!(s, "# TYPE millpond_connections gauge");
    let _ = writeln!(s, "millpond_connections {}", ld(&b.connections));
    let _ = writeln!(s, "# HELP millpond_connections_total Connections accepted.");
    let _ = writeln!(s, "# TYPE millpond_connections_total counter");
    let _ = writeln!(s, "millpond_connections_total {}", ld(&b.connections_total));
    let _ = writeln!(
        s,
        "# HELP millpond_connections_refused_total Connections closed at once for --max-connections."
    );
    let _ = writeln!(s, "# TYPE millpond_connections_refused_total counter");
    let _ = writeln!(
        s,
        "millpond_connections_refused_total {}",
        ld(&b.connections_refused)
    );
    let _ = writeln!(s, "# HELP millpond_commands_total Commands by name.");
    let _ = writeln!(s, "# TYPE millpond_commands_total counter");
    for op in Op::ALL {
        let _ = writeln!(
            s,
            "millpond_commands_total{{command=\"{}\"}} {}",
            op.name(),
            ld(&b.ops[op as usize])
        );
    }
    let _ = writeln!(s, "# HELP millpond_errors_total Error replies sent.");
    let _ = writeln!(s, "# TYPE millpond_errors_total counter");
    let _ = writeln!(s, "millpond_errors_total {}", ld(&b.errors));
    let _ = writeln!(s, "# HELP millpond_puts_total Jobs inserted.");
    let _ = writeln!(s, "# TYPE millpond_puts_total counter");
    let _ = writeln!(s, "millpond_puts_total {}", ld(&b.puts_total));
    let _ = writeln!(s, "# HELP millpond_deletes_total Jobs deleted.");
    let _ = writeln!(s, "# TYPE millpond_deletes_total counter");
    let _ = writeln!(s, "millpond_deletes_total {}", ld(&b.deletes_total));
    let _ = writeln!(s, "# HELP millpond_jobs Jobs by tube and state.");
    let _ = writeln!(s, "# TYPE millpond_jobs gauge");
    for t in b.tubes.all() {
        if let Ok(st) = t.group.stats() {
            for (state, n) in [
                ("ready", st.ready),
                ("reserved", st.reserved),
                ("delayed", st.delayed),
                ("buried", st.buried),
            ] {
                let _ = writeln!(
                    s,
                    "millpond_jobs{{tube=\"{}\",state=\"{state}\"}} {n}",
                    t.name.replace('\\', "\\\\").replace('"', "\\\"")
                );
            }
        }
    }
    s
}

/// Serves the endpoint until the task is dropped.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let b = broker.clone();
        tokio::spawn(async move {
            let _ = answer(stream, &b).await;
        });
    }
}

async fn answer(mut stream: TcpStream, b: &Broker) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("timeout"))??;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if req.starts_with(b"GET /metrics ") || req.starts_with(b"GET /metrics?") {
        let b2 = render(b);
        ("200 OK", b2)
    } else {
        ("404 Not Found", "not found; try /metrics\n".to_owned())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
