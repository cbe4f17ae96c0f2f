//! The proxy inside `weir up`: write keys (401), environment binding (403), CORS,
//! sendBeacon bodies, the body limit (413), and the client's address and user agent in
//! each event's context, with X-Forwarded-For ignored from an untrusted peer. Events are
//! checked in the MongoDB hourly buffer (nx-27017), whose documents carry `context`.

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use mongodb::bson::{doc, Document};

fn send(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, Option<String>) {
    let mut req = ureq::post(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.send_string(body) {
        Ok(r) => {
            let acao = r.header("access-control-allow-origin").map(str::to_string);
            (r.status(), r.into_string().unwrap_or_default(), acao)
        }
        Err(ureq::Error::Status(code, r)) => {
            let acao = r.header("access-control-allow-origin").map(str::to_string);
            (code, r.into_string().unwrap_or_default(), acao)
        }
        Err(e) => panic!("{url}: {e}"),
    }
}

fn page(id: &str, env: Option<&str>) -> String {
    let env = env.map(|e| format!(r#","env":"{e}""#)).unwrap_or_default();
    format!(r#"{{"event":"page.viewed","id":"{id}"{env},"fields":{{"url":"https://shop.test/","session_id":"s1"}}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_bind_environments_cors_limits_and_context() {
    let mongo = service("TEST_WEIR_MONGO");
    let db = unique("proxy");
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[router]
buffer = {{ kind = "mongo", url = "{mongo}", db = "{db}" }}

[proxy]
cors_origins = ["http://shop.test"]
max_body_bytes = 2048

[[proxy.keys]]
key = "wk_web"
env = "web"

[[proxy.keys]]
key_env = "TEST_BACKEND_WRITE_KEY"
env = "backend"
"#
    );
    let data = tmp.path().join("data");
    let up = Up::with(tmp.path(), None, &config, &[("TEST_BACKEND_WRITE_KEY", "wk_backend")]);
    let proxy = up.banner_url("proxy");
    let url = format!("{proxy}/v1/events");
    let json = ("content-type", "application/json");

    // No key, an unknown key.
    let (code, body, _) = send(&url, &[json], &page("k0", None));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("write key"), "{body}");
    assert_eq!(send(&url, &[json, ("x-weir-key", "nope")], &page("k0", None)).0, 401);

    // HTTP Basic (key as user, the Segment way); env comes from the key; XFF from this
    // untrusted peer is ignored; the origin is allowed.
    let basic = "Basic d2tfd2ViOg=="; // wk_web:
    let (code, body, acao) = send(
        &url,
        &[
            json,
            ("authorization", basic),
            ("x-forwarded-for", "203.0.113.5"),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"),
            ("origin", "http://shop.test"),
        ],
        &page("k1", None),
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(acao.as_deref(), Some("http://shop.test"));

    // A web key can never send as backend: the request is refused, nothing kept.
    let (code, body, _) = send(&url, &[json, ("x-weir-key", "wk_web")], &page("k2", Some("backend")));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("backend") && body.contains("web"), "{body}");

    // ?key=, and writeKey in a text/plain body (navigator.sendBeacon).
    assert_eq!(
        send(&format!("{url}?key=wk_web"), &[json], &page("k3", Some("web"))).0,
        202
    );
    let beacon = page("k4", None).replacen('{', r#"{"writeKey":"wk_web","#, 1);
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let (code, body, _) = send(
        &url,
        &[("content-type", "text/plain;charset=UTF-8"), ("user-agent", chrome)],
        &beacon,
    );
    assert_eq!(code, 202, "{body}");

    // The pixel: an event in query parameters, answered with a 1x1 GIF.
    let px = ureq::get(&format!(
        "{proxy}/v1/p.gif?key=wk_web&event=page.viewed&id=px1&f.url=https%3A%2F%2Fshop.test%2Fmail&f.session_id=s9"
    ))
    .call()
    .unwrap();
    assert_eq!(px.status(), 200);
    assert_eq!(px.header("content-type"), Some("image/gif"));
    let mut gif = Vec::new();
    std::io::Read::read_to_end(&mut px.into_reader(), &mut gif).unwrap();
    assert!(gif.starts_with(b"GIF89a") && gif.len() == 43);
    assert_eq!(
        ureq::get(&format!("{proxy}/v1/p.gif?event=page.viewed"))
            .call()
            .err()
            .and_then(|e| match e {
                ureq::Error::Status(c, _) => Some(c),
                _ => None,
            }),
        Some(401)
    );

    // The backend key (from key_env) sends as backend.
    let search = r#"{"event":"search.performed","id":"k5","fields":{"query":"bike"}}"#;
    assert_eq!(send(&url, &[json, ("x-weir-key", "wk_backend")], search).0, 202);

    // Too large.
    let big = page("k6", None).replace("s1", &"x".repeat(4000));
    assert_eq!(send(&url, &[json, ("x-weir-key", "wk_web")], &big).0, 413);

    // CORS preflight: answered for an allowed origin, without credentials; not for others.
    let pre = ureq::request("OPTIONS", &url)
        .set("origin", "http://shop.test")
        .set("access-control-request-method", "POST")
        .call()
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("http://shop.test"));
    assert!(pre
        .header("access-control-allow-headers")
        .unwrap()
        .contains("x-weir-key"));
    assert_eq!(pre.header("access-control-allow-credentials"), None);
    let other = ureq::request("OPTIONS", &url)
        .set("origin", "http://evil.test")
        .call()
        .unwrap();
    assert_eq!(other.header("access-control-allow-origin"), None);

    // What was kept, with its context, from the MongoDB buffer.
    let client = mongodb::Client::with_uri_str(&mongo).await.unwrap();
    let database = client.database(&db);
    let mut docs: Vec<Document> = Vec::new();
    for _ in 0..100 {
        docs.clear();
        for name in database.list_collection_names().await.unwrap() {
            if name.starts_with("buffer_2") {
                let mut cur = database.collection::<Document>(&name).find(doc! {}).await.unwrap();
                while let Some(d) = cur.next().await {
                    docs.push(d.unwrap());
                }
            }
        }
        if docs.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids: Vec<&str> = docs.iter().map(|d| d.get_str("_id").unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec!["k1", "k3", "k4", "k5", "px1"]);
    let k1 = docs.iter().find(|d| d.get_str("_id") == Ok("k1")).unwrap();
    assert_eq!(k1.get_str("env").unwrap(), "web");
    assert!(k1.get_bool("valid").unwrap());
    let ctx = k1.get_document("context").unwrap();
    assert_eq!(
        ctx.get_str("ip").unwrap(),
        "127.0.0.1",
        "X-Forwarded-For from an untrusted peer is ignored"
    );
    assert!(ctx.get_str("user_agent").unwrap().contains("TestBrowser/1.0"));
    let k4 = docs.iter().find(|d| d.get_str("_id") == Ok("k4")).unwrap();
    let ctx4 = k4.get_document("context").unwrap();
    assert_eq!(ctx4.get_str("ua_browser").unwrap(), "Chrome", "{ctx4:?}");
    assert_eq!(ctx4.get_str("ua_os").unwrap(), "Windows 10", "{ctx4:?}");
    assert_eq!(ctx4.get_str("ua_device").unwrap(), "pc", "{ctx4:?}");
    let k5 = docs.iter().find(|d| d.get_str("_id") == Ok("k5")).unwrap();
    assert_eq!(k5.get_str("env").unwrap(), "backend");
    assert!(up.stop().success());
    database.drop().await.unwrap();
    // The context reaches Parquet as nullable columns.
    let files = parquet_files(&data.join("warehouse/event=page.viewed/version=1"));
    let batches: Vec<_> = files.iter().flat_map(|f| read_parquet(f)).collect();
    let rows: Vec<(String, String, String)> = strings(&batches, "id")
        .into_iter()
        .zip(strings(&batches, "context_ip"))
        .zip(strings(&batches, "context_ua_browser"))
        .map(|((a, b), c)| (a, b, c))
        .collect();
    assert!(rows.contains(&("k1".into(), "127.0.0.1".into(), "".into())), "{rows:?}");
    assert!(
        rows.contains(&("k4".into(), "127.0.0.1".into(), "Chrome".into())),
        "{rows:?}"
    );
}

#[test]
fn demo_key_on_embedded_defaults_and_bad_proxy_config() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(&tmp.path().join("data"), &[], &[]);
    let proxy = up.banner_url("proxy");
    let (code, body, _) = send(
        &format!("{proxy}/v1/events?key=weir-demo-web"),
        &[("content-type", "application/json")],
        &page("d1", None),
    );
    assert_eq!(code, 202, "{body}");
    assert!(up.stop().success());

    let config = tmp.path().join("bad.toml");
    std::fs::write(
        &config,
        "[[proxy.keys]]\nkey_env = \"TEST_UNSET_WRITE_KEY\"\nenv = \"web\"\n",
    )
    .unwrap();
    let err = up_refused(&tmp.path().join("d2"), &config);
    assert!(
        err.contains("proxy.keys[0].key_env") && err.contains("TEST_UNSET_WRITE_KEY"),
        "{err}"
    );
}

/// Starts `weir up` with `config` (on free ports), expects it to refuse to start, and
/// returns what it said.
fn up_refused(data: &std::path::Path, config: &std::path::Path) -> String {
    let out = weir()
        .args(["up", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .env("WEIR_COLLECTOR_LISTEN", "127.0.0.1:0")
        .env("WEIR_ROUTER_LISTEN", "127.0.0.1:0")
        .env("WEIR_LOADER_FLIGHT", "127.0.0.1:0")
        .env("WEIR_PROXY_LISTEN", "127.0.0.1:0")
        .env_remove("TEST_UNSET_WRITE_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success(), "weir up started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sends `n` requests quickly; returns the statuses and the Retry-After values seen.
fn flood(url: &str, headers: &[(&str, &str)], n: usize) -> (Vec<u16>, Vec<String>) {
    let mut codes = Vec::new();
    let mut retry = Vec::new();
    for i in 0..n {
        let mut req = ureq::post(url).set("content-type", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        match req.send_string(&page(&format!("f{i}"), None)) {
            Ok(r) => codes.push(r.status()),
            Err(ureq::Error::Status(code, r)) => {
                codes.push(code);
                retry.extend(r.header("retry-after").map(str::to_string));
            }
            Err(e) => panic!("{e}"),
        }
    }
    (codes, retry)
}

#[test]
fn a_flooding_key_or_client_gets_429_while_others_keep_getting_202() {
    let tmp = tempfile::tempdir().unwrap();
    let config = r#"
[proxy]
trusted_proxies = ["127.0.0.1"]
per_ip_rate = 20

[[proxy.keys]]
key = "wk_flood"
env = "web"
rate = 5

[[proxy.keys]]
key = "wk_calm"
env = "web"
"#;
    let up = Up::with(tmp.path(), None, config, &[]);
    let url = format!("{}/v1/events", up.banner_url("proxy"));
    // One key floods (each request from another client address, so only the key's
    // limit applies); the other key, sending meanwhile, is never refused.
    let mut flood_codes = Vec::new();
    let mut retry = Vec::new();
    for i in 0..30 {
        let xff = format!("198.51.100.{i}");
        let (c, r) = flood(&url, &[("x-weir-key", "wk_flood"), ("x-forwarded-for", &xff)], 1);
        flood_codes.extend(c);
        retry.extend(r);
        let (calm, _) = flood(&url, &[("x-weir-key", "wk_calm"), ("x-forwarded-for", &xff)], 1);
        assert_eq!(calm, vec![202], "the other key is not slowed");
    }
    let limited = flood_codes.iter().filter(|&&c| c == 429).count();
    assert!(limited >= 20, "the flooding key was limited: {flood_codes:?}");
    assert!(
        flood_codes.iter().take(5).all(|&c| c == 202),
        "a burst of 5 passes: {flood_codes:?}"
    );
    assert!(
        !retry.is_empty() && retry.iter().all(|r| r.parse::<u64>().is_ok_and(|s| s >= 1)),
        "{retry:?}"
    );

    // One client address floods (X-Forwarded-For is believed from 127.0.0.1 here);
    // another address with the same key is not slowed.
    let (codes, _) = flood(
        &url,
        &[("x-weir-key", "wk_calm"), ("x-forwarded-for", "203.0.113.66")],
        40,
    );
    assert!(codes.iter().filter(|&&c| c == 429).count() >= 15, "{codes:?}");
    let (other, _) = flood(
        &url,
        &[("x-weir-key", "wk_calm"), ("x-forwarded-for", "203.0.113.77")],
        5,
    );
    assert_eq!(other, vec![202; 5]);
    let m = get_text(&format!("{}/metrics", up.collector));
    assert!(m.contains("weir_proxy_rate_limited_requests_total{by=\"key\"}"), "{m}");
    assert!(m.contains("weir_proxy_rate_limited_requests_total{by=\"ip\"}"), "{m}");
    assert!(up.stop().success());
}

#[test]
fn the_segment_python_sdk_sends_track_page_and_identify_that_land_in_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = tmp.path().join("catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    std::fs::write(
        catalog.join("segment.toml"),
        r#"
[environments.web]
kind = "frontend"

[fields.order_id]
type = "string"

[fields.amount]
type = "float"

[fields.url]
type = "string"

[fields.plan]
type = "string"

[events."order.completed"]
aliases = ["Order Completed"]

[[events."order.completed".versions]]
version = 1
environments = ["web"]
required = ["order_id", "amount"]

[events."page.viewed"]
aliases = ["page"]

[[events."page.viewed".versions]]
version = 1
environments = ["web"]
optional = ["url"]

[events."user.identified"]
aliases = ["identify"]

[[events."user.identified".versions]]
version = 1
environments = ["web"]
optional = ["plan"]
"#,
    )
    .unwrap();
    let config = tmp.path().join("weir.toml");
    std::fs::write(&config, "[[proxy.keys]]\nkey = \"wk_segment\"\nenv = \"web\"\n").unwrap();
    let data = tmp.path().join("data");
    let up = Up::start(
        &data,
        &[
            "--catalog",
            catalog.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    let proxy = up.banner_url("proxy");
    let script = format!(
        r#"
import segment.analytics as analytics
errors = []
analytics.write_key = "wk_segment"
analytics.host = "{proxy}"
analytics.sync_mode = True
analytics.on_error = lambda e, batch: errors.append(str(e))
analytics.track("u1", "Order Completed", {{"order_id": "o1", "amount": 12.5}}, message_id="seg-track-1")
analytics.page("u1", None, "Home", {{"url": "https://shop.test/"}}, message_id="seg-page-1")
analytics.identify("u1", {{"plan": "pro"}}, message_id="seg-identify-1")
analytics.flush()
print("errors", errors)
"#
    );
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    assert!(out.contains("errors []"), "{out}");
    // A wrong key is refused the Segment way (401), as the SDK would see it.
    let (code, _, _) = send(
        &format!("{proxy}/v1/track"),
        &[
            ("content-type", "application/json"),
            ("authorization", "Basic bm9wZTo="),
        ],
        r#"{"event":"Order Completed","properties":{"order_id":"x","amount":1}}"#,
    );
    assert_eq!(code, 401);
    assert!(up.stop().success());
    let wh = data.join("warehouse");
    let rows = |dir: &str, col: &str| -> Vec<String> {
        parquet_files(&wh.join(dir))
            .iter()
            .flat_map(|p| strings(&read_parquet(p), col))
            .collect()
    };
    assert_eq!(rows("event=order.completed/version=1", "id"), vec!["seg-track-1"]);
    assert_eq!(rows("event=order.completed/version=1", "order_id"), vec!["o1"]);
    assert_eq!(rows("event=page.viewed/version=1", "id"), vec!["seg-page-1"]);
    assert_eq!(rows("event=page.viewed/version=1", "url"), vec!["https://shop.test/"]);
    assert_eq!(rows("event=user.identified/version=1", "id"), vec!["seg-identify-1"]);
    assert_eq!(rows("event=user.identified/version=1", "plan"), vec!["pro"]);
    assert_eq!(rows("event=user.identified/version=1", "context_user_id"), vec!["u1"]);
    assert_eq!(rows("event=order.completed/version=1", "context_user_agent").len(), 1);
    assert!(parquet_files(&wh.join("_invalid")).is_empty(), "all three valid");
}

/// Writes a GeoIP2-City-shaped MaxMind database with PyPI's mmdb-writer (installed by
/// `scripts/test`): network -> [country, region or null].
fn make_geoip(out: &std::path::Path, networks: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_geoip.py");
    let o = std::process::Command::new("python3")
        .arg(script)
        .arg(out)
        .arg(networks)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "make_geoip.py (needs `pip install mmdb-writer`): {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn country_and_region_from_a_maxmind_database_follow_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mmdb = tmp.path().join("GeoLite2-City.mmdb");
    let config = format!(
        r#"
[proxy]
trusted_proxies = ["127.0.0.1"]
truncate_ip = true
geoip = "{}"

[[proxy.keys]]
key = "wk_web"
env = "web"
"#,
        mmdb.display()
    );
    let data = tmp.path().join("data");
    // The file does not exist yet: not an error, the fields are absent.
    let up = Up::with(tmp.path(), None, &config, &[]);
    let proxy = up.banner_url("proxy");
    let metrics = format!("{}/metrics", up.collector);
    let built = || -> f64 {
        get_text(&metrics)
            .lines()
            .find_map(|l| l.strip_prefix("weir_proxy_geoip_build_timestamp_seconds "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(built(), 0.0, "no database loaded yet");
    let url = format!("{proxy}/v1/events");
    let from = |id: &str, client: &str| {
        let (code, body, _) = send(
            &url,
            &[
                ("content-type", "application/json"),
                ("x-weir-key", "wk_web"),
                ("x-forwarded-for", client),
            ],
            &page(id, None),
        );
        assert_eq!(code, 202, "{id}: {body}");
    };
    from("g0", "81.2.69.160");

    // The file appears; SIGHUP loads it (so does the minute's check).
    make_geoip(
        &mmdb,
        r#"{"81.2.69.0/24": ["GB", "ENG"], "2001:db8::/32": ["DE", "BE"], "89.160.20.0/24": ["SE", null], "81.2.70.5/32": ["NL", null]}"#,
    );
    up.signal("HUP");
    let first = eventually(Duration::from_secs(10), "the database loaded", || {
        Some(built()).filter(|b| *b > 0.0)
    });
    from("g1", "81.2.69.160");
    from("g2", "2001:db8::1");
    from("g3", "89.160.20.128");
    from("g4", "198.51.100.7");
    from("g7", "81.2.70.5");

    // A new edition of the file replaces the old one without a restart.
    std::thread::sleep(Duration::from_millis(1100)); // a later build_epoch
    make_geoip(&mmdb, r#"{"81.2.69.0/24": ["FR", "IDF"]}"#);
    up.signal("HUP");
    eventually(Duration::from_secs(10), "the new edition loaded", || {
        Some(built()).filter(|b| *b > first)
    });
    from("g5", "81.2.69.160");

    // A broken file keeps the database loaded before, and says so.
    std::fs::write(&mmdb, b"not a database").unwrap();
    up.signal("HUP");
    eventually(Duration::from_secs(10), "the bad file reported", || {
        up.stderr().contains("keeping the database loaded before").then_some(())
    });
    from("g6", "81.2.69.160");
    assert!(up.stop().success());

    let files = parquet_files(&data.join("warehouse/event=page.viewed/version=1"));
    let batches: Vec<_> = files.iter().flat_map(|f| read_parquet(f)).collect();
    type Row = (String, Option<String>, Option<String>, Option<String>);
    let mut rows: Vec<Row> = strings(&batches, "id")
        .into_iter()
        .zip(opt_strings(&batches, "context_ip"))
        .zip(opt_strings(&batches, "context_country"))
        .zip(opt_strings(&batches, "context_region"))
        .map(|(((id, ip), c), r)| (id, ip, c, r))
        .collect();
    rows.sort();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        vec![
            ("g0".into(), s("81.2.69.0"), None, None),
            ("g1".into(), s("81.2.69.0"), s("GB"), s("ENG")),
            ("g2".into(), s("2001:db8::"), s("DE"), s("BE")),
            ("g3".into(), s("89.160.20.0"), s("SE"), None),
            ("g4".into(), s("198.51.100.0"), None, None),
            ("g5".into(), s("81.2.69.0"), s("FR"), s("IDF")),
            ("g6".into(), s("81.2.69.0"), s("FR"), s("IDF")),
            ("g7".into(), s("81.2.70.0"), s("NL"), None),
        ],
        "country and region are looked up on the full address, before truncation"
    );

    // A file that is there but is not a MaxMind database refuses to start, naming it.
    let err = up_refused(&tmp.path().join("d2"), &tmp.path().join("weir.toml"));
    assert!(
        err.contains("proxy.geoip") && err.contains("GeoLite2-City.mmdb") && err.contains("MaxMind"),
        "{err}"
    );
}

#[test]
fn only_the_built_in_demo_catalog_gets_the_public_demo_key() {
    // A catalog directory whose path happens to say "demo" is the operator's own.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-catalog");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture_catalog().join("shop.toml"), dir.join("shop.toml")).unwrap();
    let up = Up::start(&tmp.path().join("data"), &["--catalog", dir.to_str().unwrap()], &[]);
    let proxy = up.banner_url("proxy");
    let (code, body, _) = send(
        &format!("{proxy}/v1/events"),
        &[("content-type", "application/json"), ("x-weir-key", "weir-demo-web")],
        &page("d1", None),
    );
    assert_eq!(code, 401, "{body}");
    assert!(up.stop().success());
    // The built-in demo catalog does get it.
    let up = Up::start(&tmp.path().join("data2"), &[], &[]);
    let proxy = up.banner_url("proxy");
    let (code, body, _) = send(
        &format!("{proxy}/v1/events"),
        &[("content-type", "application/json"), ("x-weir-key", "weir-demo-web")],
        r#"{"event":"page.viewed","fields":{"url":"https://shop.test/","session_id":"s1"}}"#,
    );
    assert_eq!(code, 202, "{body}");
    assert!(up.stop().success());
}

/// On the demo catalog, Segment's page() and identify() map to `page.viewed` and
/// `user.identified` (their `aliases`), not to unknown events; the 200 says how many
/// calls were kept flagged and why.
#[test]
fn segment_page_and_identify_map_to_demo_events_and_the_answer_counts_flagged_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let up = Up::start(&data, &[], &[]);
    let proxy = up.banner_url("proxy");
    let auth = ("authorization", "Basic d2Vpci1kZW1vLXdlYjo="); // "weir-demo-web:"
    let json = ("content-type", "application/json");
    let (code, body, _) = send(
        &format!("{proxy}/v1/page"),
        &[json, auth],
        r#"{"messageId":"sp-1","userId":"u1","name":"Home","properties":{"url":"https://shop.test/","session_id":"s1"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, r#"{"success":true}"#, "valid: nothing flagged");
    let (code, body, _) = send(
        &format!("{proxy}/v1/identify"),
        &[json, auth],
        r#"{"messageId":"si-1","userId":"u1","traits":{"plan":"pro","session_id":"s1"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, r#"{"success":true}"#);
    // A page() without the web env's session_id is kept, flagged, and the answer says so.
    let (code, body, _) = send(
        &format!("{proxy}/v1/page"),
        &[json, auth],
        r#"{"messageId":"sp-2","userId":"u1","properties":{"url":"https://shop.test/2"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["success"], true);
    assert_eq!(v["flagged"], 1, "{body}");
    assert!(v["errors"][0].as_str().unwrap().contains("session_id"), "{body}");
    assert!(up.stop().success());
    let wh = data.join("warehouse");
    let ids = |dir: &str| -> Vec<String> {
        parquet_files(&wh.join(dir))
            .iter()
            .flat_map(|p| strings(&read_parquet(p), "id"))
            .collect()
    };
    assert_eq!(ids("event=page.viewed/version=1"), vec!["sp-1"]);
    assert_eq!(ids("event=user.identified/version=1"), vec!["si-1"]);
}
