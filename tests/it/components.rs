//! The components as separate processes, the way they are deployed: `weir collector`,
//! `weir router` and `weir loader run`, with the router started only after the collector
//! has already accepted events.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::common::{spawn_component as spawn, stop_component as stop};

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
    let (cport, rport, dead) = (free_port(), free_port(), free_port());
    let cfg = tmp.path().join("weir.toml");
    // The first router never answers: the forwarder fails over to the second.
    fs::write(
        &cfg,
        format!(
            "data_dir = \"{data}\"\ncatalog = \"{catalog}\"\n[collector]\nlisten = \"127.0.0.1:{cport}\"\nrouters = [\"http://127.0.0.1:{dead}\", \"http://127.0.0.1:{rport}\"]\nname = \"node-7\"\n[router]\nlisten = \"127.0.0.1:{rport}\"\n",
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
    let metrics = get_text(&format!("{url}/metrics"));
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

fn write_config(path: &Path, text: String) -> String {
    fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn catalog_changes_on_the_router_reach_a_running_collector() {
    let tmp = tempfile::tempdir().unwrap();
    let (cport, rport) = (free_port(), free_port());
    let catalog = tmp.path().join("catalog");
    fs::create_dir_all(&catalog).unwrap();
    let shop = fs::read_to_string(fixture_catalog().join("shop.toml")).unwrap();
    fs::write(catalog.join("shop.toml"), &shop).unwrap();
    let router_cfg = write_config(
        &tmp.path().join("router.toml"),
        format!(
            "data_dir = \"{}\"\ncatalog = \"{}\"\n[router]\nlisten = \"127.0.0.1:{rport}\"\ncatalog_watch_secs = 1\n",
            tmp.path().join("router-data").display(),
            catalog.display()
        ),
    );
    // No `catalog` for the collector: it pulls from its routers.
    let collector_cfg = write_config(
        &tmp.path().join("collector.toml"),
        format!(
            "data_dir = \"{}\"\n[collector]\nlisten = \"127.0.0.1:{cport}\"\nrouters = [\"http://127.0.0.1:{rport}\"]\ncatalog_poll_secs = 1\n",
            tmp.path().join("collector-data").display()
        ),
    );
    let router = spawn(&["router", "--config", &router_cfg], &tmp.path().join("router.log"));
    let rurl = format!("http://127.0.0.1:{rport}");
    wait_until("the router", || ureq::get(&format!("{rurl}/healthz")).call().is_ok());
    // The router serves the catalog with an ETag and answers 304 to a current one.
    let resp = ureq::get(&format!("{rurl}/v1/catalog")).call().unwrap();
    let etag = resp.header("etag").unwrap().to_string();
    let served: serde_json::Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
    assert_eq!(served["files"][0]["name"], "shop.toml");
    let not_modified = ureq::get(&format!("{rurl}/v1/catalog"))
        .set("if-none-match", &etag)
        .call()
        .unwrap();
    assert_eq!(not_modified.status(), 304);

    let collector = spawn(
        &["collector", "--config", &collector_cfg],
        &tmp.path().join("collector.log"),
    );
    let url = format!("http://127.0.0.1:{cport}");
    wait_until("the collector to be ready", || {
        ureq::get(&format!("{url}/readyz")).call().is_ok()
    });
    let cart = r#"{"event":"cart.viewed","env":"android","fields":{"items":1,"device_id":"d"}}"#;
    let (status, body) = post_events(&url, cart);
    assert_eq!((status, body["accepted"].clone()), (202, serde_json::json!(1)));

    // An operator switches the noisy event off on the router: no collector restart.
    let edited = shop.replace("[events.\"cart.viewed\"]\n", "[events.\"cart.viewed\"]\ndrop = true\n");
    assert_ne!(edited, shop);
    fs::write(catalog.join("shop.toml"), &edited).unwrap();
    let changed = Instant::now();
    wait_until("drop = true to reach the collector", || {
        post_events(&url, cart).1["dropped"] == 1
    });
    assert!(
        changed.elapsed() < Duration::from_secs(5),
        "took {:?} (watch 1 s + poll 1 s)",
        changed.elapsed()
    );
    let (_, body) = post_events(&url, cart);
    assert_eq!(
        body,
        serde_json::json!({"accepted": 0, "flagged": 0, "rejected": 0, "dropped": 1, "errors": []})
    );
    let metrics = get_text(&format!("{url}/metrics"));
    assert!(
        metrics.contains("weir_collector_events_dropped_total{env=\"android\",event=\"cart.viewed\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("weir_collector_catalog_age_seconds"), "{metrics}");
    // An invalid edit on the router is refused there; the collector keeps the last good one.
    fs::write(catalog.join("shop.toml"), "this is [not toml").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(post_events(&url, cart).1["dropped"], 1);

    // Without any router, a restarted collector runs on its saved copy.
    stop(router);
    stop(collector);
    let collector = spawn(
        &["collector", "--config", &collector_cfg],
        &tmp.path().join("collector2.log"),
    );
    wait_until("the collector to be ready from its saved catalog", || {
        ureq::get(&format!("{url}/readyz")).call().is_ok()
    });
    assert_eq!(post_events(&url, cart).1["dropped"], 1);
    stop(collector);

    // With no router and no saved copy it refuses events with 503 until a router answers.
    let fresh_cfg = write_config(
        &tmp.path().join("fresh.toml"),
        format!(
            "data_dir = \"{}\"\n[collector]\nlisten = \"127.0.0.1:{cport}\"\nrouters = [\"http://127.0.0.1:{rport}\"]\n",
            tmp.path().join("fresh-data").display()
        ),
    );
    let collector = spawn(
        &["collector", "--config", &fresh_cfg],
        &tmp.path().join("collector3.log"),
    );
    wait_until("the collector", || ureq::get(&format!("{url}/healthz")).call().is_ok());
    let ready = ureq::get(&format!("{url}/readyz")).call();
    assert!(matches!(ready, Err(ureq::Error::Status(503, _))));
    let (status, body) = post_events(&url, cart);
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("no catalog yet"), "{body}");
    stop(collector);
}

#[test]
fn a_full_spool_answers_503_with_retry_after_and_recovers_once_drained() {
    let tmp = tempfile::tempdir().unwrap();
    let (cport, rport) = (free_port(), free_port());
    let cfg = write_config(
        &tmp.path().join("weir.toml"),
        format!(
            "data_dir = \"{data}\"\ncatalog = \"{catalog}\"\n[collector]\nlisten = \"127.0.0.1:{cport}\"\nrouters = [\"http://127.0.0.1:{rport}\"]\nspool_max_bytes = 20000\n[router]\nlisten = \"127.0.0.1:{rport}\"\n",
            data = tmp.path().join("data").display(),
            catalog = fixture_catalog().display(),
        ),
    );
    let collector = spawn(&["collector", "--config", &cfg], &tmp.path().join("collector.log"));
    let url = format!("http://127.0.0.1:{cport}");
    wait_until("the collector", || ureq::get(&format!("{url}/healthz")).call().is_ok());
    let batch = |i: usize| {
        let events: Vec<String> = (0..10)
            .map(|j| format!(r#"{{"event":"order.completed","env":"backend","id":"f-{i}-{j}","fields":{{"order_id":"o","amount":1}}}}"#))
            .collect();
        format!("[{}]", events.join(","))
    };
    // No router: the spool fills up, then the collector says so.
    let mut acked = BTreeSet::new();
    let mut refused = None;
    for i in 0..200 {
        let resp = ureq::post(&format!("{url}/v1/events"))
            .set("content-type", "application/json")
            .send_string(&batch(i));
        match resp {
            Ok(r) => {
                assert_eq!(r.status(), 202);
                acked.extend((0..10).map(|j| format!("f-{i}-{j}")));
            }
            Err(ureq::Error::Status(503, r)) => {
                refused = Some((r.header("retry-after").map(str::to_string), r.into_string().unwrap()));
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (retry_after, body) = refused.expect("a 503 once 20000 bytes are spooled");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(body.contains("the spool is full"), "{body}");
    assert!(!acked.is_empty());

    // The router comes: the spool drains and the collector takes events again.
    let router = spawn(&["router", "--config", &cfg], &tmp.path().join("router.log"));
    let mut i = 1000;
    wait_until("the collector to accept again", || {
        i += 1;
        match ureq::post(&format!("{url}/v1/events"))
            .set("content-type", "application/json")
            .send_string(&batch(i))
        {
            Ok(_) => {
                acked.extend((0..10).map(|j| format!("f-{i}-{j}")));
                true
            }
            Err(_) => false,
        }
    });
    stop(collector);
    stop(router);
    let out = weir()
        .args(["loader", "run", "--now", "--config", &cfg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = parquet_files(&tmp.path().join("data/warehouse/event=order.completed"));
    let ids: Vec<String> = files.iter().flat_map(|f| strings(&read_parquet(f), "id")).collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len());
    assert_eq!(unique, acked, "every acknowledged event, none of the refused ones");
}

/// `weir loader --config FILE`, the component a Deployment runs: loads a closed hour on
/// its own, answers /healthz, /readyz and /metrics, serves Flight, and stops on SIGTERM.
#[test]
fn the_loader_component_loads_closed_hours_and_answers_probes() {
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let buffer = data.join("router/buffer");
    fs::create_dir_all(&buffer).unwrap();
    let h = weir_proto::hour::of_micros(weir_proto::event::now_micros()) - 2;
    let mut bytes = Vec::new();
    for i in 0..3 {
        let e = weir_proto::pb::Event {
            id: format!("lc-{i}"),
            event: "page.viewed".into(),
            version: 1,
            env: "web".into(),
            received_at: h * weir_proto::hour::HOUR_MICROS + i,
            collector: "node-1".into(),
            fields: br#"{"url":"https://x/","session_id":"s"}"#.to_vec().into(),
            valid: true,
            ..Default::default()
        };
        weir_proto::record::encode_into(&mut bytes, &e.encode_to_vec());
    }
    fs::write(weir_proto::runtime::buffer::buffer_path(&buffer, h), &bytes).unwrap();
    fs::write(weir_proto::runtime::buffer::closed_path(&buffer, h), "{}").unwrap();
    let (listen, flight) = (free_port(), free_port());
    let catalog = tmp.path().join("catalog");
    fs::create_dir_all(&catalog).unwrap();
    for (name, text) in weir_proto::catalog::DEMO_FILES {
        fs::write(catalog.join(name), text).unwrap();
    }
    let cfg = write_config(
        &tmp.path().join("weir.toml"),
        format!(
            "data_dir = \"{}\"\ncatalog = \"{}\"\n[router]\ncatalog_watch_secs = 1\n[loader]\nlisten = \"127.0.0.1:{listen}\"\nflight = \"127.0.0.1:{flight}\"\ninterval_secs = 1\n",
            data.display(),
            catalog.display()
        ),
    );
    let loader = spawn(&["loader", "--config", &cfg], &tmp.path().join("loader.log"));
    let url = format!("http://127.0.0.1:{listen}");
    wait_until("the loader's /healthz", || {
        ureq::get(&format!("{url}/healthz")).call().is_ok()
    });
    assert_eq!(ureq::get(&format!("{url}/readyz")).call().unwrap().status(), 200);
    let manifest = data.join(format!("warehouse/_manifests/{}.json", weir_proto::hour::display(h)));
    wait_until("the hour loaded", || manifest.exists());
    wait_until("the metrics", || {
        get_text(&format!("{url}/metrics")).contains("weir_loader_rows_written_total 3")
    });
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", flight)).is_ok(),
        "Flight listens"
    );

    // A new event added to the catalog directory while the loader runs: an hour holding
    // it loads into its own typed files, not `_invalid`, with no restart.
    fs::write(
        catalog.join("zz-new.toml"),
        "[fields.note]\ntype = \"string\"\n\n[events.\"note.taken\"]\nowner = \"test\"\n\n[[events.\"note.taken\".versions]]\nversion = 1\nenvironments = [\"backend\"]\nrequired = [\"note\"]\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500)); // two watch periods
    let h2 = h - 1;
    let e = weir_proto::pb::Event {
        id: "lc-new".into(),
        event: "note.taken".into(),
        version: 1,
        env: "backend".into(),
        received_at: h2 * weir_proto::hour::HOUR_MICROS + 5,
        collector: "node-1".into(),
        fields: br#"{"note":"hello"}"#.to_vec().into(),
        valid: true,
        ..Default::default()
    };
    let mut bytes = Vec::new();
    weir_proto::record::encode_into(&mut bytes, &e.encode_to_vec());
    fs::write(weir_proto::runtime::buffer::buffer_path(&buffer, h2), &bytes).unwrap();
    fs::write(weir_proto::runtime::buffer::closed_path(&buffer, h2), "{}").unwrap();
    let typed = data.join("warehouse/event=note.taken/version=1");
    wait_until("the new event version loaded as its own files", || {
        !parquet_files(&typed).is_empty()
    });
    stop(loader);
    let files = parquet_files(&data.join("warehouse/event=page.viewed"));
    let batches: Vec<_> = files.iter().flat_map(|f| read_parquet(f)).collect();
    assert_eq!(strings(&batches, "id"), vec!["lc-0", "lc-1", "lc-2"]);
    let batches: Vec<_> = parquet_files(&typed).iter().flat_map(|f| read_parquet(f)).collect();
    assert_eq!(strings(&batches, "note"), vec!["hello"]);
}
