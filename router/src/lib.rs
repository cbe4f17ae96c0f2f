//! weir's router: takes batches from collectors into a durable log, acknowledges them
//! once durable, moves every event into the hourly warehouse buffer, and fans events out
//! to the recipients the catalog names (RabbitMQ, MongoDB, Kafka), each with its own
//! cursor over the log, retries and dead letters.
#![warn(missing_docs)]

pub mod buffer;

pub mod config;
pub mod console;
pub mod cursors;
pub mod dead_letter;
pub mod http;
pub mod log_record;
pub mod metrics;
pub mod mongo_buffer;
pub mod recipients;
pub mod source;
#[cfg(test)]
mod testing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_proto::runtime::wal::{Wal, WalOptions};

pub use config::RouterConfig;

/// Errors starting a router.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The log could not be opened.
    #[error("router log: {0}")]
    Log(weir_proto::runtime::wal::WalError),
    /// The buffer directory could not be opened.
    #[error("hourly buffer {path}: {error}")]
    Buffer {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("{0}")]
    Listen(weir_proto::runtime::http::BindError),
    /// A configured feature is not available in this build.
    #[error("{0}")]
    Unsupported(String),
    /// A setting is wrong; the message names the key.
    #[error("{0}")]
    Config(config::InvalidSetting),
    /// The catalog routes events to recipients the config does not define.
    #[error("the catalog does not fit this router's config:\n{0}")]
    Catalog(String),
    /// The Kafka topic cannot be used.
    #[error("{0}")]
    Topic(Box<weir_proto::runtime::kafka::TopicError>),
    /// A Kafka client could not be created (a bad option).
    #[error("cannot create the Kafka client for {what}: {error} (check router.kafka.options)")]
    Kafka {
        /// Which consumer or producer.
        what: String,
        /// What librdkafka said.
        error: Box<rdkafka::error::KafkaError>,
    },
}

// By hand, not `#[from]`: the message already shows the log's error, so it is not
// also exposed as `source()` (anyhow would print it twice).
impl From<weir_proto::runtime::wal::WalError> for StartError {
    fn from(e: weir_proto::runtime::wal::WalError) -> Self {
        StartError::Log(e)
    }
}

/// Where a router keeps its files and finds its catalog.
#[derive(Clone, Debug)]
pub struct RouterPaths {
    /// The catalog directory, watched for changes; `None` for a fixed catalog (the demo).
    pub catalog_dir: Option<std::path::PathBuf>,
    /// The durable log.
    pub log_dir: std::path::PathBuf,
    /// The hourly file buffer.
    pub buffer_dir: std::path::PathBuf,
    /// Where recipients keep what they could never deliver.
    pub dead_letter_dir: std::path::PathBuf,
}

/// A running router.
pub struct Router {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    watcher: Option<JoinHandle<()>>,
    wal: Option<Wal>,
    stop_http: watch::Sender<bool>,
    stop_buffer: watch::Sender<bool>,
    server: JoinHandle<()>,
    buffer: JoinHandle<()>,
    recipients: Vec<JoinHandle<()>>,
}

