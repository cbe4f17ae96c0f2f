//! `weir bench fanout`: collector to router to RabbitMQ, latency from accept to consumer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use super::harness::*;

/// How to drive the end-to-end fan-out bench.
#[derive(clap::Args, Clone, Debug)]
pub struct FanoutBench {
    /// The RabbitMQ the router publishes to and the bench consumes from.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// Events per second offered to the collector.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Events per request.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The collector's `batch_max_wait_ms` (how long it gathers a partial batch).
    #[arg(long)]
    batch_max_wait_ms: Option<u64>,
}

/// The bench's catalog addition: an event routed to the `models` recipient.
const FANOUT_CATALOG: &str = r#"
[environments.bench]
kind = "backend"

[fields.seq]
type = "int"

[events."bench.ping"]
owner = "bench"
recipients = ["models"]

[[events."bench.ping".versions]]
version = 1
environments = ["bench"]
required = ["seq"]
"#;

/// Starts `weir collector` and `weir router` with a RabbitMQ recipient, consumes the
/// exchange with a queue bound to `bench.#`, offers `--rate` events/s to the collector and
/// reports the latency from `received_at` (the collector's accept) to the consumer.
pub fn run_fanout(opts: FanoutBench) -> anyhow::Result<()> {
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;

    let (cport, rport) = (free_port()?, free_port()?);
    let exchange = format!("weir.bench.{}", std::process::id());
    let wait = opts
        .batch_max_wait_ms
        .map(|w| format!("batch_max_wait_ms = {w}\n"))
        .unwrap_or_default();
    let (dir, cfg) = bench_setup(&format!(
        "[collector]\nlisten = \"127.0.0.1:{cport}\"\nrouters = [\"http://127.0.0.1:{rport}\"]\n{wait}\
         [router]\nlisten = \"127.0.0.1:{rport}\"\n\
         [router.recipients.models]\nkind = \"rabbitmq\"\nurl = \"{}\"\nexchange = \"{exchange}\"\n",
        opts.amqp
    ))?;
    std::fs::write(dir.path().join("catalog").join("bench.toml"), FANOUT_CATALOG)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The consumer is bound before any event is sent.
    let (conn, mut consumer) = rt.block_on(async {
        let conn = lapin::Connection::connect(&opts.amqp, lapin::ConnectionProperties::default())
            .await
            .with_context(|| format!("cannot connect to RabbitMQ at {}", opts.amqp))?;
        let ch = conn.create_channel().await?;
        ch.exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        ch.queue_bind(
            q.name().clone(),
            exchange.as_str().into(),
            "bench.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        // A consumer as a model would run one: a prefetch window, acks in bulk.
        ch.basic_qos(1000, lapin::options::BasicQosOptions::default()).await?;
        let consumer = ch
            .basic_consume(
                q.name().clone(),
                "bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, anyhow::Error>((conn, consumer))
    })?;
    let router_log = dir.path().join("router.log");
    let collector_log = dir.path().join("collector.log");
    let router = spawn_weir(&["router", "--config", &cfg], None, &router_log)?;
    wait_for_port(rport, &router_log, "the router")?;
    let collector = spawn_weir(&["collector", "--config", &cfg], None, &collector_log)?;
    wait_for_port(cport, &collector_log, "the collector")?;
    let pids = (collector.id(), router.id());
    let before = (proc_usage(pids.0), proc_usage(pids.1));
    let started = Instant::now();
    let _guard = Spawned {
        children: vec![collector, router],
        _dir: dir,
    };
    let events: Vec<String> = (0..opts.batch)
        .map(|i| format!(r#"{{"event":"bench.ping","env":"bench","fields":{{"seq":{i}}}}}"#))
        .collect();
    let body = Bytes::from(events.join("\n"));
    let per_conn = (opts.rate as f64 / opts.batch as f64 / opts.connections as f64).max(0.001);
    let period = Duration::from_secs_f64(1.0 / per_conn);
    let (requests, mut lat) = rt.block_on(async {
        let received = tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let mut unacked = 0;
            while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                let now = weir_proto::event::now_micros();
                unacked += 1;
                if unacked == 100 {
                    unacked = 0;
                    let _ = d.ack(lapin::options::BasicAckOptions { multiple: true }).await;
                }
                let at = serde_json::from_slice::<serde_json::Value>(&d.data)
                    .ok()
                    .and_then(|v| weir_proto::event::parse_rfc3339_micros(v["received_at"].as_str()?).ok());
                if let Some(at) = at {
                    lat.push((now - at).clamp(0, u32::MAX as i64) as u32);
                }
            }
            lat
        });
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..opts.connections {
            let post = Post {
                path: "/v1/events",
                headers: &[("content-type", "application/x-ndjson")],
                expect: 202,
            };
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            tasks.push(tokio::spawn(post_loop(
                cport,
                post,
                body.clone(),
                stop.clone(),
                sent.clone(),
                Some(tick),
            )));
        }
        tokio::time::sleep(Duration::from_secs(opts.duration)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.context("load task failed")??;
        }
        let lat = received.await.context("consumer failed")?;
        Ok::<_, anyhow::Error>((sent.load(Ordering::Relaxed), lat))
    })?;
    drop(conn);
    let wall = started.elapsed().as_secs_f64();
    let after = (proc_usage(pids.0), proc_usage(pids.1));
    let router_metrics = ureq_get(&rt, &format!("http://127.0.0.1:{rport}/metrics")).unwrap_or_default();
    let collector_metrics = ureq_get(&rt, &format!("http://127.0.0.1:{cport}/metrics")).unwrap_or_default();
    lat.sort_unstable();
    let events = requests * opts.batch as u64;
    println!(
        "weir bench fanout: {} events/s offered in {}-event requests over {} connections, {} s; collector -> router -> RabbitMQ -> consumer",
        opts.rate, opts.batch, opts.connections, opts.duration
    );
    println!("  accepted    {events:>10}   events (202, in the spool)");
    println!(
        "  consumed    {:>10}   ({:.2}%)",
        lat.len(),
        100.0 * lat.len() as f64 / events.max(1) as f64
    );
    println!(
        "  accept -> consumer   p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        percentile(&lat, 1.0)
    );
    let quantiles = |text: &str, name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name) && (l.contains("quantile=\"0.5\"") || l.contains("quantile=\"0.99\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| format!("{:.2} ms", v * 1000.0))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "  collector -> router (forward, p50 / p99)      {}",
        quantiles(&collector_metrics, "weir_collector_forward_latency_seconds")
    );
    println!(
        "  received_at -> RabbitMQ confirm (p50 / p99)   {}",
        quantiles(&router_metrics, "weir_router_recipient_delivery_latency_seconds")
    );
    for (name, b, a) in [("collector", before.0, after.0), ("router", before.1, after.1)] {
        if let (Some((c0, _)), Some((c1, rss))) = (b, a) {
            println!(
                "  {name:<10} CPU {:.2} cores   peak RSS {:.1} MiB",
                (c1 - c0) / wall,
                rss as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(())
}
