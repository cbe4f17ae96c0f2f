//! The log a recipient follows: the router's own durable log (HTTP mode, [`log`]) or the
//! partitions of a Kafka topic in the recipient's consumer group (Kafka mode,
//! [`kafka`]). The recipient runner ([`crate::recipients::runner`]) is written once
//! against [`Source`]: it pulls a run of events, delivers or dead-letters every one, and
//! only then marks the run done (the cursor moves, or the offsets are stored for commit).

pub mod feed;
pub mod kafka;
pub mod log;

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;
use weir_proto::event::EventHead;
use weir_proto::Catalog;

/// Which events of the log a consumer takes. Decided by event name and validity only,
/// so a source can ask once per name in a record rather than once per event.
pub enum Want<'a> {
    /// Every event, valid or not; events the source cannot read go to the sink too (the
    /// warehouse buffer keeps them).
    Everything,
    /// Valid events whose catalog entry lists `recipient`.
    Routed {
        /// The catalog of this run.
        catalog: Arc<Catalog>,
        /// The recipient.
        recipient: &'a str,
    },
}

impl Want<'_> {
    /// Whether a valid (or invalid) event named `event` is taken.
    pub fn wants(&self, event: &str, valid: bool) -> bool {
        match self {
            Want::Everything => true,
            Want::Routed { catalog, recipient } => {
                valid && catalog.events.get(event).is_some_and(|d| d.routes_to(recipient))
            }
        }
    }

    /// Whether an event whose head cannot be decoded goes to the sink (which
    /// dead-letters what it cannot read) rather than straight to the dead letters.
    pub fn takes_unreadable(&self) -> bool {
        matches!(self, Want::Everything)
    }

    /// Keeps the events of `events` this takes, in order, decoding each one's head; the
    /// unreadable ones go to `unreadable` (for a source without [`feed`]'s grouping).
    pub fn select(&self, events: Vec<Bytes>, unreadable: &mut Vec<(Bytes, String)>) -> Vec<Bytes> {
        if let Want::Everything = self {
            return events;
        }
        let mut todo = Vec::new();
        for ev in events {
            // The head decode reads just the name and validity; the sink decodes the rest.
            match EventHead::decode(&ev) {
                Ok(head) if self.wants(head.event, head.valid) => todo.push(ev),
                Ok(_) => {}
                Err(_) => unreadable.push((ev, "unreadable event in the log".into())),
            }
        }
        todo
    }
}

/// A run of events read from a source.
pub struct Pull<M> {
    /// The events the consumer takes ([`Want`]), each an encoded `weir.v1.Event`, in log
    /// order.
    pub events: Vec<Bytes>,
    /// Records or events that cannot be read, with the reason (dead-lettered).
    pub unreadable: Vec<(Bytes, String)>,
    /// Events of the log this run passed (taken or not).
    pub passed: u64,
    /// Where the source stands once this run is done.
    pub mark: M,
}

/// Why a source could not be read this time (the runner waits a second and retries).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The router log could not be read.
    #[error("cannot read the router log: {0}")]
    Log(weir_proto::runtime::wal::WalError),
    /// The Kafka consumer failed.
    #[error("Kafka consumer: {0}")]
    Kafka(rdkafka::error::KafkaError),
}

/// Live figures of one runner, shared with its source's reporter.
#[derive(Default)]
pub struct Stats {
    /// Events of the log passed (delivered, dead-lettered or not routed here).
    pub passed: AtomicU64,
    /// `received_at` of the oldest event not yet delivered; 0 when caught up.
    pub oldest: AtomicI64,
    /// The backlog last published, in events.
    pub backlog: std::sync::atomic::AtomicU64,
}

/// The backlog gauges every source publishes for its recipient.
pub struct Gauges {
    events: metrics::Gauge,
    lag: metrics::Gauge,
    age: metrics::Gauge,
}

impl Gauges {
    /// The gauges labelled `recipient = name`.
    pub fn new(name: &str) -> Gauges {
        let g = |n: &'static str| metrics::gauge!(n, "recipient" => name.to_string());
        Gauges {
            events: g(crate::metrics::RECIPIENT_BACKLOG_EVENTS),
            lag: g(crate::metrics::RECIPIENT_LAG),
            age: g(crate::metrics::RECIPIENT_BACKLOG_AGE),
        }
    }

