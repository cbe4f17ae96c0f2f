//! `weir bench collector`: a load generator for the collector.
//!
//! By default it starts its own `weir collector` (pinned to CPU 0 with `taskset` when
//! available, one tokio worker), in a temporary data directory with no router listening,
//! so what is measured is intake alone: parse, validate, stamp, spool with fsync. With
//! `--with-router` a `weir router` runs too and the spool drains. `--target URL`
//! measures a collector that is already running instead (CPU and RSS then need `--pid`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

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

struct Spawned {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill").arg("-KILL").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn_weir(args: &[&str], cpu: Option<&str>, log: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the weir binary")?;
    let taskset = Path::new("/usr/bin/taskset").exists();
    let mut cmd = match (cpu, taskset) {
        (Some(cpu), true) => {
            let mut c = Command::new("/usr/bin/taskset");
            c.arg("-c").arg(cpu).arg(&exe);
            c
        }
        _ => Command::new(&exe),
    };
    cmd.args(args)
        .env("TOKIO_WORKER_THREADS", "1")
        .env_remove("WEIR_BENCH_PINNED")
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    Ok(cmd.spawn()?)
}

/// A temporary directory holding the demo catalog and a config naming it (`data_dir`,
/// `catalog`, then `extra`). Returns the directory and the config's path.
fn bench_setup(extra: &str) -> anyhow::Result<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let cat = dir.path().join("catalog");
    std::fs::create_dir_all(&cat)?;
    for (name, text) in weir_proto::catalog::DEMO_FILES {
        std::fs::write(cat.join(name), text)?;
    }
    let cfg = dir.path().join("weir.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\ncatalog = \"{}\"\n{extra}",
            dir.path().join("data").display(),
            cat.display()
        ),
    )?;
    let cfg = cfg.to_string_lossy().into_owned();
    Ok((dir, cfg))
}

/// Waits (up to 20 s) until something listens on `port`; else fails with `log`.
fn wait_for_port(port: u16, log: &Path, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{what} did not start:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The request a load loop repeats.
#[derive(Clone, Copy)]
struct Post {
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// The status every answer must have.
    expect: u16,
}

/// POSTs `body` to 127.0.0.1:`port` over one keep-alive connection until `stop`, paced
/// by `tick` when given; counts each answered request in `sent` and fails on any status
/// but `post.expect`. Returns the latencies in µs.
async fn post_loop(
    port: u16,
    post: Post,
    body: Bytes,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    mut tick: Option<tokio::time::Interval>,
) -> anyhow::Result<Vec<u32>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let mut req = Request::post(post.path).header("host", "weir");
        for (k, v) in post.headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.clone()))?;
        let t0 = Instant::now();
        let resp = send.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if status.as_u16() != post.expect {
            bail!("{} answered {status}", post.path);
        }
        sent.fetch_add(1, Ordering::Relaxed);
        send.ready().await?;
    }
    Ok(lat)
}

/// Runs `connections` keep-alive POST loops of `body` against 127.0.0.1:`port` for
/// `duration`; returns every request's latency (µs) and the number of requests.
async fn drive(
    port: u16,
    post: Post,
    body: Bytes,
    connections: usize,
    duration: u64,
) -> anyhow::Result<(Vec<u32>, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(post_loop(
            port,
            post,
            body.clone(),
            stop.clone(),
            sent.clone(),
            None,
        )));
    }
    tokio::time::sleep(Duration::from_secs(duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("load task failed")??);
    }
    let n = all.len() as u64;
    Ok((all, n))
}

fn start_collector(with_router: bool) -> anyhow::Result<(Spawned, String, PathBuf, u32)> {
    let (cport, rport) = (free_port()?, free_port()?);
    let (dir, cfg_s) = bench_setup(&format!(
        "[collector]\nlisten = \"127.0.0.1:{cport}\"\nrouters = [\"http://127.0.0.1:{rport}\"]\nspool_max_bytes = 68719476736\n[router]\nlisten = \"127.0.0.1:{rport}\"\n"
    ))?;
    let mut children = Vec::new();
    let collector = spawn_weir(
        &["collector", "--config", &cfg_s],
        Some("0"),
        &dir.path().join("collector.log"),
    )?;
    let pid = collector.id();
    children.push(collector);
    if with_router {
        children.push(spawn_weir(
            &["router", "--config", &cfg_s],
            Some("1"),
            &dir.path().join("router.log"),
        )?);
    }
    let url = format!("http://127.0.0.1:{cport}");
    wait_for_port(cport, &dir.path().join("collector.log"), "the collector")?;
    let dgram = dir.path().join("data/collector.dgram");
    // With taskset the pid is taskset's, which execs weir: same pid.
    Ok((Spawned { children, _dir: dir }, url, dgram, pid))
}

/// CPU seconds (user + system) and peak RSS (bytes) of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((ticks / 100.0, status_bytes(pid, "VmHWM:")?))
}

/// A size line of `/proc/<pid>/status` (`VmHWM:`, `RssAnon:`), in bytes.
fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?;
    Some(kb.parse::<u64>().ok()? * 1024)
}

