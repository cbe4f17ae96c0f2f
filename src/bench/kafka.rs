//! `weir bench kafka`: Kafka mode beside HTTP mode, in one run, on one broker.
//!
//! Four stages, each with its own pinned `weir` processes (CPU 0) and the load generator
//! on CPU 1 with the broker:
//!
//! 1. collector → router (HTTP mode): JSON requests into a collector whose spool drains
//!    to a router; events/s from the first request until the spool is drained.
//! 2. collector → Kafka (Kafka mode): the same load into a collector producing to the
//!    bench topic; events/s until every accepted event is confirmed by the broker.
//! 3. router → Kafka recipient (HTTP mode): protobuf batches into a router whose log
//!    feeds a Kafka recipient; events/s until the recipient has delivered all of them.
//! 4. Kafka → router → Kafka recipient (Kafka mode): a router consuming what stage 2
//!    produced; events/s from the first delivery until the recipient has delivered all of
//!    them. Kafka mode requires the MongoDB buffer; its consumer group is independent of
//!    the recipient's, so by default it points at a closed port and only lags (`--mongo`
//!    runs a real one beside, which on a small machine competes for the same cores).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;

use super::harness::*;

/// How to bench Kafka mode.
#[derive(clap::Args, Clone, Debug)]
pub struct KafkaBench {
    /// Kafka bootstrap servers (the bench creates its own topics, named after its pid).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The MongoDB the Kafka-mode router buffers hours in (a database per run). Without
    /// it the buffer points at a closed port: its consumer group only lags (groups are
    /// independent), and what is measured is the Kafka recipient's path alone.
    #[arg(long)]
    mongo: Option<String>,
    /// Concurrent connections into the collector or router.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events per request (collector stages).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds of load per stage.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Partitions of the bench topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// How long a stage may take to drain after the load stops, seconds.
    #[arg(long, default_value_t = 180)]
    drain_timeout: u64,
}

/// The bench's catalog: one event like the demo's `item.viewed`; `routed` sends it to
/// the `stream` recipient.
fn catalog(routed: bool) -> String {
    format!(
        r#"
[events."bench.viewed"]
owner = "bench"
{}
[[events."bench.viewed".versions]]
version = 1
environments = ["web"]
required = ["item_id", "source"]
optional = ["position", "price"]
"#,
        if routed { "recipients = [\"stream\"]" } else { "" }
    )
}

fn event_json(i: u64) -> String {
    format!(
        r#"{{"event":"bench.viewed","version":1,"env":"web","fields":{{"item_id":{i},"source":"search","position":{p},"price":1299.5,"session_id":"s-{s}"}}}}"#,
        p = i % 50,
        s = i % 10_000
    )
}

/// One stage's figures.
struct Figures {
    /// Events the stage moved.
    events: u64,
    /// Events per second, end to end.
    rate: f64,
    /// Intake events/s while loading (collector and HTTP-mode router stages).
    intake: Option<f64>,
    /// CPU cores the pinned process used over the stage.
    cpu: f64,
    /// Its peak RSS, MiB.
    rss: f64,
    /// Whether everything was moved before the drain timeout.
    drained: bool,
    /// A line more about the stage.
    note: Option<String>,
}

