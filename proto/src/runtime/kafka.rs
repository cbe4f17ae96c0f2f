//! What collector and router share in Kafka mode (DESIGN "Scale-out: Kafka mode"): the
//! `kafka = { ... }` settings, librdkafka's configuration with weir's fixed choices, a
//! client context that logs through one rate limit, the classification of errors no retry
//! can fix, and the topic check at start (created when missing, its partitions checked
//! otherwise).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::log_limit::LogLimit;

/// `kafka = { brokers, topic, group, options, partitions, replication_factor }` in
/// `[collector]` (instead of `routers`) and in `[router]` (instead of intake and a log).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated (`kafka-0:9092,kafka-1:9092`).
    pub brokers: String,
    /// The topic every event goes to (default `weir.events`); dead letters go to
    /// `<topic>.dead-letters`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Routers only: the prefix of the consumer groups, one per recipient
    /// (`<group>.<recipient>`) and one for the warehouse buffer (`<group>.warehouse`).
    #[serde(default = "default_group")]
    pub group: String,
    /// Extra librdkafka settings (`"security.protocol" = "SASL_SSL"`, `"sasl.password" =
    /// "${KAFKA_PASSWORD}"`), applied over weir's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Partitions of the topic when weir creates it (at most this many routers share
    /// the work); an existing topic with fewer is refused at start.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replicas of each partition when weir creates the topic (default 3, or the number
    /// of brokers when there are fewer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
}

fn default_topic() -> String {
    "weir.events".into()
}
fn default_group() -> String {
    "weir".into()
}
fn default_partitions() -> i32 {
    12
}

impl KafkaConfig {
    /// Where dead letters go: `<topic>.dead-letters`.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dead-letters", self.topic)
    }

    /// Checks what deserialization cannot; keys are relative to the `kafka` table.
    pub fn validate(&self) -> Result<(), crate::InvalidSetting> {
        use crate::InvalidSetting as I;
        if self.brokers.trim().is_empty() {
            return Err(I::new(
                "brokers",
                "is empty; list the bootstrap servers, e.g. \"kafka-0:9092,kafka-1:9092\"",
            ));
        }
        if self.topic.is_empty() || self.topic.contains('{') {
            return Err(I::new(
                "topic",
                "must be a plain topic name (no template), e.g. \"weir.events\"",
            ));
        }
        if self.group.is_empty() {
            return Err(I::new("group", "is empty; use a name such as \"weir\""));
        }
        if !(1..=10_000).contains(&self.partitions) {
            return Err(I::new(
                "partitions",
                format!("{} is out of range 1..=10000", self.partitions),
            ));
        }
        if self.replication_factor.is_some_and(|r| !(1..=32).contains(&r)) {
            return Err(I::new("replication_factor", "must be 1..=32"));
        }
        for fixed in ["enable.auto.offset.store", "group.id", "enable.idempotence", "acks"] {
            if self.options.contains_key(fixed) {
                return Err(I::new(
                    format!("options.{fixed}"),
                    "is set by weir (delivery guarantees depend on it); remove it",
                ));
            }
        }
        if let Some(s) = self.options.get("partition.assignment.strategy") {
            if s.contains("cooperative") {
                return Err(I::new(
                    "options.partition.assignment.strategy",
                    "cooperative rebalancing is not supported (weir drops uncommitted work on every rebalance and relies on eager reassignment); use \"range\" or \"roundrobin\"",
                ));
            }
        }
        Ok(())
    }

    /// librdkafka settings for a client named `client_id`: the brokers, then `options`.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("client.id", client_id);
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

/// The producer settings weir insists on (acks from every in-sync replica, the
/// idempotent producer, lz4), then the operator's `options` on top.
pub fn producer_config(brokers: &str, client_id: &str, options: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "15000")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("client.id", client_id);
    for (k, v) in options {
        c.set(k, v);
    }
    c
}

/// Passes librdkafka's own log and error callbacks to `tracing`, at most one line per
/// 30 s: a broker that is down makes librdkafka report every reconnect attempt, and the
/// caller already reports the failing delivery.
pub struct QuietContext {
    limit: LogLimit,
}

impl Default for QuietContext {
    fn default() -> Self {
        QuietContext {
            limit: LogLimit::new(Duration::from_secs(30)),
        }
    }
}

