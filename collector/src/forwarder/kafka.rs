//! Kafka mode's transport: one message per spooled event (key = event id, value = the
//! `weir.v1.Event` protobuf, timestamp = `received_at`, headers `event`, `version`,
//! `env`), from an idempotent producer with `acks=all`. A run of the spool is released
//! only when every message in it has a successful delivery report; a failed one is
//! produced again (only it) after a backoff, and one the broker refuses for good goes to
//! the collector's dead-letter store with the reason.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;
use weir_proto::event::EventView;
use weir_proto::runtime::backoff::Backoff;
use weir_proto::runtime::dead_letter::DeadLetters;
use weir_proto::runtime::kafka::{
    ensure_topic, event_headers, permanent, producer_config, KafkaConfig, QuietContext, TopicError,
};
use weir_proto::runtime::log_limit::LogLimit;

use super::ForwarderOptions;
use crate::metrics as m;

/// Produces the spool to the topic.
pub(super) struct KafkaSender<'a> {
    opts: &'a ForwarderOptions,
    kafka: &'a KafkaConfig,
    producer: Option<FutureProducer<QuietContext>>,
    topic_checked: bool,
    /// Set once shutdown was asked for: retries stop here.
    pub(super) deadline: Option<Instant>,
    dead: DeadLetters,
    quiet: LogLimit,
}

/// The longest a run waits for its delivery reports.
const REPORT_WAIT: Duration = Duration::from_secs(30);

/// What became of one message.
enum Sent {
    Ok,
    Retry(String),
    Refused(String),
}

