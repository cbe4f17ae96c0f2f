//! The whole path, across processes: HTTP POST to the collector of a real `weir up` →
//! spool → router log → hourly buffer → loader → Parquet read back with arrow-rs.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::*;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use serde_json::json;

fn files_of(warehouse: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    parquet_files(&warehouse.join(prefix))
}

fn all_ids(warehouse: &Path) -> Vec<String> {
    parquet_files(warehouse)
        .iter()
        .flat_map(|f| strings(&read_parquet(f), "id"))
        .collect()
}

fn batches(files: &[std::path::PathBuf]) -> Vec<RecordBatch> {
    files.iter().flat_map(|f| read_parquet(f)).collect()
}

#[test]
fn events_reach_typed_parquet_and_bad_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let up = Up::with_fixture(&data, &[("WEIR_COLLECTOR_MAX_BODY_BYTES", "65536")]);
    let c = up.collector.clone();

    // Valid events: a frontend one with every type, a backend one, and NDJSON from mobile.
    let (status, body) = post_events(
        &c,
        r#"[{"event":"order.completed","version":1,"env":"web","id":"o-1","ts":"2026-11-22T10:00:00.250Z",
             "fields":{"order_id":"A1","amount":19.99,"items":3,"coupon":true,"paid_at":"2026-11-22T09:59:59Z","skus":[1,2,3],"channel":"web","session_id":"s-1"}},
            {"event":"order.completed","env":"backend","id":"o-2","fields":{"order_id":"B2","amount":5}}]"#,
    );
    assert_eq!(status, 202);
    assert_eq!(body, json!({"accepted": 2, "flagged": 0, "rejected": 0, "errors": []}));
    let (status, body) = post(
        &format!("{c}/v1/events"),
        b"{\"event\":\"cart.viewed\",\"env\":\"android\",\"id\":\"c-1\",\"fields\":{\"items\":2,\"device_id\":\"d-1\"}}\n{\"event\":\"cart.viewed\",\"env\":\"android\",\"id\":\"c-2\",\"fields\":{\"items\":0,\"device_id\":\"d-1\"}}\n",
        &[("content-type", "application/x-ndjson")],
    );
    assert_eq!((status, body["accepted"].clone()), (202, json!(2)));

    // Invalid from a frontend env: kept, flagged.
    let bad_web =
        r#"{"event":"order.completed","env":"web","id":"bad-web","fields":{"order_id":"C3","session_id":"s"}}"#;
    let (status, body) = post_events(&c, bad_web);
    assert_eq!(status, 202);
    assert_eq!(
        body,
        json!({"accepted": 1, "flagged": 1, "rejected": 0, "errors": [{"index": 0, "error": "amount: missing required field"}]})
    );

    // Invalid from a backend env: refused with the error, not stored; nothing of the
    // request was kept, so the status says so too (400, same body).
    let (status, body) = post_events(
        &c,
        r#"{"event":"order.completed","env":"backend","id":"bad-backend","fields":{"order_id":"D4","amount":"12"}}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"accepted": 0, "flagged": 0, "rejected": 1, "errors": [{"index": 0, "error": "amount: expected float, got string"}]})
    );

    // Unknown env: refused whatever the kind.
    let (_, body) = post_events(
        &c,
        r#"{"event":"cart.viewed","env":"tv","id":"bad-env","fields":{"items":1}}"#,
    );
    assert_eq!(body["rejected"], 1);
    assert_eq!(body["errors"][0]["error"], "env: unknown environment \"tv\"");

    // Malformed bodies: 400 and nothing of them stored, even the valid part.
    let (status, body) = post_events(
        &c,
        r#"[{"event":"cart.viewed","env":"android","id":"malformed-1","fields":{"items":1,"device_id":"d"}}, nope]"#,
    );
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("invalid JSON"), "{body}");
    let (status, body) = post(&format!("{c}/v1/events"), b"{\"event\":\"cart.viewed\",\"env\":\"android\",\"id\":\"malformed-2\",\"fields\":{\"items\":1,\"device_id\":\"d\"}}\n{bad\n", &[("content-type", "application/x-ndjson")]);
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("line 2: invalid JSON"),
        "{body}"
    );
    let (status, body) = post_events(&c, "42");
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": "the body must be a JSON object (one event) or an array of objects"})
        )
    );
    // Over the body limit: 413, nothing stored.
    let filler = "x".repeat(70_000);
    let big = format!(
        r#"{{"event":"cart.viewed","env":"android","id":"big-1","fields":{{"items":1,"device_id":"{filler}"}}}}"#
    );
    let (status, body) = post_events(&c, &big);
    assert_eq!(status, 413);
    assert_eq!(
        body["error"],
        "body is larger than 65536 bytes (after decompression); send smaller batches"
    );
    // Wrong method and path.
    assert_eq!(
        ureq::get(&format!("{c}/v1/events"))
            .call()
            .map_err(|e| match e {
                ureq::Error::Status(s, _) => s,
                _ => 0,
            })
            .unwrap_err(),
        405
    );
    assert_eq!(ureq::get(&format!("{c}/healthz")).call().unwrap().status(), 200);
    assert_eq!(ureq::get(&format!("{c}/readyz")).call().unwrap().status(), 200);
    let metrics = get_text(&format!("{c}/metrics"));
    assert!(
        metrics.contains("weir_collector_events_flagged_total{env=\"web\",event=\"order.completed\"} 1"),
        "{metrics}"
    );

    let status = up.stop();
    assert!(status.success(), "weir up exit: {status:?}");

    let warehouse = data.join("warehouse");
    let order_files = files_of(&warehouse, "event=order.completed/version=1");
    assert!(!order_files.is_empty());
    for f in &order_files {
        let rel = f.strip_prefix(&warehouse).unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts[..2], ["event=order.completed", "version=1"]);
        assert!(
            parts[2].starts_with("date=") && parts[3].starts_with("hour=") && parts[4] == "part-0.parquet",
            "{rel}"
        );
    }
    let orders = batches(&order_files);
    let schema = orders[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "env",
            "received_at",
            "client_ts",
            "collector",
            "order_id",
            "amount",
            "items",
            "coupon",
            "paid_at",
            "skus",
            "channel",
            "session_id",
            "device_id",
            "context_ip",
            "context_user_agent",
            "context_ua_browser",
            "context_ua_browser_version",
            "context_ua_os",
            "context_ua_device",
            "context_country",
            "context_region",
            "context_user_id",
            "context_anonymous_id"
        ]
    );
    let field = |n: &str| schema.field_with_name(n).unwrap().clone();
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    assert_eq!(
        (field("order_id").data_type(), field("order_id").is_nullable()),
        (&DataType::Utf8, false)
    );
    assert_eq!(
        (field("amount").data_type(), field("amount").is_nullable()),
        (&DataType::Float64, false)
    );
    assert_eq!(
        (field("items").data_type(), field("items").is_nullable()),
        (&DataType::Int64, true)
    );
    assert_eq!(field("coupon").data_type(), &DataType::Boolean);
    assert_eq!(field("paid_at").data_type(), &ts);
    assert_eq!(field("received_at").data_type(), &ts);
    assert!(!field("received_at").is_nullable() && field("client_ts").is_nullable());
    assert!(matches!(field("skus").data_type(), DataType::List(inner) if inner.data_type() == &DataType::Int64));
    assert!(
        field("session_id").is_nullable(),
        "a common field of only some envs is nullable"
    );

    let mut ids = strings(&orders, "id");
    ids.sort();
    assert_eq!(ids, ["o-1", "o-2"]);
    // Find o-1's row and check every value.
    let (b, row) = orders
        .iter()
        .flat_map(|b| (0..b.num_rows()).map(move |r| (b, r)))
        .find(|(b, r)| b.column_by_name("id").unwrap().as_string::<i32>().value(*r) == "o-1")
        .unwrap();
    assert_eq!(b.column_by_name("env").unwrap().as_string::<i32>().value(row), "web");
    assert_eq!(
        b.column_by_name("order_id").unwrap().as_string::<i32>().value(row),
        "A1"
    );
    assert_eq!(
        b.column_by_name("amount")
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(row),
        19.99
    );
    assert_eq!(
        b.column_by_name("items")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(row),
        3
    );
    assert!(b.column_by_name("coupon").unwrap().as_boolean().value(row));
    assert_eq!(
        b.column_by_name("paid_at")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(row),
        1_795_341_599_000_000
    );
    assert_eq!(
        b.column_by_name("client_ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(row),
        1_795_341_600_250_000
    );
    let skus = b.column_by_name("skus").unwrap().as_list::<i32>().value(row);
    assert_eq!(skus.as_primitive::<Int64Type>().values(), &[1, 2, 3]);
    assert_eq!(
        b.column_by_name("channel").unwrap().as_string::<i32>().value(row),
        "web"
    );
    assert!(b.column_by_name("device_id").unwrap().is_null(row));
    assert!(!b
        .column_by_name("collector")
        .unwrap()
        .as_string::<i32>()
        .value(row)
        .is_empty());
    // The partition path is the received_at hour.
    let at = b
        .column_by_name("received_at")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>()
        .value(row);
    let (date, hour) = weir_proto::hour::date_and_hour(weir_proto::hour::of_micros(at));
    assert!(order_files
        .iter()
        .any(|f| f.to_string_lossy().contains(&format!("date={date}/hour={hour}/"))));

    let carts = batches(&files_of(&warehouse, "event=cart.viewed/version=1"));
    let mut cart_ids = strings(&carts, "id");
    cart_ids.sort();
    assert_eq!(cart_ids, ["c-1", "c-2"]);
    assert!(!carts[0].schema().field_with_name("items").unwrap().is_nullable());

    let invalid = batches(&files_of(&warehouse, "_invalid"));
    assert_eq!(strings(&invalid, "id"), ["bad-web"]);
    assert_eq!(strings(&invalid, "event"), ["order.completed"]);
    assert_eq!(strings(&invalid, "raw"), [bad_web]);
    let errors = invalid[0].column_by_name("errors").unwrap().as_list::<i32>().value(0);
    assert_eq!(errors.as_string::<i32>().value(0), "amount: missing required field");
    for f in files_of(&warehouse, "_invalid") {
        assert!(f
            .strip_prefix(&warehouse)
            .unwrap()
            .to_string_lossy()
            .starts_with("_invalid/date="));
    }

    let every: BTreeSet<String> = all_ids(&warehouse).into_iter().collect();
    for absent in ["bad-backend", "bad-env", "malformed-1", "malformed-2", "big-1"] {
        assert!(!every.contains(absent), "{absent} must not be stored");
    }
    assert_eq!(every.len(), 5);

    let manifests: Vec<_> = std::fs::read_dir(warehouse.join("_manifests"))
        .unwrap()
        .flatten()
        .collect();
    assert!(!manifests.is_empty());
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifests[0].path()).unwrap()).unwrap();
    assert!(m["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["crc32"].as_str().unwrap().len() == 8));
}

#[test]
fn kill_9_loses_no_acknowledged_event_and_stores_each_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Long batch waits keep events in the spool at the moment of the kill; small
    // batches make others already sit in the router log or buffer.
    let env = [
        ("WEIR_COLLECTOR_BATCH_MAX_WAIT_MS", "2000"),
        ("WEIR_COLLECTOR_BATCH_MAX_EVENTS", "25"),
    ];
    let up = Up::with_fixture(&data, &env);
    let mut acked = BTreeSet::new();
    for i in 0..40 {
        let events: Vec<String> = (0..7)
            .map(|j| format!(r#"{{"event":"cart.viewed","env":"web","id":"k-{i}-{j}","fields":{{"items":{j},"session_id":"s"}}}}"#))
            .collect();
        let (status, body) = post_events(&up.collector, &format!("[{}]", events.join(",")));
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], 7);
        acked.extend((0..7).map(|j| format!("k-{i}-{j}")));
    }
    // The kill must catch events on their way: some still only in the spool.
    let spooled: u64 = std::fs::read_dir(data.join("collector/spool"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    up.kill9();
    eprintln!("spool held {spooled} bytes at the kill");

    // Restart and stop at once with SIGTERM: a signal right after startup still drains.
    let again = Up::with_fixture(&data, &[]);
    let status = again.stop_with("TERM");
    assert!(status.success());
    let ids = all_ids(&data.join("warehouse"));
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "an event was stored twice");
    assert_eq!(unique, acked, "every acknowledged event, nothing else");
}

/// Sends one HTTP/1.1 request over a unix stream socket and returns (status, body).
fn post_unix(path: &Path, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    write!(
        s,
        "POST /v1/events HTTP/1.1\r\nHost: weir\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let json = resp.split("\r\n\r\n").nth(1).unwrap();
    (status, serde_json::from_str(json).unwrap())
}

#[test]
fn every_way_in_reaches_parquet_with_env_binding() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let up = Up::with_fixture(
        &data,
        &[
            ("WEIR_COLLECTOR_SOCKET_ENV", "backend"),
            ("WEIR_COLLECTOR_DATAGRAM_ENV", "android"),
        ],
    );
    let sock = data.join("collector.sock");
    let dgram = data.join("collector.dgram");
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    for p in [&sock, &dgram] {
        let meta = std::fs::metadata(p).unwrap();
        assert!(meta.file_type().is_socket(), "{}", p.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    }
    // TCP HTTP.
    let (status, _) = post_events(
        &up.collector,
        r#"{"event":"cart.viewed","env":"web","id":"tcp-1","fields":{"items":1,"session_id":"s"}}"#,
    );
    assert_eq!(status, 202);
    // HTTP over the unix socket, bound to backend: env may be left out...
    let (status, body) = post_unix(
        &sock,
        r#"{"event":"order.completed","id":"unix-1","fields":{"order_id":"u1","amount":1}}"#,
    );
    assert_eq!((status, body["accepted"].clone()), (202, json!(1)));
    // ...and another env is refused.
    let (_, body) = post_unix(
        &sock,
        r#"{"event":"order.completed","env":"web","id":"unix-bad","fields":{"order_id":"u2","amount":1,"session_id":"s"}}"#,
    );
    assert_eq!(body["rejected"], 1);
    assert_eq!(
        body["errors"][0]["error"],
        "env: this listener only takes events of environment \"backend\", not \"web\""
    );
    // Datagrams, bound to android: one event, NDJSON, garbage, a wrong env.
    let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
    client
        .send_to(
            br#"{"event":"cart.viewed","id":"dg-1","fields":{"items":2,"device_id":"d"}}"#,
            &dgram,
        )
        .unwrap();
    client
        .send_to(b"{\"event\":\"cart.viewed\",\"id\":\"dg-2\",\"fields\":{\"items\":3,\"device_id\":\"d\"}}\n{\"event\":\"cart.viewed\",\"id\":\"dg-3\",\"fields\":{\"items\":4,\"device_id\":\"d\"}}\n", &dgram)
        .unwrap();
    client.send_to(b"not json at all", &dgram).unwrap();
    client
        .send_to(
            br#"{"event":"cart.viewed","env":"web","id":"dg-bad","fields":{"items":2,"session_id":"s"}}"#,
            &dgram,
        )
        .unwrap();
    // Datagrams have no reply: wait until metrics show them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = get_text(&format!("{}/metrics", up.collector));
        let want = [
            "weir_collector_events_accepted_total{env=\"android\",event=\"cart.viewed\"} 3",
            // The garbage datagram, and the one from the wrong env.
            "weir_collector_events_rejected_total{env=\"_unknown\",event=\"_unknown\"} 1",
            "weir_collector_events_rejected_total{env=\"_unknown\",event=\"cart.viewed\"} 1",
        ];
        if want.iter().all(|w| m.contains(w)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "datagrams not counted:\n{m}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up.stop().success());
    assert!(!sock.exists() && !dgram.exists(), "sockets are removed on shutdown");

    let warehouse = data.join("warehouse");
    let carts = batches(&files_of(&warehouse, "event=cart.viewed/version=1"));
    let mut got: Vec<(String, String)> = strings(&carts, "id").into_iter().zip(strings(&carts, "env")).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("dg-1", "android"),
            ("dg-2", "android"),
            ("dg-3", "android"),
            ("tcp-1", "web")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let orders = batches(&files_of(&warehouse, "event=order.completed/version=1"));
    assert_eq!(strings(&orders, "id"), ["unix-1"]);
    assert_eq!(strings(&orders, "env"), ["backend"]);
    assert!(
        parquet_files(&warehouse.join("_invalid")).is_empty(),
        "refused events are not stored anywhere"
    );
}

#[test]
fn a_small_memory_budget_queues_requests_and_loses_none() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 64 KiB of request bodies in memory at once: 30 KB requests take turns.
    let up = Up::with_fixture(&data, &[("WEIR_COLLECTOR_MAX_INFLIGHT_BYTES", "65536")]);
    let url = up.collector.clone();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let events: Vec<String> = (0..300)
                    .map(|j| format!(r#"{{"event":"cart.viewed","env":"web","id":"m-{t}-{j}","fields":{{"items":{j},"session_id":"s"}}}}"#))
                    .collect();
                let body = format!("[{}]", events.join(","));
                assert!(body.len() > 20_000);
                let (status, got) = if t % 4 == 0 {
                    // Compressed: it claims the whole budget while it is read.
                    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    std::io::Write::write_all(&mut gz, body.as_bytes()).unwrap();
                    let gz = gz.finish().unwrap();
                    post(&format!("{url}/v1/events"), &gz, &[("content-type", "application/json"), ("content-encoding", "gzip")])
                } else {
                    post_events(&url, &body)
                };
                assert_eq!((status, got["accepted"].clone()), (202, json!(300)));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(up.stop().success());
    let ids: BTreeSet<String> = all_ids(&data.join("warehouse")).into_iter().collect();
    assert_eq!(ids.len(), 16 * 300);
}
