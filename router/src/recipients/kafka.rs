//! The Kafka recipient: produces each event to a topic (a template, default
//! `weir.{event}`) with the event id as key, the stored event as JSON as value, headers
//! `event`, `version`, `env` and `id`; `acks=all` and the idempotent producer, so a broker
//! failover neither loses nor duplicates a send. Extra librdkafka settings come from the
//! recipient's `options` table.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Header;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{decode, render_template, retry_all, Events, Outcome, Sink};

/// `kind = "kafka"`: a Kafka topic per template.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic template (`{event}`, `{event_ident}`).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Extra librdkafka producer settings (`"queue.buffering.max.ms" = "10"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Once this much of the router log waits for this recipient, intake answers 503
    /// (collectors keep spooling) until it catches up.
    #[serde(default = "super::defaults::max_backlog")]
    pub max_backlog_bytes: u64,
    /// Most events sent to the server in one go (default 10,000: the producer batches
    /// per partition itself, and each run waits for one acknowledgement round trip).
    #[serde(default = "default_batch_events")]
    pub batch_events: usize,
}

fn default_topic() -> String {
    "weir.{event}".into()
}

fn default_batch_events() -> usize {
    10_000
}

impl super::Kind for Config {
    fn limits(&self) -> (u64, usize) {
        (self.max_backlog_bytes, self.batch_events)
    }
    fn validate(&self) -> Result<(), weir_proto::InvalidSetting> {
        super::check_template(&self.topic).map_err(|e| weir_proto::InvalidSetting::new("topic", e))
    }
    fn spawn(&self, name: &str, run: super::RunArgs) -> tokio::task::JoinHandle<()> {
        let mut sink = KafkaSink::new(
            producer_config(&self.brokers, "weir-router", &self.options),
            &self.topic,
        );
        sink.check_topics = routed_topics(&self.topic, name, &run.cfg.route);
        run.spawn(sink)
    }
}

/// The topics the events the catalog routes to recipient `name` go to.
fn routed_topics(template: &str, name: &str, route: &super::runner::Route) -> Vec<String> {
    let super::runner::Route::Catalog(catalog) = route else {
        return Vec::new();
    };
    let catalog = catalog.load();
    let topics: std::collections::BTreeSet<String> = catalog
        .events
        .iter()
        .filter(|(_, def)| def.routes_to(name))
        .map(|(event, _)| render_template(template, event))
        .collect();
    topics.into_iter().collect()
}

/// Which of `topics` the cluster does not have. Asks for every topic's metadata, which
/// (unlike asking for one) never makes a broker auto-create it.
fn missing_topics(config: &ClientConfig, topics: &[String]) -> Result<Vec<String>, KafkaError> {
    let producer: FutureProducer<QuietContext> = config.create_with_context(QuietContext::default())?;
    let metadata = producer.client().fetch_metadata(None, Duration::from_secs(5))?;
    let have: std::collections::HashSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    Ok(topics.iter().filter(|t| !have.contains(t.as_str())).cloned().collect())
}

/// Produces to one Kafka cluster.
pub struct KafkaSink {
    config: ClientConfig,
    topic: String,
    producer: Option<FutureProducer<QuietContext>>,
    /// Topics checked at start (those the catalog routes events to).
    check_topics: Vec<String>,
}

pub use weir_proto::runtime::kafka::QuietContext;
use weir_proto::runtime::kafka::{event_headers, permanent, producer_config};

impl KafkaSink {
    /// A sink producing to `topic` (a template) through `config`.
    pub fn new(config: ClientConfig, topic: &str) -> KafkaSink {
        KafkaSink {
            config,
            topic: topic.to_string(),
            producer: None,
            check_topics: Vec::new(),
        }
    }
}

fn outcome(e: &KafkaError) -> Outcome {
    match e.rdkafka_error_code() {
        Some(code) if permanent(code) => Outcome::Refuse(format!("Kafka refused the message: {e}")),
        _ => Outcome::Retry(format!("Kafka: {e}")),
    }
}

impl Sink for KafkaSink {
    /// Says at start which topics the routed events need that the cluster lacks: a
    /// broker without `auto.create.topics.enable` refuses them, and deliveries wait.
    async fn start(&mut self) {
        if self.check_topics.is_empty() {
            return;
        }
        let config = self.config.clone();
        let topics = std::mem::take(&mut self.check_topics);
        match tokio::task::spawn_blocking(move || missing_topics(&config, &topics)).await {
            Ok(Ok(missing)) => {
                for topic in missing {
                    tracing::warn!(%topic, "the Kafka topic does not exist yet: create it, or events routed to it wait (retried) until the brokers auto-create it (auto.create.topics.enable)");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot reach Kafka at start to check the topics; deliveries retry until it answers")
            }
            Err(_) => {}
        }
    }

    async fn deliver(&mut self, events: &Events) -> Vec<Outcome> {
        if self.producer.is_none() {
            match self
                .config
                .create_with_context::<_, FutureProducer<QuietContext>>(QuietContext::default())
            {
                Ok(p) => self.producer = Some(p),
                Err(e) => return retry_all(events.len(), &format!("cannot create the Kafka producer: {e}")),
            }
        }
        let Some(producer) = self.producer.as_ref() else {
            return retry_all(events.len(), "no Kafka producer");
        };
        let mut out = vec![Outcome::Delivered; events.len()];
        let mut pending = Vec::with_capacity(events.len());
        let mut body = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            // A long run is rendered in slices, so intake on the same worker is not held up.
            if i % 512 == 511 {
                tokio::task::yield_now().await;
            }
            let Some(view) = decode(ev, &mut out[i]) else { continue };
            body.clear();
            view.write_json(&mut body);
            let headers = event_headers(&view).insert(Header {
                key: "id",
                value: Some(view.id),
            });
            let topic = render_template(&self.topic, view.event);
            let record = FutureRecord::to(&topic)
                .key(view.id)
                .payload(&body)
                .headers(headers)
                .timestamp(view.received_at / 1000);
            // The local queue is bounded (queue.buffering.max.messages); wait for room.
            let mut record = record;
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        pending.push((i, f));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        out[i] = outcome(&e);
                        break;
                    }
                }
            }
        }
        for (i, f) in pending {
            out[i] = match f.await {
                Ok(Ok(_)) => Outcome::Delivered,
                Ok(Err((e, _))) => outcome(&e),
                Err(_) => Outcome::Retry("the Kafka producer dropped the message".into()),
            };
        }
        // An idempotent producer can get stuck or turn fatal when the broker lost its
        // state (a restarted broker without its data); a new producer sends again. Its
        // queue is empty here (every send above has an outcome), so nothing is lost.
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::warn!(?code, %reason, "the Kafka producer failed fatally; making a new one");
            self.producer = None;
        } else if out.iter().any(|o| matches!(o, Outcome::Retry(_))) {
            self.producer = None;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Managed Kafka (MSK, Confluent, Aiven) wants TLS and SCRAM: librdkafka must be built
    /// with them, or the producer cannot even be created.
    #[tokio::test]
    async fn a_sasl_ssl_scram_producer_can_be_created() {
        let options: BTreeMap<String, String> = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "weir"),
            ("sasl.password", "secret"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let created = producer_config("127.0.0.1:1", "weir-router", &options)
            .create_with_context::<_, FutureProducer<QuietContext>>(QuietContext::default());
        assert!(created.is_ok(), "{:?}", created.err());
    }
}