fn event_json(i: u64) -> String {
    format!(
        r#"{{"event":"item.viewed","version":2,"env":"web","fields":{{"item_id":{i},"source":"search","position":{p},"price":1299.5,"session_id":"s-{s}"}}}}"#,
        p = i % 50,
        s = i % 10_000
    )
}

fn body(batch: usize, ndjson: bool) -> Bytes {
    let events: Vec<String> = (0..batch as u64).map(event_json).collect();
    if ndjson {
        Bytes::from(events.join("\n"))
    } else if batch == 1 {
        Bytes::from(events.into_iter().next().unwrap_or_default())
    } else {
        Bytes::from(format!("[{}]", events.join(",")))
    }
}

/// Prints p50 / p99 / max of sorted latencies (µs) in ms.
fn print_latency(sorted: &[u32]) {
    println!(
        "  latency     p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        percentile(sorted, 0.50),
        percentile(sorted, 0.99),
        percentile(sorted, 1.0)
    );
}

/// Prints a pinned process's CPU (cores) over `wall` seconds and its peak RSS.
fn print_usage(what: &str, before: Option<(f64, u64)>, after: Option<(f64, u64)>, wall: f64) {
    if let (Some((c0, _)), Some((c1, rss))) = (before, after) {
        println!(
            "  {what:<11} CPU {:.2} cores   peak RSS {:.1} MiB   (pinned to CPU 0)",
            (c1 - c0) / wall,
            rss as f64 / (1 << 20) as f64
        );
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

/// Re-runs this process under `taskset -c 1`, so the load generator stays off the
/// collector's core. Returns only when that is not possible (or already done).
fn pin_self_to_cpu1() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("WEIR_BENCH_PINNED").is_some() || !Path::new("/usr/bin/taskset").exists() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err = Command::new("/usr/bin/taskset")
        .arg("-c")
        .arg("1")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("WEIR_BENCH_PINNED", "1")
        .exec();
    eprintln!("cannot pin the load generator to CPU 1 ({err}); running unpinned");
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
        let accepted: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("weir_collector_events_accepted_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        println!("  accepted    {accepted:.0} of {events} sent (datagrams are not acknowledged)");
    }
    drop(spawned);
    Ok(())
}

fn ureq_get(rt: &tokio::runtime::Runtime, url: &str) -> anyhow::Result<String> {
    rt.block_on(async {
        let uri: hyper::Uri = url.parse()?;
        let addr = format!("{}:{}", uri.host().unwrap_or("127.0.0.1"), uri.port_u16().unwrap_or(80));
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::get(uri.path())
            .header("host", "weir")
            .body(Full::new(Bytes::new()))?;
        let resp = send.send_request(req).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    })
}

async fn load(opts: &CollectorBench, url: &str, dgram: &Path, datagram: bool) -> anyhow::Result<(Vec<u32>, u64)> {
    let body = body(opts.batch, datagram);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let per_conn_rate = if opts.rate == 0 {
        0.0
    } else {
        opts.rate as f64 / opts.batch as f64 / opts.connections as f64
    };
    let mut tasks = Vec::new();
    for _ in 0..opts.connections {
        let (body, stop, sent) = (body.clone(), stop.clone(), sent.clone());
        let url = url.to_string();
        let dgram = dgram.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let interval = (per_conn_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / per_conn_rate));
            let mut tick = interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
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

fn peak_rss_self() -> u64 {
    proc_usage(std::process::id()).map_or(0, |(_, rss)| rss)
}

/// This process's resident anonymous memory (`RssAnon`), bytes.
fn rss_anon_self() -> u64 {
    status_bytes(std::process::id(), "RssAnon:").unwrap_or(0)
}

fn cpu_self() -> f64 {
    proc_usage(std::process::id()).map_or(0.0, |(cpu, _)| cpu)
}

/// Writes an hour of demo events to a buffer file, loads it, and prints rows/s (one
/// thread: the loader is single-threaded), peak RSS, and Parquet size against the buffer.
pub fn run_loader(opts: LoaderBench) -> anyhow::Result<()> {
    use prost::Message;
    use std::io::Write;
    let dir = tempfile::tempdir()?;
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
}

/// Starts `weir router` pinned to CPU 0 and sends it zstd protobuf batches the way
/// collectors do (no batch id, so none is deduplicated); prints events/s through intake
/// (log fsync) and how far the hourly buffer kept up, with CPU and peak RSS.
pub fn run_router(opts: RouterBench) -> anyhow::Result<()> {
    use prost::Message;
    pin_self_to_cpu1();
    let port = free_port()?;
    let (dir, cfg) = bench_setup(&format!("[router]\nlisten = \"127.0.0.1:{port}\"\n"))?;
    let log = dir.path().join("router.log");
    let child = spawn_weir(&["router", "--config", &cfg], Some("0"), &log)?;
    let pid = child.id();
    let _guard = Spawned {
        children: vec![child],
        _dir: dir,
    };
    wait_for_port(port, &log, "the router")?;
    let now = weir_proto::event::now_micros();
    let mut idbuf = [0u8; 36];
    let events: Vec<weir_proto::pb::Event> = (0..opts.batch as u64)
        .map(|i| weir_proto::pb::Event {
            id: weir_proto::event::uuid_v7(now, &mut idbuf).to_string(),
            event: "item.viewed".into(),
            version: 2,
            env: "web".into(),
            received_at: now,
            collector: "bench".into(),
            fields: event_json(i).into_bytes().into(),
            valid: true,
            ..Default::default()
        })
        .collect();
    let raw = weir_proto::pb::EventBatch {
        batch_id: String::new(),
        collector: "bench".into(),
        events,
    }
    .encode_to_vec();
    let body = Bytes::from(zstd::bulk::compress(&raw, 1)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let before = proc_usage(pid);
    let started = Instant::now();
    let post = Post {
        path: "/v1/batches",
        headers: &[("content-type", "application/x-protobuf"), ("content-encoding", "zstd")],
        expect: 200,
    };
    let (mut lat, requests) = rt.block_on(drive(port, post, body, opts.connections, opts.duration))?;
    let wall = started.elapsed().as_secs_f64();
    let after = proc_usage(pid);
    lat.sort_unstable();
    let metrics = ureq_get(&rt, &format!("http://127.0.0.1:{port}/metrics"))?;
    let metric = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let events = requests * opts.batch as u64;
    println!(
        "weir bench router: {} connections, {} events/batch (zstd protobuf), {} s",
        opts.connections, opts.batch, opts.duration
    );
    println!("  batches/s   {:>10.0}", requests as f64 / wall);
    println!(
        "  events/s    {:>10.0}   (acknowledged: in the fsynced log)",
        events as f64 / wall
    );
    println!(
        "  buffered    {:>10.0}   events in the hourly buffer when the load stopped ({:.0}%)",
        metric("weir_router_buffer_events_total"),
        100.0 * metric("weir_router_buffer_events_total") / events.max(1) as f64
    );
    print_latency(&lat);
    print_usage("router", before, after, wall);
    Ok(())
}

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

/// How to load the proxy.
#[derive(clap::Args, Clone, Debug)]
pub struct ProxyBench {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// A MaxMind-format database for the country / region lookup (none = no lookup).
    #[arg(long)]
    geoip: Option<std::path::PathBuf>,
}

/// Starts `weir proxy` pinned to CPU 0 (write key, CORS and enrichment on, no router, so
/// what is measured is intake: auth, CORS, client address, user-agent parsing, validation
/// and the fsynced spool) and posts batches with HTTP Basic, an Origin, a browser's
/// user agent and X-Forwarded-For from a trusted peer (plus the GeoIP lookup with
/// `--geoip`).
pub fn run_proxy(opts: ProxyBench) -> anyhow::Result<()> {
    pin_self_to_cpu1();
    let (cport, pport, rport) = (free_port()?, free_port()?, free_port()?);
    let geoip = match &opts.geoip {
        Some(p) => format!(
            "geoip = {}\n",
            toml::Value::String(std::fs::canonicalize(p)?.display().to_string())
        ),
        None => String::new(),
    };
    let (dir, cfg) = bench_setup(&format!(
        "[collector]\nlisten = \"127.0.0.1:{cport}\"\nrouters = [\"http://127.0.0.1:{rport}\"]\nspool_max_bytes = 68719476736\n\
         [proxy]\nlisten = \"127.0.0.1:{pport}\"\ncors_origins = [\"http://shop.test\"]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         max_body_bytes = 5242880\n{geoip}[[proxy.keys]]\nkey = \"bench\"\nenv = \"web\"\n"
    ))?;
    let log = dir.path().join("proxy.log");
    let child = spawn_weir(&["proxy", "--config", &cfg], Some("0"), &log)?;
    let pid = child.id();
    let _guard = Spawned {
        children: vec![child],
        _dir: dir,
    };
    wait_for_port(pport, &log, "the proxy")?;
    let body = body(opts.batch, true);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let before = proc_usage(pid);
    let started = Instant::now();
    let post = Post {
        path: "/v1/events",
        headers: &[
            ("content-type", "application/x-ndjson"),
            ("authorization", "Basic YmVuY2g6"),
            ("origin", "http://shop.test"),
            (
                "user-agent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            ),
            ("x-forwarded-for", "81.2.69.160"),
        ],
        expect: 202,
    };
    let (mut lat, requests) = rt.block_on(drive(pport, post, body, opts.connections, opts.duration))?;
    let wall = started.elapsed().as_secs_f64();
    let after = proc_usage(pid);
    lat.sort_unstable();
    let events = requests * opts.batch as u64;
    println!(
        "weir bench proxy: {} connections, {} events/request (NDJSON, Basic key, Origin, browser user agent, X-Forwarded-For{}), {} s",
        opts.connections,
        opts.batch,
        if opts.geoip.is_some() { ", GeoIP" } else { "" },
        opts.duration
    );
    println!("  requests/s  {:>10.0}", requests as f64 / wall);
    println!(
        "  events/s    {:>10.0}   (202: validated, enriched, in the fsynced spool)",
        events as f64 / wall
    );
    print_latency(&lat);
    print_usage("proxy", before, after, wall);
    Ok(())
}
