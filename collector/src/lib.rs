//! weir's collector: runs on every node, takes events from local services over HTTP,
//! validates them against the catalog, stamps them, keeps them in a durable spool and
//! forwards them to the routers in batches.
#![warn(missing_docs)]

pub mod body;
pub mod config;
pub mod forwarder;
pub mod http;
pub mod ingest;
pub mod metrics;
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
    Spool(#[from] weir_proto::wal::WalError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another weir already running? set collector.listen)")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// No router is configured.
    #[error("collector.routers is empty: name at least one router URL")]
    NoRouters,
}

/// A running collector.
pub struct Collector {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    state: Arc<http::State>,
    stop_http: watch::Sender<bool>,
    stop_forwarder: watch::Sender<bool>,
    server: JoinHandle<()>,
    forwarder: JoinHandle<()>,
}

impl Collector {
    /// Opens the spool in `spool_dir`, binds the listener and starts forwarding.
    pub async fn start(
        cfg: &CollectorConfig,
        spool_dir: &Path,
        catalog: Arc<ArcSwap<Catalog>>,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Collector, StartError> {
        if cfg.routers.is_empty() {
            return Err(StartError::NoRouters);
        }
        let spool = spool::Spool::open(spool_dir, cfg.spool_segment_bytes, cfg.spool_max_bytes)?;
        let (listener, addr) = weir_proto::http::bind(&cfg.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: cfg.listen.clone(),
                source,
            })?;
        let name = cfg.node_name();
        let state = Arc::new(http::State {
            catalog,
            spool: spool.clone(),
            name: name.clone(),
            max_body_bytes: cfg.max_body_bytes,
            metrics,
        });
        let (stop_http, http_rx) = watch::channel(false);
        let (stop_forwarder, fwd_rx) = watch::channel(false);
        let handler_state = state.clone();
        let server = tokio::spawn(weir_proto::http::serve(
            listener,
            move |req| http::handle(handler_state.clone(), req, ingest::Source::default()),
            http_rx,
        ));
        let forwarder = tokio::spawn(forwarder::run(
            spool,
            forwarder::ForwarderOptions {
                routers: cfg.routers.clone(),
                collector: name,
                batch_max_events: cfg.batch_max_events.max(1),
                batch_max_wait: Duration::from_millis(cfg.batch_max_wait_ms),
                drain_timeout: Duration::from_secs(cfg.drain_timeout_secs),
            },
            fwd_rx,
        ));
        Ok(Collector {
            addr,
            state,
            stop_http,
            stop_forwarder,
            server,
            forwarder,
        })
    }

    /// The spool.
    pub fn spool(&self) -> &spool::Spool {
        &self.state.spool
    }

    /// Stops taking events, lets requests in flight finish, then drains the spool to
    /// the router (up to the drain timeout).
    pub async fn shutdown(self) {
        let _ = self.stop_http.send(true);
        let _ = self.server.await;
        let _ = self.stop_forwarder.send(true);
        let _ = self.forwarder.await;
    }
}
