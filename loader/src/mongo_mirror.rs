//! Reading the MongoDB hourly buffer: before a load, each hour collection
//! `buffer_YYYYMMDDHH` the router closed (or every hour, for a replay or a final load) is
//! exported into a local mirror directory in the file buffer's own format, sorted by event
//! id; the loader then reads the mirror exactly as it reads file buffers, so both kinds
//! give the same Parquet rows. An hour is exported again only when its document count
//! changed (late events), which the loader then sees as a grown buffer and rebuilds.
//! Mirror files of hours dropped from MongoDB (retention) are deleted. An hour's
//! generation (see `weir_proto::runtime::buffer`) comes from its `buffer_hours` document: the
//! mirror writes the tombstone of the generation before it, so late events after a drop
//! are added to the hour, not loaded in place of it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use weir_proto::runtime::buffer::{
    buffer_path, closed_path, expired_path, list_hours, loaded_path, mongo_collection, mongo_hour_of, read_loaded,
    write_expired,
};
use weir_proto::runtime::mongo_hours;
use weir_proto::{hour, record};

/// Errors reading the MongoDB buffer.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// MongoDB refused or could not be reached.
    #[error("MongoDB buffer {db} at {url}: {error}")]
    Mongo {
        /// Connection string, its password shown as `***`.
        url: String,
        /// Database.
        db: String,
        /// Why.
        error: mongodb::error::Error,
    },
    /// The mirror directory could not be written.
    #[error("MongoDB buffer mirror {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
}

/// Where the MongoDB buffer is.
#[derive(Clone, Debug)]
pub struct MongoSource {
    /// Connection string.
    pub url: String,
    /// Database.
    pub db: String,
}

fn count_path(dir: &Path, h: i64) -> PathBuf {
    dir.join(format!("{}.count", hour::compact(h)))
}

/// `<hour>.count`: documents and generation of the collection the mirror file was
/// exported from (`"<count> <generation>"`; a bare count is generation 0).
fn read_count(dir: &Path, h: i64) -> Option<(u64, u32)> {
    let s = fs::read_to_string(count_path(dir, h)).ok()?;
    let mut parts = s.split_whitespace();
    let count = parts.next()?.parse().ok()?;
    let generation = match parts.next() {
        Some(g) => g.parse().ok()?,
        None => 0,
    };
    Some((count, generation))
}

/// Which hours to export.
#[derive(Clone, Copy, Debug)]
pub enum Hours {
    /// Closed hours only (the periodic load).
    Closed,
    /// Every hour, open ones included (the final load of `weir up`).
    All,
    /// Every hour from the first to the second, inclusive (a replay).
    Range(i64, i64),
}

