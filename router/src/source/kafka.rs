//! Kafka mode's source: one consumer per recipient in its own group
//! (`<group>.<recipient>`), so the group's committed offsets are the recipient's cursor.
//!
//! A background task polls the consumer (which also serves rebalances and heartbeats)
//! into a small bounded queue; when the queue is full the assigned partitions are paused
//! and polling goes on without fetching, so a recipient that is down for an hour neither
//! buffers the topic in memory nor drops out of its group. Offsets are stored only once a
//! run is delivered or dead-lettered (`enable.auto.offset.store = false`) and committed
//! every second and on every revoke. Every rebalance starts a new generation: runs pulled
//! before it are abandoned, because the eager reassignment makes each partition's owner
//! (this router or another) read again from the last committed offset: nothing is lost,
//! and what is delivered twice is only what was not committed yet.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weir_proto::runtime::kafka::{quiet_error, quiet_log, KafkaConfig, QuietContext};

use super::{Gauges, Pull, Source, SourceError, Stats, Want};

/// The consumer's context: logs through one rate limit and counts rebalances.
pub struct GroupContext {
    quiet: QuietContext,
    group: String,
    topic: String,
    generation: AtomicU64,
    /// The group's lag over this consumer's partitions, from librdkafka's statistics
    /// (high watermark of the last fetch minus the committed offset); -1 until known.
    lag: AtomicI64,
    /// True while the poller holds the assignment paused (the queue is full).
    paused: AtomicBool,
}

impl rdkafka::ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        quiet_log(&self.quiet, level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        quiet_error(&self.quiet, error, reason);
    }
    fn stats(&self, stats: rdkafka::Statistics) {
        let Some(t) = stats.topics.get(&self.topic) else {
            self.lag.store(0, Ordering::Relaxed);
            return;
        };
        let mut lag = 0i64;
        for p in t.partitions.values().filter(|p| p.partition >= 0 && p.desired) {
            lag += if p.consumer_lag >= 0 {
                p.consumer_lag
            } else if p.hi_offset >= 0 {
                // Nothing committed yet: everything the partition holds.
                p.hi_offset - p.lo_offset.max(0)
            } else {
                0
            };
        }
        self.lag.store(lag, Ordering::Relaxed);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            // Commit what is done before the partitions go; the rest is the new owner's.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    tracing::warn!(group = %self.group, error = %e, "cannot commit offsets on revoke; the new owner delivers a little again")
                }
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(group = %self.group, partitions = ?parts, "Kafka partitions assigned");
            }
            Rebalance::Revoke(_) => tracing::info!(group = %self.group, "Kafka partitions revoked"),
            Rebalance::Error(e) => tracing::warn!(group = %self.group, error = %e, "Kafka rebalance failed"),
        }
    }
}

type Consumer_ = StreamConsumer<GroupContext>;

/// One message as the poller hands it on.
struct Fetched {
    generation: u64,
    partition: i32,
    offset: i64,
    value: Option<Bytes>,
}

/// Where a Kafka run stands: its generation and, per partition, the next offset.
pub struct KafkaMark {
    generation: u64,
    next: BTreeMap<i32, i64>,
}

/// A recipient's consumer group on the topic.
pub struct KafkaSource {
    consumer: Arc<Consumer_>,
    topic: String,
    group: String,
    rx: mpsc::Receiver<Fetched>,
    first: Option<Fetched>,
    poller: JoinHandle<()>,
}

/// Messages queued per consumer (about 5 MB of demo events): a Kafka recipient's run
/// (`batch_events`, 10,000 by default) can be taken from it whole.
const QUEUE: usize = 16_384;

