//! The console on a running `weir up`: `/v1/tail` (SSE) read from Rust, from Python's
//! `requests` and from headless Chromium, `/v1/stats` against what was sent, and the
//! token cookie.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

/// One Server-Sent Event: its `event:` type (`message` when none) and its data.
pub type Sse = (String, String);

/// Reads `url` as an event stream on a thread; every event arrives on the channel.
pub fn subscribe(url: &str) -> mpsc::Receiver<Sse> {
    let (tx, rx) = mpsc::channel();
    let resp = ureq::get(url).call().expect("the tail answers");
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    std::thread::spawn(move || {
        let (mut kind, mut data) = ("message".to_string(), String::new());
        for line in BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if !data.is_empty() && tx.send((kind.clone(), std::mem::take(&mut data))).is_err() {
                    return;
                }
                kind = "message".into();
            } else if let Some(k) = line.strip_prefix("event: ") {
                kind = k.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
    });
    rx
}

/// The events of `rx` until `n` have come or `limit` passed.
pub fn take(rx: &mpsc::Receiver<Sse>, n: usize, limit: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((kind, data)) if kind == "message" => out.push(serde_json::from_str(&data).unwrap()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    out
}

fn cart(id: &str, items: &str) -> String {
    format!(
        r#"{{"event":"cart.viewed","env":"web","id":"{id}","fields":{{"items":{items},"session_id":"secret-{id}"}}}}"#
    )
}

/// A valid `order.completed` (web events carry the env's `session_id`).
fn order(id: &str, env: &str) -> String {
    let session = if env == "web" { r#","session_id":"s""# } else { "" };
    format!(
        r#"{{"event":"order.completed","env":"{env}","id":"{id}","fields":{{"order_id":"{id}","amount":9.5{session}}}}}"#
    )
}

const CONFIG: &str = "[router]\ntail_redact = [\"context.ip\", \"fields.session_id\"]\n\n[[proxy.keys]]\nkey = \"wk_console\"\nenv = \"web\"\n";

fn start(dir: &std::path::Path, extra: &str) -> (Up, String, String) {
    let up = Up::with(dir, Some(&fixture_catalog()), &format!("{CONFIG}{extra}"), &[]);
    let proxy = up.banner_url("proxy");
    let console = up.banner_url("console").trim_end_matches('/').to_string();
    (up, proxy, console)
}

#[test]
fn the_tail_filters_redacts_and_tells_a_subscriber_that_reads_nothing_what_it_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (up, proxy, console) = start(tmp.path(), "");
    let carts = subscribe(&format!("{console}/v1/tail?event=cart.*"));
    let flagged = subscribe(&format!("{console}/v1/tail?valid=false&env=web"));
    let one = subscribe(&format!("{console}/v1/tail?id=o-2"));
    // A subscriber that never reads: its socket fills, then the ring passes it by.
    let mut stalled = std::net::TcpStream::connect(console.trim_start_matches("http://")).unwrap();
    stalled
        .write_all(b"GET /v1/tail HTTP/1.1\r\nhost: weir\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let body = format!(
        "[{},{},{},{}]",
        cart("c-1", "2"),
        cart("c-bad", "\"lots\""),
        order("o-1", "web"),
        order("o-2", "backend")
    );
    let (status, reply) = post_events(&up.collector, &body);
    assert_eq!(status, 202, "{reply}");
    // Through the proxy, which adds context.ip.
    let (status, reply) = post(
        &format!("{proxy}/v1/events"),
        cart("c-proxy", "1").as_bytes(),
        &[("content-type", "application/json"), ("x-weir-key", "wk_console")],
    );
    assert!(status == 200 || status == 202, "{status} {reply}");

    let got = take(&carts, 3, Duration::from_secs(10));
    let ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["c-1", "c-bad", "c-proxy"],
        "event=cart.* keeps the carts, in order"
    );
    assert!(got.iter().all(|e| e["fields"]["session_id"] == "***"), "{got:?}");
    assert_eq!(got[2]["context"]["ip"], "***", "context.ip is redacted: {}", got[2]);
    assert_eq!(got[0]["fields"]["items"], 2);

    let bad = take(&flagged, 1, Duration::from_secs(10));
    assert_eq!(bad[0]["id"], "c-bad");
    assert_eq!(bad[0]["valid"], false);
    let errors = bad[0]["errors"].to_string();
    assert!(errors.contains("items"), "the error names the field: {errors}");
    assert!(
        take(&flagged, 1, Duration::from_millis(500)).is_empty(),
        "only the flagged one"
    );
    let only = take(&one, 2, Duration::from_secs(3));
    assert_eq!(only.len(), 1, "id= matches one event: {only:?}");
    assert_eq!(only[0]["env"], "backend");

    // Bad filters are 400s that say what the tail takes.
    let err = ureq::get(&format!("{console}/v1/tail?valid=maybe")).call().unwrap_err();
    let ureq::Error::Status(400, r) = err else {
        panic!("{err:?}")
    };
    assert!(r.into_string().unwrap().contains("valid=true or valid=false"));

    // 100,000 events while the stalled subscriber reads nothing: every one accepted.
    let mut accepted = 0u64;
    for b in 0..100 {
        let events: Vec<String> = (0..1000).map(|i| order(&format!("bulk-{b}-{i}"), "web")).collect();
        let (status, reply) = post_events(&up.collector, &format!("[{}]", events.join(",")));
        assert_eq!(status, 202, "{reply}");
        accepted += reply["accepted"].as_u64().unwrap();
    }
    assert_eq!(
        accepted, 100_000,
        "intake took everything with a stalled subscriber attached"
    );
    // The router counted all of them too (they reached the log).
    eventually(Duration::from_secs(60), "the router logged all 100,004", || {
        let text = ureq::get(&format!("{console}/metrics"))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        let n: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("weir_router_events_received_total "))?
            .trim()
            .parse()
            .ok()?;
        (n >= 100_004.0).then_some(())
    });
    // Now it reads: somewhere in what it gets is the dropped notice.
    stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(30);
    let notice = loop {
        assert!(Instant::now() < deadline, "no dropped notice");
        match stalled.read(&mut buf) {
            Ok(0) | Err(_) => panic!("the stream ended without a dropped notice"),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&seen);
        if let Some(at) = text.find("event: dropped\ndata: ") {
            let rest = &text[at + 21..];
            if let Some(end) = rest.find('\n') {
                break rest[..end].to_string();
            }
        }
        if seen.len() > 64 << 20 {
            seen.drain(..seen.len() - (1 << 20));
        }
    };
    let dropped: serde_json::Value = serde_json::from_str(&notice).unwrap();
    let n = dropped["dropped"].as_u64().unwrap();
    assert!(n > 0 && n <= 100_004, "{notice}");
    up.stop();
}

