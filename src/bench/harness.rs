//! What every bench shares: spawning pinned `weir` processes (killed on drop), the
//! keep-alive load loop, /proc CPU and memory readings, percentiles and the printed
//! figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

pub(super) struct Spawned {
    pub(super) children: Vec<Child>,
    pub(super) _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill(c.id());
            let _ = c.wait();
            forget_child(c.id());
        }
    }
}

/// The directory every temporary directory of this bench lives in
/// (`$TMPDIR/weir-bench-<pid>`), made on first use.
static ROOT: OnceLock<PathBuf> = OnceLock::new();
/// The processes this bench started and has not reaped yet.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

fn forget_child(pid: u32) {
    children().retain(|&p| p != pid);
}

/// A temporary directory for a bench's data (spools, configs, nginx's files), under the
/// bench's one root so that an interrupted bench can remove them all (see
/// [`clean_up_on_signal`]); removed when dropped, as any `TempDir`.
pub(super) fn tempdir() -> std::io::Result<tempfile::TempDir> {
    let root = match ROOT.get() {
        Some(root) => root,
        None => {
            let root = std::env::temp_dir().join(format!("weir-bench-{}", std::process::id()));
            std::fs::create_dir_all(&root)?;
            ROOT.get_or_init(|| root)
        }
    };
    tempfile::Builder::new().prefix("run-").tempdir_in(root)
}

/// Removes the bench's root directory when dropped (the normal way out).
pub(super) struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(root) = ROOT.get() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP stop the bench cleanly: the servers it started are
/// killed, its directories removed (a 100-event run leaves gigabytes of spool), and the
/// process exits with 130. Without it a Ctrl-C skipped every guard's `Drop`. Keep the
/// returned guard alive for the whole bench.
pub(super) fn clean_up_on_signal() -> Cleanup {
    let watcher = std::thread::Builder::new().name("weir-bench-signals".into()).spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_io().build() else {
            return;
        };
        let got = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (mut int, mut term, mut hup) = (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            );
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            Ok::<(), std::io::Error>(())
        });
        if got.is_err() {
            return; // the default dispositions stay; die_with_us still kills the servers
        }
        eprintln!("weir bench: interrupted; stopping the servers it started and removing its files");
        let pids = children().clone();
        pids.iter().for_each(|&pid| kill(pid));
        // A killed process closes its files as it dies; wait until each is gone or a zombie
        // (at most 2 s) before its directory goes.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && pids.iter().any(|p| running(*p)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(Cleanup);
        std::process::exit(130);
    });
    if let Err(e) = watcher {
        eprintln!(
            "weir bench: cannot watch for Ctrl-C ({e}); an interrupted run may leave files in {}",
            std::env::temp_dir().display()
        );
    }
    Cleanup
}

/// Sends SIGKILL to `pid` (a server this bench started).
fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Whether `pid` still runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s.get(i + 2..i + 3)).map(|state| state != "Z"))
        .unwrap_or(false)
}

/// Makes the child `cmd` starts die with SIGKILL when this process dies, however it dies
/// (`kill -9`, an abort): a bench stopped half-way must not leave an nginx or a pinned
/// collector running on CPU 0 under the next measurement. The signal follows the thread
/// that forked, so spawn from the main thread (every bench does).
pub(super) fn die_with_us(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and makes one prctl system
    // call, which is async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        })
    }
}

