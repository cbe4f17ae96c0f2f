//! The RabbitMQ recipient: publishes to a durable topic exchange with the event name as
//! routing key (a model binds `item.*`), persistent messages, publisher confirms; the body
//! is the stored event as JSON and the headers carry `event`, `version`, `env` and `id`.
//! A lost connection is dropped and made again on the next attempt. Messages are
//! published `mandatory`: one that no queue is bound for is returned by the broker,
//! counted in `weir_router_recipient_unroutable_total` and dead-lettered.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::{decode, retry_all, Events, Outcome, ServerError, Sink};

/// `kind = "rabbitmq"`: a RabbitMQ topic exchange; routing key = event name.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// AMQP URL.
    pub url: String,
    /// Durable topic exchange (declared when missing).
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Larger messages are dead-lettered instead of sent (RabbitMQ's own default limit
    /// is 128 MiB).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Once this much of the router log waits for this recipient, intake answers 503
    /// (collectors keep spooling) until it catches up.
    #[serde(default = "super::defaults::max_backlog")]
    pub max_backlog_bytes: u64,
    /// Most events sent to the server in one go.
    #[serde(default = "super::defaults::batch_events")]
    pub batch_events: usize,
}

fn default_exchange() -> String {
    "weir.events".into()
}

fn default_max_message() -> usize {
    128 << 20
}

impl super::Kind for Config {
    fn limits(&self) -> (u64, usize) {
        (self.max_backlog_bytes, self.batch_events)
    }
    fn spawn(&self, name: &str, run: super::RunArgs) -> tokio::task::JoinHandle<()> {
        run.spawn(RabbitSink::new(name, &self.url, &self.exchange, self.max_message_bytes))
    }
}

/// How long a connect or a confirm may take before the attempt counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes to one exchange.
pub struct RabbitSink {
    url: String,
    exchange: String,
    max_message_bytes: usize,
    conn: Option<(Connection, Channel)>,
    body: Vec<u8>,
    /// `weir_router_recipient_unroutable_total`: messages RabbitMQ returned.
    unroutable: metrics::Counter,
}

impl RabbitSink {
    /// A sink for recipient `name`, publishing to `exchange` at `url`; connects on
    /// first delivery.
    pub fn new(name: &str, url: &str, exchange: &str, max_message_bytes: usize) -> RabbitSink {
        RabbitSink {
            url: url.to_string(),
            exchange: exchange.to_string(),
            max_message_bytes,
            conn: None,
            body: Vec::new(),
            unroutable: metrics::counter!(crate::metrics::RECIPIENT_UNROUTABLE, "recipient" => name.to_string()),
        }
    }

    async fn channel(&mut self) -> Result<Channel, ServerError> {
        if let Some((conn, ch)) = &self.conn {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        self.conn = None;
        let connect = async {
            let conn = Connection::connect(&self.url, ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            ch.exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
            Ok::<_, lapin::Error>((conn, ch))
        };
        match tokio::time::timeout(TIMEOUT, connect).await {
            Ok(Ok((conn, ch))) => {
                tracing::info!(exchange = %self.exchange, "connected to RabbitMQ");
                self.conn = Some((conn, ch.clone()));
                Ok(ch)
            }
            Ok(Err(e)) => Err(ServerError::Rabbit(e)),
            Err(_) => Err(ServerError::Timeout {
                server: "RabbitMQ",
                seconds: TIMEOUT.as_secs(),
            }),
        }
    }
}

fn header(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

impl Sink for RabbitSink {
    async fn start(&mut self) {
        if let Err(e) = self.channel().await {
            tracing::warn!(exchange = %self.exchange, error = %e, "cannot reach RabbitMQ at start; the exchange is declared once it answers");
        }
    }

    async fn deliver(&mut self, events: &Events) -> Vec<Outcome> {
        let ch = match self.channel().await {
            Ok(ch) => ch,
            Err(e) => return retry_all(events.len(), &e.to_string()),
        };
        let mut out = vec![Outcome::Delivered; events.len()];
        // Render everything first, then publish all at once: awaiting each publish in
        // turn costs a round trip through the connection's I/O loop per message.
        let mut messages = Vec::with_capacity(events.len());
        for (i, ev) in events.iter().enumerate() {
            let Some(view) = decode(ev, &mut out[i]) else { continue };
            self.body.clear();
            view.write_json(&mut self.body);
            if self.body.len() > self.max_message_bytes {
                out[i] = Outcome::Refuse(format!(
                    "message of {} bytes is over max_message_bytes ({})",
                    self.body.len(),
                    self.max_message_bytes
                ));
                continue;
            }
            let mut headers = FieldTable::default();
            headers.insert("event".into(), header(view.event));
            headers.insert("version".into(), AMQPValue::LongLongInt(i64::from(view.version)));
            headers.insert("env".into(), header(view.env));
            headers.insert("id".into(), header(view.id));
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(view.id.into())
                .with_timestamp((view.received_at / 1_000_000).max(0) as u64)
                .with_headers(headers);
            messages.push((i, view.event.to_string(), self.body.clone(), props));
        }
        let exchange = self.exchange.as_str();
        let publishes = messages.iter().map(|(_, key, body, props)| {
            ch.basic_publish(
                exchange.into(),
                key.as_str().into(),
                // Mandatory: a message no queue is bound for comes back instead of
                // vanishing, and is dead-lettered rather than counted as delivered.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props.clone(),
            )
        });
        let published = futures::future::join_all(publishes).await;
        let mut confirms = Vec::with_capacity(published.len());
        for ((i, ..), p) in messages.iter().zip(published) {
            match p {
                Ok(confirm) => confirms.push((*i, confirm)),
                Err(e) => {
                    // The channel is gone: this one is retried (and every one whose
                    // confirm cannot come any more fails below and is retried too).
                    self.conn = None;
                    out[*i] = Outcome::Retry(format!("publish failed: {e}"));
                }
            }
        }
        let idx: Vec<usize> = confirms.iter().map(|(i, _)| *i).collect();
        let waits = confirms.into_iter().map(|(_, c)| tokio::time::timeout(TIMEOUT, c));
        for (i, r) in idx.into_iter().zip(futures::future::join_all(waits).await) {
            match r {
                Ok(Ok(lapin::Confirmation::Ack(Some(returned)))) => {
                    self.unroutable.increment(1);
                    out[i] = Outcome::Refuse(format!(
                        "unroutable: no queue is bound to exchange {:?} for routing key {:?} ({} {})",
                        self.exchange,
                        messages.iter().find(|m| m.0 == i).map_or("", |m| m.1.as_str()),
                        returned.reply_code,
                        returned.reply_text
                    ));
                }
                Ok(Ok(c)) if c.is_ack() => {}
                Ok(Ok(_)) => out[i] = Outcome::Retry("RabbitMQ nacked the message".into()),
                Ok(Err(e)) => {
                    self.conn = None;
                    out[i] = Outcome::Retry(format!("no confirm: {e}"));
                }
                Err(_) => {
                    self.conn = None;
                    out[i] = Outcome::Retry(format!("no confirm in {}s", TIMEOUT.as_secs()));
                }
            }
        }
        out
    }
}
