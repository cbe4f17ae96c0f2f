//! Loading hours from a real buffer directory and reading the Parquet back with arrow-rs.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use prost::Message;
use weir_loader::{HourStatus, Loader, ReplayHour};
use weir_proto::pb::Event;
use weir_proto::runtime::buffer::{buffer_path, closed_path};
use weir_proto::{hour, record, Catalog};

fn ev(id: &str, event: &str, version: u32, env: &str, at: i64, fields: &str) -> Event {
    Event {
        id: id.into(),
        event: event.into(),
        version,
        env: env.into(),
        received_at: at,
        collector: "node-1".into(),
        fields: fields.as_bytes().to_vec().into(),
        valid: true,
        ..Default::default()
    }
}

fn append(dir: &Path, h: i64, events: &[Event]) {
    let mut buf = Vec::new();
    for e in events {
        record::encode_into(&mut buf, &e.encode_to_vec());
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(buffer_path(dir, h))
        .unwrap();
    std::io::Write::write_all(&mut f, &buf).unwrap();
}

fn read(path: &Path) -> RecordBatch {
    let f = fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 1, "small files have one batch");
    batches[0].clone()
}

/// A temporary buffer and warehouse, and an hour (its start in µs too).
struct Setup {
    _tmp: tempfile::TempDir,
    buffer: std::path::PathBuf,
    warehouse: std::path::PathBuf,
    h: i64,
    t0: i64,
}

fn setup(hour_name: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let buffer = tmp.path().join("buffer");
    let warehouse = tmp.path().join("warehouse");
    fs::create_dir_all(&buffer).unwrap();
    let h = hour::parse(hour_name).unwrap();
    Setup {
        buffer,
        warehouse,
        h,
        t0: h * hour::HOUR_MICROS,
        _tmp: tmp,
    }
}