impl KafkaSource {
    /// Joins the group `<cfg.group>.<name>` on `cfg.topic`.
    pub fn new(cfg: &KafkaConfig, name: &str) -> Result<KafkaSource, KafkaError> {
        let group = format!("{}.{}", cfg.group, name);
        let mut c = cfg.client_config(&format!("weir-router-{name}"));
        c.set("group.id", &group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("queued.max.messages.kbytes", "16384")
            .set("statistics.interval.ms", "1000");
        // A new group reads the topic from its start: nothing produced before the
        // routers joined is skipped (options may say "latest").
        if !cfg.options.contains_key("auto.offset.reset") {
            c.set("auto.offset.reset", "earliest");
        }
        if !cfg.options.contains_key("partition.assignment.strategy") {
            c.set("partition.assignment.strategy", "range,roundrobin");
        }
        let context = GroupContext {
            quiet: QuietContext::default(),
            group: group.clone(),
            topic: cfg.topic.clone(),
            generation: AtomicU64::new(0),
            lag: AtomicI64::new(-1),
            paused: AtomicBool::new(false),
        };
        let consumer: Arc<Consumer_> = Arc::new(c.create_with_context(context)?);
        consumer.subscribe(&[&cfg.topic])?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let poller = tokio::spawn(poll(consumer.clone(), cfg.topic.clone(), tx));
        Ok(KafkaSource {
            consumer,
            topic: cfg.topic.clone(),
            group,
            rx,
            first: None,
            poller,
        })
    }

    fn generation(&self) -> u64 {
        self.consumer.context().generation.load(Ordering::SeqCst)
    }
}

/// Polls the consumer for ever and hands messages on. When the queue is full it first
/// waits for room (a recipient taking a run empties it in milliseconds); only when it
/// stays full for [`STALL`] (the recipient is retrying) is the assignment paused, and then
/// the consumer is still polled, so rebalances and the group membership are served.
/// Pausing is kept for that case because it drops what librdkafka prefetched, which must
/// then be fetched again.
async fn poll(consumer: Arc<Consumer_>, topic: String, tx: mpsc::Sender<Fetched>) {
    // Messages received but not yet queued, in order: one while the queue is full, a few
    // more that arrive as a pause takes effect.
    let mut held: VecDeque<Fetched> = VecDeque::new();
    let mut paused = false;
    let set_paused = |pause: bool| {
        if let Ok(a) = consumer.assignment() {
            let _ = if pause { consumer.pause(&a) } else { consumer.resume(&a) };
        }
        consumer.context().paused.store(pause, Ordering::Relaxed);
    };
    let fetched = |m: &rdkafka::message::BorrowedMessage<'_>| Fetched {
        generation: consumer.context().generation.load(Ordering::SeqCst),
        partition: m.partition(),
        offset: m.offset(),
        value: m.payload().map(Bytes::copy_from_slice),
    };
    loop {
        if let Some(f) = held.pop_front() {
            if paused {
                // Paused: serve the consumer while waiting for room.
                tokio::select! {
                    p = tx.reserve() => match p {
                        Ok(p) => p.send(f),
                        Err(_) => return,
                    },
                    m = consumer.recv() => {
                        held.push_front(f);
                        match m {
                            Ok(m) => held.push_back(fetched(&m)),
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                }
            } else {
                match tokio::time::timeout(STALL, tx.reserve()).await {
                    Ok(Ok(p)) => p.send(f),
                    Ok(Err(_)) => return,
                    Err(_) => {
                        held.push_front(f);
                        set_paused(true);
                        paused = true;
                    }
                }
            }
            if paused && held.is_empty() {
                set_paused(false);
                paused = false;
            }
            continue;
        }
        match consumer.recv().await {
            Ok(m) => match tx.try_send(fetched(&m)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(f)) => held.push_back(f),
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            },
            Err(e) => {
                if consumer.context().quiet.allow() {
                    tracing::warn!(topic = %topic, error = %e, "Kafka consumer error (repeats are suppressed for 30 s)");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// How often a paused consumer asks the brokers for its lag.
const ASK_BROKERS_EVERY: Duration = Duration::from_secs(10);

/// How long a full queue may wait for the recipient before the assignment is paused.
const STALL: Duration = Duration::from_secs(1);

impl Source for KafkaSource {
    type Mark = KafkaMark;

    async fn pull(&mut self, max: usize, want: &Want<'_>) -> Result<Option<Pull<KafkaMark>>, SourceError> {
        let generation = self.generation();
        let mut events = Vec::new();
        let mut unreadable = Vec::new();
        let mut next = BTreeMap::new();
        while events.len() + unreadable.len() < max.max(1) {
            let f = match self.first.take() {
                Some(f) => f,
                None => match self.rx.try_recv() {
                    Ok(f) => f,
                    Err(_) => break,
                },
            };
            // Fetched before the last rebalance: its partition is read again from the
            // committed offset by whoever owns it now.
            if f.generation != generation {
                continue;
            }
            next.insert(f.partition, f.offset + 1);
            match f.value {
                Some(v) => events.push(v),
                None => unreadable.push((
                    Bytes::new(),
                    format!(
                        "a message without a value at partition {} offset {}",
                        f.partition, f.offset
                    ),
                )),
            }
        }
        if next.is_empty() {
            return Ok(None);
        }
        let passed = events.len() as u64;
        let events = want.select(events, &mut unreadable);
        Ok(Some(Pull {
            events,
            unreadable,
            passed,
            mark: KafkaMark { generation, next },
        }))
    }

    async fn wait(&mut self) {
        if self.first.is_none() {
            if let Ok(f) = tokio::time::timeout(Duration::from_secs(1), self.rx.recv()).await {
                self.first = f;
            }
        }
    }

    fn current(&self, mark: &KafkaMark) -> bool {
        mark.generation == self.generation()
    }

    async fn done(&mut self, mark: KafkaMark) {
        if !self.current(&mark) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &mark.next {
            if let Err(e) = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o)) {
                tracing::warn!(group = %self.group, error = %e, "bad offset");
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // A partition revoked meanwhile: its new owner delivers it again.
            tracing::debug!(group = %self.group, error = %e, "cannot store offsets");
        }
    }

    async fn finish(&mut self) {
        let consumer = self.consumer.clone();
        let group = self.group.clone();
        let _ = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(group = %group, error = %e, "cannot commit offsets at shutdown; a little is delivered again"),
            }
            consumer.unsubscribe();
        })
        .await;
        self.poller.abort();
    }

    fn report(&self, name: &str, stats: Arc<Stats>) -> JoinHandle<()> {
        let (consumer, topic, name) = (self.consumer.clone(), self.topic.clone(), name.to_string());
        tokio::spawn(async move {
            let gauges = Gauges::new(&name);
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut asked: Option<(std::time::Instant, u64)> = None;
            loop {
                tick.tick().await;
                let ctx = consumer.context();
                let mut lag = ctx.lag.load(Ordering::Relaxed).max(0) as u64;
                // Paused partitions fetch nothing, so the statistics' high watermark is
                // the last one fetched: ask the brokers too, every 10 s at most (a
                // request per partition, which must not crowd out the other consumers).
                if ctx.paused.load(Ordering::Relaxed) {
                    if asked.is_none_or(|(at, _)| at.elapsed() >= ASK_BROKERS_EVERY) {
                        let (c, t) = (consumer.clone(), topic.clone());
                        if let Ok(Some(n)) = tokio::task::spawn_blocking(move || lag_from_brokers(&c, &t)).await {
                            asked = Some((std::time::Instant::now(), n));
                        }
                    }
                    lag = lag.max(asked.map_or(0, |(_, n)| n));
                } else {
                    asked = None;
                }
                gauges.set(lag, &stats);
            }
        })
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// The group's lag over this consumer's partitions as the brokers tell it: high
/// watermark minus committed offset (the low watermark when nothing is committed yet).
fn lag_from_brokers(consumer: &Consumer_, topic: &str) -> Option<u64> {
    let timeout = Duration::from_secs(5);
    let committed = consumer.committed(timeout).ok()?;
    let mut total = 0u64;
    for e in committed.elements_for_topic(topic) {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), timeout).ok()?;
        let at = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        total += (high - at).max(0) as u64;
    }
    Some(total)
}
