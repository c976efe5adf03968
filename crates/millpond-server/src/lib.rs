//! `millpond serve`: a persistent job broker speaking beanstalkd's
//! protocol (version 1.12) over a millpond store.
//!
//! ```no_run
//! use millpond::{Options, Store};
//! use millpond_server::Config;
//!
//! let store = Store::open("./millpond-data", Options::default())?;
//! let config = Config::default(); // 127.0.0.1:11300
//! millpond_server::run(store, config, |addr, _metrics| {
//!     println!("listening on {addr}");
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Mapping
//!
//! Each tube is a queue of the store with one consumer group,
//! `beanstalkd`, that never buries on its own (no attempt limit); TTR is
//! the lease, priority, delay, bury and kick are the engine's. A job id is
//! `tube number << 40 | message id`, so ids are unique across tubes and
//! resolved without a per-job map; tube numbers are kept, durably, in the
//! registry queue `beanstalkd-tubes` (`default` is tube 0). Each stored
//! message is a 16-byte header (TTR and put delay in seconds, and a put
//! sequence that orders jobs of different tubes by put time) and the job
//! body. See `docs/beanstalkd-compat.md` for every difference from
//! beanstalkd.
//!
//! # Durability
//!
//! `INSERTED` and `DELETED` are sent once the job or its deletion is
//! durable under [`Durability::Sync`](millpond::Durability::Sync). Puts
//! from every connection to one tube are gathered into one batch (one
//! write and one fsync), and so are deletes, by a writer thread per tube.
//!
//! # Limits
//!
//! Command lines are limited to 224 bytes (beanstalkd's line buffer) and
//! bodies to [`Config::max_job_bytes`]. Connections past
//! [`Config::max_connections`] are accepted and closed at once. A
//! connection reads no more input while its replies are being written, so
//! a client that does not read its replies stops being read from and
//! holds one bounded input buffer and at most 256 KiB of replies (plus
//! one job); if they cannot be written for 30 s it is disconnected. Idle
//! connections cost a task and a small buffer each; their reservations
//! end with their TTR like anyone's. Each tube that has seen a put or a
//! delete since the start has two writer threads (put and delete), so a
//! server with thousands of busy tubes runs thousands of threads.
//!
//! # Shutdown
//!
//! SIGTERM or SIGINT: stop accepting, let each connection finish the
//! commands it has read, give reservations of closed connections back,
//! answer what the writer threads hold, close the store. SIGUSR1 starts
//! draining: `put` answers `DRAINING`.

mod broker;
mod conn;
mod metrics;
pub mod names;
pub mod proto;
mod tubes;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use millpond::Store;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

pub use broker::JOB_HEADER_BYTES;
pub use tubes::{MESSAGE_ID_BITS, job_id, split_job_id};

/// How long shutdown waits for connections to finish their commands.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:11300`; port 0 picks one.
    pub addr: String,
    /// Largest job body, bytes. Default 65535 (beanstalkd's).
    pub max_job_bytes: u32,
    /// Most open connections; more are accepted and closed at once.
    /// Default 10000.
    pub max_connections: usize,
    /// Where to serve Prometheus metrics (`GET /metrics`). Default none.
    pub metrics_addr: Option<String>,
    /// Threads serving connections; 0 (the default) is one per CPU core.
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: "127.0.0.1:11300".to_owned(),
            max_job_bytes: 65535,
            max_connections: 10_000,
            metrics_addr: None,
            threads: 0,
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// A socket could not be bound or the runtime not started.
    Io(std::io::Error),
    /// The store failed (opening tubes, closing).
    Store(millpond::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Io(e) => write!(f, "{e}"),
            ServeError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Io(e) => Some(e),
            ServeError::Store(e) => Some(e),
        }
    }
}

impl From<std::io::Error> for ServeError {
    fn from(e: std::io::Error) -> ServeError {
        ServeError::Io(e)
    }
}

impl From<millpond::Error> for ServeError {
    fn from(e: millpond::Error) -> ServeError {
        ServeError::Store(e)
    }
}

/// Serves `store` until SIGTERM or SIGINT, then shuts down cleanly and
/// closes the store. `on_ready` is called once the sockets are bound, with
/// the bound addresses (protocol, metrics).
///
/// # Errors
///
/// Binding fails; the store fails to open a tube or to close.
pub fn run(
    store: Store,
    config: Config,
    on_ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> Result<(), ServeError> {
    run_until(store, config, on_ready, std::future::pending())
}

/// As [`run`], and also shuts down when `stop` completes (for embedding
/// and tests).
///
/// # Errors
///
/// As [`run`].
pub fn run_until(
    store: Store,
    config: Config,
    on_ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.threads > 0 {
        builder.worker_threads(config.threads);
    }
    let runtime = builder.enable_all().thread_name("millpond-serve").build()?;
    let registry = tubes::Registry::open(store.clone())?;
    let broker = Arc::new(broker::Broker::new(registry, config));
    let r = runtime.block_on(serve(broker.clone(), on_ready, stop));
    // Connections are gone: writers answer what they hold and stop.
    broker.tubes.stop_writers();
    drop(runtime);
    drop(broker);
    let closed = store.close();
    r?;
    closed?;
    tracing::info!("stopped");
    Ok(())
}

async fn serve(
    broker: Arc<broker::Broker>,
    on_ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut stop = std::pin::pin!(stop);
    let listener = TcpListener::bind(&broker.config.addr).await?;
    let addr = listener.local_addr()?;
    let metrics = match &broker.config.metrics_addr {
        Some(a) => {
            let l = TcpListener::bind(a).await?;
            let m = l.local_addr()?;
            tokio::spawn(metrics::serve(l, broker.clone()));
            Some(m)
        }
        None => None,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tracing::info!(%addr, "listening");
    on_ready(addr, metrics);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let open = broker.connections.load(Ordering::Relaxed);
                if open as usize >= broker.config.max_connections {
                    broker.connections_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, open, "connection limit reached; closing new connection");
                    drop(stream);
                    continue;
                }
                broker.connections.fetch_add(1, Ordering::Relaxed);
                broker.connections_total.fetch_add(1, Ordering::Relaxed);
                let b = broker.clone();
                let rx = stop_rx.clone();
                conns.spawn(async move {
                    conn::serve(b.clone(), stream, rx).await;
                    b.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut stop => break,
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => {
                tracing::info!("draining: puts are refused from now on");
                broker.draining.store(true, Ordering::Relaxed);
            }
        }
    }
    tracing::info!(open = conns.len(), "shutting down");
    drop(listener);
    let _ = stop_tx.send(true);
    let all_done = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_done)
        .await
        .is_err()
    {
        tracing::warn!("connections still busy after the grace period; aborting them");
        conns.abort_all();
    }
    Ok(())
}
