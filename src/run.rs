//! Running components: `weir up` (all in one process) and each one alone.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::signal::unix::{signal, SignalKind};
use weir_collector::Collector;
use weir_loader::service::{LoaderService, Periodic, Settings};
use weir_loader::Loader;
use weir_proto::Catalog;
use weir_router::Router;

use crate::config::Config;

/// The tokio runtime every long-running command uses.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir")
        // The collector's spool writer waits for an idle runtime between small groups.
        .on_thread_park(weir_proto::runtime::wal::runtime_parked)
        .build()
        .context("cannot start the async runtime")
}

/// Logs to stderr; `WEIR_LOG` (or `RUST_LOG`) sets the filter, default `info`.
pub fn init_tracing() {
    let filter = std::env::var("WEIR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Installs the Prometheus recorder and its upkeep: histograms keep every sample until
/// they are drained, which `install_recorder` leaves to whoever renders `/metrics`; without
/// a scraper, a router recording a delivery latency per event grew by ~16 bytes an event
/// (93 MiB in a 10 s bench). Must be called on the runtime.
fn install_metrics() -> Option<PrometheusHandle> {
    match PrometheusBuilder::new().install_recorder() {
        Ok(h) => {
            let upkeep = h.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(METRICS_UPKEEP);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            Some(h)
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics disabled");
            None
        }
    }
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// A loader over the config's buffer and warehouse.
pub fn make_loader(cfg: &Config, catalog: Catalog) -> Loader {
    weir_loader::service::loader(&loader_settings(cfg, false, false, None), Arc::new(catalog))
}

/// With the MongoDB buffer, exports the hours `which` names into the local mirror the
/// loader reads; a no-op for the file buffer.
pub async fn mirror_mongo(cfg: &Config, which: weir_loader::mongo_mirror::Hours) -> anyhow::Result<()> {
    if let Some(src) = cfg.mongo_buffer() {
        weir_loader::mongo_mirror::mirror(&src, &cfg.buffer_dir(), which).await?;
    }
    Ok(())
}

/// SIGINT and SIGTERM, watched from the moment this is created: create it before
/// starting anything, so a signal that arrives during startup still drains.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// Resolves on the first signal; a second one exits at once.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
            eprintln!("second signal: exiting now; the spool and log keep everything acknowledged");
            std::process::exit(130);
        });
    }
}

fn describe(catalog: &Catalog) -> String {
    let names: Vec<&str> = catalog.events.keys().map(|s| s.as_str()).collect();
    format!("{} events ({})", names.len(), names.join(", "))
}

/// Where `weir collector` gets its catalog.
pub enum CatalogSource {
    /// Read from a directory at start.
    Local(Catalog),
    /// Pulled from these router URLs and kept current.
    Remote(Vec<String>),
}

/// Where `weir up` and the checks got their catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogOrigin {
    /// The demo catalog built into the binary (`weir up` without `--catalog`): the only
    /// case that gets the public demo write key.
    BuiltInDemo,
    /// A catalog directory.
    Dir(String),
}

impl std::fmt::Display for CatalogOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogOrigin::BuiltInDemo => f.write_str("built-in demo catalog"),
            CatalogOrigin::Dir(d) => f.write_str(d),
        }
    }
}

/// The router paths plus the catalog directory to watch, if any.
fn router_paths(cfg: &Config) -> weir_router::RouterPaths {
    let mut paths = cfg.router_paths();
    paths.catalog_dir = cfg.catalog.as_ref().map(std::path::PathBuf::from);
    paths
}

/// The write key `weir up` gives its proxy on the demo catalog (environment `web`).
pub const DEMO_WRITE_KEY: &str = "weir-demo-web";