#[test]
fn stats_count_what_was_sent_per_minute_event_and_env() {
    let tmp = tempfile::tempdir().unwrap();
    let (up, _proxy, console) = start(tmp.path(), "");
    let mut want: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut body = Vec::new();
    for i in 0..30 {
        body.push(order(&format!("w-{i}"), "web"));
        want.entry(("order.completed".into(), "web".into())).or_default().0 += 1;
    }
    for i in 0..12 {
        body.push(order(&format!("b-{i}"), "backend"));
        want.entry(("order.completed".into(), "backend".into())).or_default().0 += 1;
    }
    for i in 0..7 {
        body.push(cart(&format!("c-{i}"), "3"));
        want.entry(("cart.viewed".into(), "web".into())).or_default().0 += 1;
    }
    for i in 0..5 {
        body.push(cart(&format!("x-{i}"), "\"many\""));
        want.entry(("cart.viewed".into(), "web".into())).or_default().1 += 1;
    }
    for i in 0..4 {
        body.push(format!(
            r#"{{"event":"no.such.event","env":"web","id":"u-{i}","fields":{{}}}}"#
        ));
        want.entry(("_unknown".into(), "web".into())).or_default().1 += 1;
    }
    let (status, reply) = post_events(&up.collector, &format!("[{}]", body.join(",")));
    assert_eq!(status, 202, "{reply}");
    let stats = eventually(Duration::from_secs(20), "stats show all 58 events", || {
        let text = ureq::get(&format!("{console}/v1/stats"))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        let s: serde_json::Value = serde_json::from_str(&text).ok()?;
        let total: u64 = s["events"]
            .as_array()?
            .iter()
            .map(|e| e["total_valid"].as_u64().unwrap() + e["total_flagged"].as_u64().unwrap())
            .sum();
        (total == 58).then_some(s)
    });
    let mut got: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let minutes = stats["minutes"].as_u64().unwrap() as usize;
    for e in stats["events"].as_array().unwrap() {
        let valid: Vec<u64> = serde_json::from_value(e["valid"].clone()).unwrap();
        let flagged: Vec<u64> = serde_json::from_value(e["flagged"].clone()).unwrap();
        assert_eq!(valid.len(), minutes);
        // Everything was sent just now: in the last minute, or the one before if a
        // minute turned meanwhile.
        assert_eq!(
            valid[..minutes - 2].iter().chain(&flagged[..minutes - 2]).sum::<u64>(),
            0,
            "{e}"
        );
        let slot = got
            .entry((e["event"].as_str().unwrap().into(), e["env"].as_str().unwrap().into()))
            .or_default();
        slot.0 += valid.iter().sum::<u64>();
        slot.1 += flagged.iter().sum::<u64>();
    }
    assert_eq!(got, want);
    let errors = stats["errors"].as_array().unwrap();
    let items = errors
        .iter()
        .find(|e| e["event"] == "cart.viewed")
        .expect("the cart error is listed");
    assert_eq!(items["count"], 5);
    assert!(items["sample_id"].as_str().unwrap().starts_with("x-"), "{items}");
    let unknown = errors
        .iter()
        .find(|e| e["event"] == "no.such.event")
        .expect("{errors:?}");
    assert_eq!(unknown["count"], 4);
    let recipients = stats["recipients"].as_array().unwrap();
    assert!(
        recipients.iter().any(|r| r["name"] == "warehouse" && r["up"] == true),
        "{recipients:?}"
    );
    up.stop();
}

