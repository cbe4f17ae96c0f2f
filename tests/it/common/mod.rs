//! Helpers for tests that run the real `weir` binary as a process.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The binary under test.
pub fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// A child process that is killed (and reaped) if it still runs when dropped: a test that
/// fails half-way leaves no server behind. Derefs to the [`Child`].
pub struct Reaped(Option<Child>);

impl Reaped {
    /// Takes `child` in charge.
    pub fn new(child: Child) -> Reaped {
        Reaped(Some(child))
    }

    /// The child, no longer killed on drop (to stop it another way).
    pub fn take(mut self) -> Child {
        self.0.take().expect("taken once")
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("not taken")
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("not taken")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test catalog directory.
pub fn fixture_catalog() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/catalog")
}

/// A running `weir up`.
pub struct Up {
    pub child: Child,
    pub collector: String,
    pub stdout: mpsc::Receiver<String>,
    pub stderr_path: PathBuf,
}

impl Up {
    /// Starts `weir up` on free ports with the given data dir and extra args/env.
    pub fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Up {
        let stderr_path = data_dir.with_extension("stderr.log");
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        let mut cmd = weir();
        cmd.arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("WEIR_COLLECTOR_LISTEN", "127.0.0.1:0")
            .env("WEIR_ROUTER_LISTEN", "127.0.0.1:0")
            .env("WEIR_LOADER_FLIGHT", "127.0.0.1:0")
            .env("WEIR_PROXY_LISTEN", "127.0.0.1:0")
            .env("WEIR_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn weir up");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let collector = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix("collector") {
                        let url = rest.split_whitespace().next().unwrap();
                        break url.trim_end_matches("/v1/events").to_string();
                    }
                }
                Err(_) => {
                    let log = fs::read_to_string(&stderr_path).unwrap_or_default();
                    panic!("weir up did not start within 30 s; stderr:\n{log}");
                }
            }
        };
        Up {
            child,
            collector,
            stdout: rx,
            stderr_path,
        }
    }

    /// Starts `weir up` with `toml` as its config (written to `<dir>/weir.toml`), data in
    /// `<dir>/data`, and the catalog directory `catalog` (the built-in demo when `None`).
    pub fn with(dir: &Path, catalog: Option<&Path>, toml: &str, env: &[(&str, &str)]) -> Up {
        let config = dir.join("weir.toml");
        fs::write(&config, toml).unwrap();
        let mut args = vec!["--config".to_string(), config.display().to_string()];
        if let Some(c) = catalog {
            args.extend(["--catalog".to_string(), c.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Up::start(&dir.join("data"), &args, env)
    }

    /// Starts `weir up` with the test catalog (tests/fixtures/catalog).
    pub fn with_fixture(data_dir: &Path, env: &[(&str, &str)]) -> Up {
        let catalog = fixture_catalog();
        Up::start(data_dir, &["--catalog", catalog.to_str().unwrap()], env)
    }

    /// Sends `signal` (by name, e.g. "INT", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGINT, then waits (up to 60 s) for the exit.
    pub fn stop(self) -> ExitStatus {
        self.stop_with("INT")
    }

    /// Sends `signal` (INT or TERM), then waits (up to 60 s) for the exit.
    pub fn stop_with(mut self, signal: &str) -> ExitStatus {
        self.signal(signal);
        wait(&mut self.child, Duration::from_secs(60))
    }

    /// SIGKILL, then reaps the process.
    pub fn kill9(mut self) {
        self.signal("KILL");
        let _ = wait(&mut self.child, Duration::from_secs(10));
    }

    /// The process's stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Up {
    /// The base URL `weir up`'s banner gives for `name` (`router`, `proxy`), read from its
    /// stdout after the collector line.
    pub fn banner_url(&self, name: &str) -> String {
        loop {
            let line = self.stdout.recv_timeout(Duration::from_secs(10)).expect("banner line");
            if let Some(rest) = line.trim().strip_prefix(name) {
                let url = rest.split_whitespace().next().unwrap();
                return url
                    .trim_end_matches("/v1/batches")
                    .trim_end_matches("/v1/events")
                    .to_string();
            }
        }
    }
}

impl Drop for Up {
    /// A test that failed half-way leaves no `weir up` behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("weir did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `weir <args>` (a component: `collector --config F`, ...) with stderr to `log`.
pub fn spawn_component(args: &[&str], log: &Path) -> Child {
    let log = fs::File::create(log).unwrap();
    weir().args(args).stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

/// SIGTERM, then waits (up to 60 s) for a clean exit.
pub fn stop_component(mut child: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit {status:?}");
            return;
        }
        assert!(Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// POSTs `body` and returns (status, body as JSON).
pub fn post(url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut req = ureq::post(url).timeout(Duration::from_secs(30));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

/// GETs a URL and returns its body (panics on an error status).
pub fn get_text(url: &str) -> String {
    ureq::get(url).call().unwrap().into_string().unwrap()
}

/// POSTs JSON to a collector's /v1/events.
pub fn post_events(collector: &str, body: &str) -> (u16, serde_json::Value) {
    post(
        &format!("{collector}/v1/events"),
        body.as_bytes(),
        &[("content-type", "application/json")],
    )
}

/// The one `.buf` file of `<data>/router/buffer` (the open hour's buffer).
pub fn only_hour_buffer(data: &Path) -> PathBuf {
    fs::read_dir(data.join("router/buffer"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "buf"))
        .expect("an hour buffer")
}

/// Writes `<dir>/weir.toml` naming `data` and the test catalog; returns its path.
pub fn fixture_config(dir: &Path, data: &Path) -> PathBuf {
    let cfg = dir.join("weir.toml");
    fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\ncatalog = \"{}\"\n",
            data.display(),
            fixture_catalog().display()
        ),
    )
    .unwrap();
    cfg
}

/// Every Parquet file under `dir` (recursively), sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Reads every record batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let f = fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// The string values of column `name` across batches.
pub fn strings(batches: &[RecordBatch], name: &str) -> Vec<String> {
    use arrow_array::cast::AsArray;
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap_or("").to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The values of nullable string column `name` across batches.
pub fn opt_strings(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    use arrow_array::cast::AsArray;
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(name)
                .unwrap_or_else(|| panic!("no column {name}"))
                .as_string::<i32>()
                .iter()
                .map(|s| s.map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A server address that `scripts/services` exported (`TEST_WEIR_AMQP`, `TEST_WEIR_MONGO`,
/// `TEST_WEIR_KAFKA`, ...). Tests of recipients talk to real servers; `./scripts/test`
/// starts them.
pub fn service(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with ./scripts/test, which starts RabbitMQ, nx-27017 and tansu and exports it")
    })
}

/// A name no other test run uses (lowercase letters and digits).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}x{}", std::process::id(), nanos % 1_000_000_000)
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `limit` with `what`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
pub mod fanout;

/// How many kill cycles a fault loop runs and its seeded random numbers (`rand(n)` is in
/// `0..n`): `TEST_WEIR_FAULT_CYCLES` (default 6) and `TEST_WEIR_FAULT_SEED` (default
/// `default_seed`) make a longer soak or replay a failure; the seed is printed.
pub fn fault_plan(default_seed: u64) -> (u64, impl FnMut(u64) -> u64) {
    let cycles: u64 = std::env::var("TEST_WEIR_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut seed: u64 = std::env::var("TEST_WEIR_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_seed);
    eprintln!("fault seed {seed} (TEST_WEIR_FAULT_SEED), {cycles} cycles (TEST_WEIR_FAULT_CYCLES)");
    let rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    (cycles, rand)
}