/// `weir up`: router, collector and loader in one process.
pub async fn up(cfg: Config, catalog: Catalog, catalog_source: CatalogOrigin) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    init_tracing();
    let metrics = install_metrics();
    let data = cfg.data_dir();
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create the data directory {}", data.display()))?;
    // One live catalog for all three: an edit of the catalog directory reaches the
    // collector's validation, the router and the loader's schemas without a restart.
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(catalog.clone()));
    let router = Router::start(&cfg.router, &router_paths(&cfg), shared.clone(), metrics.clone()).await?;
    let mut collector_cfg = cfg.collector();
    collector_cfg.routers = vec![format!("http://{}", router.addr)];
    // Kafka mode in one process: the collector produces to the topic the router reads.
    if collector_cfg.kafka.is_none() {
        collector_cfg.kafka = cfg.router.kafka.clone();
    }
    let mut collector = Collector::start(&collector_cfg, &cfg.spool_dir(), shared.clone(), metrics).await?;
    // The public proxy. On the demo catalog without keys configured, one demo key for
    // the `web` environment, so a browser page can be tried at once.
    let mut proxy_cfg = cfg.proxy.clone();
    let demo_key = proxy_cfg.keys.is_empty() && catalog_source == CatalogOrigin::BuiltInDemo;
    if demo_key {
        proxy_cfg.keys.push(weir_collector::proxy::KeyConfig {
            key: Some(DEMO_WRITE_KEY.into()),
            key_env: None,
            env: "web".into(),
            rate: None,
        });
        if proxy_cfg.cors_origins.is_empty() {
            proxy_cfg.cors_origins.push("*".into());
        }
    }
    let proxy_addr = collector.start_proxy(&proxy_cfg).await?;
    // The router watches the catalog directory; the loader reads the same live catalog.
    let settings = loader_settings(&cfg, false, false, Some(Periodic { first_round_now: false }));
    let loader = LoaderService::start(settings, shared.clone(), None).await?;
    let flight_addr = loader.flight_addr;
    let warehouse = cfg.warehouse();
    println!("weir up");
    println!(
        "  collector  http://{}/v1/events   (POST JSON, arrays or NDJSON)",
        collector.addr
    );
    if let Some(p) = &collector.socket {
        println!("  socket     {}   (HTTP over a unix socket)", p.display());
    }
    if let Some(p) = &collector.datagram {
        println!("  datagram   {}   (one JSON event or NDJSON per datagram)", p.display());
    }
    println!(
        "  proxy      http://{proxy_addr}/v1/events   (public: write key required{})",
        if demo_key {
            format!(", demo key {DEMO_WRITE_KEY} for env web")
        } else if proxy_cfg.keys.is_empty() {
            ", none configured: the demo key comes only with the demo catalog; add [[proxy.keys]] with key and env to --config".to_string()
        } else {
            let envs: std::collections::BTreeSet<&str> = proxy_cfg.keys.iter().map(|k| k.env.as_str()).collect();
            let n = proxy_cfg.keys.len();
            format!(
                ", {n} key{} for env {}",
                if n == 1 { "" } else { "s" },
                envs.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
    );
    println!(
        "  console    http://{}/   (live events, validation errors, recipients, the catalog)",
        router.addr
    );
    println!("  router     http://{}/v1/batches", router.addr);
    println!("  metrics    http://{}/metrics", collector.addr);
    println!("  flight     grpc://{flight_addr}   (Arrow Flight: loaded hours as record batches)");
    println!("  catalog    {catalog_source}: {}", describe(&catalog));
    println!("  data       {}", data.display());
    println!(
        "  parquet    {}   (each hour loads at hour end + {} s grace; `weir loader run --now` loads the open one; all hours on Ctrl-C)",
        warehouse.display(),
        cfg.router.grace_secs
    );
    let recipients: Vec<String> = cfg
        .router
        .recipients
        .iter()
        .map(|(name, r)| format!("{name} ({})", r.kind()))
        .collect();
    println!(
        "  recipients {}",
        if recipients.is_empty() {
            "none (events go to the warehouse only; see [router.recipients] in `weir config example`)".to_string()
        } else {
            recipients.join(", ")
        }
    );
    println!(
        "  try        curl -s http://{}/v1/events -H 'content-type: application/json' -d '{{\"event\":\"page.viewed\",\"env\":\"web\",\"fields\":{{\"url\":\"https://example.com/\",\"session_id\":\"s1\"}}}}'",
        collector.addr
    );
    println!("  Ctrl-C to stop (it drains the spool and log and loads every buffered hour)");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    signals.wait().await;
    eprintln!(
        "shutting down: the collector forwards what its spool holds (up to {} s, collector.drain_timeout_secs), the router's recipients catch up (up to {} s, router.drain_secs), then every buffered hour is loaded; press Ctrl-C again to stop now (what was acknowledged stays in the spool and log for the next start)",
        cfg.collector.drain_timeout_secs, cfg.router.drain_secs
    );
    collector.shutdown().await;
    eprintln!("shutting down: the collector is done; waiting for the router's recipients...");
    router.shutdown().await;
    eprintln!("shutting down: loading every buffered hour...");
    let reports = loader.load_everything().await;
    loader.shutdown().await;
    let reports = reports?;
    let rows: u64 = reports.iter().map(|r| r.manifest.rows).sum();
    let invalid: u64 = reports.iter().map(|r| r.manifest.invalid_rows).sum();
    eprintln!(
        "loaded {} hour(s): {rows} rows, {invalid} invalid, into {}",
        reports.len(),
        warehouse.display()
    );
    Ok(())
}

/// `weir collector`.
pub async fn collector(cfg: Config, source: CatalogSource, with_proxy: bool) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    init_tracing();
    let metrics = install_metrics();
    let ccfg = cfg.collector();
    let sync = match &source {
        CatalogSource::Remote(urls) => Some(weir_collector::catalog_sync::SyncOptions {
            urls: urls.clone(),
            save_path: cfg.data_dir().join("collector").join("catalog.json"),
            every: Duration::from_secs(ccfg.catalog_poll_secs.max(1)),
            token: ccfg.router_token.clone().filter(|t| !t.is_empty()),
        }),
        CatalogSource::Local(_) => None,
    };
    let (catalog, from) = match (source, &sync) {
        (CatalogSource::Local(c), _) => (c, "directory".to_string()),
        (CatalogSource::Remote(_), Some(opts)) => {
            std::fs::create_dir_all(cfg.data_dir().join("collector"))?;
            weir_collector::catalog_sync::initial(opts).await
        }
        (CatalogSource::Remote(_), None) => (Catalog::empty(), String::new()),
    };
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(catalog));
    let mut collector = Collector::start(&ccfg, &cfg.spool_dir(), shared, metrics).await?;
    if with_proxy {
        let addr = collector.start_proxy(&cfg.proxy).await?;
        tracing::info!(%addr, keys = cfg.proxy.keys.len(), "proxy listening");
    }
    if let Some(opts) = sync {
        collector.sync_catalog(opts);
    }
    match &ccfg.kafka {
        Some(k) => {
            tracing::info!(addr = %collector.addr, kafka = %k.brokers, topic = %k.topic, catalog = %from, "collector listening (Kafka mode)")
        }
        None => tracing::info!(addr = %collector.addr, routers = ?ccfg.routers, catalog = %from, "collector listening"),
    }
    signals.wait().await;
    tracing::info!(
        drain_timeout_secs = ccfg.drain_timeout_secs,
        "shutting down: forwarding what the spool holds (at most drain_timeout_secs); a second signal stops now, the spool keeps the rest"
    );
    collector.shutdown().await;
    Ok(())
}

