//! weir's collector: runs on every node, takes events from local services over HTTP,
//! validates them against the catalog, stamps them, keeps them in a durable spool and
//! forwards them to the routers in batches.
#![warn(missing_docs)]

pub mod body;
pub mod catalog_sync;
pub mod config;
pub mod datagram;
pub mod forwarder;
pub mod geoip;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod proxy;
pub mod segment;
pub mod spool;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_proto::Catalog;

pub use config::CollectorConfig;

/// Errors starting a collector.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spool could not be opened.
    #[error("spool: {0}")]
    Spool(weir_proto::runtime::wal::WalError),
    /// The listen address could not be bound.
    #[error("{0}")]
    Listen(weir_proto::runtime::http::BindError),
    /// No router is configured.
    #[error("collector.routers is empty: name at least one router URL (or set collector.kafka)")]
    NoRouters,
    /// A setting is wrong; the message names the key.
    #[error("{0}")]
    Config(weir_proto::InvalidSetting),
    /// A unix socket could not be bound.
    #[error("cannot bind the unix socket {path}: {error}")]
    Socket {
        /// The socket path.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The proxy settings are wrong; the message names the key.
    #[error("{0}")]
    Proxy(weir_proto::InvalidSetting),
}

// By hand, not `#[from]`: the message already shows the log's error, so it is not
// also exposed as `source()` (anyhow would print it twice).
impl From<weir_proto::runtime::wal::WalError> for StartError {
    fn from(e: weir_proto::runtime::wal::WalError) -> Self {
        StartError::Spool(e)
    }
}

/// A running collector.
pub struct Collector {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    /// The unix stream socket (HTTP), when enabled.
    pub socket: Option<std::path::PathBuf>,
    /// The unix datagram socket, when enabled.
    pub datagram: Option<std::path::PathBuf>,
    state: Arc<http::State>,
    stop_http: watch::Sender<bool>,
    stop_forwarder: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    forwarder: JoinHandle<()>,
}

fn inflight_kib(cfg: &CollectorConfig) -> usize {
    (cfg.max_inflight_bytes / 1024).clamp(1, u32::MAX as usize >> 4)
}

fn enabled(path: &Option<std::path::PathBuf>) -> Option<&std::path::Path> {
    path.as_deref().filter(|p| !p.as_os_str().is_empty())
}

impl Collector {
    /// Opens the spool in `spool_dir`, binds the listener and starts forwarding.
    pub async fn start(
        cfg: &CollectorConfig,
        spool_dir: &Path,
        catalog: Arc<ArcSwap<Catalog>>,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Collector, StartError> {
        if cfg.routers.is_empty() && cfg.kafka.is_none() {
            return Err(StartError::NoRouters);
        }
        cfg.validate().map_err(StartError::Config)?;
        let spool = spool::Spool::open(spool_dir, cfg.spool_segment_bytes, cfg.spool_max_bytes)?;
        let (listener, addr) = weir_proto::runtime::http::bind(&cfg.listen, "collector.listen")
            .await
            .map_err(StartError::Listen)?;
        let name = cfg.node_name();
        let state = Arc::new(http::State {
            catalog,
            spool: spool.clone(),
            name: name.clone(),
            max_body_bytes: cfg.max_body_bytes,
            max_event_bytes: cfg.max_event_bytes,
            inflight_kib: Arc::new(tokio::sync::Semaphore::new(inflight_kib(cfg))),
            inflight_total_kib: inflight_kib(cfg) as u32,
            metrics,
            catalog_checked_at: Arc::new(std::sync::atomic::AtomicI64::new(weir_proto::event::now_micros())),
        });
        let (stop_http, http_rx) = watch::channel(false);
        let (stop_forwarder, fwd_rx) = watch::channel(false);
        let socket_err = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |error| StartError::Socket { path, error }
        };
        // Bind everything before spawning anything, so a failure leaves nothing running.
        let unix = match enabled(&cfg.socket) {
            Some(p) => Some((
                weir_proto::runtime::http::bind_unix(p).map_err(socket_err(p))?,
                p.to_path_buf(),
            )),
            None => None,
        };
        let dgram = match enabled(&cfg.datagram) {
            Some(p) => {
                weir_proto::runtime::http::replace_stale_socket(p).map_err(socket_err(p))?;
                let sock = tokio::net::UnixDatagram::bind(p).map_err(socket_err(p))?;
                weir_proto::runtime::http::set_socket_mode(p).map_err(socket_err(p))?;
                Some((sock, p.to_path_buf()))
            }
            None => None,
        };
        let mut servers = Vec::new();
        let handler_state = state.clone();
        let serve_opts = weir_proto::runtime::http::ServeOptions {
            max_connections: cfg.max_connections,
        };
        servers.push(tokio::spawn(weir_proto::runtime::http::serve_with(
            listener,
            move |req| http::handle(handler_state.clone(), req, None),
            http_rx.clone(),
            serve_opts,
        )));
        let (socket, datagram) = (unix.as_ref().map(|u| u.1.clone()), dgram.as_ref().map(|d| d.1.clone()));
        if let Some((unix, _)) = unix {
            let handler_state = state.clone();
            let env: Option<Arc<str>> = cfg.socket_env.as_deref().map(Arc::from);
            servers.push(tokio::spawn(weir_proto::runtime::http::serve_with(
                unix,
                move |req| http::handle(handler_state.clone(), req, env.clone()),
                http_rx.clone(),
                serve_opts,
            )));
        }
        if let Some((sock, _)) = dgram {
            let env: Option<Arc<str>> = cfg.datagram_env.as_deref().map(Arc::from);
            servers.push(tokio::spawn(datagram::run(sock, state.clone(), env, http_rx.clone())));
        }
        let forwarder = tokio::spawn(forwarder::run(
            spool,
            forwarder::ForwarderOptions {
                routers: cfg.routers.clone(),
                collector: name,
                batch_max_events: cfg.batch_max_events.max(1),
                batch_max_wait: Duration::from_millis(cfg.batch_max_wait_ms),
                drain_timeout: Duration::from_secs(cfg.drain_timeout_secs),
                dead_letter_dir: cfg
                    .dead_letter_dir
                    .clone()
                    .unwrap_or_else(|| spool_dir.with_file_name("dead-letters")),
                router_token: cfg.router_token.clone().filter(|t| !t.is_empty()),
                kafka: cfg.kafka.clone(),
            },
            fwd_rx,
        ));
        Ok(Collector {
            addr,
            socket,
            datagram,
            state,
            stop_http,
            stop_forwarder,
            servers,
            forwarder,
        })
    }

