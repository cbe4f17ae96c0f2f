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
    /// `kafka`: the address advertised to clients (a proxy in front); `proxy`: the
    /// broker it forwards to.
    other_port: Option<u16>,
}

impl Private {
    fn start(kind: &'static str, dir: &Path) -> Private {
        let mut p = Private {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            kind,
            other_port: None,
        };
        p.up();
        p
    }

    /// A tansu broker behind a `tansu proxy`: stopping the proxy makes the broker
    /// unreachable while it keeps its topics, offsets and groups, as a real Kafka
    /// outage does (tansu's memory storage would lose them if the broker itself
    /// stopped). Returns (broker, proxy); clients use the proxy's port.
    fn kafka_behind_proxy(dir: &Path) -> (Private, Private) {
        let (bport, pport) = (free_port(), free_port());
        let mut broker = Private {
            child: None,
            port: bport,
            dir: dir.join("broker"),
            kind: "kafka",
            other_port: Some(pport),
        };
        broker.up();
        let mut proxy = Private {
            child: None,
            port: pport,
            dir: dir.join("proxy"),
            kind: "proxy",
            other_port: Some(bport),
        };
        proxy.up();
        (broker, proxy)
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
            "proxy" => {
                let url = format!("tcp://127.0.0.1:{port}");
                let origin = format!("tcp://127.0.0.1:{}", self.other_port.unwrap_or(9092));
                let mut c = Command::new(service("TEST_WEIR_TANSU_BIN"));
                c.args(["proxy", "--listener-url", &url, "--advertised-listener-url", &url])
                    .args(["--origin-url", &origin]);
                c
            }
            _ => {
                let url = format!("tcp://127.0.0.1:{port}");
                let advertised = format!("tcp://127.0.0.1:{}", self.other_port.unwrap_or(self.port));
                let mut c = Command::new(service("TEST_WEIR_TANSU_BIN"));
                c.args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &advertised,
                ])
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
        other_port: None,
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

/// `weir up` in Kafka mode on `brokers`: the MongoDB buffer in `db` (the shared
/// nx-27017), the `models` RabbitMQ recipient on `exchange`.
fn kafka_mode_up(dir: &Path, brokers: &str, u: &str, exchange: &str) -> Up {
    let config = format!(
        "[router]\nbuffer = {{ kind = \"mongo\", url = \"{mongo}\", db = \"{u}\" }}\nkafka = {{ brokers = \"{brokers}\", topic = \"{u}.events\", group = \"{u}\", partitions = 6 }}\n{recipients}",
        mongo = service("TEST_WEIR_MONGO"),
        recipients = recipients_config(Some((&service("TEST_WEIR_AMQP"), exchange)), None, None),
    );
    up_with(dir, &config)
}

/// The ids in the MongoDB buffer collections of `db`.
async fn buffered(db: &str) -> BTreeSet<String> {
    let url = service("TEST_WEIR_MONGO");
    let mut out = BTreeSet::new();
    let Ok(client) = mongodb::Client::with_uri_str(&url).await else {
        return out;
    };
    let names = client.database(db).list_collection_names().await.unwrap_or_default();
    for name in names
        .iter()
        .filter(|n| n.starts_with("buffer_") && *n != "buffer_hours")
    {
        out.extend(mongo_ids(&url, db, name).await);
    }
    out
}

async fn buffered_wait(db: &str, want: &BTreeSet<String>) {
    for _ in 0..1200 {
        if want.is_subset(&buffered(db).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the MongoDB buffer has {} of {} ids",
        want.intersection(&buffered(db).await).count(),
        want.len()
    );
}

/// The value of `name{recipient="r"}` in `up`'s /metrics.
fn gauge(up: &Up, name: &str, recipient: &str) -> Option<f64> {
    let m = get_text(&format!("{}/metrics", up.collector));
    let want = format!("{name}{{recipient=\"{recipient}\"}} ");
    m.lines().find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_mode_a_recipient_down_lags_alone_and_its_group_catches_up() {
    let _serial = SERIAL.lock().await;
    let _restart_rabbit = StartAppOnDrop;
    let u = unique("kmr");
    let tmp = tempfile::tempdir().unwrap();
    let rabbit = Rabbit {
        amqp: service("TEST_WEIR_AMQP"),
        exchange: format!("weir.outage.{u}"),
        queue: format!("{u}.q"),
    };
    drop(rabbit.channel().await);
    let up = kafka_mode_up(tmp.path(), &service("TEST_WEIR_KAFKA"), &u, &rabbit.exchange);
    let before = ids("before", 20);
    send(&up, &before);
    assert_eq!(rabbit.read(20).await, set(&before));

    let ok = Command::new("rabbitmqctl").args(["-q", "stop_app"]).status().unwrap();
    assert!(ok.success());
    let during = ids("during", 30);
    for chunk in during.chunks(10) {
        send(&up, chunk);
        std::thread::sleep(Duration::from_millis(200));
    }
    // The buffer's group keeps going; the recipient's group lags.
    let all: BTreeSet<String> = set(&before).union(&set(&during)).cloned().collect();
    buffered_wait(&u, &all).await;
    let lag = eventually(Duration::from_secs(60), "the models group to lag", || {
        gauge(&up, "weir_router_recipient_lag_events", "models").filter(|n| *n >= 30.0)
    });
    assert!(lag <= 50.0, "at most what was sent: {lag}");
    // The buffer's group is caught up (its commit and the statistics trail by a few seconds).
    eventually(
        Duration::from_secs(30),
        "the warehouse lag at 0 while models lags",
        || {
            (gauge(&up, "weir_router_recipient_lag_events", "warehouse") == Some(0.0)
                && gauge(&up, "weir_router_recipient_lag_events", "models") >= Some(30.0))
            .then_some(())
        },
    );

    let ok = Command::new("rabbitmqctl").args(["-q", "start_app"]).status().unwrap();
    assert!(ok.success());
    assert_eq!(rabbit.read(30).await, set(&during));
    eventually(Duration::from_secs(60), "the models lag back at 0", || {
        (gauge(&up, "weir_router_recipient_lag_events", "models") == Some(0.0)).then_some(())
    });
    assert!(up.stop().success());
    let (_conn, ch) = rabbit.channel().await;
    let _ = ch.queue_delete(rabbit.queue.as_str().into(), Default::default()).await;
    let _ = ch
        .exchange_delete(rabbit.exchange.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_mode_the_broker_down_while_the_collector_takes_events_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let u = unique("kmb");
    let tmp = tempfile::tempdir().unwrap();
    let (_broker, mut proxy) = Private::kafka_behind_proxy(&tmp.path().join("kafka"));
    let brokers = format!("127.0.0.1:{}", proxy.port);
    let exchange = format!("weir.outage.{u}");
    let up = kafka_mode_up(tmp.path(), &brokers, &u, &exchange);
    let before = ids("before", 20);
    send(&up, &before);
    buffered_wait(&u, &set(&before)).await;

    // Kafka unreachable: 202 from the spool.
    proxy.down();
    let during = ids("during", 30);
    for chunk in during.chunks(10) {
        send(&up, chunk);
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(3));
    let m = get_text(&format!("{}/metrics", up.collector));
    let forwarded = m.lines().find_map(|l| {
        l.strip_prefix("weir_collector_forwarded_events_total ")?
            .trim()
            .parse::<f64>()
            .ok()
    });
    assert_eq!(
        forwarded,
        Some(20.0),
        "nothing confirmed while Kafka is away: the 202s came from the spool"
    );
    // Back: the collector produces what it held, the routers' groups deliver it.
    proxy.up();
    buffered_wait(&u, &set(&during)).await;
    kafka_wait(
        &brokers,
        &format!("{u}.events"),
        &set(&before).union(&set(&during)).cloned().collect(),
    )
    .await;
    assert!(up.stop().success());
}