/// `weir router`.
pub async fn router(cfg: Config, catalog: Catalog) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    init_tracing();
    let metrics = install_metrics();
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(catalog));
    let router = Router::start(&cfg.router, &router_paths(&cfg), shared, metrics).await?;
    tracing::info!(addr = %router.addr, console = %format!("http://{}/", router.addr), "router listening");
    signals.wait().await;
    tracing::info!(
        drain_secs = cfg.router.drain_secs,
        "shutting down: recipients catch up with the log (at most drain_secs); a second signal stops now, the log keeps the rest"
    );
    router.shutdown().await;
    Ok(())
}

/// `weir loader serve`: Arrow Flight over the warehouse until SIGINT/SIGTERM.
pub async fn flight(cfg: Config, catalog: Catalog) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    init_tracing();
    let settings = loader_settings(&cfg, false, false, None);
    let service = LoaderService::start(settings, Arc::new(arc_swap::ArcSwap::from_pointee(catalog)), None).await?;
    println!(
        "Arrow Flight on grpc://{}, serving {}",
        service.flight_addr,
        cfg.warehouse().display()
    );
    signals.wait().await;
    service.shutdown().await;
    Ok(())
}

/// The loader service's settings from the config.
fn loader_settings(cfg: &Config, own_catalog: bool, serve_http: bool, periodic: Option<Periodic>) -> Settings {
    Settings {
        buffer_dir: cfg.buffer_dir(),
        warehouse: cfg.warehouse(),
        mongo: cfg.mongo_buffer(),
        loader: cfg.loader.clone(),
        catalog_dir: cfg
            .catalog
            .as_deref()
            .filter(|c| own_catalog && !crate::config::is_url(c))
            .map(std::path::PathBuf::from),
        catalog_watch: Duration::from_secs(cfg.router.catalog_watch_secs.max(1)),
        serve_http,
        periodic,
    }
}

/// `weir loader --config FILE`: the loader as a deployed component. Loads closed hours
/// (from the file buffer or the MongoDB buffer) every `loader.interval_secs` with the
/// catalog directory as it is then (watched like the router's), serves
/// Arrow Flight on `loader.flight`, and `/healthz`, `/readyz` (the warehouse is writable)
/// and `/metrics` on `loader.listen`. SIGINT/SIGTERM stop it after the load in progress
/// (an interrupted load is finished or discarded by the next start: see the commit
/// protocol).
pub async fn loader_component(cfg: Config, catalog: Catalog) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    init_tracing();
    let prom = install_metrics();
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(catalog));
    let settings = loader_settings(&cfg, true, true, Some(Periodic { first_round_now: true }));
    let service = LoaderService::start(settings, shared, prom).await?;
    println!(
        "weir loader: {} -> {}",
        cfg.buffer_dir().display(),
        cfg.warehouse().display()
    );
    println!("  flight     grpc://{}", service.flight_addr);
    if let Some(a) = service.http_addr {
        println!("  health     http://{a}/healthz, /readyz, /metrics");
    }
    signals.wait().await;
    service.shutdown().await;
    Ok(())
}