impl QuietContext {
    /// Whether a line may be logged now.
    pub fn allow(&self) -> bool {
        self.limit.allow().is_some()
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

impl rdkafka::ClientContext for QuietContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        quiet_log(self, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        quiet_error(self, error, reason);
    }
}

/// [`rdkafka::ClientContext::log`] through `quiet`'s rate limit (for other contexts too).
pub fn quiet_log(quiet: &QuietContext, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
            if quiet.allow() {
                tracing::warn!(
                    facility = fac,
                    "librdkafka: {log_message} (repeats are suppressed for 30 s)"
                );
            }
        }
        _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
    }
}

/// [`rdkafka::ClientContext::error`] through `quiet`'s rate limit.
pub fn quiet_error(quiet: &QuietContext, error: KafkaError, reason: &str) {
    if quiet.allow() {
        tracing::warn!(error = %error, "Kafka client: {reason} (repeats are suppressed for 30 s)");
    }
}

/// The headers every weir message carries: `event`, `version`, `env` (room for one more).
pub fn event_headers(view: &crate::event::EventView<'_>) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::{Header, OwnedHeaders};
    let version = view.version.to_string();
    OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: "event",
            value: Some(view.event),
        })
        .insert(Header {
            key: "version",
            value: Some(&version),
        })
        .insert(Header {
            key: "env",
            value: Some(view.env),
        })
}

/// Errors no retry can fix: the message itself is refused.
pub fn permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidTopic
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::BadMessage
            | C::InvalidArgument
    )
}

/// Why the topic could not be checked or created.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// No broker answered.
    #[error("cannot reach the Kafka brokers {brokers}: {error} (is Kafka up? check {key}.brokers)")]
    Unreachable {
        /// The bootstrap list.
        brokers: String,
        /// The config key of the table.
        key: String,
        /// What librdkafka said.
        error: KafkaError,
    },
    /// The topic exists with fewer partitions than configured.
    #[error("topic {topic:?} has {found} partitions but {key}.partitions is {want}: at most {found} routers can share it; add partitions to the topic (kafka-topics --alter --partitions {want}) or set {key}.partitions = {found}")]
    TooFewPartitions {
        /// The topic.
        topic: String,
        /// The config key of the table.
        key: String,
        /// Partitions it has.
        found: i32,
        /// `partitions` configured.
        want: i32,
    },
    /// The broker refused to create the topic.
    #[error("cannot create topic {topic:?}: {message} (create it yourself with {partitions} partitions, or give weir the right to)")]
    Create {
        /// The topic.
        topic: String,
        /// Partitions asked for.
        partitions: i32,
        /// What the broker said.
        message: String,
    },
}

/// Makes sure `topic` exists: created with `cfg.partitions` partitions when missing
/// (replication `cfg.replication_factor`, else 3 or the number of brokers when fewer),
/// refused when it has fewer partitions than configured. `key` is the config table
/// (`router.kafka`) for the messages. Returns the topic's partition count.
pub async fn ensure_topic(cfg: &KafkaConfig, topic: &str, key: &str) -> Result<i32, TopicError> {
    let client_cfg = cfg.client_config("weir-admin");
    let unreachable = |error| TopicError::Unreachable {
        brokers: cfg.brokers.clone(),
        key: key.to_string(),
        error,
    };
    let (found, brokers) = {
        let (client_cfg, topic) = (client_cfg.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let admin: AdminClient<DefaultClientContext> = client_cfg.create()?;
            // Metadata of every topic, not of this one: a request naming a missing topic
            // makes brokers with auto.create.topics.enable create it with their default
            // partition count.
            let md = admin.inner().fetch_metadata(None, Duration::from_secs(10))?;
            let found = md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len() as i32)
                .filter(|n| *n > 0);
            Ok::<_, KafkaError>((found, md.brokers().len() as i32))
        })
        .await
        .map_err(|_| unreachable(KafkaError::Canceled))?
        .map_err(unreachable)?
    };
    if let Some(found) = found {
        if found < cfg.partitions {
            return Err(TopicError::TooFewPartitions {
                topic: topic.to_string(),
                key: key.to_string(),
                found,
                want: cfg.partitions,
            });
        }
        return Ok(found);
    }
    let admin: AdminClient<DefaultClientContext> = client_cfg.create().map_err(unreachable)?;
    let replication = cfg.replication_factor.unwrap_or_else(|| 3.min(brokers.max(1)));
    let new = NewTopic::new(topic, cfg.partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&new], &opts).await.map_err(unreachable)?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(
                topic,
                partitions = cfg.partitions,
                replication,
                "created the Kafka topic"
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(TopicError::Create {
                    topic: topic.to_string(),
                    partitions: cfg.partitions,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(cfg.partitions)
}
