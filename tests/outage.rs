//! A recipient's server goes down while events flow: intake keeps accepting, the other
//! recipients keep delivering, and after the restart the backlog drains with nothing
//! lost. MongoDB (nx-27017) and Kafka (tansu) are private servers this test starts on
//! free ports and stops by PID; RabbitMQ is the machine's own, stopped with
//! `rabbitmqctl stop_app` and started again with `start_app`.

#[path = "it/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::fanout::*;
use common::*;
use lapin::Connection;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;

/// The tests stop shared or private servers; one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts the machine's RabbitMQ again however the test ends.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["-q", "start_app"]).status();
    }
}

/// A server process this test owns.
struct Private {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    kind: &'static str,
}

impl Private {
    fn start(kind: &'static str, dir: &Path) -> Private {
        let mut p = Private {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            kind,
        };
        p.up();
        p
    }

    fn up(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            "mongo" => {
                let mut c = Command::new(service("TEST_WEIR_NX27017_BIN"));
                c.args(["--host", "127.0.0.1", "-p", &port, "--data-dir"])
                    .arg(self.dir.join("db"))
                    .arg("--pid-file")
                    .arg(self.dir.join("nx-27017.pid"));
                c
            }
            _ => {
                let url = format!("tcp://127.0.0.1:{port}");
                let mut c = Command::new(service("TEST_WEIR_TANSU_BIN"));
                c.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                    .args(["--storage-engine", "memory://tansu/"]);
                c
            }
        };
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(
            Duration::from_secs(30),
            &format!("{} to listen on {addr}", self.kind),
            || std::net::TcpStream::connect(&addr).ok(),
        );
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(Duration::from_secs(10), "the server to close its port", || {
            std::net::TcpStream::connect(&addr).err().map(|_| ())
        });
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn send(up: &Up, ids: &[String]) {
    let body: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| ev("item.viewed", id, i as i64) + "\n")
        .collect();
    let (status, reply) = post(
        &format!("{}/v1/events", up.collector),
        body.as_bytes(),
        &[("content-type", "application/x-ndjson")],
    );
    assert_eq!(status, 202, "intake keeps accepting: {reply}");
    assert_eq!(reply["accepted"], ids.len());
}

struct Rabbit {
    amqp: String,
    exchange: String,
    queue: String,
}

impl Rabbit {
    async fn channel(&self) -> (Connection, lapin::Channel) {
        bind_queue(&self.amqp, &self.exchange, &self.queue, "item.#").await
    }

