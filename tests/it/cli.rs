//! The `weir` command line on bad input: catalogs, configs, breaking catalog edits.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::*;

fn run(args: &[&str]) -> Output {
    weir().args(args).env_remove("WEIR_LOG").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A copy of the fixture catalog with `from` replaced by `to` in shop.toml.
fn edited(root: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    let text = fs::read_to_string(fixture_catalog().join("shop.toml")).unwrap();
    assert!(text.contains(from), "fixture lacks {from:?}");
    fs::write(dir.join("shop.toml"), text.replacen(from, to, 1)).unwrap();
    dir
}

#[test]
fn catalog_check_refuses_each_breaking_edit_and_accepts_a_new_version() {
    let tmp = tempfile::tempdir().unwrap();
    let old = fixture_catalog();
    let ok = run(&["catalog", "check", old.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok (3 environments, 9 fields, 2 events, 2 versions)"));

    let v1 = "version = 1\nenvironments = [\"web\", \"android\", \"backend\"]\nrequired = [\"order_id\", \"amount\"]\noptional = [\"items\", \"coupon\", \"paid_at\", \"skus\", \"channel\"]";
    let cases = [
        (
            "changed-version",
            v1.to_string(),
            v1.replace(
                "required = [\"order_id\", \"amount\"]",
                "required = [\"order_id\", \"amount\", \"items\"]",
            )
            .replace("optional = [\"items\", ", "optional = ["),
            "event \"order.completed\" version 1 field \"items\": became required",
        ),
        (
            "removed-field",
            v1.to_string(),
            v1.replace(", \"channel\"]", "]"),
            "event \"order.completed\" version 1 field \"channel\": optional field was removed",
        ),
        (
            "retyped-field",
            "[fields.items]\ntype = \"int\"".to_string(),
            "[fields.items]\ntype = \"float\"".to_string(),
            "field \"items\": type changed from int to float",
        ),
        (
            "removed-env",
            v1.to_string(),
            v1.replace(
                "environments = [\"web\", \"android\", \"backend\"]",
                "environments = [\"web\", \"backend\"]",
            ),
            "event \"order.completed\" version 1 environment \"android\": was removed from an existing version",
        ),
    ];
    for (name, from, to, want) in cases {
        let new = edited(tmp.path(), name, &from, &to);
        let out = run(&[
            "catalog",
            "check",
            "--previous",
            old.to_str().unwrap(),
            new.to_str().unwrap(),
        ]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{name} must fail");
        assert!(err.contains(want), "{name}: want {want:?} in:\n{err}");
        assert!(err.contains("shop.toml"), "{name}: the file is named:\n{err}");
    }
    // Removing a whole environment.
    let text = fs::read_to_string(old.join("shop.toml")).unwrap();
    let dir = tmp.path().join("no-android");
    fs::create_dir_all(&dir).unwrap();
    let without = text
        .replace(
            "[environments.android]\nkind = \"mobile\"\nfields = [\"device_id\"]\n",
            "",
        )
        .replace("[\"web\", \"android\", \"backend\"]", "[\"web\", \"backend\"]")
        .replace("environments = [\"web\", \"android\"]", "environments = [\"web\"]");
    fs::write(dir.join("shop.toml"), without).unwrap();
    let out = run(&[
        "catalog",
        "check",
        "--previous",
        old.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("environment \"android\": was removed; environments are never deleted"),
        "{}",
        stderr(&out)
    );

    // An added version is fine.
    let added = tmp.path().join("added");
    fs::create_dir_all(&added).unwrap();
    fs::write(
        added.join("shop.toml"),
        format!("{text}\n[[events.\"cart.viewed\".versions]]\nversion = 2\nenvironments = [\"web\", \"android\"]\nrequired = [\"items\", \"amount\"]\n"),
    )
    .unwrap();
    let out = run(&[
        "catalog",
        "check",
        "--previous",
        old.to_str().unwrap(),
        added.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn malformed_catalog_toml_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cat");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("broken.toml"),
        "[fields.a]\ntype = \"int\"\n[events.\"x.y\"\nowner = 1\n",
    )
    .unwrap();
    let out = run(&["catalog", "check", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("broken.toml") && err.contains("line 3"), "{err}");
    // weir up refuses it before listening, and stores nothing.
    let data = tmp.path().join("data");
    let out = weir()
        .args([
            "up",
            "--catalog",
            dir.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env("WEIR_COLLECTOR_LISTEN", "127.0.0.1:0")
        .env("WEIR_ROUTER_LISTEN", "127.0.0.1:0")
        .env("WEIR_LOADER_FLIGHT", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("invalid catalog") && err.contains("broken.toml") && err.contains("line 3"),
        "{err}"
    );
    assert!(!data.exists());
}

#[test]
fn unknown_config_key_names_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("weir.toml");
    fs::write(
        &cfg,
        "data_dir = \"d\"\n[router]\nlisten = \"127.0.0.1:0\"\nretention_dayz = 3\n",
    )
    .unwrap();
    let out = run(&["up", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(cfg.to_str().unwrap()) && err.contains("retention_dayz") && err.contains("line 4"),
        "{err}"
    );
    let out = weir()
        .args(["config", "check", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // An environment override with an unknown key is named too.
    let out = weir().args(["up"]).env("WEIR_ROUTER_LISTNE", "x").output().unwrap();
    assert!(
        stderr(&out).contains("WEIR_ROUTER_LISTNE: `router.listne` is not a config key"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_example_is_a_valid_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["config", "example"]);
    assert!(out.status.success());
    let cfg = tmp.path().join("example.toml");
    fs::write(&cfg, &out.stdout).unwrap();
    let out = run(&["config", "check", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (catalog built-in demo catalog: 5 events"));
}

#[test]
fn catalog_diff_changelog_and_export_list_exactly_the_changes_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let old = fixture_catalog();
    let v2 = "\n[[events.\"cart.viewed\".versions]]\nversion = 2\nenvironments = [\"web\", \"android\"]\nrequired = [\"items\", \"coupon\"]\ndescription = \"coupon is always known\"\n";
    let new = edited(tmp.path(), "new", "[fields.session_id]", "[fields.session_id]");
    let path = new.join("shop.toml");
    let text = std::fs::read_to_string(&path).unwrap() + v2;
    std::fs::write(
        &path,
        text.replace(
            "owner = \"checkout-team\"\ndescription = \"an order was paid\"",
            "owner = \"payments\"\ndescription = \"an order was paid\"",
        ),
    )
    .unwrap();
    let out = run(&["catalog", "diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec![
            "+ event \"cart.viewed\" version 2: environments web, android; required items, coupon; optional none",
            "~ event \"order.completed\": owner checkout-team -> payments",
            "2 change(s), none breaking",
        ],
        "{text}"
    );
    let same = run(&["catalog", "diff", old.to_str().unwrap(), old.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&same.stdout), "no changes\n");

    let log1 = run(&["catalog", "changelog", new.to_str().unwrap()]);
    let log2 = run(&["catalog", "changelog", new.to_str().unwrap()]);
    assert!(log1.status.success(), "{}", stderr(&log1));
    assert_eq!(log1.stdout, log2.stdout, "byte-identical twice");
    let md = String::from_utf8_lossy(&log1.stdout);
    assert!(
        md.contains("- **v2** (web, android): adds coupon. coupon is always known"),
        "{md}"
    );

    let out_dir = tmp.path().join("schemas");
    let export = run(&[
        "catalog",
        "export",
        "--format",
        "jsonschema",
        "--out",
        out_dir.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{}", stderr(&export));
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "cart.viewed.v1.schema.json",
            "cart.viewed.v2.schema.json",
            "order.completed.v1.schema.json"
        ]
    );
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("cart.viewed.v2.schema.json")).unwrap()).unwrap();
    assert_eq!(
        schema["properties"]["fields"]["properties"]["coupon"]["type"],
        "boolean"
    );
    let stdout1 = run(&["catalog", "export", "--format", "jsonschema", new.to_str().unwrap()]);
    let stdout2 = run(&["catalog", "export", "--format", "jsonschema", new.to_str().unwrap()]);
    assert_eq!(stdout1.stdout, stdout2.stdout);
    let bad = run(&["catalog", "export", "--format", "yaml", new.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("jsonschema"), "{}", stderr(&bad));
    let missing = run(&["catalog", "changelog", tmp.path().join("nope").to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("nope"), "{}", stderr(&missing));
}

#[test]
fn top_level_errors_say_each_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    // A port another process holds.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cfg = tmp.path().join("weir.toml");
    fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\ncatalog = \"{}\"\n[router]\nlisten = \"127.0.0.1:{port}\"\n",
            tmp.path().join("data").display(),
            fixture_catalog().display()
        ),
    )
    .unwrap();
    let o = run(&["router", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let last = stderr(&o).lines().last().unwrap_or_default().to_string();
    assert_eq!(
        last,
        format!("error: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98) (is another weir already running? set router.listen to another port)")
    );

    let missing = tmp.path().join("nope.toml");
    let o = run(&["config", "check", missing.to_str().unwrap()]);
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "error: {}: cannot read the config: No such file or directory (os error 2)",
            missing.display()
        )
    );

    // A log directory that is a file.
    let blocked = tmp.path().join("blocked");
    fs::write(&blocked, b"").unwrap();
    fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\ncatalog = \"{}\"\n[router]\nlisten = \"127.0.0.1:0\"\nlog_dir = \"{}/log\"\n",
            tmp.path().join("data").display(),
            fixture_catalog().display(),
            blocked.display()
        ),
    )
    .unwrap();
    let o = run(&["router", "--config", cfg.to_str().unwrap()]);
    let last = stderr(&o).lines().last().unwrap_or_default().to_string();
    assert_eq!(
        last,
        format!(
            "error: router log: cannot create {}/log: Not a directory (os error 20)",
            blocked.display()
        )
    );
}

/// A misspelled recipient in the catalog (`recipients = ["modles"]`) is an error at check
/// time, at start, and on a hot reload (which keeps the last good catalog), naming the
/// file, the event and the name, with the closest defined one.
#[test]
fn a_catalog_naming_an_undefined_recipient_is_refused_by_check_start_and_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = tmp.path().join("catalog");
    let init = run(&["catalog", "init", cat.to_str().unwrap()]);
    assert!(init.status.success(), "{}", stderr(&init));
    assert!(cat.join("events.toml").exists() && cat.join("fields.toml").exists());
    let again = run(&["catalog", "init", cat.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds a catalog"), "{}", stderr(&again));

    let cfg = tmp.path().join("weir.toml");
    fs::write(
        &cfg,
        "[router.recipients.models]\nkind = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\nexchange = \"weir.typo\"\n",
    )
    .unwrap();
    let check = |dir: &Path| {
        run(&[
            "config",
            "check",
            "--catalog",
            dir.to_str().unwrap(),
            cfg.to_str().unwrap(),
        ])
    };
    let good = check(&cat);
    assert!(good.status.success(), "{}", stderr(&good));

    let events = cat.join("events.toml");
    let text = fs::read_to_string(&events).unwrap();
    let typo = text.replacen(
        "owner = \"search-team\"\ndescription = \"a listing page was shown\"",
        "owner = \"search-team\"\ndescription = \"a listing page was shown\"\nrecipients = [\"modles\"]",
        1,
    );
    assert_ne!(typo, text);
    let bad = tmp.path().join("bad-catalog");
    fs::create_dir_all(&bad).unwrap();
    for f in ["environments.toml", "fields.toml"] {
        fs::copy(cat.join(f), bad.join(f)).unwrap();
    }
    fs::write(bad.join("events.toml"), &typo).unwrap();
    let refused = check(&bad);
    assert!(!refused.status.success());
    let e = stderr(&refused);
    assert!(
        e.contains("events.toml")
            && e.contains("event \"item.viewed\" names recipient \"modles\"")
            && e.contains("did you mean \"models\"?"),
        "{e}"
    );

    // At start: `weir up` refuses with the same words.
    let out = weir()
        .args(["up", "--data-dir", tmp.path().join("d1").to_str().unwrap()])
        .args(["--catalog", bad.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .env("WEIR_COLLECTOR_LISTEN", "127.0.0.1:0")
        .env("WEIR_ROUTER_LISTEN", "127.0.0.1:0")
        .env("WEIR_LOADER_FLIGHT", "127.0.0.1:0")
        .env("WEIR_PROXY_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("names recipient \"modles\""), "{}", stderr(&out));

    // On reload: the edit is refused and the last good catalog stays.
    let up = Up::with(tmp.path(), Some(&cat), &fs::read_to_string(&cfg).unwrap(), &[]);
    let console = up.banner_url("console").trim_end_matches('/').to_string();
    let revision = || {
        let text = ureq::get(&format!("{console}/v1/catalog"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["revision"].clone()
    };
    let before = revision();
    fs::write(&events, &typo).unwrap();
    eventually(Duration::from_secs(20), "the reload is refused in the log", || {
        let log = fs::read_to_string(&up.stderr_path).unwrap_or_default();
        (log.contains("keeping the last good catalog") && log.contains("modles")).then_some(())
    });
    assert_eq!(revision(), before, "the router still serves the last good catalog");
    assert!(up.stop().success());
}

/// The smaller first-hour answers: a breaking diff exits 2, export needs no --format, a
/// bad listen address is caught by config check and named as such, and a request whose
/// every event is rejected answers 400 (with the summary) instead of 202.
#[test]
fn first_hour_answers_say_what_happened() {
    let tmp = tempfile::tempdir().unwrap();
    let old = fixture_catalog();
    let breaking = edited(
        tmp.path(),
        "breaking",
        "required = [\"items\"]",
        "required = [\"items\", \"coupon\"]",
    );
    let diff = run(&["catalog", "diff", old.to_str().unwrap(), breaking.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(2), "{}", String::from_utf8_lossy(&diff.stdout));
    assert!(String::from_utf8_lossy(&diff.stdout).contains("break the append-only rule"));
    let export = run(&["catalog", "export", old.to_str().unwrap()]);
    assert!(export.status.success(), "{}", stderr(&export));
    assert!(String::from_utf8_lossy(&export.stdout).contains("order.completed/v1"));

    let cfg = tmp.path().join("listen.toml");
    fs::write(&cfg, "[collector]\nlisten = \"localhost:80x\"\n").unwrap();
    let out = run(&["config", "check", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("collector.listen") && e.contains("use host:port"), "{e}");
    assert!(!e.contains("another weir"), "{e}");

    let up = Up::with_fixture(&tmp.path().join("data"), &[]);
    let (status, body) = post_events(
        &up.collector,
        r#"{"event":"order.completed","env":"backend","id":"r1","fields":{"order_id":"x"}}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["rejected"], 1);
    let (status, body) = post_events(
        &up.collector,
        r#"[{"event":"order.completed","env":"backend","id":"r2","fields":{"order_id":"x"}},{"event":"order.completed","env":"backend","id":"r3","fields":{"order_id":"y","amount":1.5}}]"#,
    );
    assert_eq!(status, 202, "one of two kept: {body}");
    let (status, body) = post_events(
        &up.collector,
        r#"{"event":"order.complete","env":"backend","fields":{}}"#,
    );
    assert_eq!(status, 400);
    assert!(
        body.to_string().contains("did you mean \\\"order.completed\\\"?"),
        "{body}"
    );
    assert!(up.stop().success());
}

/// The pids whose parent is `pid` (from /proc, so it works without CONFIG_PROC_CHILDREN).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(pid.to_string().as_str()) {
            out.push(p);
        }
    }
    out
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s.get(i + 2..i + 3).map(|st| st != "Z")))
        .unwrap_or(false)
}

/// A bench stopped half-way must not leave a collector pinned to CPU 0 nor its spool: on
/// Ctrl-C (SIGINT) it kills the collector, removes its files and exits 130; on SIGTERM the
/// same; killed with -9 (no chance to clean up) its collector still dies with it.
#[test]
fn an_interrupted_bench_stops_the_server_it_started_and_removes_its_files() {
    for signal in ["INT", "TERM", "KILL"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut bench = Reaped::new(
            weir()
                .args([
                    "bench",
                    "collector",
                    "--duration",
                    "300",
                    "--batch",
                    "1",
                    "--connections",
                    "1",
                ])
                .env("TMPDIR", tmp.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let pid = bench.id();
        let collector = eventually(Duration::from_secs(60), "the bench's collector", || {
            children_of(pid).into_iter().next()
        });
        let root = tmp.path().join(format!("weir-bench-{pid}"));
        // Loaded: the collector has spooled something.
        eventually(Duration::from_secs(60), "the bench's spool", || {
            let spool = fs::read_dir(&root).ok()?.flatten().next()?.path().join("data");
            spool.exists().then_some(())
        });
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let status = bench.wait().unwrap();
        eventually(
            Duration::from_secs(10),
            &format!("the collector to die after SIG{signal}"),
            || (!alive(collector)).then_some(()),
        );
        if signal == "KILL" {
            continue;
        }
        let mut err = String::new();
        std::io::Read::read_to_string(&mut bench.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(130), "SIG{signal}: {status}; stderr: {err}");
        assert!(err.contains("interrupted"), "SIG{signal}: {err}");
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "SIG{signal} left {left:?}");
    }
}