#[test]
fn loads_typed_parquet_dedups_flags_and_reloads() {
    let Setup {
        buffer,
        warehouse,
        h,
        t0,
        _tmp,
    } = setup("2026-11-22T13");
    let mut invalid = ev("bad-1", "page.viewed", 1, "web", t0 + 5, r#"{"session_id":"s"}"#);
    invalid.valid = false;
    invalid.errors = vec!["url: missing required field".into()];
    invalid.raw = br#"{"event":"page.viewed","env":"web","fields":{"session_id":"s"}}"#
        .to_vec()
        .into();
    append(
        &buffer,
        h,
        &[
            ev(
                "b",
                "item.viewed",
                2,
                "web",
                t0 + 2,
                r#"{"item_id":2,"source":"feed","session_id":"s2","price":3,"is_promoted":true}"#,
            ),
            ev(
                "a",
                "item.viewed",
                2,
                "ios",
                t0 + 1,
                r#"{"item_id":1,"source":"search","device_id":"d","app_version":"1.0","position":7}"#,
            ),
            ev(
                "b",
                "item.viewed",
                2,
                "web",
                t0 + 2,
                r#"{"item_id":2,"source":"feed","session_id":"s2","price":3,"is_promoted":true}"#,
            ),
            ev(
                "s",
                "search.performed",
                1,
                "backend",
                t0 + 3,
                r#"{"query":"bike","filters":["a","b"]}"#,
            ),
            invalid,
        ],
    );
    fs::write(closed_path(&buffer, h), "{}").unwrap();
    let loader = Loader {
        catalog: Arc::new(Catalog::demo()),
        buffer_dir: buffer.clone(),
        warehouse: warehouse.clone(),
        row_group_rows: 1000,
        index_memory_bytes: 1 << 20,
    };
    let reports = loader.run(false).unwrap();
    assert_eq!(reports.len(), 1);
    let m = &reports[0].manifest;
    assert_eq!((m.rows, m.invalid_rows, m.duplicates, m.source_events), (3, 1, 1, 5));

    let item = read(&warehouse.join("event=item.viewed/version=2/date=2026-11-22/hour=13/part-0.parquet"));
    let schema = item.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let context: Vec<String> = weir_loader::schema::CONTEXT_KEYS
        .iter()
        .map(|k| format!("context_{k}"))
        .collect();
    assert_eq!(
        names[..13],
        [
            "id",
            "env",
            "received_at",
            "client_ts",
            "collector",
            "item_id",
            "source",
            "position",
            "price",
            "is_promoted",
            "session_id",
            "device_id",
            "app_version"
        ]
    );
    assert_eq!(
        names[13..],
        context.iter().map(String::as_str).collect::<Vec<_>>()[..],
        "then the context columns"
    );
    assert!(schema.field_with_name("context_ip").unwrap().is_nullable());
    assert!(
        !names.contains(&"event")
            && !names.contains(&"version")
            && !names.contains(&"date")
            && !names.contains(&"hour")
    );
    let f = |n: &str| schema.field_with_name(n).unwrap().clone();
    assert_eq!(f("item_id").data_type(), &DataType::Int64);
    assert!(!f("item_id").is_nullable() && !f("source").is_nullable());
    assert!(f("price").is_nullable() && f("session_id").is_nullable());
    assert_eq!(f("price").data_type(), &DataType::Float64);
    assert_eq!(f("is_promoted").data_type(), &DataType::Boolean);
    assert_eq!(
        f("received_at").data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let ids: Vec<&str> = item
        .column_by_name("id")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"], "deduplicated and sorted by received_at");
    let item_ids = item.column_by_name("item_id").unwrap().as_primitive::<Int64Type>();
    assert_eq!(item_ids.values(), &[1, 2]);
    let at = item
        .column_by_name("received_at")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    assert_eq!(at.value(0), t0 + 1);
    assert!(item.column_by_name("price").unwrap().is_null(0));

    let search = read(&warehouse.join("event=search.performed/version=1/date=2026-11-22/hour=13/part-0.parquet"));
    let filters = search.column_by_name("filters").unwrap().as_list::<i32>();
    let first = filters.value(0);
    let vals: Vec<&str> = first.as_string::<i32>().iter().map(|s| s.unwrap()).collect();
    assert_eq!(vals, ["a", "b"]);

    let inv = read(&warehouse.join("_invalid/date=2026-11-22/hour=13/part-0.parquet"));
    assert_eq!(inv.num_rows(), 1);
    let raw = inv
        .column_by_name("raw")
        .unwrap()
        .as_string::<i32>()
        .value(0)
        .to_string();
    assert!(raw.contains("session_id"));
    let errs = inv.column_by_name("errors").unwrap().as_list::<i32>().value(0);
    assert_eq!(errs.as_string::<i32>().value(0), "url: missing required field");

    // Nothing new: nothing reloaded.
    assert!(loader.run(false).unwrap().is_empty());
    let listed = loader.hours().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, HourStatus::Loaded);
    assert_eq!(listed[0].buffered_events, Some(5), "every record, the repeat included");
    assert_eq!((listed[0].rows, listed[0].invalid_rows), (Some(3), Some(1)));
    // A late event grows the buffer: the hour is stale until it is rebuilt with it.
    append(
        &buffer,
        h,
        &[ev(
            "c",
            "item.viewed",
            2,
            "web",
            t0 + 9,
            r#"{"item_id":3,"source":"direct","session_id":"s"}"#,
        )],
    );
    assert_eq!(loader.hours().unwrap()[0].state, HourStatus::Stale);
    let again = loader.run(false).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].manifest.rows, 4);
    let item2 = read(&warehouse.join("event=item.viewed/version=2/date=2026-11-22/hour=13/part-0.parquet"));
    assert_eq!(item2.num_rows(), 3);

    // Replay gives identical rows.
    let before = item2.clone();
    loader.replay(h, h, |_, _| {}).unwrap();
    assert_eq!(
        read(&warehouse.join("event=item.viewed/version=2/date=2026-11-22/hour=13/part-0.parquet")),
        before
    );
    // Hours in which nothing arrived are skipped, each one said, not a failed range.
    let done = loader.replay(h - 5, h, |_, _| {}).unwrap();
    assert_eq!(done.len(), 6);
    assert!(done[..5].iter().all(|r| matches!(r, ReplayHour::Empty(_))));
    assert!(matches!(&done[5], ReplayHour::Rebuilt(r) if r.manifest.rows == 4));
    // An hour loaded and deleted after retention cannot be rebuilt: the range is refused
    // before anything is touched, naming it.
    weir_proto::runtime::buffer::write_expired(&buffer, h - 7, 0).unwrap();
    let err = loader.replay(h - 8, h, |_, _| {}).unwrap_err().to_string();
    assert!(
        err.contains("hour 2026-11-22T06 was loaded but is no longer in the buffer"),
        "{err}"
    );
    assert_eq!(
        loader.hours().unwrap().iter().map(|l| l.state).collect::<Vec<_>>(),
        [HourStatus::Loaded]
    );
}