    /// Starts the public proxy listener (see [`proxy`]) on this collector's spool;
    /// it stops with the collector. Returns where it listens.
    pub async fn start_proxy(&mut self, cfg: &proxy::ProxyConfig) -> Result<SocketAddr, StartError> {
        let p = Arc::new(proxy::Proxy::new(cfg).map_err(StartError::Proxy)?);
        let (listener, addr) = weir_proto::runtime::http::bind(&cfg.listen, "proxy.listen")
            .await
            .map_err(StartError::Listen)?;
        let state = self.state.clone();
        let tidy = p.clone();
        let mut stop = self.stop_http.subscribe();
        // SIGHUP (as for the router's catalog) loads a changed GeoIP file at once.
        let mut hup = weir_proto::runtime::signal::Hangup::new();
        self.servers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => tidy.housekeeping(),
                    _ = hup.recv() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let reload = tidy.clone();
                let _ = tokio::task::spawn_blocking(move || reload.reload_geoip()).await;
            }
        }));
        self.servers.push(tokio::spawn(weir_proto::runtime::http::serve_with(
            listener,
            move |req| proxy::handle(state.clone(), p.clone(), req),
            self.stop_http.subscribe(),
            weir_proto::runtime::http::ServeOptions {
                max_connections: cfg.max_connections,
            },
        )));
        Ok(addr)
    }

    /// Keeps the catalog pulled from the routers (see [`catalog_sync`]) until shutdown.
    pub fn sync_catalog(&self, opts: catalog_sync::SyncOptions) {
        let task = tokio::spawn(catalog_sync::run(
            opts,
            self.state.catalog.clone(),
            self.state.catalog_checked_at.clone(),
            self.stop_http.subscribe(),
        ));
        drop(task);
    }

    /// The spool.
    pub fn spool(&self) -> &spool::Spool {
        &self.state.spool
    }

    /// Stops taking events, lets requests in flight finish, then drains the spool to
    /// the router (up to the drain timeout).
    pub async fn shutdown(self) {
        let _ = self.stop_http.send(true);
        for server in self.servers {
            let _ = server.await;
        }
        for path in [&self.socket, &self.datagram].into_iter().flatten() {
            let _ = std::fs::remove_file(path);
        }
        let _ = self.stop_forwarder.send(true);
        let _ = self.forwarder.await;
    }
}
