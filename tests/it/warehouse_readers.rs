//! The warehouse as users read it: DuckDB's `read_parquet(..., hive_partitioning = true)`
//! and pyarrow's dataset API, through `tests/python/read_warehouse.py` (scripts/test
//! installs both from PyPI).

use std::collections::BTreeMap;
use std::process::Command;

use crate::common::*;

#[test]
fn duckdb_and_pyarrow_count_what_was_sent_per_event_and_hour() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let up = Up::with_fixture(&data, &[]);
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_invalid = 0;
    for round in 0..5 {
        let mut events = Vec::new();
        for i in 0..(20 + round * 7) {
            events.push(format!(r#"{{"event":"cart.viewed","env":"web","id":"c-{round}-{i}","fields":{{"items":{i},"session_id":"s"}}}}"#));
        }
        for i in 0..(3 + round) {
            events.push(format!(r#"{{"event":"order.completed","env":"android","id":"o-{round}-{i}","fields":{{"order_id":"x","amount":{i}.25,"device_id":"d","skus":[1,2]}}}}"#));
        }
        // One flagged event per round, and a duplicate id that must count once.
        events.push(format!(
            r#"{{"event":"cart.viewed","env":"web","id":"bad-{round}","fields":{{"session_id":"s"}}}}"#
        ));
        events.push(format!(
            r#"{{"event":"cart.viewed","env":"web","id":"c-{round}-0","fields":{{"items":0,"session_id":"s"}}}}"#
        ));
        let (status, body) = post_events(&up.collector, &format!("[{}]", events.join(",")));
        assert_eq!(status, 202, "{body}");
        *sent.entry("cart.viewed/1".into()).or_default() += 20 + round as u64 * 7;
        *sent.entry("order.completed/1".into()).or_default() += 3 + round as u64;
        expected_invalid += 1;
    }
    assert!(up.stop().success());

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_warehouse.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(data.join("warehouse"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "read_warehouse.py failed (scripts/test installs duckdb and pyarrow):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["duckdb"], seen["pyarrow"], "DuckDB and pyarrow agree");
    // Per event version, summed over the hours the events fell in.
    let mut per_event: BTreeMap<String, u64> = BTreeMap::new();
    for (key, n) in seen["duckdb"].as_object().unwrap() {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 4, "{key}");
        assert!(
            parts[2].len() == 10 && parts[3].len() == 2,
            "date and hour partitions: {key}"
        );
        *per_event.entry(format!("{}/{}", parts[0], parts[1])).or_default() += n.as_u64().unwrap();
    }
    assert_eq!(per_event, sent);
    assert_eq!(seen["invalid"], expected_invalid);
    assert_eq!(
        seen["path_columns_in_files"],
        serde_json::json!([]),
        "no column both in the path and the file"
    );
}
