//! `weir codegen`: the langpack generated from the demo catalog builds with its
//! language's own tools, refuses invalid events at the client, and sends events to a
//! running collector that land valid in Parquet. Codegen is deterministic.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn demo_catalog() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/demo-catalog")
}

fn codegen(lang: &str, env: &str, out: &Path) {
    let o = weir()
        .args(["codegen", "--lang", lang, "--env", env, "--catalog"])
        .arg(demo_catalog())
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The revision shows in hex, as everywhere else (the package version holds it as a
    // number, which package managers need).
    let revision = weir_proto::Catalog::load_dir(&demo_catalog()).unwrap().revision;
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains(&format!("(catalog revision {revision};")), "{said}");
}

/// Every file under `dir` with its bytes, sorted by path.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "__pycache__") {
                    stack.push(p);
                }
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn python(dir: &Path, script: &str) -> (bool, String) {
    run_in(dir, "python3", &["-c", script])
}

/// The ids of the rows loaded for `item.viewed` v2 and `page.viewed` v1, sorted.
fn parquet_ids(data: &Path) -> Vec<String> {
    let wh = data.join("warehouse");
    assert!(parquet_files(&wh.join("_invalid")).is_empty(), "nothing invalid");
    let mut ids: Vec<String> = parquet_files(&wh.join("event=item.viewed/version=2"))
        .iter()
        .chain(parquet_files(&wh.join("event=page.viewed/version=1")).iter())
        .flat_map(|p| strings(&read_parquet(p), "id"))
        .collect();
    ids.sort();
    ids
}

#[test]
fn python_langpack_compiles_refuses_bad_events_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    codegen("python", "web", &a);
    codegen("python", "web", &b);
    assert_eq!(tree(&a), tree(&b), "the same catalog gives byte-identical output");
    let names: Vec<String> = tree(&a).into_iter().map(|f| f.0).collect();
    assert_eq!(
        names,
        vec![
            "pyproject.toml",
            "weir_events_web/__init__.py",
            "weir_events_web/events.py",
            "weir_events_web/sender.py"
        ]
    );
    let pyproject = std::fs::read_to_string(a.join("pyproject.toml")).unwrap();
    assert!(pyproject.contains("name = \"weir-events-web\""), "{pyproject}");
    assert!(pyproject.contains("version = \"0.1."), "{pyproject}");

    let compiled = Command::new("python3")
        .args(["-m", "compileall", "-q", "weir_events_web"])
        .current_dir(&a)
        .status()
        .unwrap();
    assert!(compiled.success());

    // Only the web environment's event versions; backend-only events are absent.
    let (ok, out) = python(
        &a,
        r#"
import weir_events_web as w
print(sorted(n for n in w.__all__ if n[0].isupper() and n not in ("CATALOG_REVISION", "ENV", "Event", "Sender", "DatagramSender")))
e = w.ItemViewedV2(item_id=7, source="search", session_id="s1", price=10)
print(e.to_dict())
"#,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("['ItemViewedV1', 'ItemViewedV2', 'PageViewedV1', 'SearchPerformedV1', 'UserIdentifiedV1']"),
        "{out}"
    );
    assert!(
        out.contains("{'event': 'item.viewed', 'version': 2, 'env': 'web', 'fields': {'item_id': 7, 'source': 'search', 'session_id': 's1', 'price': 10}}"),
        "{out}"
    );

    // Invalid events fail at the client, each with an error naming the field.
    for (call, error, field) in [
        ("w.ItemViewedV2(item_id=7, session_id='s1')", "TypeError", "source"),
        (
            "w.ItemViewedV2(item_id='7', source='search', session_id='s1')",
            "TypeError",
            "item_id",
        ),
        (
            "w.ItemViewedV2(item_id=7, source='nowhere', session_id='s1')",
            "ValueError",
            "source",
        ),
        (
            "w.ItemViewedV2(item_id=True, source='search', session_id='s1')",
            "TypeError",
            "item_id",
        ),
        (
            "w.PageViewedV1(url='u', session_id='x' * 65)",
            "ValueError",
            "session_id",
        ),
        (
            "w.ItemViewedV2(item_id=7, source='search', session_id='s1', colour='red')",
            "TypeError",
            "colour",
        ),
    ] {
        let (ok, out) = python(
            &a,
            &format!("import weir_events_web as w\ntry:\n    {call}\nexcept Exception as e:\n    print(type(e).__name__, e)\n    raise SystemExit(3)\n"),
        );
        assert!(!ok, "{call} should fail: {out}");
        assert!(out.starts_with(error), "{call}: {out}");
        assert!(out.contains(field), "{call}: {out}");
    }

    let unknown = weir()
        .args(["codegen", "--lang", "python", "--env", "android", "--catalog"])
        .arg(demo_catalog())
        .arg("--out")
        .arg(tmp.path().join("c"))
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("\"android\"") && err.contains("backend, ios, web"),
        "{err}"
    );
}

