//! The fault suite: weir crashed, its files damaged, its disks full and its limits hit,
//! each time counting the ledger: every acknowledged event id in the Parquet exactly
//! once. See README, "What weir guarantees".

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::common::{spawn_component as spawn, stop_component as stop};

fn all_ids(warehouse: &Path) -> Vec<String> {
    parquet_files(warehouse)
        .iter()
        .flat_map(|f| strings(&read_parquet(f), "id"))
        .collect()
}

/// Asserts the warehouse holds every id of `acked` exactly once and nothing else.
fn assert_ledger(warehouse: &Path, acked: &BTreeSet<String>) {
    assert_ledger_in_doubt(warehouse, acked, &BTreeSet::new());
}

/// As [`assert_ledger`], where ids of `in_doubt` (requests whose answer a kill cut off:
/// maybe stored, never acknowledged) may be there too, once.
pub fn assert_ledger_in_doubt(warehouse: &Path, acked: &BTreeSet<String>, in_doubt: &BTreeSet<String>) {
    let ids = all_ids(warehouse);
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "an event was stored twice");
    let missing: Vec<&String> = acked.difference(&unique).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are missing, e.g. {missing:?}",
        acked.difference(&unique).count()
    );
    let extra: Vec<&String> = unique
        .difference(acked)
        .filter(|id| !in_doubt.contains(*id))
        .take(5)
        .collect();
    assert!(extra.is_empty(), "events nobody acknowledged: {extra:?}");
}

/// `n` hex digits from a xorshift generator at `state`: text zstd cannot shrink to
/// nothing.
fn noise(n: usize, state: &mut u64) -> String {
    (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            char::from_digit((*state % 16) as u32, 16).unwrap_or('0')
        })
        .collect()
}

fn cart(id: &str, session: &str) -> String {
    format!(r#"{{"event":"cart.viewed","env":"web","id":"{id}","fields":{{"items":1,"session_id":"{session}"}}}}"#)
}

/// Posts `n` events with ids `<prefix>-<i>`; returns them once acknowledged (202).
fn send(collector: &str, prefix: &str, n: usize) -> BTreeSet<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let body: Vec<String> = ids.iter().map(|id| cart(id, "s")).collect();
    let (status, body) = post_events(collector, &format!("[{}]", body.join(",")));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], n);
    ids.into_iter().collect()
}

#[test]
fn a_torn_hour_buffer_record_loses_nothing_sent_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let up = Up::with_fixture(&data, &[]);
    let mut acked = send(&up.collector, "before", 100);
    assert!(up.stop().success());
    // What kill -9 (or a full disk) mid-append leaves at the end of the open hour.
    let buf = only_hour_buffer(&data);
    let mut f = fs::OpenOptions::new().append(true).open(&buf).unwrap();
    f.write_all(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, b'{', b'"'])
        .unwrap();
    drop(f);

    let up = Up::with_fixture(&data, &[]);
    acked.extend(send(&up.collector, "after", 100));
    let stderr_before = up.stderr();
    assert!(up.stop().success());
    assert_ledger(&data.join("warehouse"), &acked);
    let log = fs::read_to_string(data.with_extension("stderr.log")).unwrap();
    assert!(log.len() > stderr_before.len());
    assert!(log.contains("cutting a torn tail"), "the cut is logged:\n{log}");
}