    /// Reads exactly `n` ids from the queue (waiting up to a minute).
    async fn read(&self, n: usize) -> BTreeSet<String> {
        let (_conn, ch) = self.channel().await;
        rabbit_read(&ch, &self.queue, n, Duration::from_secs(60), Read::DistinctIds)
            .await
            .into_iter()
            .map(|(_, _, v)| v["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

async fn mongo_set(url: &str, db: &str) -> BTreeSet<String> {
    mongo_ids(url, db, "item_viewed").await.into_iter().collect()
}

async fn mongo_wait(url: &str, db: &str, want: &BTreeSet<String>) {
    for _ in 0..600 {
        if mongo_set(url, db).await == *want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "MongoDB has {:?}, want {} ids",
        mongo_set(url, db).await.len(),
        want.len()
    );
}

/// Reads the topic from the start with a new group until it holds `want`.
async fn kafka_wait(brokers: &str, topic: &str, want: &BTreeSet<String>) {
    let c: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("g"))
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !want.is_subset(&got) {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Ok(m)) => {
                got.insert(String::from_utf8(m.key().unwrap().to_vec()).unwrap());
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) => panic!("Kafka has {} of {} ids", want.intersection(&got).count(), want.len()),
        }
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn set(a: &[String]) -> BTreeSet<String> {
    a.iter().cloned().collect()
}

async fn outage(which: &str) {
    let _serial = SERIAL.lock().await;
    let _restart_rabbit = StartAppOnDrop;
    let amqp = service("TEST_WEIR_AMQP");
    let u = unique(which);
    let tmp = tempfile::tempdir().unwrap();
    let mut mongo = Private::start("mongo", &tmp.path().join("mongo"));
    let mut kafka = Private::start("kafka", &tmp.path().join("kafka"));
    let mongo_url = format!("mongodb://127.0.0.1:{}", mongo.port);
    let brokers = format!("127.0.0.1:{}", kafka.port);
    let rabbit = Rabbit {
        amqp: amqp.clone(),
        exchange: format!("weir.outage.{u}"),
        queue: format!("{u}.q"),
    };
    drop(rabbit.channel().await);
    let config = recipients_config(
        Some((&amqp, &rabbit.exchange)),
        Some((&mongo_url, &u)),
        Some((&brokers, &u)),
    );
    let up = up_with(tmp.path(), &config);
    let topic = format!("{u}.item.viewed");
    let before = ids("before", 20);
    send(&up, &before);
    assert_eq!(rabbit.read(20).await, set(&before));
    mongo_wait(&mongo_url, &u, &set(&before)).await;
    kafka_wait(&brokers, &topic, &set(&before)).await;

    // The outage.
    match which {
        "rabbitmq" => {
            let ok = Command::new("rabbitmqctl").args(["-q", "stop_app"]).status().unwrap();
            assert!(ok.success());
        }
        "mongo" => mongo.down(),
        _ => kafka.down(),
    }
    let during = ids("during", 30);
    for chunk in during.chunks(10) {
        send(&up, chunk);
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = set(&before).union(&set(&during)).cloned().collect::<BTreeSet<_>>();
    // The others keep delivering.
    if which != "rabbitmq" {
        assert_eq!(rabbit.read(30).await, set(&during));
    }
    if which != "mongo" {
        mongo_wait(&mongo_url, &u, &all).await;
    }
    if which != "kafka" {
        kafka_wait(&brokers, &topic, &set(&during)).await;
    }
    let failing = match which {
        "rabbitmq" => "models",
        "mongo" => "store",
        _ => "stream",
    };
    // The failing recipient shows in metrics (a Kafka send fails only after the
    // producer's message.timeout.ms, 15 s).
    eventually(Duration::from_secs(40), "the failing recipient's up gauge at 0", || {
        let m = get_text(&format!("{}/metrics", up.collector));
        m.contains(&format!("weir_router_recipient_up{{recipient=\"{failing}\"}} 0"))
            .then_some(())
    });

    // Back up: the backlog drains, nothing lost.
    match which {
        "rabbitmq" => {
            let ok = Command::new("rabbitmqctl").args(["-q", "start_app"]).status().unwrap();
            assert!(ok.success());
            assert_eq!(rabbit.read(30).await, set(&during));
        }
        "mongo" => {
            mongo.up();
            mongo_wait(&mongo_url, &u, &all).await;
        }
        _ => {
            // tansu keeps topics in memory: the restarted broker has only what the
            // router re-sent from its backlog.
            kafka.up();
            kafka_wait(&brokers, &topic, &set(&during)).await;
        }
    }
    let backlog = eventually(Duration::from_secs(30), "the backlog gauge back at 0", || {
        let m = get_text(&format!("{}/metrics", up.collector));
        m.contains(&format!(
            "weir_router_recipient_backlog_events{{recipient=\"{failing}\"}} 0"
        ))
        .then_some(m)
    });
    assert!(backlog.contains(&format!("weir_router_recipient_up{{recipient=\"{failing}\"}} 1")));
    assert!(up.stop().success());
    let (_conn, ch) = rabbit.channel().await;
    ch.queue_delete(rabbit.queue.as_str().into(), Default::default())
        .await
        .unwrap();
    ch.exchange_delete(rabbit.exchange.as_str().into(), Default::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_down_while_events_flow() {
    outage("rabbitmq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_down_while_events_flow() {
    outage("mongo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_while_events_flow() {
    outage("kafka").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_pushes_back_to_the_collector_and_nothing_is_lost() {
    let _serial = SERIAL.lock().await;
    let u = unique("full");
    let tmp = tempfile::tempdir().unwrap();
    // The recipient's server is not there yet: its port is free.
    let mut mongo = Private {
        child: None,
        port: free_port(),
        dir: tmp.path().join("mongo"),
        kind: "mongo",
    };
    let mongo_url = format!("mongodb://127.0.0.1:{}", mongo.port);
    let config = recipients_config(None, Some((&mongo_url, &u)), None) + "max_backlog_bytes = 1\n";
    let up = up_with(tmp.path(), &config);
    let first = ids("first", 10);
    send(&up, &first);
    // The backlog is over its bound now: the router refuses the next batches with 503,
    // and the collector keeps them in its spool (the sender still gets 202).
    let mut later = Vec::new();
    let refused = eventually(Duration::from_secs(30), "the router to refuse a batch", || {
        let batch = ids(&format!("later{}", later.len()), 5);
        send(&up, &batch);
        later.extend(batch);
        std::thread::sleep(Duration::from_millis(300));
        let m = get_text(&format!("{}/metrics", up.collector));
        m.lines()
            .find(|l| l.starts_with("weir_router_backlog_full_rejections_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|n| *n >= 1.0)
    });
    assert!(refused >= 1.0);
    let m = get_text(&format!("{}/metrics", up.collector));
    assert!(
        m.contains("weir_router_recipient_backlog_bytes{recipient=\"store\"}"),
        "{m}"
    );
    // The server comes: the backlog drains, intake resumes, every event arrives.
    mongo.up();
    let all: BTreeSet<String> = set(&first).union(&set(&later)).cloned().collect();
    mongo_wait(&mongo_url, &u, &all).await;
    assert!(up.stop().success());
}
