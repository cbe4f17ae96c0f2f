//! `weir bench collector`: a load generator for the collector.
//!
//! By default it starts its own `weir collector` (pinned to CPU 0 with `taskset` when
//! available, one tokio worker), in a temporary data directory with no router listening,
//! so what is measured is intake alone: parse, validate, stamp, spool with fsync. With
//! `--with-router` a `weir router` runs too and the spool drains. `--target URL`
//! measures a collector that is already running instead (CPU and RSS then need `--pid`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::harness::*;

/// How the collector bench sends events.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Keep-alive HTTP connections.
    Http,
    /// The unix datagram socket.
    Datagram,
}

/// How to load the collector.
#[derive(clap::Args, Clone, Debug)]
pub struct CollectorBench {
    /// How events go in.
    #[arg(long, value_enum, default_value_t = Mode::Http)]
    mode: Mode,
    /// Concurrent connections (http) or sending sockets (datagram).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events per request or datagram.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Target events per second overall; 0 = flat out.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Measure this running collector (base URL, e.g. http://127.0.0.1:8080) instead of
    /// starting one.
    #[arg(long)]
    target: Option<String>,
    /// With --target and --mode datagram: the datagram socket path.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// With --target: the collector's process id, for CPU and RSS figures.
    #[arg(long)]
    pid: Option<u32>,
    /// Also start a router, so the spool drains while loading.
    #[arg(long)]
    with_router: bool,
}

/// Runs the collector bench and prints its figures.
pub fn run(opts: CollectorBench) -> anyhow::Result<()> {
    if opts.target.is_none() {
        pin_self_to_cpu1();
    }
    if opts.batch == 0 || opts.connections == 0 {
        bail!("--batch and --connections must be at least 1");
    }
    let datagram = opts.mode == Mode::Datagram;
    let (spawned, url, dgram, pid) = match &opts.target {
        Some(t) => (
            None,
            t.trim_end_matches('/').to_string(),
            opts.socket.clone().unwrap_or_default(),
            opts.pid.unwrap_or(0),
        ),
        None => {
            let (s, u, d, p) = start_collector(opts.with_router)?;
            (Some(s), u, d, p)
        }
    };
    if datagram && dgram.as_os_str().is_empty() {
        bail!("--mode datagram with --target needs --socket PATH");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let before = proc_usage(pid);
    let started = Instant::now();
    let result = rt.block_on(load(&opts, &url, &dgram, datagram));
    let wall = started.elapsed().as_secs_f64();
    let after = proc_usage(pid);
    let (mut lat, requests) = result?;
    lat.sort_unstable();
    let events = requests * opts.batch as u64;
    let what = if datagram { "datagrams" } else { "requests" };
    println!(
        "weir bench collector: {}, {} {}, {} events/{}, {} s, {}",
        if datagram { "datagram" } else { "http" },
        opts.connections,
        if datagram { "senders" } else { "connections" },
        opts.batch,
        if datagram { "datagram" } else { "request" },
        opts.duration,
        if opts.rate == 0 {
            "flat out".to_string()
        } else {
            format!("target {} events/s", opts.rate)
        }
    );
    println!("  {what}/s  {:>10.0}", requests as f64 / wall);
    println!("  events/s    {:>10.0}", events as f64 / wall);
    if !datagram {
        println!(
            "  latency     p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0)
        );
    }
    match (before, after) {
        (Some((c0, _)), Some((c1, rss))) => println!(
            "  collector   CPU {:.2} cores   peak RSS {:.1} MiB   (pid {pid}{})",
            (c1 - c0) / wall,
            rss as f64 / (1 << 20) as f64,
            if spawned.is_some() && Path::new("/usr/bin/taskset").exists() {
                ", pinned to CPU 0"
            } else {
                ""
            }
        ),
        _ => println!("  collector   CPU/RSS unknown (pass --pid with --target)"),
    }
    if datagram {
        let metrics = ureq_get(&rt, &format!("{url}/metrics"))?;
        let accepted = metric(&metrics, "weir_collector_events_accepted_total");
        println!("  accepted    {accepted:.0} of {events} sent (datagrams are not acknowledged)");
    }
    drop(spawned);
    Ok(())
}

async fn load(opts: &CollectorBench, url: &str, dgram: &Path, datagram: bool) -> anyhow::Result<(Vec<u32>, u64)> {
    let body = body(opts.batch, datagram);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = tokio::time::Instant::now();
    let connections = opts.connections;
    let (rate, batch) = (opts.rate as f64, opts.batch as f64);
    for n in 0..connections {
        let (body, stop, sent) = (body.clone(), stop.clone(), sent.clone());
        let url = url.to_string();
        let dgram = dgram.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut tick = pacer(rate / batch, n, connections, start);
            if datagram {
                let sock = tokio::net::UnixDatagram::unbound()?;
                sock.connect(&dgram)?;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    sock.send(&body).await?;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                return Ok::<_, anyhow::Error>(Vec::new());
            }
            let port = url
                .parse::<hyper::Uri>()?
                .port_u16()
                .context("the collector URL needs a port, like http://127.0.0.1:8080")?;
            let post = Post {
                path: "/v1/events",
                headers: &[("content-type", "application/json")],
                expect: 202,
            };
            post_loop(port, post, body, stop, sent, tick).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(opts.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("load task failed")??);
    }
    Ok((all, sent.load(Ordering::Relaxed)))
}