/// Starts `cmd` as a server of this bench: it dies with the bench ([`die_with_us`]) and is
/// killed by [`clean_up_on_signal`]; own it in a [`Spawned`].
pub(super) fn spawn_server(cmd: &mut Command) -> std::io::Result<Child> {
    let child = die_with_us(cmd).spawn()?;
    children().push(child.id());
    Ok(child)
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn spawn_weir(args: &[&str], cpu: Option<&str>, log: &Path) -> anyhow::Result<Child> {
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
    Ok(spawn_server(&mut cmd)?)
}

/// A temporary directory holding the demo catalog and a config naming it (`data_dir`,
/// `catalog`, then `extra`). Returns the directory and the config's path.
pub(super) fn bench_setup(extra: &str) -> anyhow::Result<(tempfile::TempDir, String)> {
    let dir = tempdir()?;
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

/// Starts `weir router` pinned to CPU 0 on 127.0.0.1:`port`, with `router_keys` in its
/// `[router]` table, `rest` after it (recipient tables) and `files` added to the demo
/// catalog; returns once it listens, with its pid (killed when the guard drops).
pub(super) fn start_router(
    port: u16,
    router_keys: &str,
    rest: &str,
    files: &[(&str, String)],
) -> anyhow::Result<(Spawned, u32)> {
    let (dir, cfg) = bench_setup(&format!(
        "[router]\nlisten = \"127.0.0.1:{port}\"\n{router_keys}\n{rest}"
    ))?;
    for (name, text) in files {
        std::fs::write(dir.path().join("catalog").join(name), text)?;
    }
    let log = dir.path().join("router.log");
    let child = spawn_weir(&["router", "--config", &cfg], Some("0"), &log)?;
    let pid = child.id();
    let guard = Spawned {
        children: vec![child],
        _dir: dir,
    };
    wait_for_port(port, &log, "the router")?;
    Ok((guard, pid))
}

/// Waits (up to 20 s) until something listens on `port`; else fails with `log`.
pub(super) fn wait_for_port(port: u16, log: &Path, what: &str) -> anyhow::Result<()> {
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
pub(super) struct Post {
    pub(super) path: &'static str,
    pub(super) headers: &'static [(&'static str, &'static str)],
    /// The status every answer must have.
    pub(super) expect: u16,
}

/// POSTs `body` to 127.0.0.1:`port` over one keep-alive connection until `stop`, paced
/// by `tick` when given; counts each answered request in `sent` and fails on any status
/// but `post.expect`. Returns the latencies in µs.
pub(super) async fn post_loop(
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

/// The ticks of connection `n` of `connections` when together they send `per_second`
/// requests a second (`None`: flat out). Each connection's ticks are offset by its
/// share of the interval, so a paced load arrives evenly, not as one burst of every
/// connection at once; a late tick is made up at once (the offered rate holds).
pub(super) fn pacer(
    per_second: f64,
    n: usize,
    connections: usize,
    start: tokio::time::Instant,
) -> Option<tokio::time::Interval> {
    let per_conn = per_second / connections.max(1) as f64;
    (per_conn > 0.0).then(|| {
        let every = Duration::from_secs_f64(1.0 / per_conn);
        let offset = every.mul_f64(n as f64 / connections.max(1) as f64);
        let mut t = tokio::time::interval_at(start + offset, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    })
}

/// Runs `connections` keep-alive POST loops of `body` against 127.0.0.1:`port` for
/// `duration`, together at `per_second` requests a second (0: flat out); returns every
/// request's latency (µs) and the number of requests.
pub(super) async fn drive(
    port: u16,
    post: Post,
    body: Bytes,
    connections: usize,
    duration: u64,
    per_second: f64,
) -> anyhow::Result<(Vec<u32>, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = tokio::time::Instant::now();
    for n in 0..connections {
        tasks.push(tokio::spawn(post_loop(
            port,
            post,
            body.clone(),
            stop.clone(),
            sent.clone(),
            pacer(per_second, n, connections, start),
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

pub(super) fn start_collector(with_router: bool) -> anyhow::Result<(Spawned, String, PathBuf, u32)> {
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
pub(super) fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((ticks / 100.0, status_bytes(pid, "VmHWM:")?))
}

/// A size line of `/proc/<pid>/status` (`VmHWM:`, `RssAnon:`), in bytes.
pub(super) fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?;
    Some(kb.parse::<u64>().ok()? * 1024)
}

pub(super) fn event_json(i: u64) -> String {
    format!(
        r#"{{"event":"item.viewed","version":2,"env":"web","fields":{{"item_id":{i},"source":"search","position":{p},"price":1299.5,"session_id":"s-{s}"}}}}"#,
        p = i % 50,
        s = i % 10_000
    )
}

pub(super) fn body(batch: usize, ndjson: bool) -> Bytes {
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
pub(super) fn print_latency(sorted: &[u32]) {
    println!(
        "  latency     p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        percentile(sorted, 0.50),
        percentile(sorted, 0.99),
        percentile(sorted, 1.0)
    );
}

/// Prints a pinned process's CPU (cores) over `wall` seconds and its peak RSS.
pub(super) fn print_usage(what: &str, before: Option<(f64, u64)>, after: Option<(f64, u64)>, wall: f64) {
    if let (Some((c0, _)), Some((c1, rss))) = (before, after) {
        println!(
            "  {what:<11} CPU {:.2} cores   peak RSS {:.1} MiB   (pinned to CPU 0)",
            (c1 - c0) / wall,
            rss as f64 / (1 << 20) as f64
        );
    }
}

pub(super) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

/// Re-runs this process under `taskset -c 1`, so the load generator stays off the
/// collector's core. Returns only when that is not possible (or already done).
pub(super) fn pin_self_to_cpu1() {
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

pub(super) fn ureq_get(rt: &tokio::runtime::Runtime, url: &str) -> anyhow::Result<String> {
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

pub(super) fn peak_rss_self() -> u64 {
    proc_usage(std::process::id()).map_or(0, |(_, rss)| rss)
}

/// This process's resident anonymous memory (`RssAnon`), bytes.
pub(super) fn rss_anon_self() -> u64 {
    status_bytes(std::process::id(), "RssAnon:").unwrap_or(0)
}

pub(super) fn cpu_self() -> f64 {
    proc_usage(std::process::id()).map_or(0.0, |(cpu, _)| cpu)
}

/// The POST collectors make to a router: `/v1/batches`, zstd protobuf, answered 200.
pub(super) const BATCH_POST: Post = Post {
    path: "/v1/batches",
    headers: &[("content-type", "application/x-protobuf"), ("content-encoding", "zstd")],
    expect: 200,
};

/// A zstd `weir.v1.EventBatch` of `n` valid `event` v`version` events (web), fields from
/// `fields(i)`, stamped now, with no batch id (so none is deduplicated).
pub(super) fn batch_body(event: &str, version: u32, n: u64, fields: impl Fn(u64) -> String) -> anyhow::Result<Bytes> {
    use prost::Message;
    let now = weir_proto::event::now_micros();
    let mut idbuf = [0u8; 36];
    let events: Vec<weir_proto::pb::Event> = (0..n)
        .map(|i| weir_proto::pb::Event {
            id: weir_proto::event::uuid_v7(now, &mut idbuf).to_string(),
            event: event.into(),
            version,
            env: "web".into(),
            received_at: now,
            collector: "bench".into(),
            fields: fields(i).into_bytes().into(),
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
    Ok(Bytes::from(zstd::bulk::compress(&raw, 1)?))
}

/// The sum of every sample of `name` in a Prometheus text page (`name` may end in a
/// label set, `x_total{from="disk"}`, to pick one series).
pub(super) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
