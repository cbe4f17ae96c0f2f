//! The loader as a running component, like `Collector::start` and `Router::start`:
//! Arrow Flight over the warehouse, optionally `/healthz`, `/readyz` and `/metrics`, and
//! optionally a load round every `interval_secs` (closed hours, from the file buffer or
//! the MongoDB buffer's mirror), with the catalog as it is at each round.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_proto::runtime::http as h;
use weir_proto::Catalog;

use crate::metrics as m;
use crate::mongo_mirror::{self, Hours, MirrorError, MongoSource};
use crate::{HourReport, LoadError, Loader, LoaderConfig};

/// How long Flight clients may take to finish once shutdown starts.
pub const FLIGHT_GRACE: Duration = Duration::from_secs(5);

/// Where a loader service reads and writes, and what it runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The hourly buffer (for the MongoDB buffer: its local mirror).
    pub buffer_dir: PathBuf,
    /// Where Parquet lands.
    pub warehouse: PathBuf,
    /// The MongoDB buffer, when the router writes there.
    pub mongo: Option<MongoSource>,
    /// The `[loader]` section.
    pub loader: LoaderConfig,
    /// A catalog directory to watch (and re-read on SIGHUP), when the service owns its
    /// catalog; `None` when another component keeps it current.
    pub catalog_dir: Option<PathBuf>,
    /// How often that directory is checked.
    pub catalog_watch: Duration,
    /// Serve `/healthz`, `/readyz` and `/metrics` on `loader.listen`.
    pub serve_http: bool,
    /// Run a load round every `loader.interval_secs`; `first_round_now` runs the first
    /// at start instead of one interval later.
    pub periodic: Option<Periodic>,
}

/// When periodic loads run.
#[derive(Clone, Copy, Debug)]
pub struct Periodic {
    /// The first round at start, not one interval later.
    pub first_round_now: bool,
}

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The warehouse directory could not be created.
    #[error("cannot create the warehouse {path} (set loader.warehouse): {error}")]
    Warehouse {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// An address could not be bound.
    #[error("{0}")]
    Listen(h::BindError),
}

/// Errors of one load round.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// The MongoDB buffer could not be read.
    #[error("reading the MongoDB buffer: {0}")]
    Mirror(MirrorError),
    /// An hour could not be loaded.
    #[error("{0}")]
    Load(LoadError),
    /// The blocking load task died.
    #[error("the load task failed: {0}")]
    Task(String),
}

