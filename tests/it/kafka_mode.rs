//! Kafka mode against real servers (tansu, nx-27017, RabbitMQ): collectors produce to one
//! topic, stateless routers share its partitions, one consumer group per recipient and
//! one for the MongoDB hourly buffer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::{doc, Document};
use rdkafka::consumer::Consumer;
use rdkafka::Message;

use crate::common::fanout::*;
use crate::common::*;

/// One weir process of a Kafka-mode installation.
pub struct Node {
    pub child: Reaped,
    pub url: String,
    pub log: PathBuf,
}

/// Starts `weir <role> --config cfg` with its own data dir and listen port.
pub fn node(role: &str, cfg: &Path, dir: &Path, name: &str) -> Node {
    node_at(role, cfg, dir, name, free_port(), &format!("{name}.log"))
}

/// As [`node`], on `port`, logging to `log` in `dir` (a restart keeps the data dir).
pub fn node_at(role: &str, cfg: &Path, dir: &Path, name: &str, port: u16, log: &str) -> Node {
    let log = dir.join(log);
    let key = if role == "router" {
        "WEIR_ROUTER_LISTEN"
    } else {
        "WEIR_COLLECTOR_LISTEN"
    };
    let child = weir()
        .args([role, "--config", cfg.to_str().unwrap()])
        .env(key, format!("127.0.0.1:{port}"))
        .env("WEIR_DATA_DIR", dir.join(name))
        .env("WEIR_COLLECTOR_NAME", name)
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(60), &format!("{name} answers /healthz"), || {
        ureq::get(&format!("{url}/healthz")).call().ok().map(|_| ())
    });
    Node {
        child: Reaped::new(child),
        url,
        log,
    }
}

