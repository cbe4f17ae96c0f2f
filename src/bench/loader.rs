//! `weir bench loader`: one hour of demo events through the loader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::harness::*;

/// How to bench the loader.
#[derive(clap::Args, Clone, Debug)]
pub struct LoaderBench {
    /// Events in the hour to load.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = 128 * 1024)]
    row_group_rows: usize,
    /// Memory for the hour's index (smaller than about 64 bytes an event: it spills).
    #[arg(long, default_value_t = 256 << 20)]
    index_memory_bytes: usize,
}

/// Writes an hour of demo events to a buffer file, loads it, and prints rows/s (one
/// thread: the loader is single-threaded), peak RSS, and Parquet size against the buffer.
pub fn run_loader(opts: LoaderBench) -> anyhow::Result<()> {
    use prost::Message;
    use std::io::Write;
    let dir = tempdir()?;
    let buffer = dir.path().join("buffer");
    std::fs::create_dir_all(&buffer)?;
    let hour = weir_proto::hour::of_micros(weir_proto::event::now_micros()) - 2;
    let base = hour * weir_proto::hour::HOUR_MICROS;
    let path = weir_proto::runtime::buffer::buffer_path(&buffer, hour);
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let mut framed = Vec::with_capacity(1 << 20);
    let mut idbuf = [0u8; 36];
    for i in 0..opts.events {
        let at = base + (i as i64 * 3_600_000_000 / opts.events.max(1) as i64);
        let (event, version, env, fields) = match i % 4 {
            0 => (
                "item.viewed",
                2,
                "web",
                format!(
                    r#"{{"item_id":{i},"source":"search","position":{},"price":{}.5,"session_id":"s-{}"}}"#,
                    i % 40,
                    i % 1000,
                    i % 5000
                ),
            ),
            1 => (
                "item.viewed",
                2,
                "ios",
                format!(
                    r#"{{"item_id":{i},"source":"feed","device_id":"d-{}","app_version":"4.12.0"}}"#,
                    i % 3000
                ),
            ),
            2 => (
                "page.viewed",
                1,
                "web",
                format!(
                    r#"{{"url":"https://example.com/items/{i}","referrer":"https://example.com/","session_id":"s-{}"}}"#,
                    i % 5000
                ),
            ),
            _ => (
                "search.performed",
                1,
                "backend",
                format!(
                    r#"{{"query":"bike {}","results_count":{},"filters":["city:berlin","price:<500"]}}"#,
                    i % 100,
                    i % 50
                ),
            ),
        };
        let ev = weir_proto::pb::Event {
            id: weir_proto::event::uuid_v7(at, &mut idbuf).to_string(),
            event: event.into(),
            version,
            env: env.into(),
            received_at: at,
            client_ts: Some(at - 1500),
            collector: "node-1".into(),
            fields: fields.into_bytes().into(),
            valid: true,
            ..Default::default()
        };
        weir_proto::record::encode_into(&mut framed, &ev.encode_to_vec());
        if framed.len() > 512 << 10 {
            file.write_all(&framed)?;
            framed.clear();
        }
    }
    file.write_all(&framed)?;
    file.flush()?;
    drop(file);
    std::fs::write(weir_proto::runtime::buffer::closed_path(&buffer, hour), "{}")?;
    let buffer_bytes = std::fs::metadata(&path)?.len();
    let loader = weir_loader::Loader {
        catalog: Arc::new(weir_proto::Catalog::demo()),
        buffer_dir: buffer,
        warehouse: dir.path().join("warehouse"),
        row_group_rows: opts.row_group_rows,
        index_memory_bytes: opts.index_memory_bytes,
    };
    let rss_before = peak_rss_self();
    // Peak anonymous memory (heap) while loading, sampled: the mapped buffer counts in
    // RSS but is page cache the kernel can drop, so this is what the load needs.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_anon_self());
                std::thread::sleep(Duration::from_millis(2));
            }
            peak.max(rss_anon_self())
        })
    };
    let anon_before = rss_anon_self();
    let (cpu0, t0) = (cpu_self(), Instant::now());
    let reports = loader.run(false);
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_self() - cpu0);
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let anon_peak = sampler.join().unwrap_or(0);
    let reports = reports?;
    let spilled = reports.first().is_some_and(|r| r.spilled);
    let m = &reports.first().context("nothing was loaded")?.manifest;
    let parquet: u64 = m.files.iter().map(|f| f.bytes).sum();
    println!(
        "weir bench loader: {} events in one hour, row groups of {} rows",
        opts.events, opts.row_group_rows
    );
    println!(
        "  rows/s      {:>10.0}   ({} rows in {:.2} s wall, {:.2} s CPU)",
        m.rows as f64 / wall,
        m.rows,
        wall,
        cpu
    );
    println!("  buffer      {:>10.1} MiB", buffer_bytes as f64 / (1 << 20) as f64);
    println!(
        "  parquet     {:>10.1} MiB   ({:.1}% of the buffer, zstd, {} files)",
        parquet as f64 / (1 << 20) as f64,
        100.0 * parquet as f64 / buffer_bytes as f64,
        m.files.len()
    );
    println!(
        "  peak RSS    {:>10.1} MiB   (before loading: {:.1} MiB; the mapped buffer counts here)",
        peak_rss_self() as f64 / (1 << 20) as f64,
        rss_before as f64 / (1 << 20) as f64
    );
    println!(
        "  peak heap   {:>10.1} MiB   (anonymous memory, sampled; before loading: {:.1} MiB; index {})",
        anon_peak as f64 / (1 << 20) as f64,
        anon_before as f64 / (1 << 20) as f64,
        if spilled { "spilled to files" } else { "in memory" }
    );
    Ok(())
}
