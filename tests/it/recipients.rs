//! Fan-out against real servers: RabbitMQ (the machine's own), MongoDB (nx-27017) and
//! Kafka (tansu), all started by `scripts/services`. Real consumers read back exactly the
//! events the catalog routes to each recipient.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::fanout::*;
use crate::common::*;
use lapin::types::{AMQPValue, FieldTable};
use mongodb::bson::{doc, Document};

fn header_str(h: &FieldTable, key: &str) -> String {
    match h.inner().get(key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::LongLongInt(i)) => i.to_string(),
        other => panic!("header {key}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_recipient_gets_exactly_the_events_routed_to_it() {
    let amqp = service("TEST_WEIR_AMQP");
    let mongo = service("TEST_WEIR_MONGO");
    let kafka = service("TEST_WEIR_KAFKA");
    let u = unique("fan");
    let tmp = tempfile::tempdir().unwrap();
    let exchange = format!("weir.test.{u}");
    // A model subscribes to every item.* event before anything is sent.
    let queue = format!("{u}.models");
    let (_conn, ch) = bind_queue(&amqp, &exchange, &queue, "item.*").await;
    let config = recipients_config(Some((&amqp, &exchange)), Some((&mongo, &u)), Some((&kafka, &u)));
    let up = up_with(tmp.path(), &config);
    let mut body = String::new();
    let viewed: Vec<String> = (0..5).map(|i| format!("v{i}-{u}")).collect();
    let liked: Vec<String> = (0..3).map(|i| format!("l{i}-{u}")).collect();
    for (i, id) in viewed.iter().enumerate() {
        body.push_str(&ev("item.viewed", id, i as i64));
        body.push('\n');
    }
    for (i, id) in liked.iter().enumerate() {
        body.push_str(&ev("item.liked", id, 100 + i as i64));
        body.push('\n');
    }
    body.push_str(&format!(
        r#"{{"event":"signup","env":"web","id":"s-{u}","fields":{{}}}}"#
    ));
    body.push('\n');
    // Kept with valid=false (frontend env): reaches the warehouse's invalid area only.
    body.push_str(&format!(
        r#"{{"event":"item.viewed","env":"web","id":"bad-{u}","fields":{{"item_id":"nope"}}}}"#
    ));
    body.push('\n');
    let (status, reply) = post(
        &format!("{}/v1/events", up.collector),
        body.as_bytes(),
        &[("content-type", "application/x-ndjson")],
    );
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["accepted"], 10);
    assert_eq!(reply["flagged"], 1);

    // RabbitMQ: the eight item.* events, with the documented headers.
    let got = rabbit_read(&ch, &queue, 8, Duration::from_secs(30), Read::Exactly).await;
    let mut ids = BTreeSet::new();
    for (key, headers, body) in &got {
        let id = body["id"].as_str().unwrap().to_string();
        assert_eq!(key, body["event"].as_str().unwrap(), "routing key = event name");
        assert_eq!(header_str(headers, "event"), *key);
        assert_eq!(header_str(headers, "version"), "1");
        assert_eq!(header_str(headers, "env"), "web");
        assert_eq!(header_str(headers, "id"), id);
        assert_eq!(body["valid"], true);
        assert!(body["received_at"].as_str().unwrap().ends_with('Z'));
        assert!(body["fields"]["item_id"].is_i64());
        ids.insert(id);
    }
    let want: BTreeSet<String> = viewed.iter().chain(&liked).cloned().collect();
    assert_eq!(ids, want);

    // MongoDB: item.viewed only, _id = event id.
    let mut want_viewed = viewed.clone();
    want_viewed.sort();
    let got_mongo = {
        let (mongo, u) = (mongo.clone(), u.clone());
        let mut got = Vec::new();
        for _ in 0..300 {
            got = mongo_ids(&mongo, &u, "item_viewed").await;
            if got.len() >= want_viewed.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        got
    };
    assert_eq!(got_mongo, want_viewed);
    let client = mongodb::Client::with_uri_str(&mongo).await.unwrap();
    let names = client.database(&u).list_collection_names().await.unwrap();
    assert_eq!(
        names,
        vec!["item_viewed".to_string()],
        "nothing else was routed to Mongo"
    );
    let one = client
        .database(&u)
        .collection::<Document>("item_viewed")
        .find_one(doc! {"_id": &viewed[2]})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.get_str("event").unwrap(), "item.viewed");
    assert_eq!(
        one.get_document("fields")
            .unwrap()
            .get("item_id")
            .and_then(|v| v.as_i64().or(v.as_i32().map(i64::from))),
        Some(2)
    );

    // Kafka: item.viewed only, key = event id, headers as documented. The router says
    // it delivered them before anyone reads the topic.
    eventually(Duration::from_secs(60), "the router's 5 Kafka deliveries", || {
        let text = up_metrics(&up);
        let done = text
            .lines()
            .find_map(|l| l.strip_prefix("weir_router_recipient_delivered_events_total{recipient=\"stream\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            == Some(5.0);
        done.then_some(())
    });
    let consumer = kafka_consumer(&kafka, &format!("{u}.item.viewed"));
    let records = kafka_read(&consumer, 5).await;
    let mut keys: Vec<String> = records.iter().map(|r| r.0.clone()).collect();
    keys.sort();
    assert_eq!(keys, want_viewed);
    for (key, headers, body) in &records {
        assert_eq!(body["id"], key.as_str());
        let h: std::collections::BTreeMap<_, _> = headers.iter().cloned().collect();
        assert_eq!(h["event"], "item.viewed");
        assert_eq!(h["version"], "1");
        assert_eq!(h["env"], "web");
        assert_eq!(&h["id"], key);
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(1), consumer.recv())
            .await
            .is_err(),
        "nothing but item.viewed on the topic"
    );

    // Metrics per recipient.
    let router_metrics = up_metrics(&up);
    for r in ["models", "store", "stream"] {
        assert!(
            router_metrics.contains(&format!(
                "weir_router_recipient_delivered_events_total{{recipient=\"{r}\"}}"
            )),
            "{router_metrics}"
        );
    }
    assert!(router_metrics.contains("weir_router_recipient_backlog_events{recipient=\"models\"}"));
    assert!(up.stop().success());
    // Leave the shared servers as they were.
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    ch.exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    client.database(&u).drop().await.unwrap();
}

/// The router's /metrics, found through the collector's.
fn up_metrics(up: &Up) -> String {
    // `weir up` serves one /metrics registry for all components.
    get_text(&format!("{}/metrics", up.collector))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_with_its_reason_and_the_rest_flow() {
    let kafka = service("TEST_WEIR_KAFKA");
    let u = unique("poison");
    let tmp = tempfile::tempdir().unwrap();
    // The producer refuses messages over 1000 bytes, as a broker refuses one over its
    // message.max.bytes.
    let config = recipients_config(None, None, Some((&kafka, &u))) + "options = { \"message.max.bytes\" = \"1000\" }\n";
    let up = up_with(tmp.path(), &config);
    let data = tmp.path().join("data");
    let big = "x".repeat(3000);
    let body = format!(
        "{}\n{}\n{}\n",
        ev("item.viewed", &format!("ok1-{u}"), 1),
        format_args!(r#"{{"event":"item.viewed","env":"web","id":"big-{u}","fields":{{"item_id":2,"note":"{big}"}}}}"#),
        ev("item.viewed", &format!("ok2-{u}"), 3),
    );
    let (status, reply) = post(
        &format!("{}/v1/events", up.collector),
        body.as_bytes(),
        &[("content-type", "application/x-ndjson")],
    );
    assert_eq!(status, 202, "{reply}");
    let consumer = kafka_consumer(&kafka, &format!("{u}.item.viewed"));
    let records = kafka_read(&consumer, 2).await;
    let keys: BTreeSet<String> = records.into_iter().map(|r| r.0).collect();
    assert_eq!(keys, [format!("ok1-{u}"), format!("ok2-{u}")].into_iter().collect());
    let dead_dir = data.join("router/dead-letters/stream");
    let line = eventually(Duration::from_secs(20), "a dead letter", || {
        let file = std::fs::read_dir(&dead_dir).ok()?.next()?.ok()?.path();
        std::fs::read_to_string(file).ok().filter(|t| !t.is_empty())
    });
    assert_eq!(line.lines().count(), 1, "{line}");
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["recipient"], "stream");
    assert_eq!(v["event"]["id"], format!("big-{u}"));
    assert_eq!(v["event"]["fields"]["note"], big);
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.to_lowercase().contains("size"), "{reason}");
    let m = up_metrics(&up);
    assert!(
        m.contains("weir_router_recipient_dead_lettered_events_total{recipient=\"stream\"} 1"),
        "{m}"
    );
    assert!(up.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_loses_nothing_acknowledged_and_mongo_has_no_duplicates() {
    let mongo = service("TEST_WEIR_MONGO");
    let u = unique("kill");
    let tmp = tempfile::tempdir().unwrap();
    let config = recipients_config(None, Some((&mongo, &u)), None) + "batch_events = 50\n";
    let up = up_with(tmp.path(), &config);
    let url = format!("{}/v1/events", up.collector);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stop, u) = (stop.clone(), u.clone());
        std::thread::spawn(move || {
            let (mut acked, mut sent) = (BTreeSet::new(), BTreeSet::new());
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ids: Vec<String> = (0..20).map(|i| format!("k{n}-{i}-{u}")).collect();
                n += 1;
                let body: String = ids.iter().map(|id| ev("item.viewed", id, 1) + "\n").collect();
                sent.extend(ids.iter().cloned());
                let ok = ureq::post(&url)
                    .set("content-type", "application/x-ndjson")
                    .send_string(&body)
                    .is_ok_and(|r| r.status() == 202);
                if ok {
                    acked.extend(ids);
                } else {
                    break;
                }
            }
            (acked, sent)
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    up.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, sent) = sender.join().unwrap();
    assert!(
        acked.len() >= 100,
        "the stream was flowing: {} acknowledged",
        acked.len()
    );
    let up = up_with(tmp.path(), &config);
    let client = mongodb::Client::with_uri_str(&mongo).await.unwrap();
    let coll = client.database(&u).collection::<Document>("item_viewed");
    let mut ids = Vec::new();
    for _ in 0..600 {
        ids = mongo_ids(&mongo, &u, "item_viewed").await;
        if acked.iter().all(|id| ids.binary_search(id).is_ok()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = acked.iter().filter(|id| ids.binary_search(id).is_err()).count();
    assert_eq!(missing, 0, "every acknowledged event reached Mongo after the restart");
    assert!(ids.iter().all(|id| sent.contains(id)), "only events that were sent");
    let count = coll.count_documents(doc! {}).await.unwrap();
    assert_eq!(count as usize, ids.len(), "no duplicates");
    assert!(up.stop().success());
    client.database(&u).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_edit_reroutes_on_sighup_without_restart() {
    let mongo = service("TEST_WEIR_MONGO");
    let u = unique("hup");
    let tmp = tempfile::tempdir().unwrap();
    let catalog = tmp.path().join("catalog");
    // No polling to speak of: only SIGHUP can make the router see the edit in time.
    let config =
        "[router]\ncatalog_watch_secs = 3600\n\n".to_string() + &recipients_config(None, Some((&mongo, &u)), None);
    let up = up_with(tmp.path(), &config);
    let router = up.banner_url("router");
    let etag = |url: &str| {
        ureq::get(&format!("{url}/v1/catalog"))
            .call()
            .unwrap()
            .header("etag")
            .unwrap()
            .to_string()
    };
    let before = etag(&router);
    let signup = |id: &str| format!(r#"{{"event":"signup","env":"web","id":"{id}","fields":{{}}}}"#);
    assert_eq!(post_events(&up.collector, &signup("s1")).0, 202);
    // item.viewed still goes to the store; once it is there, s1 has been passed over.
    assert_eq!(post_events(&up.collector, &ev("item.viewed", "v1", 1)).0, 202);
    for _ in 0..300 {
        if mongo_ids(&mongo, &u, "item_viewed").await.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mongo_ids(&mongo, &u, "item_viewed").await, vec!["v1"]);

    let path = catalog.join("items.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        "[events.signup]\nowner = \"growth\"",
        "[events.signup]\nowner = \"growth\"\nrecipients = [\"store\"]",
    );
    std::fs::write(&path, text).unwrap();
    up.signal("HUP");
    eventually(Duration::from_secs(10), "the router to reload its catalog", || {
        (etag(&router) != before).then_some(())
    });
    assert_eq!(post_events(&up.collector, &signup("s2")).0, 202);
    let mut got = Vec::new();
    for _ in 0..300 {
        got = mongo_ids(&mongo, &u, "signup").await;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, vec!["s2"], "only events after the edit are routed to the store");
    assert!(up.stop().success());
    let client = mongodb::Client::with_uri_str(&mongo).await.unwrap();
    client.database(&u).drop().await.unwrap();
}

/// A model binds its queue before anything is sent: the exchange must exist as soon as
/// weir is up, not after the first delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_exchange_exists_before_the_first_event() {
    let amqp = service("TEST_WEIR_AMQP");
    let u = unique("ex");
    let tmp = tempfile::tempdir().unwrap();
    let exchange = format!("{u}.events");
    let up = up_with(tmp.path(), &recipients_config(Some((&amqp, &exchange)), None, None));
    let conn = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let declared = eventually_async(Duration::from_secs(20), || async {
        // A passive declare fails (and closes the channel) unless the exchange exists.
        let ch = conn.create_channel().await.ok()?;
        ch.exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()
    })
    .await;
    assert!(declared.is_some(), "exchange {exchange} was not declared at start");
    assert!(up.stop().success());
}

#[test]
fn a_missing_kafka_topic_is_named_at_start() {
    let brokers = service("TEST_WEIR_KAFKA");
    let u = unique("topic");
    let tmp = tempfile::tempdir().unwrap();
    let up = up_with(tmp.path(), &recipients_config(None, None, Some((&brokers, &u))));
    // The catalog routes item.viewed to `stream`, whose template makes `<u>.item.viewed`:
    // a topic nobody created. The router says so before any event is sent.
    let topic = format!("{u}.item.viewed");
    let said = eventually(Duration::from_secs(20), "the missing topic named", || {
        let log = up.stderr();
        log.lines()
            .find(|l| l.contains("the Kafka topic does not exist yet") && l.contains(&topic))
            .map(str::to_string)
    });
    assert!(said.contains("auto.create.topics.enable"), "{said}");
    assert!(up.stop().success());
}

/// Polls `f` every 200 ms until it gives `Some` or `limit` passes.
async fn eventually_async<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
