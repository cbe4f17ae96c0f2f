//! kill -9 during a load leaves the old hour or the new one, never a mix, and the next
//! run completes it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use prost::Message;

fn append_events(buffer: &Path, hour: i64, from: usize, to: usize) {
    let base = hour * weir_proto::hour::HOUR_MICROS;
    let mut framed = Vec::new();
    for i in from..to {
        let e = weir_proto::pb::Event {
            id: format!("k-{i:07}"),
            event: "cart.viewed".into(),
            version: 1,
            env: "web".into(),
            received_at: base + i as i64,
            collector: "node".into(),
            fields: format!(r#"{{"items":{i},"session_id":"s-{}"}}"#, i % 97)
                .into_bytes()
                .into(),
            valid: true,
            ..Default::default()
        };
        weir_proto::record::encode_into(&mut framed, &e.encode_to_vec());
    }
    let path = weir_proto::runtime::buffer::buffer_path(buffer, hour);
    let mut f = fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(&framed).unwrap();
}

/// Rows per file of the hour as on disk, and as the committed manifest says.
fn state(warehouse: &Path) -> (BTreeMap<String, usize>, Option<BTreeMap<String, usize>>, bool) {
    let mut on_disk = BTreeMap::new();
    for f in parquet_files(warehouse) {
        let rel = f.strip_prefix(warehouse).unwrap().to_string_lossy().into_owned();
        if rel.starts_with("_staging") {
            continue;
        }
        on_disk.insert(rel, read_parquet(&f).iter().map(|b| b.num_rows()).sum());
    }
    let manifest = fs::read(warehouse.join("_manifests/2026-11-22T08.json")).ok().map(|m| {
        let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
        m["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().unwrap().to_string(),
                    f["rows"].as_u64().unwrap() as usize,
                )
            })
            .collect()
    });
    let pending = warehouse.join("_manifests/2026-11-22T08.pending.json").exists();
    (on_disk, manifest, pending)
}

#[test]
fn kill_9_during_a_load_leaves_old_or_new_and_the_next_run_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let buffer = data.join("router/buffer");
    fs::create_dir_all(&buffer).unwrap();
    let hour = weir_proto::hour::parse("2026-11-22T08").unwrap();
    fs::write(weir_proto::runtime::buffer::closed_path(&buffer, hour), "{}").unwrap();
    let cfg = fixture_config(tmp.path(), &data);
    let cfg = cfg.to_str().unwrap().to_string();
    let warehouse = data.join("warehouse");
    let run = || {
        let out = weir().args(["loader", "run", "--config", &cfg]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let mut total = 40_000;
    append_events(&buffer, hour, 0, total);
    run();
    let (first, manifest, _) = state(&warehouse);
    assert_eq!(Some(first.clone()), manifest);

    let mut saw_pending = false;
    for (round, delay_ms) in [30u64, 120, 250, 400, 700, 1000].into_iter().enumerate() {
        // More events: the hour must be rebuilt; kill the rebuild part-way.
        append_events(&buffer, hour, total, total + 20_000);
        total += 20_000;
        let mut child = weir().args(["loader", "run", "--config", &cfg]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let (on_disk, manifest, pending) = state(&warehouse);
        if pending {
            // Killed inside the commit: the next run rolls it forward.
            saw_pending = true;
        } else {
            // Whatever the moment, what is on disk is exactly one committed version.
            assert_eq!(Some(on_disk), manifest, "round {round}: files and manifest disagree");
        }
        run();
        let (on_disk, manifest, pending) = state(&warehouse);
        assert!(!pending);
        assert_eq!(Some(on_disk.clone()), manifest, "round {round}: after the next run");
        assert_eq!(
            on_disk.values().sum::<usize>(),
            total,
            "round {round}: every event once"
        );
        assert!(!warehouse.join("_staging").exists());
    }
    eprintln!("a kill landed inside a commit: {saw_pending}");
}