impl Node {
    /// The value of the sample `name{recipient="r"}` in its /metrics (0 when absent).
    pub fn metric(&self, name: &str, recipient: &str) -> f64 {
        let text = ureq::get(&format!("{}/metrics", self.url))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default();
        let want = format!("{name}{{recipient=\"{recipient}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&want))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(self) {
        stop_component(self.child.take());
    }
}

/// The config every process shares: Kafka mode on `topic` (6 partitions), the MongoDB
/// buffer in `db`, the `models` RabbitMQ recipient on `exchange` when given.
pub fn kafka_config(dir: &Path, brokers: &str, topic: &str, db: &str, exchange: Option<&str>) -> PathBuf {
    let catalog = dir.join("catalog");
    let defined: Vec<String> = exchange.iter().map(|_| "models".to_string()).collect();
    write_catalog(&catalog, &defined);
    let mongo = service("TEST_WEIR_MONGO");
    // Short sessions: a router killed with -9 leaves its group in seconds, not 45 s.
    let kafka = format!(
        r#"{{ brokers = "{brokers}", topic = "{topic}", group = "{topic}", partitions = 6, options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "1000" }} }}"#
    );
    let mut text = format!(
        "data_dir = \"{}\"\ncatalog = \"{}\"\n[collector]\nkafka = {{ brokers = \"{brokers}\", topic = \"{topic}\", partitions = 6 }}\n\
         [router]\nbuffer = {{ kind = \"mongo\", url = \"{mongo}\", db = \"{db}\" }}\nkafka = {kafka}\n[loader]\nwarehouse = \"{}\"\n",
        dir.join("data").display(),
        catalog.display(),
        dir.join("warehouse").display(),
    );
    if let Some(x) = exchange {
        text += &format!(
            "[router.recipients.models]\nkind = \"rabbitmq\"\nurl = \"{}\"\nexchange = \"{x}\"\n",
            service("TEST_WEIR_AMQP")
        );
    }
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every `_id` in the MongoDB buffer collections of `db`, with how often it occurs.
pub async fn buffered_ids(db: &str) -> BTreeMap<String, usize> {
    let client = mongodb::Client::with_uri_str(service("TEST_WEIR_MONGO")).await.unwrap();
    let db = client.database(db);
    let mut out = BTreeMap::new();
    for name in db.list_collection_names().await.unwrap_or_default() {
        if !name.starts_with("buffer_") || name == "buffer_hours" {
            continue;
        }
        let mut cur = db.collection::<Document>(&name).find(doc! {}).await.unwrap();
        while let Some(Ok(d)) = cur.next().await {
            *out.entry(d.get_str("_id").unwrap().to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// POSTs `ids` as NDJSON events (`item.viewed` for even numbers, `signup` otherwise).
fn send(collector: &str, ids: &[usize], u: &str) {
    let mut body = String::new();
    for &i in ids {
        if i % 2 == 0 {
            body += &ev("item.viewed", &format!("{u}-{i}"), i as i64);
        } else {
            body += &format!(r#"{{"event":"signup","env":"web","id":"{u}-{i}","fields":{{}}}}"#);
        }
        body.push('\n');
    }
    let (status, reply) = post(
        &format!("{collector}/v1/events"),
        body.as_bytes(),
        &[("content-type", "application/x-ndjson")],
    );
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["accepted"], ids.len(), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_three_routers_share_the_partitions_and_a_router_killed_loses_nothing() {
    let brokers = service("TEST_WEIR_KAFKA");
    let amqp = service("TEST_WEIR_AMQP");
    let u = unique("km");
    let tmp = tempfile::tempdir().unwrap();
    let exchange = format!("{u}.x");
    let queue = format!("{u}.models");
    let (_conn, ch) = bind_queue(&amqp, &exchange, &queue, "item.*").await;
    let cfg = kafka_config(tmp.path(), &brokers, &format!("{u}.events"), &u, Some(&exchange));
    let dir = tmp.path();
    let mut routers: Vec<Node> = (0..3)
        .map(|i| node("router", &cfg, dir, &format!("router{i}")))
        .collect();
    let collectors: Vec<Node> = (0..2)
        .map(|i| node("collector", &cfg, dir, &format!("collector{i}")))
        .collect();

    // A trickle until every router delivers to the buffer: the group has three members
    // and each owns partitions.
    let mut next = 0usize;
    eventually(Duration::from_secs(120), "every router delivers to the buffer", || {
        let ids: Vec<usize> = (next..next + 20).collect();
        send(&collectors[next / 20 % 2].url, &ids, &u);
        next += 20;
        std::thread::sleep(Duration::from_millis(300));
        routers
            .iter()
            .all(|r| r.metric("weir_router_recipient_delivered_events_total", "warehouse") > 0.0)
            .then_some(())
    });
    let per_router: Vec<f64> = routers
        .iter()
        .map(|r| r.metric("weir_router_recipient_delivered_events_total", "warehouse"))
        .collect();

    // 50,000 events in all, from both collectors; one router is killed half-way.
    let total = 50_000usize;
    let mut k = 0;
    while next < total {
        let end = (next + 500).min(total);
        send(&collectors[k % 2].url, &(next..end).collect::<Vec<_>>(), &u);
        next = end;
        k += 1;
        if k == 50 {
            routers.remove(1).kill9();
        }
    }
    let want: BTreeSet<String> = (0..total).map(|i| format!("{u}-{i}")).collect();
    let buffered = loop_until_buffered(&u, total).await;
    let ids: BTreeSet<String> = buffered.keys().cloned().collect();
    assert_eq!(ids, want, "every acknowledged id is in the MongoDB buffer");
    assert!(buffered.values().all(|n| *n == 1), "once each (_id)");

    // RabbitMQ got every routed event (item.viewed) at least once.
    let routed = total / 2;
    let got = rabbit_read(&ch, &queue, routed, Duration::from_secs(60), Read::DistinctIds).await;
    let rabbit_ids: BTreeSet<String> = got
        .iter()
        .map(|(_, _, b)| b["id"].as_str().unwrap().to_string())
        .collect();
    let want_routed: BTreeSet<String> = (0..total).step_by(2).map(|i| format!("{u}-{i}")).collect();
    assert_eq!(rabbit_ids, want_routed);

    // The survivors took the killed router's partitions over (a second assignment).
    let group = format!("group={u}.events.warehouse ");
    let assignments: usize = routers
        .iter()
        .map(|r| {
            std::fs::read_to_string(&r.log)
                .unwrap()
                .lines()
                .filter(|l| l.contains("Kafka partitions assigned") && l.contains(&group))
                .count()
        })
        .sum();
    assert!(
        assignments >= 4,
        "a rebalance after the kill: {assignments} assignments"
    );
    for r in routers {
        r.stop();
    }
    for c in collectors {
        c.stop();
    }
    // The loader makes Parquet of the shared buffer: each id exactly once.
    load_now(&cfg, dir);
    let mut rows = Vec::new();
    for f in parquet_files(&dir.join("warehouse")) {
        rows.extend(strings(&read_parquet(&f), "id"));
    }
    assert_eq!(rows.len(), total, "no duplicate rows in Parquet");
    assert_eq!(rows.into_iter().collect::<BTreeSet<_>>(), want);
    eprintln!("warehouse deliveries per router before the kill: {per_router:?}");
}

/// Waits (up to 3 min) until `db`'s buffer holds `n` distinct ids.
async fn loop_until_buffered(db: &str, n: usize) -> BTreeMap<String, usize> {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let ids = buffered_ids(db).await;
        if ids.len() >= n || std::time::Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_land_on_the_dead_letter_topic_with_the_reason() {
    let brokers = service("TEST_WEIR_KAFKA");
    let u = unique("kd");
    let tmp = tempfile::tempdir().unwrap();
    let topic = format!("{u}.events");
    // No queue is bound to the exchange: RabbitMQ returns every message unroutable.
    let cfg = kafka_config(tmp.path(), &brokers, &topic, &u, Some(&format!("{u}.x")));
    let router = node("router", &cfg, tmp.path(), "router");
    let collector = node("collector", &cfg, tmp.path(), "collector");
    // The console reads every partition with its own consumer, from the end: give it
    // time to resolve the end offsets (tansu answers them slowly).
    let tail = crate::console::subscribe(&format!("{}/v1/tail?event=item.*", router.url));
    std::thread::sleep(Duration::from_secs(5));
    send(&collector.url, &[0, 2, 4], &u);
    let tailed = crate::console::take(&tail, 3, Duration::from_secs(30));
    let tailed: BTreeSet<String> = tailed.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    let want: BTreeSet<String> = [0, 2, 4].iter().map(|i| format!("{u}-{i}")).collect();
    assert_eq!(tailed, want, "the Kafka-mode console tails every partition");
    let c = kafka_consumer(&brokers, &format!("{topic}.dead-letters"));
    let mut got = BTreeMap::new();
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(90), c.recv())
            .await
            .expect("dead letters on the topic")
            .unwrap();
        let headers: BTreeMap<String, String> = header_pairs(&m).into_iter().collect();
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let view =
            weir_proto::event::EventView::decode(m.payload().unwrap()).expect("the event as it was on the topic");
        assert_eq!(view.id, key);
        got.insert(key, headers);
    }
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), want);
    for h in got.values() {
        assert_eq!(h["recipient"], "models");
        assert!(h["reason"].contains("unroutable"), "{h:?}");
    }
    c.unsubscribe();
    router.stop();
    collector.stop();
}

#[test]
fn config_check_refuses_kafka_mode_with_a_file_buffer_and_a_collector_with_routers_and_kafka() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = weir()
            .args(["config", "check", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} must be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = check(
        "file-buffer.toml",
        "[router]\nkafka = { brokers = \"127.0.0.1:9092\", topic = \"weir.events\" }\n",
    );
    assert!(
        e.contains("file-buffer.toml") && e.contains("router.buffer") && e.contains("Kafka mode"),
        "{e}"
    );
    let e = check(
        "both.toml",
        "[collector]\nrouters = [\"http://127.0.0.1:8081\"]\nkafka = { brokers = \"127.0.0.1:9092\" }\n",
    );
    assert!(e.contains("collector.routers and collector.kafka are both set"), "{e}");
    let e = check(
        "fixed.toml",
        "[collector]\nkafka = { brokers = \"b:9092\", options = { \"enable.idempotence\" = \"false\" } }\n",
    );
    assert!(e.contains("collector.kafka.options.enable.idempotence"), "{e}");
}

#[test]
fn a_topic_with_fewer_partitions_than_configured_is_refused_at_start_with_what_to_do() {
    let brokers = service("TEST_WEIR_KAFKA");
    let u = unique("kp");
    let tmp = tempfile::tempdir().unwrap();
    let topic = format!("{u}.events");
    // The first router creates the topic with 6 partitions.
    let cfg = kafka_config(tmp.path(), &brokers, &topic, &u, None);
    let router = node("router", &cfg, tmp.path(), "router");
    router.stop();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("partitions = 6", "partitions = 12");
    std::fs::write(&cfg, text).unwrap();
    let out = weir()
        .args(["router", "--config", cfg.to_str().unwrap()])
        .env("WEIR_ROUTER_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains(&format!(
            "topic \"{topic}\" has 6 partitions but router.kafka.partitions is 12: at most 6 routers can share it"
        )),
        "{e}"
    );
}

/// kill -9 of a Kafka-mode collector (and, less often, the router) at seeded random
/// moments under steady load: every acknowledged id reaches the MongoDB buffer, and the
/// Parquet holds each exactly once. A collector killed between producing a segment and
/// releasing it produces it again on restart; the buffer's `_id` and the loader make that
/// duplicate disappear. `TEST_WEIR_FAULT_CYCLES` (default 6) and `TEST_WEIR_FAULT_SEED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_kafka_mode_collector_at_random_moments_loses_no_acknowledged_event() {
    let (cycles, mut rand) = fault_plan(0x0ddba11);
    let brokers = service("TEST_WEIR_KAFKA");
    let u = unique("kk");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = kafka_config(dir, &brokers, &format!("{u}.events"), &u, None);
    let (cport, rport) = (free_port(), free_port());
    let mut router = node_at("router", &cfg, dir, "router", rport, "router-0.log");
    let mut collector = node_at("collector", &cfg, dir, "collector", cport, "collector-0.log");
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = crate::faults::steady_load(collector.url.clone(), 1, stop_load.clone(), |id| {
        format!(r#"{{"event":"signup","env":"web","id":"{id}","fields":{{}}}}"#)
    });
    for i in 1..=cycles {
        tokio::time::sleep(Duration::from_millis(200 + rand(1000))).await;
        // The collector is the one under test: three kills in four.
        if rand(4) > 0 {
            collector.kill9();
            tokio::time::sleep(Duration::from_millis(rand(300))).await;
            collector = node_at(
                "collector",
                &cfg,
                dir,
                "collector",
                cport,
                &format!("collector-{i}.log"),
            );
        } else {
            router.kill9();
            tokio::time::sleep(Duration::from_millis(rand(300))).await;
            router = node_at("router", &cfg, dir, "router", rport, &format!("router-{i}.log"));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, in_doubt) = load.join().unwrap();
    assert!(acked.len() > 1000, "the load ran: {} acknowledged", acked.len());
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let buffered = loop {
        let ids = buffered_ids(&u).await;
        if acked.iter().all(|id| ids.contains_key(id)) || std::time::Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let missing: Vec<&String> = acked.iter().filter(|id| !buffered.contains_key(*id)).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events never reached the buffer, e.g. {missing:?}",
        acked.iter().filter(|id| !buffered.contains_key(*id)).count()
    );
    router.stop();
    collector.stop();
    load_now(&cfg, dir);
    crate::faults::assert_ledger_in_doubt(&dir.join("warehouse"), &acked, &in_doubt);
}

/// `weir loader run --now` on the shared MongoDB buffer of `cfg` (its own data dir under
/// `dir`), which must succeed.
fn load_now(cfg: &Path, dir: &Path) {
    let out = weir()
        .args(["loader", "run", "--now", "--config", cfg.to_str().unwrap()])
        .env("WEIR_DATA_DIR", dir.join("loader"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