/// Runs the four stages and prints them side by side.
pub fn run_kafka(opts: KafkaBench) -> anyhow::Result<()> {
    pin_self_to_cpu1();
    if opts.batch == 0 || opts.connections == 0 {
        bail!("--batch and --connections must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let prefix = format!("weir_bench_{}", std::process::id());
    std::net::TcpStream::connect(opts.brokers.split(',').next().unwrap_or_default())
        .with_context(|| format!("no Kafka broker at {} (pass --brokers)", opts.brokers))?;
    println!(
        "weir bench kafka: {} connections, {} events/request, {} s of load per stage, brokers {}, topic {prefix}.events ({} partitions)",
        opts.connections, opts.batch, opts.duration, opts.brokers, opts.partitions
    );
    let http_collector = collector_stage(&rt, &opts, None)?;
    print_stage("collector -> router (HTTP mode)", &http_collector);
    let kafka_collector = collector_stage(&rt, &opts, Some(&prefix))?;
    print_stage("collector -> Kafka (Kafka mode)", &kafka_collector);
    let http_router = http_router_stage(&rt, &opts, &prefix)?;
    print_stage("router log -> Kafka recipient (HTTP mode)", &http_router);
    let kafka_router = kafka_router_stage(&rt, &opts, &prefix, kafka_collector.events)?;
    print_stage("Kafka -> router -> Kafka recipient (Kafka mode)", &kafka_router);
    println!(
        "  Kafka mode / HTTP mode: collector {:.2}x, router {:.2}x",
        kafka_collector.rate / http_collector.rate.max(1.0),
        kafka_router.rate / http_router.rate.max(1.0)
    );
    Ok(())
}

fn print_stage(what: &str, f: &Figures) {
    println!("  {what}");
    println!(
        "    events/s  {:>10.0}   ({} events{})",
        f.rate,
        f.events,
        if f.drained {
            ""
        } else {
            ", NOT drained before --drain-timeout"
        }
    );
    if let Some(intake) = f.intake {
        println!("    intake/s  {intake:>10.0}   (acknowledged while loading)");
    }
    println!(
        "    CPU {:.2} cores, peak RSS {:.1} MiB (pinned to CPU 0)",
        f.cpu, f.rss
    );
    if let Some(note) = &f.note {
        println!("    {note}");
    }
}

/// Polls `url` every 20 ms until `name` reaches `target` or `timeout`; returns the last
/// value and when it was first seen non-zero, with that value.
fn wait_for_metric(
    rt: &tokio::runtime::Runtime,
    url: &str,
    name: &str,
    target: f64,
    timeout: Duration,
) -> (f64, Option<(Instant, f64)>) {
    let deadline = Instant::now() + timeout;
    let mut first = None;
    loop {
        let v = ureq_get(rt, url).map(|t| metric(&t, name)).unwrap_or(0.0);
        if v > 0.0 && first.is_none() {
            first = Some((Instant::now(), v));
        }
        if v >= target || Instant::now() > deadline {
            return (v, first);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn usage(pid: u32, before: Option<(f64, u64)>, wall: f64) -> (f64, f64) {
    match (before, proc_usage(pid)) {
        (Some((c0, _)), Some((c1, rss))) => ((c1 - c0) / wall, rss as f64 / (1 << 20) as f64),
        _ => (0.0, 0.0),
    }
}

/// Stage 1 (`topic` None: a router on CPU 1) or 2 (Kafka mode on `<topic>.events`).
fn collector_stage(rt: &tokio::runtime::Runtime, opts: &KafkaBench, topic: Option<&str>) -> anyhow::Result<Figures> {
    let (cport, rport) = (free_port()?, free_port()?);
    let forward = match topic {
        Some(t) => format!(
            "kafka = {{ brokers = \"{}\", topic = \"{t}.events\", partitions = {} }}\n",
            opts.brokers, opts.partitions
        ),
        None => format!("routers = [\"http://127.0.0.1:{rport}\"]\n[router]\nlisten = \"127.0.0.1:{rport}\"\n"),
    };
    let (dir, cfg) = bench_setup(&format!(
        "[collector]\nlisten = \"127.0.0.1:{cport}\"\nspool_max_bytes = 68719476736\n{forward}"
    ))?;
    std::fs::write(dir.path().join("catalog/bench.toml"), catalog(false))?;
    let mut children = Vec::new();
    if topic.is_none() {
        let log = dir.path().join("router.log");
        children.push(spawn_weir(&["router", "--config", &cfg], Some("1"), &log)?);
        wait_for_port(rport, &log, "the router")?;
    }
    let log = dir.path().join("collector.log");
    let collector = spawn_weir(&["collector", "--config", &cfg], Some("0"), &log)?;
    let pid = collector.id();
    children.push(collector);
    let _guard = Spawned { children, _dir: dir };
    wait_for_port(cport, &log, "the collector")?;
    let events: Vec<String> = (0..opts.batch as u64).map(event_json).collect();
    let body = Bytes::from(format!("[{}]", events.join(",")));
    let post = Post {
        path: "/v1/events",
        headers: &[("content-type", "application/json")],
        expect: 202,
    };
    let before = proc_usage(pid);
    let started = Instant::now();
    let (_, requests) = rt.block_on(drive(cport, post, body, opts.connections, opts.duration, 0.0))?;
    let intake = (requests * opts.batch as u64) as f64 / started.elapsed().as_secs_f64();
    let url = format!("http://127.0.0.1:{cport}/metrics");
    let accepted = ureq_get(rt, &url).map(|t| metric(&t, "weir_collector_events_accepted_total"))?;
    let (forwarded, _) = wait_for_metric(
        rt,
        &url,
        "weir_collector_forwarded_events_total",
        accepted,
        Duration::from_secs(opts.drain_timeout),
    );
    let wall = started.elapsed().as_secs_f64();
    let (cpu, rss) = usage(pid, before, wall);
    Ok(Figures {
        events: forwarded as u64,
        rate: forwarded / wall,
        intake: Some(intake),
        cpu,
        rss,
        drained: forwarded >= accepted,
        note: None,
    })
}

fn recipient(opts: &KafkaBench, topic: &str) -> String {
    format!(
        "[router.recipients.stream]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\n",
        opts.brokers
    )
}

/// Stage 3: zstd protobuf batches into an HTTP-mode router with a Kafka recipient.
fn http_router_stage(rt: &tokio::runtime::Runtime, opts: &KafkaBench, prefix: &str) -> anyhow::Result<Figures> {
    let port = free_port()?;
    let (_guard, pid) = start_router(
        port,
        "",
        &recipient(opts, &format!("{prefix}.http-out")),
        &[("bench.toml", catalog(true))],
    )?;
    const BATCH: u64 = 1000;
    let body = batch_body("bench.viewed", 1, BATCH, event_json)?;
    let post = BATCH_POST;
    let before = proc_usage(pid);
    let started = Instant::now();
    let (_, requests) = rt.block_on(drive(port, post, body, opts.connections, opts.duration, 0.0))?;
    let sent = requests * BATCH;
    let intake = sent as f64 / started.elapsed().as_secs_f64();
    let (delivered, _) = wait_for_metric(
        rt,
        &format!("http://127.0.0.1:{port}/metrics"),
        "weir_router_recipient_delivered_events_total",
        sent as f64,
        Duration::from_secs(opts.drain_timeout),
    );
    let wall = started.elapsed().as_secs_f64();
    let (cpu, rss) = usage(pid, before, wall);
    Ok(Figures {
        events: delivered as u64,
        rate: delivered / wall,
        intake: Some(intake),
        cpu,
        rss,
        drained: delivered >= sent as f64,
        note: None,
    })
}

/// Stage 4: a Kafka-mode router consuming the `expected` events stage 2 produced.
fn kafka_router_stage(
    rt: &tokio::runtime::Runtime,
    opts: &KafkaBench,
    prefix: &str,
    expected: u64,
) -> anyhow::Result<Figures> {
    let port = free_port()?;
    let (_guard, pid) = start_router(
        port,
        &format!(
            "buffer = {{ kind = \"mongo\", url = \"{}\", db = \"{prefix}\" }}\n\
             kafka = {{ brokers = \"{}\", topic = \"{prefix}.events\", group = \"{prefix}\", partitions = {} }}",
            opts.mongo
                .as_deref()
                .unwrap_or("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1000"),
            opts.brokers,
            opts.partitions,
        ),
        &recipient(opts, &format!("{prefix}.kafka-out")),
        &[("bench.toml", catalog(true))],
    )?;
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/metrics");
    // A consumer group's first join takes a while on some brokers (tansu: ~20 s); the
    // rate counts from the first delivery.
    let timeout = Duration::from_secs(opts.drain_timeout + 60);
    let deadline = Instant::now() + timeout;
    let name = "weir_router_recipient_delivered_events_total";
    // (when, delivered, CPU seconds) at the first delivery seen.
    let mut first: Option<(Instant, f64, f64)> = None;
    let delivered = loop {
        let v = ureq_get(rt, &url).map(|t| metric(&t, name)).unwrap_or(0.0);
        if v > 0.0 && first.is_none() {
            first = Some((Instant::now(), v, proc_usage(pid).map_or(0.0, |u| u.0)));
        }
        if v >= expected as f64 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let done = Instant::now();
    let (cpu_now, rss) = proc_usage(pid).map_or((0.0, 0), |u| u);
    let buffered = ureq_get(rt, &url).map(|t| metric(&t, "weir_router_buffer_events_total"))?;
    // Counted from the first delivery seen: what was delivered after it, over the time
    // after it (the first run's own time is not known, so its events are left out).
    let busy = first.map_or(0.0, |(f, _, _)| done.duration_since(f).as_secs_f64());
    let after_first = delivered - first.map_or(0.0, |(_, v, _)| v);
    let cpu = if busy > 0.0 {
        (cpu_now - first.map_or(0.0, |(_, _, c)| c)) / busy
    } else {
        0.0
    };
    let note = format!(
        "first delivery {:.1} s after start (group join); {}",
        first.map_or(0.0, |(f, _, _)| f.duration_since(started).as_secs_f64()),
        if opts.mongo.is_some() {
            format!("the MongoDB buffer had {buffered:.0} of {expected} events when the recipient finished")
        } else {
            "the MongoDB buffer was pointed at a closed port (pass --mongo URL to run it beside)".to_string()
        }
    );
    Ok(Figures {
        events: delivered as u64,
        rate: if busy > 0.0 { after_first / busy } else { 0.0 },
        intake: None,
        cpu,
        rss: rss as f64 / (1 << 20) as f64,
        drained: delivered >= expected as f64,
        note: Some(note),
    })
}
