//! `weir bench router`: zstd protobuf batches into a pinned router, as collectors send them.

use std::time::Instant;

use super::harness::*;

/// How to bench the router.
#[derive(clap::Args, Clone, Debug)]
pub struct RouterBench {
    /// Concurrent collectors (connections).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Then run again with this many slow console subscribers on `/v1/tail` (each reads
    /// 4 KiB every 100 ms) and print both runs side by side.
    #[arg(long, default_value_t = 0)]
    tail_subscribers: usize,
    /// Configure this many recipients the catalog routes no event to (Kafka, never
    /// reached): what a configured but idle recipient costs intake.
    #[arg(long, default_value_t = 0)]
    idle_recipients: usize,
}

fn buffered(rt: &tokio::runtime::Runtime, port: u16) -> anyhow::Result<f64> {
    let metrics = ureq_get(rt, &format!("http://127.0.0.1:{port}/metrics"))?;
    Ok(metrics
        .lines()
        .find(|l| l.starts_with("weir_router_buffer_events_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0))
}

/// Opens `n` connections to `/v1/tail` that each read 4 KiB every 100 ms, for the rest
/// of the bench.
fn start_slow_subscribers(rt: &tokio::runtime::Runtime, port: u16, n: usize) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..n {
        let mut s = rt.block_on(tokio::net::TcpStream::connect(("127.0.0.1", port)))?;
        rt.block_on(s.write_all(b"GET /v1/tail HTTP/1.1\r\nhost: weir\r\n\r\n"))?;
        rt.spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
        });
    }
    Ok(())
}

/// Starts `weir router` pinned to CPU 0 and sends it zstd protobuf batches the way
/// collectors do (no batch id, so none is deduplicated); prints events/s through intake
/// (log fsync) and how far the hourly buffer kept up, with CPU and peak RSS.
pub fn run_router(opts: RouterBench) -> anyhow::Result<()> {
    pin_self_to_cpu1();
    let port = free_port()?;
    let idle: String = (0..opts.idle_recipients)
        .map(|i| {
            format!("[router.recipients.idle{i}]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ntopic = \"idle\"\n")
        })
        .collect();
    let (_guard, pid) = start_router(port, "", &idle, &[])?;
    let body = batch_body("item.viewed", 2, opts.batch as u64, event_json)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let post = BATCH_POST;
    println!(
        "weir bench router: {} connections, {} events/batch (zstd protobuf), {} s, {} idle recipients",
        opts.connections, opts.batch, opts.duration, opts.idle_recipients
    );
    let mut runs = Vec::new();
    for subscribers in [0, opts.tail_subscribers] {
        if subscribers > 0 {
            start_slow_subscribers(&rt, port, subscribers)?;
            // Let them connect and fall behind.
            std::thread::sleep(std::time::Duration::from_millis(500));
            println!("  with {subscribers} slow console subscribers on /v1/tail:");
        }
        let before = proc_usage(pid);
        let buffered_before = buffered(&rt, port)?;
        let started = Instant::now();
        let (mut lat, requests) = rt.block_on(drive(port, post, body.clone(), opts.connections, opts.duration))?;
        let wall = started.elapsed().as_secs_f64();
        let after = proc_usage(pid);
        lat.sort_unstable();
        let events = requests * opts.batch as u64;
        let buffered_now = buffered(&rt, port)? - buffered_before;
        println!("  batches/s   {:>10.0}", requests as f64 / wall);
        println!(
            "  events/s    {:>10.0}   (acknowledged: in the fsynced log)",
            events as f64 / wall
        );
        println!(
            "  buffered    {:>10.0}   events in the hourly buffer when the load stopped ({:.0}%)",
            buffered_now,
            100.0 * buffered_now / events.max(1) as f64
        );
        print_latency(&lat);
        print_usage("router", before, after, wall);
        // The cost per event, counted until the hourly buffer has every event: CPU time
        // is steadier than throughput on a shared machine, and shows what each idle
        // recipient adds.
        let caught_up = Instant::now();
        while buffered(&rt, port)? - buffered_before < events as f64 && caught_up.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if let (Some((c0, _)), Some((c1, _))) = (before, proc_usage(pid)) {
            println!(
                "  CPU/event   {:>10.3} µs   (intake, log and hourly buffer, until the buffer had every event)",
                (c1 - c0) * 1e6 / events.max(1) as f64
            );
        }
        runs.push(events as f64 / wall);
        if opts.tail_subscribers == 0 {
            break;
        }
    }
    if let [base, with] = runs[..] {
        println!(
            "  intake with {} slow subscribers / without: {:.3}",
            opts.tail_subscribers,
            with / base.max(1.0)
        );
    }
    Ok(())
}