#[test]
fn python_langpack_sends_to_a_running_collector_and_events_land_valid_in_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("pack");
    codegen("python", "web", &pack);
    let data = tmp.path().join("data");
    let up = Up::start(&data, &[], &[]);
    let script = format!(
        r#"
import weir_events_web as w
with w.Sender("{url}", batch_size=2, flush_interval=0.1) as s:
    s.send(w.ItemViewedV2(item_id=1, source="search", session_id="s1", id="py-1"))
    s.send(w.ItemViewedV2(item_id=2, source="feed", session_id="s1", position=3, id="py-2"))
    s.send(w.PageViewedV1(url="https://example.com/", session_id="s1", id="py-3"))
print("http", s.sent, s.rejected, s.dropped)
with w.DatagramSender("{dgram}") as d:
    d.send(w.PageViewedV1(url="https://example.com/a", session_id="s2", id="py-4"))
print("dgram", d.sent, d.dropped)
"#,
        url = up.collector,
        dgram = data.join("collector.dgram").display()
    );
    let (ok, out) = python(&pack, &script);
    assert!(ok, "{out}");
    assert!(out.contains("http 3 0 0"), "{out}");
    assert!(out.contains("dgram 1 0"), "{out}");
    // Give the datagram a moment to reach the spool before stopping.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(up.stop().success());
    assert_eq!(parquet_ids(&data), vec!["py-1", "py-2", "py-3", "py-4"]);
}

/// Generates the TypeScript langpack for `web` into `dir`, with the test tools' node_modules.
fn typescript_pack(dir: &Path) {
    codegen("typescript", "web", dir);
    std::os::unix::fs::symlink(service("TEST_WEIR_NODE_MODULES"), dir.join("node_modules")).unwrap();
}

fn tsc(dir: &Path, extra: &[&str]) -> (bool, String) {
    let tsc = dir.join("node_modules/typescript/bin/tsc");
    let mut args = vec![tsc.to_str().unwrap(), "-p", "."];
    args.extend_from_slice(extra);
    run_in(dir, "node", &args)
}

fn node(dir: &Path, script: &str) -> (bool, String) {
    run_in(dir, "node", &["-e", script])
}