#[test]
fn open_hours_load_only_with_now() {
    let tmp = tempfile::tempdir().unwrap();
    let buffer = tmp.path().join("buffer");
    fs::create_dir_all(&buffer).unwrap();
    let h = hour::of_micros(weir_proto::event::now_micros());
    append(
        &buffer,
        h,
        &[ev(
            "x",
            "page.viewed",
            1,
            "web",
            h * hour::HOUR_MICROS,
            r#"{"url":"u","session_id":"s"}"#,
        )],
    );
    let loader = Loader {
        catalog: Arc::new(Catalog::demo()),
        buffer_dir: buffer,
        warehouse: tmp.path().join("w"),
        row_group_rows: 10,
        index_memory_bytes: 1 << 20,
    };
    assert!(loader.run(false).unwrap().is_empty());
    assert_eq!(loader.run(true).unwrap().len(), 1);
}

#[test]
fn interrupted_commit_is_finished_by_the_next_run() {
    let Setup {
        buffer,
        warehouse,
        h,
        t0,
        _tmp,
    } = setup("2026-11-22T10");
    append(
        &buffer,
        h,
        &[ev("x", "page.viewed", 1, "web", t0, r#"{"url":"u","session_id":"s"}"#)],
    );
    fs::write(closed_path(&buffer, h), "{}").unwrap();
    let loader = Loader {
        catalog: Arc::new(Catalog::demo()),
        buffer_dir: buffer.clone(),
        warehouse: warehouse.clone(),
        row_group_rows: 10,
        index_memory_bytes: 1 << 20,
    };
    loader.run(false).unwrap();
    // Simulate a crash after the commit record was written but before the swap: stage a
    // new version of the hour by hand, with its pending manifest.
    append(
        &buffer,
        h,
        &[ev(
            "y",
            "page.viewed",
            1,
            "web",
            t0 + 1,
            r#"{"url":"u2","session_id":"s"}"#,
        )],
    );
    let manifest_path = warehouse.join("_manifests/2026-11-22T10.json");
    let old_manifest = fs::read_to_string(&manifest_path).unwrap();
    loader.run(false).unwrap();
    let new_manifest = fs::read_to_string(&manifest_path).unwrap();
    let part = warehouse.join("event=page.viewed/version=1/date=2026-11-22/hour=10/part-0.parquet");
    let staged =
        warehouse.join("_staging/2026112210/event=page.viewed/version=1/date=2026-11-22/hour=10/part-0.parquet");
    fs::create_dir_all(staged.parent().unwrap()).unwrap();
    fs::rename(&part, &staged).unwrap();
    fs::write(&manifest_path, &old_manifest).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&new_manifest).unwrap();
    let pending = serde_json::json!({"manifest": manifest, "staging": "_staging/2026112210", "remove": []});
    fs::write(
        warehouse.join("_manifests/2026-11-22T10.pending.json"),
        pending.to_string(),
    )
    .unwrap();
    assert!(!part.exists());
    // The next run rolls the commit forward and then finds nothing to do.
    assert!(loader.run(false).unwrap().is_empty());
    assert_eq!(read(&part).num_rows(), 2);
    let now: serde_json::Value = serde_json::from_str(&fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(now, manifest);
    assert!(!warehouse.join("_staging").exists());
}

#[test]
fn a_row_that_does_not_fit_its_schema_moves_to_invalid_with_the_reason() {
    let Setup {
        buffer,
        warehouse,
        h,
        t0,
        _tmp,
    } = setup("2026-11-22T11");
    append(
        &buffer,
        h,
        &[
            ev("good", "page.viewed", 1, "web", t0, r#"{"url":"u","session_id":"s"}"#),
            // Marked valid, but the stored fields do not fit the schema.
            ev(
                "misfit",
                "page.viewed",
                1,
                "web",
                t0 + 1,
                r#"{"url":5,"session_id":"s"}"#,
            ),
            ev("no-url", "page.viewed", 1, "web", t0 + 2, r#"{"session_id":"s"}"#),
            // A version the loader's catalog does not know.
            ev("future", "page.viewed", 9, "web", t0 + 3, r#"{"url":"u"}"#),
        ],
    );
    fs::write(closed_path(&buffer, h), "{}").unwrap();
    let loader = Loader {
        catalog: Arc::new(Catalog::demo()),
        buffer_dir: buffer,
        warehouse: warehouse.clone(),
        row_group_rows: 10,
        index_memory_bytes: 1 << 20,
    };
    let m = loader.run(false).unwrap().remove(0).manifest;
    assert_eq!((m.rows, m.invalid_rows), (1, 3));
    let inv = read(&warehouse.join("_invalid/date=2026-11-22/hour=11/part-0.parquet"));
    let ids: Vec<&str> = inv
        .column_by_name("id")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(ids, ["misfit", "no-url", "future"]);
    let errors: Vec<String> = (0..3)
        .map(|i| {
            inv.column_by_name("errors")
                .unwrap()
                .as_list::<i32>()
                .value(i)
                .as_string::<i32>()
                .value(0)
                .to_string()
        })
        .collect();
    assert_eq!(
        errors,
        [
            "loader: url: expected string, got 5",
            "loader: url: missing required field",
            "loader: this event version is not in the catalog"
        ]
    );
}

#[test]
fn row_groups_hold_the_configured_number_of_rows() {
    let Setup {
        buffer,
        warehouse,
        h,
        t0,
        _tmp,
    } = setup("2026-11-22T09");
    let events: Vec<Event> = (0..35)
        .map(|i| {
            ev(
                &format!("r-{i:02}"),
                "page.viewed",
                1,
                "web",
                t0 + i,
                r#"{"url":"u","session_id":"s"}"#,
            )
        })
        .collect();
    append(&buffer, h, &events);
    fs::write(closed_path(&buffer, h), "{}").unwrap();
    let loader = Loader {
        catalog: Arc::new(Catalog::demo()),
        buffer_dir: buffer,
        warehouse: warehouse.clone(),
        row_group_rows: 10,
        index_memory_bytes: 1 << 20,
    };
    loader.run(false).unwrap();
    let path = warehouse.join("event=page.viewed/version=1/date=2026-11-22/hour=09/part-0.parquet");
    let meta = parquet::file::reader::SerializedFileReader::new(fs::File::open(&path).unwrap()).unwrap();
    let groups: Vec<i64> = (0..parquet::file::reader::FileReader::metadata(&meta).num_row_groups())
        .map(|i| {
            parquet::file::reader::FileReader::metadata(&meta)
                .row_group(i)
                .num_rows()
        })
        .collect();
    assert_eq!(groups, [10, 10, 10, 5]);
    // Rows stay in received_at order across row groups, and statistics are written.
    let md = parquet::file::reader::FileReader::metadata(&meta);
    assert!(md.row_group(0).column(0).statistics().is_some(), "statistics on");
    let f = fs::File::open(&path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let ids: Vec<String> = reader
        .flat_map(|b| {
            b.unwrap()
                .column_by_name("id")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let want: Vec<String> = (0..35).map(|i| format!("r-{i:02}")).collect();
    assert_eq!(ids, want);
}

/// An hour whose index does not fit `index_memory_bytes` goes through spill files and
/// gives byte-identical Parquet: the same rows in the same order, duplicates dropped
/// across the whole hour, invalid events, unknown versions and rows the columns refuse
/// in `_invalid`.
#[test]
fn an_hour_larger_than_the_index_memory_spills_and_gives_the_same_files() {
    let Setup {
        buffer,
        warehouse,
        h,
        t0,
        _tmp,
    } = setup("2026-11-22T15");
    let n = 6000;
    let mut events = Vec::new();
    for i in 0..n {
        // Ten events share each received_at (one request), and time runs backwards in
        // every other block of 500 (spools from collectors arriving late).
        let block = i / 500;
        let at = if block % 2 == 0 {
            t0 + (i / 10) as i64
        } else {
            t0 + 10_000 - (i / 10) as i64
        };
        let id = format!("e{i:05}");
        let mut e = match i % 5 {
            0 | 1 => ev(
                &id,
                "item.viewed",
                2,
                "web",
                at,
                &format!(r#"{{"item_id":{i},"source":"feed","session_id":"s"}}"#),
            ),
            2 => ev(
                &id,
                "page.viewed",
                1,
                "web",
                at,
                &format!(r#"{{"url":"https://x/{i}","session_id":"s"}}"#),
            ),
            3 => ev(&id, "search.performed", 1, "backend", at, r#"{"query":"q"}"#),
            _ => ev(&id, "item.viewed", 9, "web", at, r#"{"item_id":1}"#), // not in the catalog
        };
        if i % 97 == 0 {
            e.valid = false;
            e.errors = vec!["item_id: missing required field".into()];
        }
        if i % 211 == 0 {
            // Valid when collected, refused by the loader's columns.
            e = ev(&id, "page.viewed", 1, "web", at, r#"{"url":7,"session_id":"s"}"#);
        }
        events.push(e);
    }
    // 300 repeats, some right after, some far later in the buffer.
    let repeats: Vec<Event> = (0..300).map(|k| events[(k * 19) % n].clone()).collect();
    events.extend(repeats);
    append(&buffer, h, &events);
    fs::write(closed_path(&buffer, h), "{}").unwrap();

    let load = |warehouse: &Path, index_memory_bytes: usize| {
        let loader = Loader {
            catalog: Arc::new(Catalog::demo()),
            buffer_dir: buffer.clone(),
            warehouse: warehouse.to_path_buf(),
            row_group_rows: 700,
            index_memory_bytes,
        };
        let mut reports = loader.run(false).unwrap();
        assert_eq!(reports.len(), 1);
        reports.remove(0)
    };
    let in_memory = load(&warehouse, 1 << 30);
    let spilled_wh = warehouse.with_file_name("warehouse-spilled");
    // Smaller than any hour: 1024 entries (the floor), so 6300 events go to 7 buckets.
    let spilled = load(&spilled_wh, 0);
    assert!(!in_memory.spilled);
    assert!(spilled.spilled);

    let (a, b) = (&in_memory.manifest, &spilled.manifest);
    assert_eq!(a.source_events, 6300);
    assert_eq!(a.duplicates, 300);
    assert_eq!(b.duplicates, 300);
    assert_eq!(a.rows + a.invalid_rows, 6000, "every distinct event is somewhere");
    assert_eq!((a.rows, a.invalid_rows), (b.rows, b.invalid_rows));
    assert_eq!(a.files, b.files, "same files, rows, sizes and checksums");
    for f in &a.files {
        assert_eq!(
            fs::read(warehouse.join(&f.path)).unwrap(),
            fs::read(spilled_wh.join(&f.path)).unwrap(),
            "{} differs",
            f.path
        );
    }
    assert!(!spilled_wh.join("_staging").exists(), "spill files are removed");

    // Rows are in received_at order, and the refused rows say why.
    let page = spilled_wh.join("event=page.viewed/version=1/date=2026-11-22/hour=15/part-0.parquet");
    let f = fs::File::open(&page).unwrap();
    let mut last = i64::MIN;
    let mut rows = 0;
    for batch in ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap() {
        let batch = batch.unwrap();
        let at = batch
            .column_by_name("received_at")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        for v in at.values() {
            assert!(*v >= last, "rows sorted by received_at");
            last = *v;
            rows += 1;
        }
    }
    let refused = (0..n).filter(|i| i % 211 == 0).count();
    let page_valid = (0..n).filter(|i| i % 5 == 2 && i % 97 != 0 && i % 211 != 0).count();
    assert_eq!(rows, page_valid);
    let inv = spilled_wh.join("_invalid/date=2026-11-22/hour=15/part-0.parquet");
    let f = fs::File::open(&inv).unwrap();
    let mut loader_refused = 0;
    for batch in ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap() {
        let batch = batch.unwrap();
        let errors = batch.column_by_name("errors").unwrap().as_list::<i32>();
        for i in 0..batch.num_rows() {
            let list = errors.value(i);
            let list = list.as_string::<i32>();
            if list.iter().flatten().any(|e| e.starts_with("loader: url:")) {
                loader_refused += 1;
            }
        }
    }
    assert_eq!(loader_refused, refused);
}
