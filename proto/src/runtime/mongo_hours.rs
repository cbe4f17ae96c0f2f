//! The MongoDB hourly buffer's `buffer_hours` collection, read the same way by the router
//! (which writes it) and the loader's mirror: one document per hour, `_id` the hour as
//! `YYYYMMDDHH`, with `closed`, `generation` (0 when absent; see
//! [`super::buffer::mongo_collection`]), `loaded_count` (what the loader committed) and
//! `dropped_count` (what the last generation held when it was dropped).

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;

use crate::hour;

/// The collection of hour markers.
pub const HOURS: &str = "buffer_hours";

/// A whole number in a document, whichever BSON integer type it was stored as.
pub fn get_int(d: &Document, key: &str) -> Option<i64> {
    match d.get(key) {
        Some(Bson::Int64(n)) => Some(*n),
        Some(Bson::Int32(n)) => Some(i64::from(*n)),
        _ => None,
    }
}

/// What `buffer_hours` says of one hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HourMarker {
    /// The router closed it (hour end + grace).
    pub closed: bool,
    /// The generation now written.
    pub generation: u32,
    /// Documents the loader committed of this generation.
    pub loaded_count: Option<i64>,
    /// Documents the previous generation held when it was dropped.
    pub dropped_count: Option<i64>,
}

impl HourMarker {
    /// Reads one `buffer_hours` document.
    pub fn from_document(d: &Document) -> HourMarker {
        HourMarker {
            closed: d.get_bool("closed").unwrap_or(false),
            generation: get_int(d, "generation")
                .and_then(|g| u32::try_from(g).ok())
                .unwrap_or(0),
            loaded_count: get_int(d, "loaded_count"),
            dropped_count: get_int(d, "dropped_count"),
        }
    }
}

/// Every hour's marker, by hour.
pub async fn read_all(db: &Database) -> mongodb::error::Result<BTreeMap<i64, HourMarker>> {
    let mut cur = db.collection::<Document>(HOURS).find(doc! {}).await?;
    let mut out = BTreeMap::new();
    while let Some(d) = cur.try_next().await? {
        if let Some(h) = d.get_str("_id").ok().and_then(hour::parse_compact) {
            out.insert(h, HourMarker::from_document(&d));
        }
    }
    Ok(out)
}

/// One hour's marker (the default when it has none).
pub async fn read(db: &Database, h: i64) -> mongodb::error::Result<HourMarker> {
    let d = db
        .collection::<Document>(HOURS)
        .find_one(doc! {"_id": hour::compact(h)})
        .await?;
    Ok(d.as_ref().map(HourMarker::from_document).unwrap_or_default())
}
