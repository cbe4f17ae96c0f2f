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
    let mut server = Command::new("python3")
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
        .unwrap();
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