impl Router {
    /// Opens the log and buffer (or, in Kafka mode, checks the topic and joins the
    /// groups), binds the listener and starts moving events.
    pub async fn start(
        cfg: &RouterConfig,
        paths: &RouterPaths,
        catalog: Arc<arc_swap::ArcSwap<weir_proto::Catalog>>,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Router, StartError> {
        cfg.validate().map_err(StartError::Config)?;
        recipients_check(cfg)(&catalog.load()).map_err(StartError::Catalog)?;
        let mode = match &cfg.kafka {
            Some(k) => {
                weir_proto::runtime::kafka::ensure_topic(k, &k.topic, "router.kafka")
                    .await
                    .map_err(|e| StartError::Topic(Box::new(e)))?;
                let dead = weir_proto::runtime::kafka::KafkaConfig {
                    partitions: 1,
                    ..k.clone()
                };
                weir_proto::runtime::kafka::ensure_topic(&dead, &k.dead_letter_topic(), "router.kafka")
                    .await
                    .map_err(|e| StartError::Topic(Box::new(e)))?;
                Mode::Kafka(k.clone())
            }
            None => {
                let wal = Wal::open(WalOptions {
                    dir: paths.log_dir.clone(),
                    segment_bytes: cfg.log_segment_bytes,
                    name: "router-log",
                    metric_prefix: "weir_router_log",
                    gather: false,
                })?;
                let cursors = cursors::LogCursors::new(wal.clone());
                let end_at_start = wal.durable();
                Mode::Log {
                    wal,
                    cursors,
                    feed: source::feed::Feed::new(source::feed::WINDOW_BYTES),
                    end_at_start,
                }
            }
        };
        let (listener, addr) = weir_proto::runtime::http::bind(&cfg.listen, "router.listen")
            .await
            .map_err(StartError::Listen)?;
        let (stop_buffer, buf_rx) = watch::channel(false);
        let (stop_http, http_rx) = watch::channel(false);
        let token = cfg.token.clone().filter(|t| !t.is_empty());
        let console = Arc::new(console::Console::new(
            console::tail::Tail::new(
                cfg.tail_max_subscribers,
                cfg.tail_max_events_per_second,
                &cfg.tail_redact,
                http_rx.clone(),
            ),
            catalog.clone(),
            std::iter::once((buffer::NAME.to_string(), cfg.buffer.kind().to_string()))
                .chain(cfg.recipients.iter().map(|(n, r)| (n.clone(), r.kind().to_string())))
                .collect(),
            token.clone(),
        ));
        let drain = Duration::from_secs(cfg.drain_secs);
        let run_cfg = |name: &str, route, batch_events| -> Result<_, StartError> {
            Ok(recipients::runner::RunnerConfig {
                name: name.to_string(),
                route,
                batch_events,
                dead_letters: mode.dead_letters(&paths.dead_letter_dir, name)?,
                drain,
                tally: console.stats.tally(name),
            })
        };
        // Every consumer of the log is registered before intake opens, the warehouse
        // buffer first: segments are released only once all registered ones passed them.
        let buffer_source = mode.follow(buffer::NAME, Start::Oldest, u64::MAX)?;
        let buffer = match &cfg.buffer {
            config::BufferConfig::File { .. } => {
                let file_buffer = buffer::FileBuffer::open(
                    &paths.buffer_dir,
                    Duration::from_secs(cfg.grace_secs),
                    cfg.retention_days,
                )
                .map_err(|error| StartError::Buffer {
                    path: paths.buffer_dir.clone(),
                    error,
                })?;
                let sink = buffer::FileBufferSink::new(file_buffer);
                let buffer_cfg = run_cfg(buffer::NAME, recipients::runner::Route::Everything, 1 << 20)?;
                tokio::spawn(recipients::runner::run(sink, buffer_source, buffer_cfg, buf_rx.clone()))
            }
            config::BufferConfig::Mongo { url, db } => {
                let sink =
                    mongo_buffer::MongoBuffer::new(url, db, Duration::from_secs(cfg.grace_secs), cfg.retention_days);
                let buffer_cfg = run_cfg(buffer::NAME, recipients::runner::Route::Everything, 1000)?;
                tokio::spawn(recipients::runner::run(sink, buffer_source, buffer_cfg, buf_rx.clone()))
            }
        };
        let mut recipients = Vec::new();
        for (name, rc) in &cfg.recipients {
            let (max_backlog, batch_events) = rc.limits();
            // A new recipient starts with what arrives from now on.
            let source = mode.follow(name, Start::End, max_backlog)?;
            let run_cfg = run_cfg(name, recipients::runner::Route::Catalog(catalog.clone()), batch_events)?;
            tracing::info!(recipient = %name, kind = rc.kind(), "recipient started");
            recipients.push(rc.as_kind().spawn(
                name,
                recipients::RunArgs {
                    source,
                    cfg: run_cfg,
                    stop: buf_rx.clone(),
                },
            ));
        }
        let intake = match &mode {
            Mode::Log { wal, cursors, feed, .. } => Some(http::Intake {
                cursors: cursors.clone(),
                wal: wal.clone(),
                feed: feed.clone(),
                recent: http::RecentBatches::new(100_000),
                max_batch_bytes: cfg.max_batch_bytes,
                reserve: weir_proto::runtime::disk::Reserve::new(
                    match cfg.buffer {
                        config::BufferConfig::File { .. } => vec![paths.log_dir.clone(), paths.buffer_dir.clone()],
                        _ => vec![paths.log_dir.clone()],
                    },
                    cfg.min_free_bytes,
                ),
            }),
            Mode::Kafka(_) => None,
        };
        if let Mode::Kafka(k) = &mode {
            tokio::spawn(console::kafka::tap(k.clone(), console.clone(), http_rx.clone()));
        }
        let state = Arc::new(http::State {
            intake,
            token,
            metrics,
            catalog: catalog.clone(),
            console,
        });
        let watcher = paths.catalog_dir.clone().map(|dir| {
            tokio::spawn(weir_proto::runtime::catalog_watch::watch_dir(
                dir,
                catalog.clone(),
                Duration::from_secs(cfg.catalog_watch_secs.max(1)),
                ::metrics::counter!(crate::metrics::CATALOG_RELOADS),
                Some(recipients_check(cfg)),
                http_rx.clone(),
            ))
        });
        let server = tokio::spawn(weir_proto::runtime::http::serve_with(
            listener,
            move |req| http::handle(state.clone(), req),
            http_rx,
            weir_proto::runtime::http::ServeOptions {
                max_connections: cfg.max_connections,
            },
        ));
        Ok(Router {
            addr,
            watcher,
            wal: match mode {
                Mode::Log { wal, .. } => Some(wal),
                Mode::Kafka(_) => None,
            },
            stop_http,
            stop_buffer,
            server,
            buffer,
            recipients,
        })
    }

    /// Bytes waiting in the durable log (0 in Kafka mode).
    pub fn log_bytes(&self) -> u64 {
        self.wal.as_ref().map_or(0, |w| w.bytes())
    }

    /// Stops intake (requests in flight finish), then moves what is left in the log into
    /// the hourly buffer and returns.
    pub async fn shutdown(self) {
        let _ = self.stop_http.send(true);
        let _ = self.server.await;
        if let Some(w) = self.watcher {
            let _ = w.await;
        }
        let _ = self.stop_buffer.send(true);
        let _ = self.buffer.await;
        for r in self.recipients {
            let _ = r.await;
        }
    }
}

/// Where a new consumer of the router log starts.
#[derive(Clone, Copy)]
enum Start {
    /// The oldest retained record (the warehouse buffer: everything).
    Oldest,
    /// The end of the log at start (a new recipient: what arrives from now on).
    End,
}

/// The log the router's consumers follow.
enum Mode {
    /// HTTP mode: the router's own log.
    Log {
        wal: Wal,
        cursors: Arc<cursors::LogCursors>,
        /// The newest records, decoded once for every consumer.
        feed: Arc<source::feed::Feed>,
        end_at_start: weir_proto::runtime::wal::Position,
    },
    /// Kafka mode: the topic, one consumer group per consumer.
    Kafka(weir_proto::runtime::kafka::KafkaConfig),
}

impl Mode {
    /// The source of the consumer `name` (registered now, in HTTP mode).
    fn follow(&self, name: &str, start: Start, max_backlog: u64) -> Result<source::Follow, StartError> {
        match self {
            Mode::Log {
                wal,
                cursors,
                feed,
                end_at_start,
            } => {
                let default = match start {
                    Start::Oldest => wal.first_position()?,
                    Start::End => *end_at_start,
                };
                let at = cursors.register(name, default, max_backlog)?;
                Ok(source::Follow::Log(source::log::LogSource::new(
                    name,
                    wal.clone(),
                    cursors.clone(),
                    feed.clone(),
                    at,
                    *end_at_start,
                )))
            }
            Mode::Kafka(k) => source::kafka::KafkaSource::new(k, name)
                .map(source::Follow::Kafka)
                .map_err(|error| StartError::Kafka {
                    what: format!("the group {}.{name}", k.group),
                    error: Box::new(error),
                }),
        }
    }

    /// The dead-letter store of the consumer `name`.
    fn dead_letters(&self, dir: &std::path::Path, name: &str) -> Result<dead_letter::DeadLetterStore, StartError> {
        match self {
            Mode::Log { .. } => Ok(dead_letter::DeadLetterStore::Files(dead_letter::DeadLetters::new(
                dir, name,
            ))),
            Mode::Kafka(k) => dead_letter::KafkaDeadLetters::new(k, name)
                .map(dead_letter::DeadLetterStore::Kafka)
                .map_err(|error| StartError::Kafka {
                    what: format!("the dead letters of {name}"),
                    error: Box::new(error),
                }),
        }
    }
}

/// The check a catalog must pass to be used by a router with `cfg`: every recipient an
/// event names is defined in `[router.recipients]` (else its events would go nowhere).
pub fn recipients_check(cfg: &RouterConfig) -> weir_proto::runtime::catalog_watch::Accept {
    let names: Vec<String> = cfg.recipients.keys().cloned().collect();
    Arc::new(move |catalog: &weir_proto::Catalog| {
        let unknown = catalog.unknown_recipients(names.iter().map(String::as_str));
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(unknown.join("\n"))
        }
    })
}
