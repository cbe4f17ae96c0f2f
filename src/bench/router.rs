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
    /// Offer this many events a second in all (0: as fast as the router answers): at a
    /// paced rate the run shows whether the hourly buffer keeps up with intake.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Then run again with this many slow console subscribers on `/v1/tail` (each reads
    /// 4 KiB every 100 ms), and once more after they left, and print the runs side by
    /// side (the last run shows what the order alone changes).
    #[arg(long, default_value_t = 0)]
    tail_subscribers: usize,
    /// The console subscribers read as fast as they can (a tail left open on a fast
    /// machine) instead of 4 KiB every 100 ms.
    #[arg(long)]
    fast_tail: bool,
    /// Configure this many recipients the catalog routes no event to (Kafka, never
    /// reached): what a configured but idle recipient costs intake.
    #[arg(long, default_value_t = 0)]
    idle_recipients: usize,
}

fn buffered(rt: &tokio::runtime::Runtime, port: u16) -> anyhow::Result<f64> {
    Ok(metrics(rt, port, &["weir_router_buffer_events_total"])?[0])
}

/// The router's metrics `names` (each summed over its series).
fn metrics(rt: &tokio::runtime::Runtime, port: u16, names: &[&str]) -> anyhow::Result<Vec<f64>> {
    let text = ureq_get(rt, &format!("http://127.0.0.1:{port}/metrics"))?;
    Ok(names.iter().map(|name| metric(&text, name)).collect())
}

/// Runs of log records its consumers took from intake's offer and read back from disk.
const READS: [&str; 2] = [
    "weir_router_log_reads_total{from=\"memory\"}",
    "weir_router_log_reads_total{from=\"disk\"}",
];

/// Opens `n` connections to `/v1/tail` that each read 4 KiB every 100 ms (or, `fast`,
/// 64 KiB at a time without a pause), until their tasks are aborted.
fn start_subscribers(
    rt: &tokio::runtime::Runtime,
    port: u16,
    n: usize,
    fast: bool,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut s = rt.block_on(tokio::net::TcpStream::connect(("127.0.0.1", port)))?;
        rt.block_on(s.write_all(b"GET /v1/tail HTTP/1.1\r\nhost: weir\r\n\r\n"))?;
        tasks.push(rt.spawn(async move {
            let mut buf = vec![0u8; if fast { 65536 } else { 4096 }];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if fast => {}
                    Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
        }));
    }
    Ok(tasks)
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
    let offered = if opts.rate == 0 {
        "flat out".to_string()
    } else {
        format!("offering {} events/s", opts.rate)
    };
    println!(
        "weir bench router: {} connections, {} events/batch (zstd protobuf), {} s, {offered}, {} idle recipients",
        opts.connections, opts.batch, opts.duration, opts.idle_recipients
    );
    let phases: &[usize] = if opts.tail_subscribers == 0 {
        &[0]
    } else {
        &[0, opts.tail_subscribers, 0]
    };
    let speed = if opts.fast_tail { "fast" } else { "slow" };
    let mut runs = Vec::new();
    let mut subscribers = Vec::new();
    for (phase, &n) in phases.iter().enumerate() {
        if n > 0 {
            subscribers = start_subscribers(&rt, port, n, opts.fast_tail)?;
            // Let them connect and fall behind.
            std::thread::sleep(std::time::Duration::from_millis(500));
            println!("  with {n} {speed} console subscribers on /v1/tail:");
        } else if phase > 0 {
            subscribers.drain(..).for_each(|t| t.abort());
            std::thread::sleep(std::time::Duration::from_millis(500));
            println!("  again without subscribers:");
        }
        let before = proc_usage(pid);
        let buffered_before = buffered(&rt, port)?;
        let reads_before = metrics(&rt, port, &READS)?;
        let started = Instant::now();
        let (mut lat, requests) = rt.block_on(drive(
            port,
            post,
            body.clone(),
            opts.connections,
            opts.duration,
            opts.rate as f64 / opts.batch as f64,
        ))?;
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
        let reads = metrics(&rt, port, &READS)?;
        println!(
            "  log reads   {:>10.0} from intake's offer, {:.0} back from disk (runs the log's consumers took)",
            reads[0] - reads_before[0],
            reads[1] - reads_before[1]
        );
        runs.push(events as f64 / wall);
    }
    if let [before, with, after] = runs[..] {
        println!(
            "  intake with {} {speed} subscribers / without (mean of the runs before and after): {:.3}",
            opts.tail_subscribers,
            with / ((before + after) / 2.0).max(1.0)
        );
    }
    Ok(())
}