#[test]
fn with_a_token_the_console_asks_for_it_once_and_the_data_endpoints_refuse_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = "[router]\ntoken = \"s3cret-console\"\n[collector]\nrouter_token = \"s3cret-console\"\n";
    let up = Up::with(tmp.path(), Some(&fixture_catalog()), cfg, &[]);
    let console_url = up.banner_url("console").trim_end_matches('/').to_string();
    // The page itself is served (it holds no data) and asks for the token.
    let page = ureq::get(&format!("{console_url}/")).call().unwrap();
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert!(page.into_string().unwrap().contains("/v1/console/login"));
    for path in ["/v1/tail", "/v1/stats", "/v1/console/catalog"] {
        match ureq::get(&format!("{console_url}{path}")).call() {
            Err(ureq::Error::Status(401, r)) => assert!(r.into_string().unwrap().contains("router.token")),
            other => panic!("{path} without the token: {other:?}"),
        }
    }
    let wrong = ureq::post(&format!("{console_url}/v1/console/login")).send_form(&[("token", "guess")]);
    assert!(matches!(wrong, Err(ureq::Error::Status(401, _))), "{wrong:?}");
    let agent = ureq::builder().redirects(0).build();
    let ok = agent
        .post(&format!("{console_url}/v1/console/login"))
        .send_form(&[("token", "s3cret-console")])
        .unwrap();
    assert_eq!(ok.status(), 303);
    let cookie = ok.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let stats = ureq::get(&format!("{console_url}/v1/stats"))
        .set("cookie", pair)
        .call()
        .unwrap();
    assert_eq!(stats.status(), 200);
    let bearer = ureq::get(&format!("{console_url}/v1/stats"))
        .set("authorization", "Bearer s3cret-console")
        .call()
        .unwrap();
    assert_eq!(bearer.status(), 200);
    up.stop();
}

#[test]
fn more_subscribers_than_tail_max_subscribers_get_503() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::with(
        tmp.path(),
        Some(&fixture_catalog()),
        "[router]\ntail_max_subscribers = 2\n",
        &[],
    );
    let console_url = up.banner_url("console").trim_end_matches('/').to_string();
    let a = subscribe(&format!("{console_url}/v1/tail"));
    let b = subscribe(&format!("{console_url}/v1/tail"));
    match ureq::get(&format!("{console_url}/v1/tail")).call() {
        Err(ureq::Error::Status(503, r)) => {
            assert!(r.into_string().unwrap().contains("tail_max_subscribers"))
        }
        other => panic!("a third subscriber: {other:?}"),
    }
    drop((a, b));
    up.stop();
}

#[test]
fn python_requests_streams_the_tail_with_filters_and_redaction() {
    let tmp = tempfile::tempdir().unwrap();
    let (up, _proxy, console) = start(tmp.path(), "");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tail.py");
    let mut child = Reaped::new(
        Command::new("python3")
            .arg(&script)
            .arg(format!("{console}/v1/tail?event=cart.*&valid=true"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The script prints "subscribed" once the stream is open.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "subscribed");
    let body = format!(
        "[{},{},{},{}]",
        order("py-1", "web"),
        cart("py-2", "1"),
        cart("py-3", "\"x\""),
        cart("py-4", "2")
    );
    let (status, reply) = post_events(&up.collector, &body);
    assert_eq!(status, 202, "{reply}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{rest}\n{err}");
    let got: serde_json::Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(got["ids"], serde_json::json!(["py-2", "py-4"]), "{got}");
    assert_eq!(
        got["session_ids"],
        serde_json::json!(["***"]),
        "fields.session_id is redacted"
    );
    up.stop();
}
