//! A page on another origin, opened in headless Chromium (Debian's, driven by
//! playwright-core), sends one event with `fetch` (CORS preflight included), one with
//! `navigator.sendBeacon`, and loads the pixel; all three land in Parquet with the
//! parsed user agent.

use std::process::{Command, Stdio};

use crate::common::*;

#[test]
fn a_browser_page_sends_with_fetch_beacon_and_pixel() {
    let tmp = tempfile::tempdir().unwrap();
    let page_port = free_port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let config =
        format!("[proxy]\ncors_origins = [\"{origin}\"]\n\n[[proxy.keys]]\nkey = \"wk_browser\"\nenv = \"web\"\n");
    let up = Up::with(tmp.path(), None, &config, &[]);
    let data = tmp.path().join("data");
    let proxy = up.banner_url("proxy");
    let site = tmp.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("index.html"),
        format!(
            r#"<!doctype html><html><head><title>loading</title></head><body><script>
const proxy = "{proxy}";
const ev = (id) => ({{event: "page.viewed", id, fields: {{url: location.href, session_id: "browser-1"}}}});
navigator.sendBeacon(proxy + "/v1/events", JSON.stringify(Object.assign({{writeKey: "wk_browser"}}, ev("b-beacon"))));
const img = new Image();
img.onload = () => document.body.dataset.pixel = "loaded";
img.src = proxy + "/v1/p.gif?key=wk_browser&event=page.viewed&id=b-pixel&f.session_id=browser-1&f.url=" + encodeURIComponent(location.href);
fetch(proxy + "/v1/events", {{method: "POST", headers: {{"content-type": "application/json", "x-weir-key": "wk_browser"}}, body: JSON.stringify(ev("b-fetch"))}})
  .then((r) => document.title = "fetch " + r.status)
  .catch((e) => document.title = "fetch failed " + e);
</script></body></html>"#
        ),
    )
    .unwrap();
    let mut server = Reaped::new(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &page_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(std::time::Duration::from_secs(10), "the page server", || {
        std::net::TcpStream::connect(("127.0.0.1", page_port)).ok()
    });
    let script = format!(
        r#"
const {{ chromium }} = require("{modules}/playwright-core");
(async () => {{
  const browser = await chromium.launch({{
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  }});
  const page = await browser.newPage();
  await page.goto("{origin}/index.html");
  await page.waitForFunction(() => document.title.startsWith("fetch") && document.body.dataset.pixel === "loaded", null, {{ timeout: 20000 }});
  console.log(await page.title());
  await page.waitForTimeout(500);
  await browser.close();
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"#,
        modules = service("TEST_WEIR_NODE_MODULES")
    );
    let out = Command::new("node").arg("-e").arg(&script).output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("fetch 202"), "{text}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(up.stop().success());
    let files = parquet_files(&data.join("warehouse/event=page.viewed/version=1"));
    let batches: Vec<_> = files.iter().flat_map(|f| read_parquet(f)).collect();
    let mut ids = strings(&batches, "id");
    ids.sort();
    assert_eq!(ids, vec!["b-beacon", "b-fetch", "b-pixel"]);
    let browsers = strings(&batches, "context_ua_browser");
    assert!(browsers.iter().all(|b| b == "Chrome"), "{browsers:?}");
    assert!(strings(&batches, "context_ua_os").iter().all(|o| o == "Linux"));
    assert!(strings(&batches, "context_ip").iter().all(|ip| ip == "127.0.0.1"));
}

/// The console of a running `weir up` in headless Chromium: a valid and a flagged event
/// appear in the tail within 2 s (the flagged one with its error), a filter narrows the
/// tail, the rate chart counts the minute, the catalog view lists the catalog's events.
/// Screenshots (desktop, phone, catalog) are kept in `<target>/tmp/console-screenshots`.
#[test]
fn the_console_shows_events_arriving_with_their_errors_rates_and_the_catalog() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::with(tmp.path(), Some(&fixture_catalog()), "", &[]);
    let console = up.banner_url("console").trim_end_matches('/').to_string();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = format!(
        r##"
const {{ chromium }} = require("{modules}/playwright-core");
const post = (events) => fetch("{collector}/v1/events", {{ method: "POST", headers: {{ "content-type": "application/json" }}, body: JSON.stringify(events) }}).then((r) => r.status);
const cart = (id, items) => ({{ event: "cart.viewed", env: "web", id, fields: {{ items, session_id: "s-" + id }} }});
(async () => {{
  const browser = await chromium.launch({{
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  }});
  const page = await browser.newPage({{ viewport: {{ width: 1366, height: 900 }} }});
  const out = {{}};
  page.on("pageerror", (e) => {{ out.pageerror = String(e); }});
  await page.goto("{console}/");
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("tail live"), null, {{ timeout: 10000 }});
  // The rate chart's last bar is the current minute: post well inside one, so that the
  // page's next refresh still counts them there (at :58 it failed once, the bar being :00's).
  while (new Date().getSeconds() >= 45) await new Promise((r) => setTimeout(r, 500));
  out.posted = await post([cart("b-valid", 2), cart("b-flagged", "lots")]);
  const t0 = Date.now();
  await page.waitForSelector('#tail .row[data-id="b-valid"]', {{ timeout: 2000 }});
  await page.waitForSelector('#tail .row[data-id="b-flagged"]', {{ timeout: 2000 }});
  out.arrived_ms = Date.now() - t0;
  out.flagged_row = await page.textContent('#tail .row[data-id="b-flagged"]');
  await page.waitForFunction(() => {{ const r = document.querySelector('.rate[data-event="cart.viewed"]'); return r && r.dataset.total === "2"; }}, null, {{ timeout: 10000 }});
  out.rate_minute = await page.$eval('.rate[data-event="cart.viewed"]', (r) => Number(r.dataset.minute));
  out.rate_bars = await page.$$eval('.rate[data-event="cart.viewed"] rect', (r) => r.length);
  out.errors_table = await page.textContent("#errors");
  await page.click('#tail .row[data-id="b-flagged"]');
  out.detail = await page.textContent("#detail");
  out.marked = await page.$$eval("#detail mark", (m) => m.map((x) => x.textContent.trim()));
  await page.mouse.move(0, 0);
  await page.screenshot({{ path: "{shots}/console-desktop.png" }});
  // Keyboard: focus the list, arrow to the other row.
  await page.focus("#tail");
  await page.keyboard.press("ArrowDown");
  out.keyboard_selected = await page.$eval('#tail .row[aria-selected="true"]', (r) => r.dataset.id);
  // A filter narrows what arrives.
  await page.fill('input[name="event"]', "order.*");
  await page.click('#filters button[type="submit"]');
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("tail live"), null, {{ timeout: 10000 }});
  await page.waitForTimeout(300);
  await post([cart("after-filter", 1), {{ event: "order.completed", env: "web", id: "o-after", fields: {{ order_id: "o-after", amount: 3.5, session_id: "s" }} }}]);
  await page.waitForSelector('#tail .row[data-id="o-after"]', {{ timeout: 5000 }});
  await page.waitForTimeout(300);
  out.filtered_ids = await page.$$eval("#tail .row", (r) => r.map((x) => x.dataset.id));
  await page.setViewportSize({{ width: 390, height: 844 }});
  await page.waitForTimeout(300);
  out.phone_overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  await page.screenshot({{ path: "{shots}/console-phone.png", fullPage: true }});
  await page.setViewportSize({{ width: 1366, height: 900 }});
  await page.click("#tab-catalog");
  await page.waitForSelector('#event-list button[data-event="order.completed"]', {{ timeout: 5000 }});
  out.catalog_events = await page.$$eval("#event-list button", (b) => b.map((x) => x.dataset.event));
  await page.click('#event-list button[data-event="order.completed"]');
  out.catalog_view = await page.textContent("#event-view");
  await page.screenshot({{ path: "{shots}/console-catalog.png" }});
  console.log(JSON.stringify(out));
  await browser.close();
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"##,
        modules = service("TEST_WEIR_NODE_MODULES"),
        collector = up.collector,
        shots = shots.display(),
    );
    let out = Command::new("node").arg("-e").arg(&script).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let got: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("")).expect(&text);
    eprintln!("console screenshots in {}: {got}", shots.display());
    assert!(got.get("pageerror").is_none(), "{got}");
    assert_eq!(got["posted"], 202);
    assert!(got["arrived_ms"].as_u64().unwrap() <= 2000, "{got}");
    assert!(got["flagged_row"].as_str().unwrap().contains("flagged"), "{got}");
    let detail = got["detail"].as_str().unwrap();
    assert!(
        detail.contains("validation error") && detail.contains("items"),
        "{detail}"
    );
    assert!(
        got["marked"][0].as_str().unwrap_or("").contains("\"items\""),
        "the field in error is marked: {got}"
    );
    assert_eq!(got["keyboard_selected"], "b-valid", "{got}");
    assert!((1..=2).contains(&got["rate_minute"].as_u64().unwrap()), "{got}");
    assert!(got["rate_bars"].as_u64().unwrap() >= 1, "{got}");
    assert!(got["errors_table"].as_str().unwrap().contains("cart.viewed"), "{got}");
    assert_eq!(got["filtered_ids"], serde_json::json!(["o-after"]), "{got}");
    assert_eq!(got["phone_overflow"], false, "no sideways scrolling on a phone");
    assert_eq!(
        got["catalog_events"],
        serde_json::json!(["cart.viewed", "order.completed"]),
        "{got}"
    );
    let view = got["catalog_view"].as_str().unwrap();
    assert!(
        view.contains("checkout-team") && view.contains("order_id") && view.contains("required"),
        "{view}"
    );
    for f in ["console-desktop.png", "console-phone.png", "console-catalog.png"] {
        assert!(std::fs::metadata(shots.join(f)).unwrap().len() > 10_000, "{f}");
    }
    assert!(up.stop().success());
}