#[test]
fn typescript_langpack_type_checks_refuses_bad_events_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    codegen("typescript", "web", &a);
    codegen("typescript", "web", &b);
    assert_eq!(tree(&a), tree(&b), "the same catalog gives byte-identical output");
    let package: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("package.json")).unwrap()).unwrap();
    assert_eq!(package["name"], "weir-events-web");
    assert!(package["version"].as_str().unwrap().starts_with("0.1."));
    std::os::unix::fs::symlink(service("TEST_WEIR_NODE_MODULES"), a.join("node_modules")).unwrap();
    let (ok, out) = tsc(&a, &[]);
    assert!(ok, "tsc: {out}");

    // A missing required field, a wrong type and a value outside the enum fail tsc, each
    // naming the field or the allowed values.
    std::fs::write(
        a.join("src/bad.ts"),
        "import { ItemViewedV2 } from \"./index\";\n\
         new ItemViewedV2({ item_id: 7, session_id: \"s1\" });\n\
         new ItemViewedV2({ item_id: \"7\", source: \"search\", session_id: \"s1\" });\n\
         new ItemViewedV2({ item_id: 7, source: \"nowhere\", session_id: \"s1\" });\n",
    )
    .unwrap();
    let (ok, out) = tsc(&a, &["--noEmit"]);
    assert!(!ok);
    assert!(
        out.contains("bad.ts(2,") && out.contains("\"source\"") && out.contains("is missing"),
        "{out}"
    );
    assert!(
        out.contains("bad.ts(3,") && out.contains("'string' is not assignable to type 'number'"),
        "{out}"
    );
    assert!(out.contains("bad.ts(4,") && out.contains("\"nowhere\""), "{out}");
    std::fs::remove_file(a.join("src/bad.ts")).unwrap();

    // From plain JavaScript the same mistakes throw at run time.
    let (ok, out) = node(
        &a,
        r#"
const w = require("./dist");
console.log(JSON.stringify(new w.ItemViewedV2({ item_id: 7, source: "search", session_id: "s1" })));
for (const f of [
  { item_id: 7, session_id: "s1" },
  { item_id: "7", source: "search", session_id: "s1" },
  { item_id: 7, source: "nowhere", session_id: "s1" },
  { item_id: 7, source: "search", session_id: "s1", colour: "red" },
]) {
  try { new w.ItemViewedV2(f); console.log("accepted"); } catch (e) { console.log(e.name + ": " + e.message); }
}
"#,
    );
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            r#"{"event":"item.viewed","version":2,"env":"web","fields":{"item_id":7,"source":"search","session_id":"s1"}}"#,
            "TypeError: source: required",
            "TypeError: item_id: expected an integer, got \"7\"",
            "RangeError: source: \"nowhere\" is not one of [\"search\",\"feed\",\"recommendations\",\"direct\"]",
            "TypeError: colour: not a field of this event version",
        ]
    );
}

#[test]
fn typescript_langpack_sends_to_a_running_collector_and_events_land_valid_in_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("pack");
    typescript_pack(&pack);
    let (ok, out) = tsc(&pack, &[]);
    assert!(ok, "tsc: {out}");
    let data = tmp.path().join("data");
    let up = Up::start(&data, &[], &[]);
    let script = format!(
        r#"
const w = require("./dist");
(async () => {{
  const s = new w.Sender("{url}", {{ batchSize: 2, flushIntervalMs: 100 }});
  s.send(new w.ItemViewedV2({{ item_id: 1, source: "search", session_id: "s1" }}, {{ id: "ts-1" }}));
  s.send(new w.ItemViewedV2({{ item_id: 2, source: "feed", session_id: "s1", price: 9.5 }}, {{ id: "ts-2" }}));
  s.send(new w.PageViewedV1({{ url: "https://example.com/", session_id: "s1" }}, {{ id: "ts-3", ts: new Date(0) }}));
  await s.close();
  console.log("http", s.sent, s.rejected, s.dropped);
}})();
"#,
        url = up.collector
    );
    let (ok, out) = node(&pack, &script);
    assert!(ok, "{out}");
    assert!(out.contains("http 3 0 0"), "{out}");
    assert!(up.stop().success());
    assert_eq!(parquet_ids(&data), vec!["ts-1", "ts-2", "ts-3"]);
}

