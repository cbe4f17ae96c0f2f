//! The `weir` command line on bad input: catalogs, configs, breaking catalog edits.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

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
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (catalog built-in demo catalog: 4 events"));
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
