//! Where a recipient's refused events go: files under the data directory in HTTP mode
//! (`weir_proto::runtime::dead_letter`), the topic `<topic>.dead-letters` in Kafka mode
//! (key = event id, value = the `weir.v1.Event` as it was on the topic, so a dead letter
//! can be produced back as it is; headers `recipient` and `reason`). Either way the
//! runner flushes them durably before it moves past them.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use weir_proto::event::EventView;
pub use weir_proto::runtime::dead_letter::*;
use weir_proto::runtime::kafka::{producer_config, KafkaConfig, QuietContext};

/// Why dead letters could not be made durable (the runner retries).
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The files could not be written.
    #[error("{0}")]
    Io(std::io::Error),
    /// The dead-letter topic did not confirm.
    #[error("{failed} dead letters not confirmed by Kafka: {error}")]
    Kafka {
        /// How many.
        failed: usize,
        /// The first error.
        error: String,
    },
}

/// A recipient's dead-letter store.
pub enum DeadLetterStore {
    /// NDJSON files, one a day (HTTP mode).
    Files(DeadLetters),
    /// The dead-letter topic (Kafka mode).
    Kafka(KafkaDeadLetters),
}

impl DeadLetterStore {
    /// Queues `event` with the reason it was refused.
    pub fn add(&mut self, event: &[u8], reason: &str) {
        match self {
            DeadLetterStore::Files(d) => d.add(event, reason),
            DeadLetterStore::Kafka(k) => k.pending.push((Bytes::copy_from_slice(event), reason.to_string())),
        }
    }

    /// Makes what is queued durable.
    pub async fn flush(&mut self) -> Result<(), FlushError> {
        match self {
            DeadLetterStore::Files(d) => d.flush().map_err(FlushError::Io),
            DeadLetterStore::Kafka(k) => k.flush().await,
        }
    }
}

impl fmt::Display for DeadLetterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterStore::Files(d) => write!(f, "{}", d.dir().display()),
            DeadLetterStore::Kafka(k) => write!(f, "Kafka topic {}", k.topic),
        }
    }
}

/// Dead letters produced to `<topic>.dead-letters`.
pub struct KafkaDeadLetters {
    producer: FutureProducer<QuietContext>,
    topic: String,
    recipient: String,
    pending: Vec<(Bytes, String)>,
}

impl KafkaDeadLetters {
    /// The store of `recipient` on `cfg`'s dead-letter topic.
    pub fn new(cfg: &KafkaConfig, recipient: &str) -> Result<KafkaDeadLetters, rdkafka::error::KafkaError> {
        let producer = producer_config(&cfg.brokers, "weir-router-dead-letters", &cfg.options)
            .create_with_context(QuietContext::default())?;
        Ok(KafkaDeadLetters {
            producer,
            topic: cfg.dead_letter_topic(),
            recipient: recipient.to_string(),
            pending: Vec::new(),
        })
    }

    async fn flush(&mut self) -> Result<(), FlushError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut first: Option<String> = None;
        let mut sent = Vec::with_capacity(self.pending.len());
        for (ev, reason) in &self.pending {
            let id = EventView::decode(ev).map(|v| v.id.to_string()).unwrap_or_default();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: "recipient",
                    value: Some(&self.recipient),
                })
                .insert(Header {
                    key: "reason",
                    value: Some(reason),
                });
            let record = FutureRecord::to(&self.topic)
                .key(&id)
                .payload(ev.as_ref())
                .headers(headers);
            match self.producer.send_result(record) {
                Ok(f) => sent.push(Some(f)),
                Err((e, _)) => {
                    first.get_or_insert_with(|| e.to_string());
                    sent.push(None);
                }
            }
        }
        let mut keep = Vec::new();
        for (item, f) in self.pending.drain(..).zip(sent) {
            let ok = match f {
                Some(f) => match tokio::time::timeout(Duration::from_secs(30), f).await {
                    Ok(Ok(Ok(_))) => true,
                    Ok(Ok(Err((e, _)))) => {
                        first.get_or_insert_with(|| e.to_string());
                        false
                    }
                    _ => {
                        first.get_or_insert_with(|| "no delivery report".into());
                        false
                    }
                },
                None => false,
            };
            if !ok {
                keep.push(item);
            }
        }
        self.pending = keep;
        match first {
            None => Ok(()),
            Some(error) => Err(FlushError::Kafka {
                failed: self.pending.len(),
                error,
            }),
        }
    }
}
