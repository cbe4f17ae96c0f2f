//! Helpers for the tests of recipients against the real servers `scripts/services`
//! starts: the test catalog, a RabbitMQ queue bound to an exchange, Kafka and MongoDB
//! readers, and `weir up` with a recipients config.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use mongodb::bson::{doc, Document};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{unique, Up};

/// The recipients a config text defines (`[router.recipients.<name>]`).
pub fn defined_recipients(config: &str) -> Vec<String> {
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[router.recipients.")?.strip_suffix(']'))
        .map(str::to_string)
        .collect()
}

/// A catalog routing `item.viewed` to all three recipients, `item.liked` to RabbitMQ
/// only, and `signup` to none (warehouse only) — of `models`, `store` and `stream`, only
/// those in `defined` (a router refuses a catalog naming recipients it does not have).
pub fn write_catalog(dir: &Path, defined: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    let keep = |names: &[&str]| {
        let kept: Vec<String> = names
            .iter()
            .filter(|n| defined.iter().any(|d| d == *n))
            .map(|n| format!("{n:?}"))
            .collect();
        format!("[{}]", kept.join(", "))
    };
    std::fs::write(
        dir.join("items.toml"),
        format!(
            r#"
[environments.web]
kind = "frontend"

[environments.backend]
kind = "backend"

[fields.item_id]
type = "int"

[fields.note]
type = "string"

[events."item.viewed"]
owner = "search"
recipients = {viewed}

[[events."item.viewed".versions]]
version = 1
environments = ["web", "backend"]
required = ["item_id"]
optional = ["note"]

[events."item.liked"]
owner = "search"
recipients = {liked}

[[events."item.liked".versions]]
version = 1
environments = ["web"]
required = ["item_id"]

[events.signup]
owner = "growth"

[[events.signup.versions]]
version = 1
environments = ["web"]
"#,
            viewed = keep(&["models", "store", "stream"]),
            liked = keep(&["models"]),
        ),
    )
    .unwrap();
}

/// One `item_id` event as JSON.
pub fn ev(event: &str, id: &str, item: i64) -> String {
    format!(r#"{{"event":"{event}","env":"web","id":"{id}","fields":{{"item_id":{item}}}}}"#)
}

/// Declares the durable topic `exchange` and a durable `queue` bound to it with `key`.
pub async fn bind_queue(amqp: &str, exchange: &str, queue: &str, key: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(amqp, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (conn, ch)
}

/// How [`rabbit_read`] counts and when it stops.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Exactly `n` messages, and then no more within half a second.
    Exactly,
    /// Until `n` distinct event ids arrived (redeliveries after an outage count once).
    DistinctIds,
}

/// Reads from `queue` (waiting up to `wait` for each message), acking each: (routing
/// key, headers, JSON body) of every message read.
pub async fn rabbit_read(
    ch: &lapin::Channel,
    queue: &str,
    n: usize,
    wait: Duration,
    how: Read,
) -> Vec<(String, FieldTable, serde_json::Value)> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            unique("consumer").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out: Vec<(String, FieldTable, serde_json::Value)> = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    let done = |out: &Vec<_>, ids: &std::collections::BTreeSet<String>| match how {
        Read::Exactly => out.len() >= n,
        Read::DistinctIds => ids.len() >= n,
    };
    while !done(&out, &ids) {
        let d = tokio::time::timeout(wait, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} RabbitMQ messages arrived", out.len()))
            .unwrap()
            .unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
        let headers = d.properties.headers().clone().unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        if let Some(id) = body["id"].as_str() {
            ids.insert(id.to_string());
        }
        out.push((d.routing_key.to_string(), headers, body));
    }
    if how == Read::Exactly {
        assert!(
            tokio::time::timeout(Duration::from_millis(500), consumer.next())
                .await
                .is_err(),
            "more messages than routed"
        );
    }
    out
}

/// A reader of every partition of `topic` from its first record. It waits (up to 60 s)
/// for the topic to exist, then assigns its partitions: no consumer group, so nothing
/// depends on the broker's group coordinator (join, sync, rebalance when the topic
/// appears), which the router's recipients do not use and these tests do not test.
pub fn kafka_consumer(brokers: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // librdkafka's consumer wants a group id; `assign` never joins the group.
        .set("group.id", unique("g"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let partitions: Vec<i32> = loop {
        let last = match c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => match md.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    break t.partitions().iter().map(|p| p.id()).collect();
                }
                Some(t) => format!("{:?}", t.error()),
                None => "no such topic".to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(
            std::time::Instant::now() < deadline,
            "topic {topic} did not appear on {brokers} in 60 s: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&list).unwrap();
    c
}

/// A Kafka message's headers as (key, value) pairs.
pub fn header_pairs(m: &impl Message) -> Vec<(String, String)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|x| {
                    (
                        x.key.to_string(),
                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads `n` records: (key, headers as pairs, JSON value).
pub async fn kafka_read(c: &StreamConsumer, n: usize) -> Vec<(String, Vec<(String, String)>, serde_json::Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} Kafka records arrived", out.len()))
            .unwrap_or_else(|e| panic!("Kafka consumer: {e}"));
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let headers = header_pairs(&m).into_iter().collect();
        out.push((key, headers, serde_json::from_slice(m.payload().unwrap()).unwrap()));
    }
    out
}

/// The `_id`s in `db`.`coll`, sorted; empty while the server cannot be reached.
pub async fn mongo_ids(url: &str, db: &str, coll: &str) -> Vec<String> {
    let Ok(client) = mongodb::Client::with_uri_str(url).await else {
        return Vec::new();
    };
    let Ok(mut cur) = client.database(db).collection::<Document>(coll).find(doc! {}).await else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    while let Some(Ok(d)) = cur.next().await {
        ids.push(d.get_str("_id").unwrap().to_string());
    }
    ids.sort();
    ids
}

/// The `[router.recipients]` config: `models` (RabbitMQ, `(url, exchange)`), `store`
/// (MongoDB, `(url, db)`, collection `{event_ident}`) and `stream` (Kafka, `(brokers,
/// topic prefix)`), each when given.
pub fn recipients_config(
    amqp: Option<(&str, &str)>,
    mongo: Option<(&str, &str)>,
    kafka: Option<(&str, &str)>,
) -> String {
    let mut out = String::new();
    if let Some((url, exchange)) = amqp {
        out +=
            &format!("[router.recipients.models]\nkind = \"rabbitmq\"\nurl = \"{url}\"\nexchange = \"{exchange}\"\n\n");
    }
    if let Some((url, db)) = mongo {
        out += &format!(
            "[router.recipients.store]\nkind = \"mongo\"\nurl = \"{url}\"\ndb = \"{db}\"\ncollection = \"{{event_ident}}\"\n\n"
        );
    }
    if let Some((brokers, prefix)) = kafka {
        out += &format!(
            "[router.recipients.stream]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{prefix}.{{event}}\"\n\n"
        );
    }
    out
}

/// Writes the test catalog and `config` under `dir`, and starts `weir up` on them.
pub fn up_with(dir: &Path, config: &str) -> Up {
    let catalog = dir.join("catalog");
    write_catalog(&catalog, &defined_recipients(config));
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).unwrap();
    Up::start(
        &dir.join("data"),
        &[
            "--catalog",
            catalog.to_str().unwrap(),
            "--config",
            path.to_str().unwrap(),
        ],
        &[],
    )
}
