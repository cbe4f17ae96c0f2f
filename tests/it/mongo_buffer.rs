//! The MongoDB hourly buffer against a real server (nx-27017 from `scripts/services`): a
//! collection per hour, closed after the grace period, dropped after retention, and loaded
//! into the same Parquet rows as the file buffer gives for the same events; events that
//! arrive for an hour already loaded and deleted are added to it, in both buffers.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use prost::Message;
use weir_loader::mongo_mirror::{mirror, Hours, MongoSource};
use weir_loader::Loader;
use weir_proto::hour::{self, HOUR_MICROS};
use weir_proto::pb::Event;
use weir_proto::runtime::buffer::mongo_collection;
use weir_router::mongo_buffer::MongoBuffer;
use weir_router::recipients::{Events, Outcome, Sink};

fn event(id: &str, received_at: i64, valid: bool) -> Bytes {
    let fields = if valid {
        format!(
            r#"{{"order_id":"{id}","amount":{}.5,"items":3,"skus":[1,2]}}"#,
            id.len()
        )
    } else {
        r#"{"order_id":7}"#.to_string()
    };
    Bytes::from(
        Event {
            id: id.into(),
            event: "order.completed".into(),
            version: 1,
            env: "backend".into(),
            received_at,
            client_ts: Some(received_at - 1000),
            collector: "node-1".into(),
            fields: Bytes::from(fields),
            valid,
            errors: if valid {
                vec![]
            } else {
                vec!["order_id: expected a string".into()]
            },
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

/// Replays the one hour `h` of the buffer in `dir` into `wh`; what rebuilding it did.
fn replay_one(dir: &std::path::Path, wh: &std::path::Path, h: i64) -> Vec<weir_loader::HourReport> {
    loader(dir, wh)
        .replay(h, h, |_, _| {})
        .unwrap()
        .iter()
        .filter_map(|r| r.report().cloned())
        .collect()
}

fn loader(buffer: &Path, warehouse: &Path) -> Loader {
    Loader {
        catalog: Arc::new(weir_proto::Catalog::load_dir(&fixture_catalog()).unwrap()),
        buffer_dir: buffer.to_path_buf(),
        warehouse: warehouse.to_path_buf(),
        row_group_rows: 1000,
        index_memory_bytes: 1 << 20,
    }
}

/// Every Parquet file under `dir`, as (path relative to `dir`, its rows).
fn tables(dir: &Path) -> Vec<(String, Vec<arrow_array::RecordBatch>)> {
    parquet_files(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            (rel, read_parquet(&p))
        })
        .collect()
}

async fn collections(db: &mongodb::Database) -> BTreeSet<String> {
    db.list_collection_names().await.unwrap().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_close_drop_after_retention_and_load_like_the_file_buffer() {
    let url = service("TEST_WEIR_MONGO");
    let db_name = unique("buf");
    let tmp = tempfile::tempdir().unwrap();
    let now = weir_proto::event::now_micros();
    let closed_h = hour::of_micros(now) - 2;
    let old_h = hour::of_micros(now) - 5 * 24;
    let open_h = hour::of_micros(now);
    let at = |h: i64, i: i64| h * HOUR_MICROS + 1_000_000 * (i + 1);
    let mut events: Vec<Bytes> = (0..30)
        .map(|i| event(&format!("c{i:02}"), at(closed_h, i), i % 10 != 9))
        .collect();
    events.extend((0..5).map(|i| event(&format!("o{i}"), at(old_h, i), true)));
    events.extend((0..3).map(|i| event(&format!("n{i}"), now - i, true)));

    let mut buffer = MongoBuffer::new(&url, &db_name, Duration::from_secs(300), 3);
    let out = buffer.deliver(&Events::from(events.clone())).await;
    assert!(out.iter().all(|o| *o == Outcome::Delivered), "{out:?}");
    // A redelivery (a router restart before its cursor moved) stores nothing twice.
    let again = buffer.deliver(&Events::from(events[..10].to_vec())).await;
    assert!(again.iter().all(|o| *o == Outcome::Delivered), "{again:?}");

    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    let db = client.database(&db_name);
    let names = collections(&db).await;
    for h in [closed_h, old_h, open_h] {
        assert!(
            names.contains(&mongo_collection(h, 0)),
            "a collection per hour: {names:?}"
        );
    }
    let closed_coll = db.collection::<Document>(&mongo_collection(closed_h, 0));
    assert_eq!(closed_coll.count_documents(doc! {}).await.unwrap(), 30);
    let d = closed_coll.find_one(doc! {"_id": "c03"}).await.unwrap().unwrap();
    assert_eq!(d.get_str("event").unwrap(), "order.completed");
    assert_eq!(d.get_document("fields").unwrap().get_str("order_id").unwrap(), "c03");

    // Housekeeping: the past hours close; the one older than retention is kept while
    // the loader has not committed it...
    buffer.tick().await;
    let names = collections(&db).await;
    assert!(names.contains(&mongo_collection(closed_h, 0)));
    assert!(names.contains(&mongo_collection(open_h, 0)));
    assert!(
        names.contains(&mongo_collection(old_h, 0)),
        "past retention but never loaded: kept: {names:?}"
    );
    // ... and dropped once it is loaded whole (the mirror tells MongoDB `loaded_count`).
    let src_old = MongoSource {
        url: url.clone(),
        db: db_name.clone(),
    };
    let old_mirror = tmp.path().join("old-mirror");
    mirror(&src_old, &old_mirror, Hours::Range(old_h, old_h)).await.unwrap();
    let reports = loader(&old_mirror, &tmp.path().join("wh-old")).run(true).unwrap();
    assert_eq!(reports.len(), 1);
    mirror(&src_old, &old_mirror, Hours::Range(old_h, old_h)).await.unwrap();
    let mut again = MongoBuffer::new(&url, &db_name, Duration::from_secs(300), 3);
    again.tick().await;
    let names = collections(&db).await;
    assert!(
        !names.contains(&mongo_collection(old_h, 0)),
        "dropped after retention once loaded: {names:?}"
    );
    // A late event for the dropped hour (a collector cut off for longer than retention)
    // starts the hour's next generation; the loader adds it to the hour's Parquet.
    let late_old = [event("old-late", at(old_h, 20), true)];
    assert_eq!(
        again.deliver(&Events::from(late_old.to_vec())).await,
        vec![Outcome::Delivered]
    );
    assert!(collections(&db).await.contains(&mongo_collection(old_h, 1)));
    // Another router that last looked before the drop sends one too: it goes to the
    // current generation, not into a recreated collection of the dropped one.
    let late_other = [event("old-late-2", at(old_h, 21), true)];
    assert_eq!(
        buffer.deliver(&Events::from(late_other.to_vec())).await,
        vec![Outcome::Delivered]
    );
    let names = collections(&db).await;
    assert!(!names.contains(&mongo_collection(old_h, 0)), "{names:?}");
    let g1 = db.collection::<Document>(&mongo_collection(old_h, 1));
    assert_eq!(g1.count_documents(doc! {}).await.unwrap(), 2);
    mirror(&src_old, &old_mirror, Hours::Range(old_h, old_h)).await.unwrap();
    let reports = loader(&old_mirror, &tmp.path().join("wh-old")).run(true).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].manifest.generation, 1);
    assert_eq!(
        reports[0].manifest.rows, 7,
        "the five loaded before and the two late ones"
    );
    let mut ids: Vec<String> = parquet_files(&tmp.path().join("wh-old"))
        .iter()
        .flat_map(|f| strings(&read_parquet(f), "id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["o0", "o1", "o2", "o3", "o4", "old-late", "old-late-2"]);
    let markers: Vec<Document> = db
        .collection::<Document>("buffer_hours")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let closed: BTreeSet<String> = markers
        .iter()
        .filter(|m| m.get_bool("closed").unwrap_or(false))
        .map(|m| m.get_str("_id").unwrap().to_string())
        .collect();
    assert_eq!(
        closed,
        [hour::compact(closed_h)].into_iter().collect(),
        "only the closed hour stays marked"
    );

    // The loader reads the closed hour from MongoDB...
    let src = MongoSource {
        url: url.clone(),
        db: db_name.clone(),
    };
    let mirror_dir = tmp.path().join("mirror");
    assert_eq!(mirror(&src, &mirror_dir, Hours::Closed).await.unwrap(), vec![closed_h]);
    assert!(
        mirror(&src, &mirror_dir, Hours::Closed).await.unwrap().is_empty(),
        "unchanged hours are not exported again"
    );
    let from_mongo = tmp.path().join("wh-mongo");
    let reports = loader(&mirror_dir, &from_mongo).run(false).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].manifest.rows, 27);
    assert_eq!(reports[0].manifest.invalid_rows, 3);

    // ... into the same Parquet as the file buffer gives for the same events.
    let file_dir = tmp.path().join("filebuf");
    std::fs::create_dir_all(&file_dir).unwrap();
    let mut framed = Vec::new();
    for e in events.iter().take(30).rev() {
        weir_proto::record::encode_into(&mut framed, e);
    }
    std::fs::write(weir_proto::runtime::buffer::buffer_path(&file_dir, closed_h), &framed).unwrap();
    std::fs::write(weir_proto::runtime::buffer::closed_path(&file_dir, closed_h), b"{}").unwrap();
    let from_files = tmp.path().join("wh-file");
    loader(&file_dir, &from_files).run(false).unwrap();
    let (a, b) = (tables(&from_mongo), tables(&from_files));
    assert!(!a.is_empty());
    assert_eq!(
        a.iter().map(|t| &t.0).collect::<Vec<_>>(),
        b.iter().map(|t| &t.0).collect::<Vec<_>>(),
        "same partitions and files"
    );
    for ((path, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x, y, "same rows in {path}");
    }

    // A late event for the closed hour: exported again, and the hour reloaded.
    let late = [event("late1", at(closed_h, 40), true)];
    assert_eq!(
        buffer.deliver(&Events::from(late.to_vec())).await,
        vec![Outcome::Delivered]
    );
    assert_eq!(mirror(&src, &mirror_dir, Hours::Closed).await.unwrap(), vec![closed_h]);
    let reports = loader(&mirror_dir, &from_mongo).run(false).unwrap();
    assert_eq!(reports.len(), 1, "the hour is rebuilt");
    assert_eq!(reports[0].manifest.rows, 28);

    // Retention reaches the mirror too: a dropped hour leaves it.
    db.collection::<Document>(&mongo_collection(closed_h, 0))
        .drop()
        .await
        .unwrap();
    mirror(&src, &mirror_dir, Hours::Closed).await.unwrap();
    assert!(!weir_proto::runtime::buffer::buffer_path(&mirror_dir, closed_h).exists());
    db.drop().await.unwrap();
}

#[test]
fn late_events_for_a_file_buffer_hour_already_loaded_and_deleted_are_added_to_it() {
    use weir_proto::runtime::buffer::{current_generation, list_hours};
    use weir_router::buffer::FileBuffer;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, wh) = (tmp.path().join("buffer"), tmp.path().join("warehouse"));
    let now = weir_proto::event::now_micros();
    let old_h = hour::of_micros(now) - 5 * 24;
    let at = |i: i64| old_h * HOUR_MICROS + 1_000_000 * (i + 1);
    let frame = |events: &[Bytes]| {
        let mut framed = Vec::new();
        for e in events {
            weir_proto::record::encode_into(&mut framed, e);
        }
        std::collections::BTreeMap::from([(old_h, (framed, events.len() as u64))])
    };
    let mut buf = FileBuffer::open(&dir, Duration::from_secs(300), 3).unwrap();
    let first: Vec<Bytes> = (0..5).map(|i| event(&format!("f{i}"), at(i), i != 4)).collect();
    buf.append(&frame(&first)).unwrap();
    buf.close_due(now).unwrap();
    assert_eq!(loader(&dir, &wh).run(false).unwrap().len(), 1);
    let (gone, _) = buf.expire(now).unwrap();
    assert_eq!(gone, vec![old_h], "loaded whole and past retention: deleted");
    assert_eq!(current_generation(&dir, old_h).unwrap(), 1, "a tombstone is left");

    // Late events come in after that, twice (the second grows the same generation).
    let late: Vec<Bytes> = (0..3).map(|i| event(&format!("l{i}"), at(10 + i), true)).collect();
    buf.append(&frame(&late[..2])).unwrap();
    buf.close_due(now).unwrap();
    let r = loader(&dir, &wh).run(false).unwrap();
    assert_eq!(
        (r[0].manifest.generation, r[0].manifest.rows, r[0].manifest.invalid_rows),
        (1, 6, 1)
    );
    buf.append(&frame(&late[2..])).unwrap();
    let r = loader(&dir, &wh).run(false).unwrap();
    assert_eq!(
        (r[0].manifest.rows, r[0].manifest.invalid_rows),
        (7, 1),
        "{:?}",
        r[0].manifest
    );
    // A replay rebuilds what is buffered and keeps what is not.
    let r = replay_one(&dir, &wh, old_h);
    assert_eq!(r[0].manifest.rows, 7);
    let mut ids: Vec<String> = parquet_files(&wh)
        .iter()
        .flat_map(|f| strings(&read_parquet(f), "id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["f0", "f1", "f2", "f3", "f4", "l0", "l1", "l2"]);
    let parts: BTreeSet<String> = r[0]
        .manifest
        .files
        .iter()
        .map(|f| f.path.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(
        parts,
        ["part-0.parquet".to_string(), "part-1.parquet".to_string()].into()
    );

    // A lost manifest: the earlier generation's files are still counted, from their bytes.
    std::fs::remove_file(weir_loader::commit::manifest_path(&wh, old_h)).unwrap();
    std::fs::write(weir_loader::commit::manifest_path(&wh, old_h), b"{").unwrap();
    let r = replay_one(&dir, &wh, old_h);
    assert_eq!((r[0].manifest.rows, r[0].manifest.invalid_rows), (7, 1));
    assert_eq!(list_hours(&dir).unwrap().len(), 1);
}

#[test]
fn weir_up_with_the_mongo_buffer_loads_every_hour_on_stop() {
    let url = service("TEST_WEIR_MONGO");
    let db_name = unique("up");
    let tmp = tempfile::tempdir().unwrap();
    let config = format!("[router]\nbuffer = {{ kind = \"mongo\", url = \"{url}\", db = \"{db_name}\" }}\n");
    let up = Up::with(tmp.path(), Some(&fixture_catalog()), &config, &[]);
    let data = tmp.path().join("data");
    let body: String = (0..20)
        .map(|i| format!(r#"{{"event":"order.completed","env":"backend","id":"u{i}","fields":{{"order_id":"o{i}","amount":{i}}}}}"#))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, reply) = post(
        &format!("{}/v1/events", up.collector),
        body.as_bytes(),
        &[("content-type", "application/x-ndjson")],
    );
    assert_eq!(status, 202, "{reply}");
    assert!(up.stop().success());
    let files = parquet_files(&data.join("warehouse"));
    assert_eq!(files.len(), 1, "{files:?}");
    let mut ids = strings(&read_parquet(&files[0]), "id");
    ids.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
    assert!(
        !data.join("router/buffer").exists() || parquet_files(&data.join("router/buffer")).is_empty(),
        "no file buffer was written"
    );
}