impl<'a> KafkaSender<'a> {
    pub(super) fn new(opts: &'a ForwarderOptions, kafka: &'a KafkaConfig) -> KafkaSender<'a> {
        KafkaSender {
            opts,
            kafka,
            producer: None,
            topic_checked: false,
            deadline: None,
            dead: DeadLetters::in_dir(&opts.dead_letter_dir, "kafka"),
            quiet: LogLimit::new(Duration::from_secs(10)),
        }
    }

    /// Creates the topic when missing, once (a broker that is away is not an error here:
    /// producing retries until it is back).
    async fn check_topic(&mut self) {
        if self.topic_checked {
            return;
        }
        match ensure_topic(self.kafka, &self.kafka.topic, "collector.kafka").await {
            Ok(_) => self.topic_checked = true,
            Err(e @ TopicError::TooFewPartitions { .. }) => {
                tracing::error!(error = %e, "the Kafka topic has fewer partitions than configured; producing anyway");
                self.topic_checked = true;
            }
            Err(e) => {
                if self.quiet.allow().is_some() {
                    tracing::warn!(error = %e, "cannot check the Kafka topic yet; events stay in the spool until Kafka answers");
                }
            }
        }
    }

    fn producer(&mut self) -> Result<&FutureProducer<QuietContext>, KafkaError> {
        if self.producer.is_none() {
            let p = producer_config(
                &self.kafka.brokers,
                &format!("weir-collector-{}", self.opts.collector),
                &self.kafka.options,
            )
            .create_with_context(QuietContext::default())?;
            self.producer = Some(p);
        }
        self.producer.as_ref().ok_or(KafkaError::Canceled)
    }

    /// Produces every event until each is confirmed or dead-lettered; false when
    /// shutdown's drain time ran out first.
    pub(super) async fn deliver(&mut self, events: &[Bytes], shutdown: &mut watch::Receiver<bool>) -> bool {
        self.check_topic().await;
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut dead = 0u64;
        loop {
            let started = Instant::now();
            let outcomes = self.produce(events, &pending).await;
            let mut retry = Vec::new();
            let mut reason = String::new();
            let mut confirmed = 0u64;
            for (i, o) in pending.iter().zip(outcomes) {
                match o {
                    Sent::Ok => confirmed += 1,
                    Sent::Retry(why) => {
                        reason = why;
                        retry.push(*i);
                    }
                    Sent::Refused(why) => {
                        tracing::error!(reason = %why, dir = %self.opts.dead_letter_dir.display(), "Kafka refuses this event for good; it goes to the collector's dead letters");
                        self.dead.add(&events[*i], &format!("refused by Kafka: {why}"));
                        dead += 1;
                    }
                }
            }
            metrics::counter!(m::FORWARDED_EVENTS).increment(confirmed);
            if retry.is_empty() {
                metrics::histogram!(m::FORWARD_LATENCY).record(started.elapsed().as_secs_f64());
                metrics::counter!(m::FORWARDED_BATCHES).increment(1);
                break;
            }
            metrics::counter!(m::FORWARD_RETRIES).increment(1);
            if let Some(n) = self.quiet.allow() {
                tracing::warn!(brokers = %self.kafka.brokers, events = retry.len(), error = %reason, retry_in_ms = backoff.peek().as_millis() as u64, suppressed = n, "producing to Kafka failed; events stay in the spool");
            }
            // A fresh producer after a failure: an idempotent one can be wedged or fatal
            // when the broker lost its state. Its queue is empty (every message above has
            // an outcome), so nothing is lost.
            self.producer = None;
            pending = retry;
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!("drain timeout: leaving the rest of the spool for the next start");
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.changed(), if self.deadline.is_none() => {
                    self.deadline = Some(Instant::now() + self.opts.drain_timeout);
                }
            }
        }
        if dead > 0 {
            if !super::flush_dead_letters(&mut self.dead, &self.opts.dead_letter_dir, self.deadline).await {
                return false;
            }
            metrics::counter!(m::DEAD_LETTERED).increment(dead);
        }
        true
    }

    /// Produces `events[i]` for each `i` in `which` and waits for every delivery report.
    async fn produce(&mut self, events: &[Bytes], which: &[usize]) -> Vec<Sent> {
        let topic = self.kafka.topic.clone();
        let producer = match self.producer() {
            Ok(p) => p.clone(),
            Err(e) => {
                return which
                    .iter()
                    .map(|_| Sent::Retry(format!("cannot create the Kafka producer: {e}")))
                    .collect()
            }
        };
        let mut out: Vec<Option<Sent>> = Vec::with_capacity(which.len());
        let mut reports = Vec::with_capacity(which.len());
        for &i in which {
            let ev = &events[i];
            let view = match EventView::decode(ev) {
                Ok(v) => v,
                Err(e) => {
                    out.push(Some(Sent::Refused(format!("unreadable event in the spool: {e}"))));
                    continue;
                }
            };
            let headers = event_headers(&view);
            let mut record = FutureRecord::to(&topic)
                .key(view.id)
                .payload(ev.as_ref())
                .headers(headers)
                .timestamp(view.received_at / 1000);
            // The producer's queue is bounded (queue.buffering.max.messages): wait for room.
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        reports.push((out.len(), f));
                        out.push(None);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => {
                        out.push(Some(classify(&e)));
                        break;
                    }
                }
            }
        }
        // librdkafka reports every message within message.timeout.ms (15 s unless set);
        // a producer wedged by a broker that lost its state may not: then all is retried
        // from a new producer.
        let limit = tokio::time::Instant::now() + REPORT_WAIT;
        for (slot, f) in reports {
            out[slot] = Some(match tokio::time::timeout_at(limit, f).await {
                Ok(Ok(Ok(_))) => Sent::Ok,
                Ok(Ok(Err((e, _)))) => classify(&e),
                Ok(Err(_)) => Sent::Retry("the Kafka producer dropped the message".into()),
                Err(_) => {
                    self.producer = None;
                    Sent::Retry(format!("no delivery report within {} s", REPORT_WAIT.as_secs()))
                }
            });
        }
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::warn!(?code, %reason, "the Kafka producer failed fatally; making a new one");
            self.producer = None;
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Sent::Retry("no delivery report".into())))
            .collect()
    }
}

fn classify(e: &KafkaError) -> Sent {
    match e.rdkafka_error_code() {
        Some(code) if permanent(code) => Sent::Refused(e.to_string()),
        _ => Sent::Retry(e.to_string()),
    }
}
