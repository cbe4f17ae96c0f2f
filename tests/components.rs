//! The components as separate processes, the way they are deployed: `weir collector`,
//! `weir router` and `weir loader run`, with the router started only after the collector
//! has already accepted events.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(args: &[&str], log: &Path) -> Child {
    let log = fs::File::create(log).unwrap();
    weir().args(args).stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

fn stop(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
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

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn collector_spools_while_the_router_is_away_and_delivers_when_it_comes() {
    let tmp = tempfile::tempdir().unwrap();
    let (cport, rport) = (free_port(), free_port());
    let cfg = tmp.path().join("weir.toml");
    fs::write(
        &cfg,
        format!(
            "data_dir = \"{data}\"\ncatalog = \"{catalog}\"\n[collector]\nlisten = \"127.0.0.1:{cport}\"\nrouters = [\"http://127.0.0.1:{rport}\"]\nname = \"node-7\"\n[router]\nlisten = \"127.0.0.1:{rport}\"\n",
            data = tmp.path().join("data").display(),
            catalog = fixture_catalog().display(),
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let collector = spawn(&["collector", "--config", cfg], &tmp.path().join("collector.log"));
    let url = format!("http://127.0.0.1:{cport}");
    wait_until("the collector", || ureq::get(&format!("{url}/healthz")).call().is_ok());

    let mut sent = BTreeSet::new();
    for i in 0..20 {
        let body = format!(
            r#"{{"event":"order.completed","env":"backend","id":"r-{i}","fields":{{"order_id":"o{i}","amount":{i}.5}}}}"#
        );
        let (status, _) = post_events(&url, &body);
        assert_eq!(status, 202, "accepted into the spool while no router answers");
        sent.insert(format!("r-{i}"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let metrics = ureq::get(&format!("{url}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("weir_collector_forward_retries_total"),
        "the forwarder retried:\n{metrics}"
    );

    let router = spawn(&["router", "--config", cfg], &tmp.path().join("router.log"));
    let buffer = tmp.path().join("data/router/buffer");
    wait_until("events in the hourly buffer", || {
        fs::read_dir(&buffer)
            .map(|d| d.flatten().any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false)))
            .unwrap_or(false)
    });
    stop(collector);
    stop(router);

    let out = weir()
        .args(["loader", "run", "--now", "--config", cfg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("20 rows"), "{stdout}");
    let files = parquet_files(&tmp.path().join("data/warehouse/event=order.completed"));
    let batches: Vec<_> = files.iter().flat_map(|f| read_parquet(f)).collect();
    let ids: BTreeSet<String> = strings(&batches, "id").into_iter().collect();
    assert_eq!(ids, sent);
    assert!(strings(&batches, "collector").iter().all(|c| c == "node-7"));
    // Loading again finds nothing new.
    let out = weir()
        .args(["loader", "run", "--now", "--config", cfg])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to load"));
}
