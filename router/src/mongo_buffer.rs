//! The warehouse buffer in MongoDB (Avito's design): one collection per `received_at`
//! hour, `buffer_YYYYMMDDHH`, holding every event (valid and invalid) as a readable
//! document plus `pb`, the exact stored bytes the loader turns into Parquet. `_id` is the
//! event id, so a redelivered event is stored once.
//!
//! Hours close at hour end + grace: the collection `buffer_hours` gets a document
//! `{_id: "YYYYMMDDHH", closed: true, closed_at}`. A late event for a closed hour is
//! inserted all the same; the loader sees the hour's count grow and rebuilds it. Closed
//! hours are dropped `retention_days` after they end, once the loader has marked them
//! committed whole (`loaded_count` equal to the collection's documents); until then they
//! are kept, logged and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use mongodb::{Client, Database};
use weir_proto::event::now_micros;
use weir_proto::hour::{self, HOUR_MICROS};

use crate::metrics as m;
use crate::recipients::mongo::{connect, document, insert};
use crate::recipients::{decode, retry_all, Every, Outcome, Sink};

/// The collection of hour markers.
pub const HOURS: &str = "buffer_hours";

/// The collection of one hour.
pub fn collection_name(h: i64) -> String {
    format!("buffer_{}", hour::compact(h))
}

/// The hour of a collection name, if it is one.
pub fn hour_of(name: &str) -> Option<i64> {
    hour::parse_compact(name.strip_prefix("buffer_")?)
}

/// The hourly buffer in one MongoDB database.
pub struct MongoBuffer {
    url: String,
    db: String,
    grace: Duration,
    retention_days: u32,
    client: Option<Client>,
    closed: BTreeSet<i64>,
    closed_loaded: bool,
    housekeeping_due: Every,
    /// Hours already warned about being kept past retention.
    warned: BTreeSet<i64>,
}

impl MongoBuffer {
    /// A buffer in `db` at `url`.
    pub fn new(url: &str, db: &str, grace: Duration, retention_days: u32) -> MongoBuffer {
        MongoBuffer {
            url: url.to_string(),
            db: db.to_string(),
            grace,
            retention_days,
            client: None,
            closed: BTreeSet::new(),
            closed_loaded: false,
            housekeeping_due: Every::new(Duration::from_secs(5)),
            warned: BTreeSet::new(),
        }
    }

    async fn database(&mut self) -> Result<Database, String> {
        if self.client.is_none() {
            self.client = Some(connect(&self.url).await?);
        }
        let db = match &self.client {
            Some(c) => c.database(&self.db),
            None => return Err("no MongoDB client".into()),
        };
        if !self.closed_loaded {
            self.closed = closed_hours(&db).await.map_err(|e| format!("MongoDB: {e}"))?;
            self.closed_loaded = true;
        }
        Ok(db)
    }

    /// Closes the hours due and drops the hours past retention.
    async fn housekeeping(&mut self) -> Result<(), String> {
        let db = self.database().await?;
        let now = now_micros();
        let names = db.list_collection_names().await.map_err(|e| format!("MongoDB: {e}"))?;
        let hours: BTreeSet<i64> = names.iter().filter_map(|n| hour_of(n)).collect();
        let grace = self.grace.as_micros() as i64;
        for &h in &hours {
            if (h + 1) * HOUR_MICROS + grace <= now && !self.closed.contains(&h) {
                db.collection::<Document>(HOURS)
                    .update_one(
                        doc! {"_id": hour::compact(h)},
                        doc! {"$set": {"closed": true, "closed_at": weir_proto::event::format_micros(now)}},
                    )
                    .upsert(true)
                    .await
                    .map_err(|e| format!("MongoDB: cannot close hour {}: {e}", hour::display(h)))?;
                self.closed.insert(h);
                metrics::counter!(m::HOURS_CLOSED).increment(1);
                tracing::info!(hour = %hour::display(h), "hour closed (MongoDB buffer)");
            }
        }
        let keep_from = hour::of_micros(now) - i64::from(self.retention_days.max(1)) * 24;
        let past: Vec<i64> = hours
            .iter()
            .copied()
            .filter(|h| *h < keep_from && self.closed.contains(h))
            .collect();
        // Dropped only once the loader committed every document (its `loaded_count`).
        let mut expired = Vec::new();
        let mut kept = 0u64;
        for h in past {
            let marker = db
                .collection::<Document>(HOURS)
                .find_one(doc! {"_id": hour::compact(h)})
                .await
                .map_err(|e| format!("MongoDB: {e}"))?;
            let loaded = marker.and_then(|d| match d.get("loaded_count") {
                Some(mongodb::bson::Bson::Int64(n)) => Some(*n),
                Some(mongodb::bson::Bson::Int32(n)) => Some(i64::from(*n)),
                _ => None,
            });
            let count = db
                .collection::<Document>(&collection_name(h))
                .count_documents(doc! {})
                .await
                .map_err(|e| format!("MongoDB: {e}"))? as i64;
            if loaded == Some(count) {
                expired.push(h);
            } else {
                kept += 1;
                if self.warned.insert(h) {
                    tracing::warn!(hour = %hour::display(h), documents = count, loaded = ?loaded, "hour is past retention_days but the loader has not committed all of it; keeping it (MongoDB buffer)");
                }
            }
        }
        metrics::gauge!(m::HOURS_KEPT_UNLOADED).set(kept as f64);
        for h in expired {
            db.collection::<Document>(&collection_name(h))
                .drop()
                .await
                .map_err(|e| format!("MongoDB: cannot drop {}: {e}", collection_name(h)))?;
            db.collection::<Document>(HOURS)
                .delete_one(doc! {"_id": hour::compact(h)})
                .await
                .map_err(|e| format!("MongoDB: {e}"))?;
            self.closed.remove(&h);
            metrics::counter!(m::HOURS_EXPIRED).increment(1);
            tracing::info!(hour = %hour::display(h), "buffer past retention dropped (MongoDB buffer)");
        }
        Ok(())
    }
}