#[test]
fn the_loader_skips_damage_in_the_middle_of_an_hour_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let up = Up::with_fixture(&data, &[]);
    let first = send(&up.collector, "first", 50);
    let second = send(&up.collector, "second", 50);
    assert!(up.stop().success());
    let buf = only_hour_buffer(&data);
    // A bad sector in the middle: garble bytes inside the file, past the first record.
    let len = fs::metadata(&buf).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&buf).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xff; 64], len / 2).unwrap();
    drop(f);
    let cfg = fixture_config(tmp.path(), &data);
    let replay = |from: &str| {
        weir()
            .args(["loader", "replay", "--from", from, "--to", from, "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = replay("2000-01-01T00");
    // Replaying an hour in which nothing arrived skips it and says so.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("2000-01-01T00: skipped, nothing was received in this hour"),
        "{stdout}"
    );

    let hour = buf.file_stem().unwrap().to_str().unwrap().to_string();
    let hour = format!("{}-{}-{}T{}", &hour[..4], &hour[4..6], &hour[6..8], &hour[8..10]);
    let out = replay(&hour);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("damaged bytes in the hourly buffer"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("DAMAGE: ") && stdout.contains("damaged bytes"),
        "{stdout}"
    );
    let ids: BTreeSet<String> = all_ids(&data.join("warehouse")).into_iter().collect();
    let all: BTreeSet<String> = first.union(&second).cloned().collect();
    // At most the one or two records the damage hit are gone; everything after it loads.
    let lost = all.difference(&ids).count();
    assert!((1..=2).contains(&lost), "lost {lost}");
    assert!(ids.contains("second-49"), "the records after the damage are loaded");
}

#[test]
fn damaged_cursors_fall_back_to_the_oldest_record_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Long batch waits keep some events in the spool at the kill.
    let env = [
        ("WEIR_COLLECTOR_BATCH_MAX_WAIT_MS", "3000"),
        ("WEIR_COLLECTOR_BATCH_MAX_EVENTS", "30"),
    ];
    let up = Up::with_fixture(&data, &env);
    let mut acked = BTreeSet::new();
    for i in 0..10 {
        acked.extend(send(&up.collector, &format!("c{i}"), 20));
    }
    up.kill9();
    let cursors = [
        (data.join("collector/spool/forwarder.cursor"), &b""[..]),
        (data.join("router/log/warehouse.cursor"), &b"{\"segment\":"[..]),
    ];
    for (path, garbage) in &cursors {
        fs::write(path, garbage).unwrap();
    }
    let up = Up::with_fixture(&data, &[]);
    assert!(up.stop_with("TERM").success());
    let log = fs::read_to_string(data.with_extension("stderr.log")).unwrap();
    assert_eq!(
        log.matches("cannot use the saved cursor").count(),
        2,
        "each reset is logged:\n{log}"
    );
    assert_ledger(&data.join("warehouse"), &acked);
}

#[test]
fn limits_are_config_errors_that_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (var, value, key) in [
        ("WEIR_ROUTER_MAX_BATCH_BYTES", "100000000", "router.max_batch_bytes"),
        ("WEIR_ROUTER_RETENTION_DAYS", "0", "router.retention_days"),
    ] {
        let out = weir()
            .args(["up", "--data-dir"])
            .arg(tmp.path().join("data"))
            .env(var, value)
            .env("WEIR_COLLECTOR_LISTEN", "127.0.0.1:0")
            .env("WEIR_ROUTER_LISTEN", "127.0.0.1:0")
            .env("WEIR_LOADER_FLIGHT", "127.0.0.1:0")
            .env("WEIR_PROXY_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{var}={value}: {stderr}");
    }
}