/// Brings the mirror in `dir` up to date with the MongoDB buffer. Returns the hours
/// exported.
pub async fn mirror(src: &MongoSource, dir: &Path, which: Hours) -> Result<Vec<i64>, MirrorError> {
    let mongo = |error| MirrorError::Mongo {
        url: weir_proto::secret::redact_url(&src.url),
        db: src.db.clone(),
        error,
    };
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| MirrorError::Io { path, error }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut opts = mongodb::options::ClientOptions::parse(&src.url).await.map_err(mongo)?;
    opts.server_selection_timeout
        .get_or_insert(std::time::Duration::from_secs(5));
    let client = mongodb::Client::with_options(opts).map_err(mongo)?;
    let db = client.database(&src.db);
    let names = db.list_collection_names().await.map_err(mongo)?;
    let markers = mongo_hours::read_all(&db).await.map_err(mongo)?;
    let closed: BTreeSet<i64> = markers.iter().filter(|(_, m)| m.closed).map(|(h, _)| *h).collect();
    let generation = |h: i64| markers.get(&h).map_or(0, |m| m.generation);
    // The collection of each hour's current generation (older ones are loaded whole and
    // about to be dropped by the router).
    let present: BTreeSet<i64> = names
        .iter()
        .filter_map(|n| mongo_hour_of(n))
        .filter(|(h, g)| generation(*h) == *g)
        .map(|(h, _)| h)
        .collect();
    // Hours the loader committed whole (its `.loaded` marker covers the mirror file
    // exported from `count` documents of the current generation) are marked
    // `loaded_count` in buffer_hours: the router drops an hour past retention only once
    // that matches the collection.
    for state in list_hours(dir).map_err(io_err(dir))? {
        let Some(loaded) = read_loaded(dir, state.hour) else {
            continue;
        };
        let Some((count, g)) = read_count(dir, state.hour) else {
            continue;
        };
        if loaded.source_bytes == state.bytes
            && loaded.generation == g
            && g == generation(state.hour)
            && present.contains(&state.hour)
        {
            db.collection::<Document>(mongo_hours::HOURS)
                .update_one(
                    doc! {"_id": hour::compact(state.hour)},
                    doc! {"$set": {"loaded_count": count as i64}},
                )
                .await
                .map_err(mongo)?;
        }
    }
    let mut exported = Vec::new();
    for &h in &present {
        let wanted = match which {
            Hours::Closed => closed.contains(&h),
            Hours::All => true,
            Hours::Range(from, to) => (from..=to).contains(&h),
        };
        if !wanted {
            continue;
        }
        let g = generation(h);
        let coll = db.collection::<Document>(&mongo_collection(h, g));
        let count = coll.count_documents(doc! {}).await.map_err(mongo)?;
        let count_file = count_path(dir, h);
        let marker = closed_path(dir, h);
        if g > 0 {
            write_expired(dir, h, g - 1).map_err(io_err(&expired_path(dir, h)))?;
        }
        if read_count(dir, h) != Some((count, g)) || !buffer_path(dir, h).exists() {
            let tmp = dir.join(format!("{}.buf.tmp", hour::compact(h)));
            let mut out = io::BufWriter::new(fs::File::create(&tmp).map_err(io_err(&tmp))?);
            let mut framed = Vec::new();
            let mut cursor = coll
                .find(doc! {})
                .sort(doc! {"_id": 1})
                .projection(doc! {"pb": 1})
                .await
                .map_err(mongo)?;
            let mut n = 0u64;
            while let Some(d) = cursor.try_next().await.map_err(mongo)? {
                let Ok(pb) = d.get_binary_generic("pb") else {
                    tracing::error!(hour = %hour::display(h), id = ?d.get("_id"), "buffer document without pb; skipped");
                    continue;
                };
                framed.clear();
                record::encode_into(&mut framed, pb);
                out.write_all(&framed).map_err(io_err(&tmp))?;
                n += 1;
            }
            let f = out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
            f.sync_all().map_err(io_err(&tmp))?;
            let path = buffer_path(dir, h);
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
            // The count read before the export; a document inserted during it shows as a
            // different count next time and the hour is exported again.
            fs::write(&count_file, format!("{count} {g}\n")).map_err(io_err(&count_file))?;
            // A new generation's file is not the one the old marker covered.
            if read_loaded(dir, h).is_some_and(|l| l.generation != g) {
                let _ = fs::remove_file(loaded_path(dir, h));
            }
            tracing::info!(hour = %hour::display(h), events = n, "hour exported from the MongoDB buffer");
            exported.push(h);
        }
        if closed.contains(&h) && !marker.exists() {
            fs::write(&marker, b"{}\n").map_err(io_err(&marker))?;
        }
    }
    // Hours MongoDB no longer has (dropped after retention) leave the mirror too.
    let mirrored: BTreeMap<i64, ()> = list_hours(dir)
        .map_err(io_err(dir))?
        .into_iter()
        .map(|s| (s.hour, ()))
        .collect();
    for h in mirrored.keys().filter(|h| !present.contains(h)) {
        for p in [
            buffer_path(dir, *h),
            closed_path(dir, *h),
            count_path(dir, *h),
            loaded_path(dir, *h),
            expired_path(dir, *h),
        ] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
    }
    Ok(exported)
}