/// The hours marked closed in `buffer_hours`.
pub async fn closed_hours(db: &Database) -> mongodb::error::Result<BTreeSet<i64>> {
    use futures::TryStreamExt;
    let mut cur = db.collection::<Document>(HOURS).find(doc! {"closed": true}).await?;
    let mut out = BTreeSet::new();
    while let Some(d) = cur.try_next().await? {
        if let Some(h) = d.get_str("_id").ok().and_then(hour::parse_compact) {
            out.insert(h);
        }
    }
    Ok(out)
}

impl Sink for MongoBuffer {
    async fn deliver(&mut self, events: &[Bytes]) -> Vec<Outcome> {
        let db = match self.database().await {
            Ok(db) => db,
            Err(e) => return retry_all(events.len(), &e),
        };
        let mut out = vec![Outcome::Delivered; events.len()];
        let mut groups: BTreeMap<i64, (Vec<usize>, Vec<Document>)> = BTreeMap::new();
        for (i, ev) in events.iter().enumerate() {
            let Some(view) = decode(ev, &mut out[i]) else { continue };
            let mut d = match document(&view) {
                Ok(d) => d,
                Err(e) => {
                    out[i] = Outcome::Refuse(format!("cannot convert the event to BSON: {e}"));
                    continue;
                }
            };
            d.insert(
                "pb",
                Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: ev.to_vec(),
                },
            );
            let g = groups.entry(hour::of_micros(view.received_at)).or_default();
            g.0.push(i);
            g.1.push(d);
        }
        let mut buffered = 0u64;
        for (h, (idx, docs)) in groups {
            let late = self.closed.contains(&h);
            let n = docs.len() as u64;
            let outcomes = insert(&db.collection::<Document>(&collection_name(h)), docs).await;
            let ok = outcomes.iter().filter(|o| **o == Outcome::Delivered).count() as u64;
            buffered += ok;
            if late && ok > 0 {
                metrics::counter!(m::LATE).increment(ok);
                tracing::info!(hour = %hour::display(h), events = n, "late events for a closed hour; it will be reloaded");
            }
            for (i, o) in idx.into_iter().zip(outcomes) {
                out[i] = o;
            }
        }
        metrics::counter!(m::BUFFERED).increment(buffered);
        out
    }

    async fn tick(&mut self) {
        if !self.housekeeping_due.due() {
            return;
        }
        if let Err(e) = self.housekeeping().await {
            tracing::error!(error = %e, "MongoDB buffer housekeeping failed; trying again in 5 s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_round_trip() {
        let h = hour::parse("2026-11-22T13").unwrap();
        assert_eq!(collection_name(h), "buffer_2026112213");
        assert_eq!(hour_of("buffer_2026112213"), Some(h));
        assert_eq!(hour_of("buffer_hours"), None);
        assert_eq!(hour_of("item_viewed"), None);
    }
}