fn run_in(dir: &Path, program: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (./scripts/test installs it through scripts/toolchains)"));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn go_langpack_builds_refuses_bad_events_and_lands_in_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    codegen("go", "web", &a);
    codegen("go", "web", &b);
    assert_eq!(tree(&a), tree(&b), "the same catalog gives byte-identical output");
    assert!(std::fs::read_to_string(a.join("go.mod"))
        .unwrap()
        .starts_with("module weir-events-web\n"));
    let (ok, out) = run_in(&a, "gofmt", &["-l", "."]);
    assert!(ok && out.is_empty(), "gofmt: {out}");
    let (ok, out) = run_in(&a, "go", &["vet", "./..."]);
    assert!(ok, "go vet: {out}");

    // A missing required field or a wrong type does not compile.
    std::fs::create_dir_all(a.join("bad")).unwrap();
    std::fs::write(
        a.join("bad/main.go"),
        "package main\n\nimport w \"weir-events-web\"\n\nfunc main() {\n\t_, _ = w.NewItemViewedV2(7, \"s1\")\n\t_, _ = w.NewItemViewedV2(\"7\", \"search\", \"s1\")\n}\n",
    )
    .unwrap();
    let (ok, out) = run_in(&a, "go", &["build", "-o", "/dev/null", "./bad"]);
    assert!(!ok);
    assert!(
        out.contains("not enough arguments in call to w.NewItemViewedV2"),
        "{out}"
    );
    assert!(out.contains("cannot use \"7\""), "{out}");
    std::fs::remove_dir_all(a.join("bad")).unwrap();

    // A value outside the enum or too long is an error; then send for real.
    let data = tmp.path().join("data");
    let up = Up::start(&data, &[], &[]);
    std::fs::create_dir_all(a.join("cmd/send")).unwrap();
    std::fs::write(
        a.join("cmd/send/main.go"),
        r#"package main

import (
	"fmt"
	"os"

	w "weir-events-web"
)

func main() {
	if _, err := w.NewItemViewedV2(7, "nowhere", "s1"); err != nil {
		fmt.Println("error:", err)
	}
	s := w.NewSender(os.Args[1])
	s.BatchSize = 2
	e1, _ := w.NewItemViewedV2(1, "search", "s1")
	e1.SetID("go-1")
	e2, _ := w.NewItemViewedV2(2, "feed", "s1")
	if err := e2.SetPosition(3); err != nil {
		panic(err)
	}
	e2.SetID("go-2")
	s.Send(e1)
	s.Send(e2)
	s.Close()
	fmt.Println("http", s.Sent.Load(), s.Rejected.Load(), s.Dropped.Load())
	d, err := w.NewDatagramSender(os.Args[2])
	if err != nil {
		panic(err)
	}
	p, _ := w.NewPageViewedV1("https://example.com/", "s1")
	p.SetID("go-3")
	d.Send(p)
	d.Close()
	fmt.Println("dgram", d.Sent.Load(), d.Dropped.Load())
}
"#,
    )
    .unwrap();
    let dgram = data.join("collector.dgram");
    let (ok, out) = run_in(&a, "go", &["run", "./cmd/send", &up.collector, dgram.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("error: source: nowhere is not one of 'search', 'feed', 'recommendations', 'direct'"),
        "{out}"
    );
    assert!(out.contains("http 2 0 0") && out.contains("dgram 1 0"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(up.stop().success());
    assert_eq!(parquet_ids(&data), vec!["go-1", "go-2", "go-3"]);
}

#[test]
fn php_langpack_lints_refuses_bad_events_and_lands_in_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    codegen("php", "web", &a);
    codegen("php", "web", &b);
    assert_eq!(tree(&a), tree(&b), "the same catalog gives byte-identical output");
    let composer: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("composer.json")).unwrap()).unwrap();
    assert_eq!(composer["name"], "weir/events-web");
    for (file, _) in tree(&a).into_iter().filter(|f| f.0.ends_with(".php")) {
        let (ok, out) = run_in(&a, "php", &["-l", &file]);
        assert!(ok, "php -l {file}: {out}");
    }
    let data = tmp.path().join("data");
    let up = Up::start(&data, &[], &[]);
    let script = format!(
        r#"<?php
require 'autoload.php';
use Weir\Events\Web as W;
foreach ([
    fn() => new W\ItemViewedV2(item_id: 7, session_id: 's1'),
    fn() => new W\ItemViewedV2(item_id: '7', source: 'search', session_id: 's1'),
    fn() => new W\ItemViewedV2(item_id: 7, source: 'nowhere', session_id: 's1'),
] as $make) {{
    try {{ $make(); echo "accepted\n"; }} catch (\Throwable $t) {{ echo get_class($t), ': ', $t->getMessage(), "\n"; }}
}}
$s = new W\Sender('{url}', batchSize: 2);
$s->send((new W\ItemViewedV2(item_id: 1, source: 'search', session_id: 's1'))->withId('php-1'));
$s->send((new W\ItemViewedV2(item_id: 2, source: 'feed', session_id: 's1', price: 9.5))->withId('php-2'));
$s->close();
echo "http {{$s->sent}} {{$s->rejected}} {{$s->dropped}}\n";
$d = new W\DatagramSender('{dgram}');
$d->send((new W\PageViewedV1(url: 'https://example.com/', session_id: 's1'))->withId('php-3'));
$d->close();
echo "dgram {{$d->sent}} {{$d->dropped}}\n";
"#,
        url = up.collector,
        dgram = data.join("collector.dgram").display()
    );
    std::fs::write(a.join("send.php"), script).unwrap();
    let (ok, out) = run_in(&a, "php", &["send.php"]);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "ArgumentCountError: Weir\\Events\\Web\\ItemViewedV2::__construct(): Argument #2 ($source) not passed"
    );
    assert_eq!(lines[1], "TypeError: item_id: expected int, got string");
    assert_eq!(
        lines[2],
        "InvalidArgumentException: source: 'nowhere' is not one of search, feed, recommendations, direct"
    );
    assert!(out.contains("http 2 0 0") && out.contains("dgram 1 0"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(up.stop().success());
    assert_eq!(parquet_ids(&data), vec!["php-1", "php-2", "php-3"]);
}

/// A sender whose collector is gone drops what it cannot send, counts it, and says so
/// once (then at most once a minute), as a library should: not only a counter nobody reads.
#[test]
fn every_sender_warns_once_when_its_collector_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let warning = format!("weir: dropped 1 event(s) for {dead}/v1/events: ");
    let check = |lang: &str, ok: bool, out: &str| {
        assert!(ok, "{lang}: {out}");
        assert!(out.contains("dropped 3"), "{lang}: every event is counted: {out}");
        assert_eq!(out.matches("weir: dropped").count(), 1, "{lang}: said once: {out}");
        assert!(
            out.contains(&warning) && out.contains("after 1 attempts"),
            "{lang}: {out}"
        );
    };

    let py = tmp.path().join("py");
    codegen("python", "web", &py);
    let (ok, out) = python(
        &py,
        &format!(
            r#"
import weir_events_web as w
with w.Sender("{dead}", batch_size=1, max_retries=0) as s:
    for i in range(3):
        s.send(w.PageViewedV1(url="https://example.com/", session_id="s"))
        s.flush()
print("dropped", s.dropped)
"#
        ),
    );
    check("python", ok, &out);

    let ts = tmp.path().join("ts");
    typescript_pack(&ts);
    let (ok, out) = tsc(&ts, &[]);
    assert!(ok, "tsc: {out}");
    let (ok, out) = node(
        &ts,
        &format!(
            r#"
const w = require("./dist");
(async () => {{
  const s = new w.Sender("{dead}", {{ batchSize: 1, maxRetries: 0 }});
  for (let i = 0; i < 3; i++) {{
    s.send(new w.PageViewedV1({{ url: "https://example.com/", session_id: "s" }}));
    await s.flush();
  }}
  await s.close();
  console.log("dropped", s.dropped);
}})();
"#
        ),
    );
    check("typescript", ok, &out);

    let go = tmp.path().join("go");
    codegen("go", "web", &go);
    std::fs::create_dir_all(go.join("cmd/dead")).unwrap();
    std::fs::write(
        go.join("cmd/dead/main.go"),
        r#"package main

import (
	"fmt"
	"os"

	w "weir-events-web"
)

func main() {
	s := w.NewSender(os.Args[1])
	s.MaxRetries = 0
	for i := 0; i < 3; i++ {
		p, _ := w.NewPageViewedV1("https://example.com/", "s")
		s.Send(p)
		s.Flush()
	}
	s.Close()
	fmt.Println("dropped", s.Dropped.Load())
}
"#,
    )
    .unwrap();
    let (ok, out) = run_in(&go, "go", &["run", "./cmd/dead", &dead]);
    check("go", ok, &out);

    let php = tmp.path().join("php");
    codegen("php", "web", &php);
    std::fs::write(
        php.join("dead.php"),
        format!(
            r#"<?php
require 'autoload.php';
use Weir\Events\Web as W;
$s = new W\Sender('{dead}', batchSize: 1, maxRetries: 0, timeout: 2.0);
for ($i = 0; $i < 3; $i++) {{
    $s->send(new W\PageViewedV1(url: 'https://example.com/', session_id: 's'));
}}
$s->close();
echo "dropped {{$s->dropped}}\n";
"#
        ),
    )
    .unwrap();
    let (ok, out) = run_in(&php, "php", &["dead.php"]);
    check("php", ok, &out);
}