    /// Publishes a backlog of `events` and the age of the oldest undelivered event.
    pub fn set(&self, events: u64, stats: &Stats) {
        stats.backlog.store(events, std::sync::atomic::Ordering::Relaxed);
        self.events.set(events as f64);
        self.lag.set(events as f64);
        let oldest = stats.oldest.load(std::sync::atomic::Ordering::Relaxed);
        let age = if oldest > 0 {
            (weir_proto::event::now_micros() - oldest).max(0) as f64 / 1e6
        } else {
            0.0
        };
        self.age.set(age);
    }
}

/// What a recipient reads from. Every method is called from the recipient's own task.
pub trait Source: Send + 'static {
    /// Where the source stands after a run.
    type Mark: Send;

    /// The events `want` takes of the next run of at most about `max` events; `None`
    /// when nothing is there now.
    fn pull(
        &mut self,
        max: usize,
        want: &Want<'_>,
    ) -> impl std::future::Future<Output = Result<Option<Pull<Self::Mark>>, SourceError>> + Send;

    /// Returns when a pull may find something new (or soon, to let the runner tick).
    fn wait(&mut self) -> impl std::future::Future<Output = ()> + Send;

    /// Whether a run pulled under `mark` is still this runner's to deliver. False after a
    /// Kafka rebalance took its partitions: its events are left to the new owner, which
    /// reads them again from the last committed offset.
    fn current(&self, _mark: &Self::Mark) -> bool {
        true
    }

    /// Everything up to `mark` is delivered or dead-lettered (durably).
    fn done(&mut self, mark: Self::Mark) -> impl std::future::Future<Output = ()> + Send;

    /// The runner stops: save the position (commit offsets) and leave.
    fn finish(&mut self) -> impl std::future::Future<Output = ()> + Send;

    /// Starts the task that publishes the recipient's backlog gauges.
    fn report(&self, name: &str, stats: Arc<Stats>) -> JoinHandle<()>;
}

/// Either source, so the runner and the recipients are written once for both modes.
pub enum Follow {
    /// The router's durable log.
    Log(log::LogSource),
    /// A Kafka consumer group.
    Kafka(kafka::KafkaSource),
}

/// Where a [`Follow`] stands.
pub enum FollowMark {
    /// A log position.
    Log(<log::LogSource as Source>::Mark),
    /// Kafka offsets.
    Kafka(<kafka::KafkaSource as Source>::Mark),
}

fn wrap<M>(p: Option<Pull<M>>, f: impl FnOnce(M) -> FollowMark) -> Option<Pull<FollowMark>> {
    p.map(|p| Pull {
        events: p.events,
        unreadable: p.unreadable,
        passed: p.passed,
        mark: f(p.mark),
    })
}

impl Source for Follow {
    type Mark = FollowMark;

    async fn pull(&mut self, max: usize, want: &Want<'_>) -> Result<Option<Pull<FollowMark>>, SourceError> {
        Ok(match self {
            Follow::Log(s) => wrap(s.pull(max, want).await?, FollowMark::Log),
            Follow::Kafka(s) => wrap(s.pull(max, want).await?, FollowMark::Kafka),
        })
    }

    async fn wait(&mut self) {
        match self {
            Follow::Log(s) => s.wait().await,
            Follow::Kafka(s) => s.wait().await,
        }
    }

    fn current(&self, mark: &FollowMark) -> bool {
        match (self, mark) {
            (Follow::Log(s), FollowMark::Log(m)) => s.current(m),
            (Follow::Kafka(s), FollowMark::Kafka(m)) => s.current(m),
            _ => false,
        }
    }

    async fn done(&mut self, mark: FollowMark) {
        match (self, mark) {
            (Follow::Log(s), FollowMark::Log(m)) => s.done(m).await,
            (Follow::Kafka(s), FollowMark::Kafka(m)) => s.done(m).await,
            _ => {}
        }
    }

    async fn finish(&mut self) {
        match self {
            Follow::Log(s) => s.finish().await,
            Follow::Kafka(s) => s.finish().await,
        }
    }

    fn report(&self, name: &str, stats: Arc<Stats>) -> JoinHandle<()> {
        match self {
            Follow::Log(s) => s.report(name, stats),
            Follow::Kafka(s) => s.report(name, stats),
        }
    }
}