#[test]
fn a_batch_the_router_refuses_is_split_and_an_event_refused_alone_is_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let up = Up::with_fixture(&data, &[("WEIR_ROUTER_MAX_BATCH_BYTES", "65536")]);
    // 1,000 events in one request: one batch far above 64 KiB decompressed.
    let mut acked = send(&up.collector, "small", 1000);
    // One event that is too large for the router even alone (incompressible).
    let mut noise = String::new();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while noise.len() < 200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push_str(&format!("{x:016x}"));
    }
    let (status, body) = post_events(&up.collector, &cart("huge-1", &noise));
    assert_eq!(status, 202, "{body}");
    // And the spool moves on past it.
    acked.extend(send(&up.collector, "later", 10));
    let started = Instant::now();
    assert!(up.stop().success());
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the spool drained without waiting out its timeout"
    );
    assert_ledger(&data.join("warehouse"), &acked);
    let dead = data.join("collector/dead-letters");
    let lines: Vec<serde_json::Value> = fs::read_dir(&dead)
        .unwrap_or_else(|e| panic!("{}: {e}", dead.display()))
        .flatten()
        .flat_map(|f| {
            fs::read_to_string(f.path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["event"]["id"], "huge-1");
    assert!(
        lines[0]["reason"].as_str().unwrap().contains("413"),
        "{}",
        lines[0]["reason"]
    );
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount (the fault suite runs as root, as CI does)");
        assert!(
            ok.success(),
            "mount -t tmpfs {}: run the fault suite as root",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A config for `weir collector` and `weir router` as separate processes on free
/// loopback ports (no unix sockets), with extra lines for each section; returns the file
/// and the two ports.
fn components_config(dir: &Path, collector: &str, router: &str) -> (PathBuf, u16, u16) {
    let (cport, rport) = (free_port(), free_port());
    let cfg = dir.join("weir.toml");
    fs::write(
        &cfg,
        format!(
            "data_dir = \"{data}\"\ncatalog = \"{catalog}\"\n[collector]\nlisten = \"127.0.0.1:{cport}\"\nsocket = \"\"\ndatagram = \"\"\nrouters = [\"http://127.0.0.1:{rport}\"]\n{collector}\n[router]\nlisten = \"127.0.0.1:{rport}\"\n{router}\n",
            data = dir.join("data").display(),
            catalog = fixture_catalog().display(),
        ),
    )
    .unwrap();
    (cfg, cport, rport)
}

#[test]
fn a_full_spool_disk_answers_503_and_recovers_by_itself_when_the_router_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let _disk = Tmpfs::mount(&spool, "8m");
    let (cfg, cport, _) = components_config(tmp.path(), &format!("spool_dir = \"{}\"", spool.display()), "");
    let cfg = cfg.to_str().unwrap();
    let collector_url = format!("http://127.0.0.1:{cport}");
    let collector = spawn(&["collector", "--config", cfg], &tmp.path().join("collector.log"));
    eventually(Duration::from_secs(30), "the collector listens", || {
        ureq::get(&format!("{collector_url}/healthz")).call().ok()
    });
    // The router is away: fill the spool's disk until the collector refuses.
    let session = "x".repeat(200);
    let mut acked = BTreeSet::new();
    let mut refused = None;
    for i in 0..2000 {
        let ids: Vec<String> = (0..100).map(|j| format!("full-{i}-{j}")).collect();
        let body: Vec<String> = ids.iter().map(|id| cart(id, &session)).collect();
        let (status, answer) = post_events(&collector_url, &format!("[{}]", body.join(",")));
        match status {
            202 => acked.extend(ids),
            503 => {
                refused = Some(answer);
                break;
            }
            other => panic!("{other}: {answer}"),
        }
    }
    let refused = refused.expect("a full disk answers 503");
    assert!(refused.to_string().contains("spool"), "{refused}");
    assert!(acked.len() > 10_000, "only {} events fit", acked.len());

    // The router comes back: the spool drains and frees its disk by itself.
    let router = spawn(&["router", "--config", cfg], &tmp.path().join("router.log"));
    let mut i = 0;
    eventually(Duration::from_secs(60), "the collector takes events again", || {
        i += 1;
        let ids: Vec<String> = (0..100).map(|j| format!("again-{i}-{j}")).collect();
        let body: Vec<String> = ids.iter().map(|id| cart(id, &session)).collect();
        let (status, _) = post_events(&collector_url, &format!("[{}]", body.join(",")));
        (status == 202).then(|| acked.extend(ids))
    });
    // And it keeps taking them: the disk is not just one event away from full.
    for k in 0..50 {
        acked.extend(send(&collector_url, &format!("steady-{k}"), 100));
    }
    stop(collector);
    stop(router);
    load_now(cfg);
    assert_ledger(&tmp.path().join("data/warehouse"), &acked);
}

/// The value of a counter or gauge in a Prometheus text page (0 when absent).
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_nearly_full_router_disk_refuses_intake_drains_its_log_and_recovers_when_space_frees() {
    // The log and the hourly buffer on the small disk together, then each alone.
    for (log, buffer) in [(true, true), (true, false), (false, true)] {
        nearly_full_router_disk(log, buffer);
    }
}

fn nearly_full_router_disk(log_on_disk: bool, buffer_on_disk: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("router-disk");
    let _disk = Tmpfs::mount(&disk, "24m");
    // Another tenant of the disk takes 10 MiB.
    let ballast = disk.join("ballast");
    fs::write(&ballast, vec![7u8; 10 << 20]).unwrap();
    let base = |on_disk: bool| {
        if on_disk {
            disk.clone()
        } else {
            tmp.path().join("elsewhere")
        }
    };
    let router_lines = format!(
        "log_dir = \"{}/log\"\nbuffer = {{ kind = \"file\", dir = \"{}/buffer\" }}\nlog_segment_bytes = 1048576\nmin_free_bytes = 4194304",
        base(log_on_disk).display(),
        base(buffer_on_disk).display(),
    );
    // With the buffer elsewhere, the log fills only while a consumer lags: a recipient
    // whose server is down.
    let router_lines = if buffer_on_disk {
        router_lines
    } else {
        router_lines + "\n[router.recipients.down]\nkind = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\nexchange = \"weir.down\""
    };
    let (cfg, cport, rport) = components_config(tmp.path(), "", &router_lines);
    if !buffer_on_disk {
        let catalog = tmp.path().join("catalog");
        fs::create_dir_all(&catalog).unwrap();
        let shop = fs::read_to_string(fixture_catalog().join("shop.toml")).unwrap();
        let routed = shop.replace(
            "[events.\"cart.viewed\"]\n",
            "[events.\"cart.viewed\"]\nrecipients = [\"down\"]\n",
        );
        assert_ne!(routed, shop);
        fs::write(catalog.join("shop.toml"), routed).unwrap();
        let text = fs::read_to_string(&cfg).unwrap();
        fs::write(
            &cfg,
            text.replace(&fixture_catalog().display().to_string(), &catalog.display().to_string()),
        )
        .unwrap();
    }
    let cfg = cfg.to_str().unwrap();
    let collector_url = format!("http://127.0.0.1:{cport}");
    let router_metrics = format!("http://127.0.0.1:{rport}/metrics");
    let router = spawn(&["router", "--config", cfg], &tmp.path().join("router.log"));
    let collector = spawn(&["collector", "--config", cfg], &tmp.path().join("collector.log"));
    eventually(Duration::from_secs(30), "both listen", || {
        ureq::get(&format!("{collector_url}/healthz")).call().ok()?;
        ureq::get(&router_metrics).call().ok()
    });
    // Fill the router's disk to its reserve: the collector keeps answering 202 (it
    // spools what the router refuses). The router keeps batches zstd-compressed, so the
    // sessions are noise: a repeated one would take a long while to fill anything.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut acked = BTreeSet::new();
    let mut refused = false;
    for i in 0..3000 {
        let ids: Vec<String> = (0..100).map(|j| format!("disk-{i}-{j}")).collect();
        let body: Vec<String> = ids.iter().map(|id| cart(id, &noise(200, &mut seed))).collect();
        let (status, answer) = post_events(&collector_url, &format!("[{}]", body.join(",")));
        assert_eq!(status, 202, "{answer}");
        acked.extend(ids);
        if i % 20 == 0 && metric(&get_text(&router_metrics), "weir_router_disk_low_rejections_total") > 0.0 {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "the router never reached its reserve (log on it: {log_on_disk}, buffer: {buffer_on_disk})"
    );
    let free = weir_proto::runtime::disk::free_bytes(&disk).unwrap();
    assert!(free > 0, "the reserve keeps the disk from filling up");
    // While it refuses, the log drains into the hourly buffer: nothing it acknowledged
    // waits on space that is not there.
    eventually(Duration::from_secs(30), "the log drains into the buffer", || {
        let page = get_text(&router_metrics);
        (metric(&page, "weir_router_buffer_events_total") >= metric(&page, "weir_router_events_received_total"))
            .then_some(())
    });
    // Space frees: intake resumes by itself and the spool drains.
    fs::remove_file(&ballast).unwrap();
    for k in 0..20 {
        acked.extend(send(&collector_url, &format!("after-{k}"), 100));
    }
    stop(collector);
    stop(router);
    let log = fs::read_to_string(tmp.path().join("router.log")).unwrap();
    assert!(log.contains("the disk is nearly full"), "{log}");
    assert!(log.contains("disk space is back above the reserve"), "{log}");
    load_now(cfg);
    assert_ledger(&tmp.path().join("data/warehouse"), &acked);
}

/// Runs `weir loader run --now` on `cfg` (every buffered hour into the warehouse).
fn load_now(cfg: &str) {
    let out = weir()
        .args(["loader", "run", "--now", "--config", cfg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The ids acknowledged (202), and those of requests whose answer never came (in doubt).
pub type Ledger = (BTreeSet<String>, BTreeSet<String>);

/// Sends 20-event requests (`event` makes one event's JSON from its id) from `senders`
/// threads at once, each in a loop until `stop`; returns their [`Ledger`]s merged.
pub fn steady_load(
    url: String,
    senders: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    event: fn(&str) -> String,
) -> std::thread::JoinHandle<Ledger> {
    let threads: Vec<_> = (0..senders)
        .map(|t| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut acked, mut in_doubt) = (BTreeSet::new(), BTreeSet::new());
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let ids: Vec<String> = (0..20).map(|j| format!("load{t}-{n}-{j}")).collect();
                    let body: Vec<String> = ids.iter().map(|id| event(id)).collect();
                    let sent = ureq::post(&format!("{url}/v1/events"))
                        .timeout(Duration::from_secs(10))
                        .set("content-type", "application/json")
                        .send_string(&format!("[{}]", body.join(",")));
                    match sent {
                        Ok(r) if r.status() == 202 => acked.extend(ids),
                        // Refused (503 while the router restarts): not stored.
                        Ok(_) | Err(ureq::Error::Status(..)) => std::thread::sleep(Duration::from_millis(20)),
                        // Cut off by a kill: maybe stored, not acknowledged, so not owed.
                        Err(_) => {
                            in_doubt.extend(ids);
                            std::thread::sleep(Duration::from_millis(20))
                        }
                    }
                }
                (acked, in_doubt)
            })
        })
        .collect();
    std::thread::spawn(move || {
        let (mut acked, mut in_doubt) = (BTreeSet::new(), BTreeSet::new());
        for t in threads {
            let (a, d) = t.join().expect("a load thread panicked");
            acked.extend(a);
            in_doubt.extend(d);
        }
        (acked, in_doubt)
    })
}

/// kill -9 of the collector and of the router, at seeded random moments, under steady
/// load. `TEST_WEIR_FAULT_CYCLES` (default 6) and `TEST_WEIR_FAULT_SEED` make a longer soak.
#[test]
fn kill_9_of_collector_and_router_at_random_moments_loses_no_acknowledged_event() {
    let (cycles, mut rand) = fault_plan(0x5eed_cafe);
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, cport, rport) = components_config(tmp.path(), "batch_max_events = 50", "log_segment_bytes = 65536");
    let cfg = cfg.to_str().unwrap();
    let url = format!("http://127.0.0.1:{cport}");
    // The collector shares CPU 0 with a busy loop: on a contended core its spool's writer
    // waits for an idle runtime between groups (see `weir_proto::runtime::wal::Pacing`),
    // so the kills land among those waits too, not only among syncs.
    let _busy = Reaped::new(
        Command::new("taskset")
            .args(["-c", "0", "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("taskset (util-linux) runs a busy loop on CPU 0"),
    );
    let start = |what: &str, i: u64| {
        let log = fs::File::create(tmp.path().join(format!("{what}-{i}.log"))).unwrap();
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0", env!("CARGO_BIN_EXE_weir"), what, "--config", cfg]);
        Reaped::new(cmd.stdout(std::process::Stdio::null()).stderr(log).spawn().unwrap())
    };
    let up = |url: &str, log: String| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{url}/healthz")).call().is_err() {
            let log = tmp.path().join(&log);
            assert!(
                Instant::now() < deadline,
                "{} did not start within 30 s:\n{}",
                log.display(),
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut collector = start("collector", 0);
    let mut router = start("router", 0);
    up(&url, "collector-0.log".into());
    up(&format!("http://127.0.0.1:{rport}"), "router-0.log".into());
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Enough senders at once that the spool's groups reach the writer's idle wait (8+
    // appends).
    let load = steady_load(url.clone(), 16, stop_load.clone(), |id| cart(id, "s"));
    let mut waits = 0.0;
    for i in 1..=cycles {
        std::thread::sleep(Duration::from_millis(200 + rand(1000)));
        let kill_collector = rand(2) == 0;
        if kill_collector {
            let page = ureq::get(&format!("{url}/metrics"))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok());
            waits += metric(&page.unwrap_or_default(), "weir_collector_spool_idle_waits_total");
        }
        let victim = if kill_collector { &mut collector } else { &mut router };
        victim.kill().unwrap();
        victim.wait().unwrap();
        std::thread::sleep(Duration::from_millis(rand(300)));
        if std::ptr::eq(victim, &collector) {
            collector = start("collector", i);
            up(&url, format!("collector-{i}.log"));
        } else {
            router = start("router", i);
            up(&format!("http://127.0.0.1:{rport}"), format!("router-{i}.log"));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, in_doubt) = load.join().unwrap();
    assert!(acked.len() > 1000, "the load ran: {} acknowledged", acked.len());
    waits += metric(
        &get_text(&format!("{url}/metrics")),
        "weir_collector_spool_idle_waits_total",
    );
    assert!(
        waits > 0.0,
        "the spool's writer never waited for an idle runtime under this load"
    );
    // Shutdown drains for at most drain_timeout_secs; the backlog of this load may take
    // longer, so it is forwarded first.
    eventually(Duration::from_secs(300), "the spool drains to the router", || {
        (metric(
            &get_text(&format!("{url}/metrics")),
            "weir_collector_spool_pending_bytes",
        ) == 0.0)
            .then_some(())
    });
    stop(collector.take());
    stop(router.take());
    load_now(cfg);
    assert_ledger_in_doubt(&tmp.path().join("data/warehouse"), &acked, &in_doubt);
}

/// Shutdown forwards the spool for at most `drain_timeout_secs`, even to a router that
/// keeps accepting (a backlog larger than that time allows): the rest stays in the spool
/// and goes out after the next start.
#[test]
fn shutdown_with_a_backlog_stops_at_the_drain_timeout_and_the_spool_keeps_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let slow = "drain_timeout_secs = 1\nbatch_max_events = 1";
    let (cfg, cport, _) = components_config(tmp.path(), slow, "");
    let cfg_s = cfg.to_str().unwrap();
    let url = format!("http://127.0.0.1:{cport}");
    let collector = Reaped::new(spawn(
        &["collector", "--config", cfg_s],
        &tmp.path().join("collector-0.log"),
    ));
    eventually(Duration::from_secs(30), "the collector listens", || {
        ureq::get(&format!("{url}/healthz")).call().ok()
    });
    // The router is away: a backlog builds up.
    let mut acked = BTreeSet::new();
    for i in 0..400 {
        acked.extend(send(&url, &format!("backlog-{i}"), 100));
    }
    let router = Reaped::new(spawn(&["router", "--config", cfg_s], &tmp.path().join("router.log")));
    eventually(Duration::from_secs(30), "forwarding starts", || {
        let page = get_text(&format!("{url}/metrics"));
        (metric(&page, "weir_collector_forwarded_events_total") > 0.0).then_some(())
    });
    // One event per batch: the 40,000 take far longer than the 1 s drain time.
    let asked = Instant::now();
    let mut collector = collector;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(collector.id().to_string())
        .status();
    let status = eventually(Duration::from_secs(60), "the collector exits", || {
        collector.try_wait().unwrap()
    });
    let took = asked.elapsed();
    assert!(status.success(), "exit {status:?}");
    let log = fs::read_to_string(tmp.path().join("collector-0.log")).unwrap();
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?} with drain_timeout_secs = 1:\n{log}"
    );
    assert!(log.contains("drain timeout: leaving the rest of the spool"), "{log}");
    // The next start forwards the rest (in larger batches).
    fs::write(&cfg, fs::read_to_string(&cfg).unwrap().replace(slow, "")).unwrap();
    let collector = Reaped::new(spawn(
        &["collector", "--config", cfg_s],
        &tmp.path().join("collector-1.log"),
    ));
    eventually(Duration::from_secs(120), "the rest of the spool is forwarded", || {
        let page = ureq::get(&format!("{url}/metrics")).call().ok()?.into_string().ok()?;
        (metric(&page, "weir_collector_spool_pending_bytes") == 0.0).then_some(())
    });
    stop(collector.take());
    stop(router.take());
    load_now(cfg_s);
    assert_ledger(&tmp.path().join("data/warehouse"), &acked);
}

/// One raw HTTP/1.1 request (for what ureq cannot send: repeated header lines);
/// returns the status line and the body.
fn raw_request(addr: &str, head: &str, body: &str) -> (String, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (status, rest) = out.split_once("\r\n").unwrap_or((&out, ""));
    let body = rest.split_once("\r\n\r\n").map_or("", |b| b.1);
    (status.to_string(), body.to_string())
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_public_edge_answers_abuse_exactly_and_stores_requests_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("weir.toml");
    fs::write(
        &cfg,
        r#"
[collector]
router_token = "rt-secret"
[router]
token = "rt-secret"
[proxy]
trusted_proxies = ["127.0.0.1"]
max_events = 50
max_connections = 4
[[proxy.keys]]
key = "wk"
env = "web"
[[proxy.keys]]
key = "wk_seg"
env = "web"
rate = 5
"#,
    )
    .unwrap();
    let data = tmp.path().join("data");
    let up = Up::start(
        &data,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--catalog",
            fixture_catalog().to_str().unwrap(),
        ],
        &[],
    );
    let proxy = up.banner_url("proxy");
    let router = up.banner_url("router");
    let events = format!("{proxy}/v1/events");
    let post = |ua: &str, body: &str| {
        answer(
            ureq::post(&events)
                .set("x-weir-key", "wk")
                .set("user-agent", ua)
                .set("content-type", "application/json")
                .send_string(body),
        )
    };
    let mut acked = BTreeSet::new();

    // Internal endpoints need the token; the collector sends it.
    for path in ["/v1/batches", "/v1/catalog"] {
        let r = if path == "/v1/batches" {
            ureq::post(&format!("{router}{path}")).send_bytes(b"")
        } else {
            ureq::get(&format!("{router}{path}")).call()
        };
        let (code, body) = answer(r);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(body.contains("router_token"), "{body}");
    }
    let (code, _) = answer(
        ureq::get(&format!("{router}/v1/catalog"))
            .set("authorization", "Bearer rt-secret")
            .call(),
    );
    assert_eq!(code, 200);

    // A huge user agent: the head is refused; a long one is stored cut to 1 KiB.
    let (code, _) = post(&"x".repeat(100_000), &cart("ua-0", "s"));
    assert_eq!(code, 431);
    let (code, body) = post(&"Mozilla/5.0 ".repeat(500), &cart("ua-1", "s"));
    assert_eq!(code, 202, "{body}");
    acked.insert("ua-1".to_string());

    // Too many events in one request.
    let many: Vec<String> = (0..51).map(|i| cart(&format!("many-{i}"), "s")).collect();
    let (code, body) = post("t", &format!("[{}]", many.join(",")));
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("at most 50"), "{body}");

    // A trusted balancer appends its own X-Forwarded-For line, with a port: the client
    // is the hop it added, not what the client wrote in its own line.
    let host = proxy.trim_start_matches("http://");
    let (status, body) = raw_request(
        host,
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Weir-Key: wk\r\nContent-Type: application/json\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 203.0.113.5:4444\r\n",
        &cart("xff-1", "s"),
    );
    assert!(status.contains("202"), "{status} {body}");
    acked.insert("xff-1".to_string());

    // A Segment batch of 10 users under a key limited to 5 requests a second: one
    // request, charged once, stored whole.
    let calls: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"type":"track","event":"cart.viewed","userId":"u{i}","messageId":"seg-{i}","properties":{{"items":{i},"session_id":"s"}}}}"#))
        .collect();
    let (code, body) = answer(
        ureq::post(&format!("{proxy}/v1/batch"))
            .set("content-type", "application/json")
            .send_string(&format!(r#"{{"writeKey":"wk_seg","batch":[{}]}}"#, calls.join(","))),
    );
    assert_eq!(code, 200, "{body}");

    // Slow clients hold at most max_connections, and only for the header timeout.
    let slow: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(host).unwrap();
            s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (code, body) = post("t", &cart("after-slow", "s"));
    assert_eq!(code, 202, "{body}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "served at once ({waited:?}): the cap did not hold"
    );
    assert!(
        waited < Duration::from_secs(25),
        "the slow clients were not timed out ({waited:?})"
    );
    acked.insert("after-slow".to_string());
    drop(slow);

    assert!(up.stop().success());
    let files = parquet_files(&data.join("warehouse/event=cart.viewed"));
    let batches: Vec<_> = files.iter().flat_map(|f| read_parquet(f)).collect();
    let ids = strings(&batches, "id");
    let uas = opt_strings(&batches, "context_user_agent");
    let ips = opt_strings(&batches, "context_ip");
    let at = |id: &str| {
        ids.iter()
            .position(|x| x == id)
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    assert_eq!(uas[at("ua-1")].as_deref().map(str::len), Some(1024));
    assert_eq!(ips[at("xff-1")].as_deref(), Some("203.0.113.5"));
    let segment: BTreeSet<&String> = ids.iter().filter(|i| !acked.contains(*i)).collect();
    assert_eq!(segment.len(), 10, "the whole Segment batch, once: {segment:?}");
    for id in &acked {
        at(id);
    }
}

#[test]
fn a_rabbitmq_message_no_queue_is_bound_for_is_dead_lettered_and_counted() {
    let amqp = service("TEST_WEIR_AMQP");
    let exchange = unique("weir.unbound.");
    let tmp = tempfile::tempdir().unwrap();
    let up = crate::common::fanout::up_with(
        tmp.path(),
        &crate::common::fanout::recipients_config(Some((&amqp, &exchange)), None, None),
    );
    let (status, body) = post_events(&up.collector, &crate::common::fanout::ev("item.liked", "lonely-1", 7));
    assert_eq!(status, 202, "{body}");
    let dead = tmp.path().join("data/router/dead-letters/models");
    let line = eventually(Duration::from_secs(30), "the unroutable event is dead-lettered", || {
        let file = fs::read_dir(&dead).ok()?.flatten().next()?.path();
        let text = fs::read_to_string(file).ok()?;
        text.lines().next().map(str::to_string)
    });
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["event"]["id"], "lonely-1");
    assert!(line["reason"].as_str().unwrap().contains("unroutable"), "{line}");
    let metrics = get_text(&format!("{}/metrics", up.collector));
    assert!(
        metrics.contains("weir_router_recipient_unroutable_total{recipient=\"models\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("unroutable"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(up.stop().success());
}

#[test]
fn a_password_in_an_unreachable_mongodb_url_never_reaches_a_log() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("weir.toml");
    let port = free_port();
    fs::write(
        &cfg,
        format!("[router]\nbuffer = {{ kind = \"mongo\", url = \"mongodb://weir:${{MONGO_PW}}@127.0.0.1:{port}/?serverSelectionTimeoutMS=300&connectTimeoutMS=300\", db = \"weir\" }}\n"),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let up = Up::start(
        &data,
        &["--config", cfg.to_str().unwrap()],
        &[("MONGO_PW", "hunter2-pw")],
    );
    let (status, body) = post_events(
        &up.collector,
        r#"{"event":"search.performed","env":"backend","fields":{"query":"bike"}}"#,
    );
    assert_eq!(status, 202, "{body}");
    eventually(Duration::from_secs(30), "the buffer reports MongoDB away", || {
        up.stderr().contains("MongoDB buffer housekeeping failed").then_some(())
    });
    let metrics = get_text(&format!("{}/metrics", up.collector));
    assert!(!metrics.contains("hunter2"));
    // The final load cannot reach MongoDB either, and says where it tried.
    let stderr_path = up.stderr_path.clone();
    let _ = up.stop_with("TERM");
    let log = fs::read_to_string(stderr_path).unwrap();
    assert!(log.contains("mongodb://weir:***@127.0.0.1"), "{log}");
    assert!(!log.contains("hunter2"), "the password reached the log:\n{log}");
}

#[test]
fn a_garbled_manifest_is_rebuilt_by_the_next_load() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let up = Up::with_fixture(&data, &[]);
    let acked = send(&up.collector, "m", 30);
    assert!(up.stop().success());
    let manifests = data.join("warehouse/_manifests");
    let manifest = fs::read_dir(&manifests).unwrap().flatten().next().unwrap().path();
    fs::write(&manifest, b"{\"hour\": \"20").unwrap();
    // The buffer grows after the damage, so the hour is due for a load.
    let up = Up::with_fixture(&data, &[]);
    let mut acked2 = send(&up.collector, "n", 5);
    assert!(up.stop().success());
    let log = fs::read_to_string(data.with_extension("stderr.log")).unwrap();
    assert!(log.contains("unreadable manifest; loading the hour again"), "{log}");
    let m: serde_json::Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["rows"], 35);
    acked2.extend(acked);
    assert_ledger(&data.join("warehouse"), &acked2);
}