/// A running loader service.
pub struct LoaderService {
    /// Where Arrow Flight listens.
    pub flight_addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` listen, when served.
    pub http_addr: Option<SocketAddr>,
    settings: Settings,
    catalog: Arc<ArcSwap<Catalog>>,
    stop: watch::Sender<bool>,
    flight: JoinHandle<Result<(), tonic::transport::Error>>,
    http: Option<JoinHandle<()>>,
    periodic: Option<JoinHandle<()>>,
}

impl LoaderService {
    /// Creates the warehouse, binds Flight (and the HTTP endpoints) and starts the
    /// periodic rounds and the catalog watcher the settings ask for.
    pub async fn start(
        settings: Settings,
        catalog: Arc<ArcSwap<Catalog>>,
        metrics: Option<PrometheusHandle>,
    ) -> Result<LoaderService, StartError> {
        std::fs::create_dir_all(&settings.warehouse).map_err(|error| StartError::Warehouse {
            path: settings.warehouse.clone(),
            error,
        })?;
        let (stop, stop_rx) = watch::channel(false);
        let (listener, flight_addr) = h::bind(&settings.loader.flight, "loader.flight")
            .await
            .map_err(StartError::Listen)?;
        let service = crate::flight::WarehouseFlight::new(settings.warehouse.clone(), catalog.clone());
        let token = settings.loader.flight_token.clone().filter(|t| !t.is_empty());
        let flight = tokio::spawn(crate::flight::serve(listener, service, token, stop_rx.clone()));
        let (http, http_addr) = if settings.serve_http {
            let (listener, addr) = h::bind(&settings.loader.listen, "loader.listen")
                .await
                .map_err(StartError::Listen)?;
            let warehouse = settings.warehouse.clone();
            let task = tokio::spawn(h::serve(
                listener,
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = endpoints(&req, &warehouse, metrics.as_ref());
                    async move { answer }
                },
                stop_rx.clone(),
            ));
            (Some(task), Some(addr))
        } else {
            (None, None)
        };
        if let Some(dir) = settings.catalog_dir.clone() {
            tokio::spawn(weir_proto::runtime::catalog_watch::watch_dir(
                dir,
                catalog.clone(),
                settings.catalog_watch,
                ::metrics::counter!(m::CATALOG_RELOADS),
                None,
                stop_rx.clone(),
            ));
        }
        let periodic = settings.periodic.map(|p| {
            let (settings, catalog, mut stop_rx) = (settings.clone(), catalog.clone(), stop_rx.clone());
            let interval = Duration::from_secs(settings.loader.interval_secs.max(1));
            tokio::spawn(async move {
                let mut wait = !p.first_round_now;
                loop {
                    if wait {
                        tokio::select! {
                            _ = tokio::time::sleep(interval) => {}
                            _ = stop_rx.wait_for(|s| *s) => return,
                        }
                    }
                    wait = true;
                    if let Err(e) = round(&settings, &catalog, Hours::Closed, false).await {
                        ::metrics::counter!(m::FAILURES).increment(1);
                        tracing::error!(error = %e, "loading closed hours failed; the next round retries");
                    }
                }
            })
        });
        Ok(LoaderService {
            flight_addr,
            http_addr,
            settings,
            catalog,
            stop,
            flight,
            http,
            periodic,
        })
    }

    /// Loads every buffered hour, open ones included (`weir up`'s last step).
    pub async fn load_everything(&self) -> Result<Vec<HourReport>, RoundError> {
        round(&self.settings, &self.catalog, Hours::All, true).await
    }

    /// Stops: the round in progress finishes, Flight clients get [`FLIGHT_GRACE`].
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Some(p) = self.periodic {
            let _ = p.await;
        }
        if let Some(h) = self.http {
            let _ = h.await;
        }
        match tokio::time::timeout(FLIGHT_GRACE, self.flight).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "Arrow Flight server stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "Arrow Flight task failed"),
            Err(_) => tracing::warn!("Flight clients still connected after {FLIGHT_GRACE:?}; closing them"),
        }
    }
}

/// A loader over `settings` with `catalog`.
pub fn loader(settings: &Settings, catalog: Arc<Catalog>) -> Loader {
    Loader {
        catalog,
        buffer_dir: settings.buffer_dir.clone(),
        warehouse: settings.warehouse.clone(),
        row_group_rows: settings.loader.row_group_rows,
        index_memory_bytes: settings.loader.index_memory_bytes,
    }
}

/// One round: exports the MongoDB buffer's hours `which` names (with that buffer), then
/// loads the closed hours not loaded yet (`include_open`: every hour), off the async
/// workers, counting what it wrote.
async fn round(
    settings: &Settings,
    catalog: &ArcSwap<Catalog>,
    which: Hours,
    include_open: bool,
) -> Result<Vec<HourReport>, RoundError> {
    if let Some(src) = &settings.mongo {
        mongo_mirror::mirror(src, &settings.buffer_dir, which)
            .await
            .map_err(RoundError::Mirror)?;
    }
    let l = loader(settings, catalog.load_full());
    let reports = tokio::task::spawn_blocking(move || l.run(include_open))
        .await
        .map_err(|e| RoundError::Task(e.to_string()))?
        .map_err(RoundError::Load)?;
    for r in &reports {
        ::metrics::counter!(m::HOURS_LOADED).increment(1);
        ::metrics::counter!(m::ROWS_WRITTEN).increment(r.manifest.rows);
        ::metrics::counter!(m::INVALID_ROWS_WRITTEN).increment(r.manifest.invalid_rows);
    }
    ::metrics::gauge!(m::LAST_SUCCESS).set(weir_proto::event::now_micros() as f64 / 1e6);
    Ok(reports)
}

/// The loader's health and metrics endpoints.
fn endpoints(
    req: &hyper::Request<hyper::body::Incoming>,
    warehouse: &std::path::Path,
    metrics: Option<&PrometheusHandle>,
) -> h::Response {
    use hyper::{Method, StatusCode};
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => h::text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => h::readyz(&[("warehouse", warehouse)], ""),
        (&Method::GET, "/metrics") => h::text(StatusCode::OK, metrics.map(|m| m.render()).unwrap_or_default()),
        _ => h::error(
            StatusCode::NOT_FOUND,
            "no such endpoint: the loader serves GET /healthz, /readyz and /metrics (and Arrow Flight on loader.flight)",
        ),
    }
}
